"""Numbered SQL migrations for the ledger, applied in order by ``hermes_ledger.ledger.schema``."""
