"""``import --erasures-from`` into PostgreSQL: re-apply the erasures a SQLite ledger
recorded to a PostgreSQL ledger just restored from an export of it.

An export made before an erasure still holds the erased content; restoring it must
not bring that content back (``ledger.restore.reapply_erasures`` is the SQLite
side). The erasures are read from the source ledger first (``recorded``), so a
source that cannot be read stops the import before anything is written.

The restored ledger keeps the export's positions and hashes, so each recorded
erasure (at position P, covering positions up to ``through`` = P - 1) is either

* in the restored ledger (P <= its head and the same hash there): the export was
  made after it, its content is already absent; nothing to do;
* after the restored head (the export was made before it): everything the restored
  ledger holds is at or below ``through``, so ``PostgresLog.erase`` of the same
  scope (up to the head) covers exactly what the original covered here: it is
  appended as a new ``subject_erased`` naming the original, as on SQLite;
* otherwise the export is not of the source ledger (another chain at P): refused,
  since PostgreSQL's erase cannot yet stop at a position below its head.
"""

from __future__ import annotations

import os
from typing import Any

from hermes_ledger.ledger.erasure import ErasureReport
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres.log import PostgresLog

__all__ = ["reapply_erasures", "recorded_erasures"]


def recorded_erasures(source: str | os.PathLike[str]) -> list[tuple[Any, ...]]:
    """The erasures the SQLite ledger at ``source`` recorded: (position, scope,
    through, requested_by, hash at the position) each."""
    from hermes_ledger.ledger.restore import recorded_erasures as recorded_scopes
    from hermes_ledger.ledger.store import Ledger

    recorded = recorded_scopes(source)
    with Ledger.open_existing(source, readonly=True) as led:
        return [(*row, led.hash_at(row[0])) for row in recorded]


def reapply_erasures(
    log: PostgresLog, source: str | os.PathLike[str], recorded: list[tuple[Any, ...]]
) -> list[ErasureReport]:
    """Re-apply ``recorded`` (``recorded_erasures(source)``) to ``log`` (see the module
    docstring); the reports of the erasures that forgot something."""
    head = log.head()
    reports = []
    for position, scope, through, by, digest in recorded:
        if position <= head:
            if log.hash_at(position) == digest:
                continue  # the export holds this erasure: its content is not there
            raise LedgerError(
                f"the erasure at position {position} of {source} is not in the imported"
                " ledger, which holds other events there: the export is not of that ledger",
                hint="re-apply it by hand with `hermes-ledger erase --db URI …`, or import"
                " into a SQLite file (--db FILE --erasures-from LEDGER) and migrate that",
            )
        assert through >= head  # an erasure covers the log up to just before itself
        if not log.erase(scope, requested_by=by, dry_run=True).payloads:
            continue
        note = f"{by} (re-applied from {source}, position {position})"
        reports.append(log.erase(scope, requested_by=note, dry_run=False))
    return reports
