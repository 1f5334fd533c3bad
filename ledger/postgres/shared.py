"""Moved to ``hermes_ledger.ledger.appending`` (both backends append through it)."""

from hermes_ledger.ledger.appending import prepare_append

__all__ = ["prepare_append"]
