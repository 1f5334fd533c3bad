"""The projections' exceptions (LedgerErrors, so the CLI reports them the same way)."""

from __future__ import annotations

from hermes_ledger.ledger.errors import LedgerError

__all__ = ["ProjectionError", "RebuildSuperseded"]


class ProjectionError(LedgerError):
    """A projection could not be attached, rebuilt, verified or replayed."""


class RebuildSuperseded(ProjectionError):
    """Another rebuild started after this one and now owns the fresh tables."""

    hint = "let the other rebuild finish (the live projections are unchanged), then verify"
