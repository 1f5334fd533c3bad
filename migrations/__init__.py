"""Numbered SQL migrations for the ledger, applied in order by ``ledger.schema``."""
