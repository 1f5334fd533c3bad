"""A read-only SQLite snapshot of a PostgreSQL ledger, for ``hermes-ledger serve``.

Datasette reads SQLite files only. So on a ``postgresql://`` ledger, ``serve``
takes a snapshot when it starts: the log is exported as JSONL in one repeatable-read
transaction (``ledger.postgres.reading.export``: the events with their hashes, and
the personal content an erasure has not removed), restored into a new SQLite ledger
(``ledger.restore.import_jsonl``: every line checked against the chain, as
``hermes-ledger import`` does) and given its projections there, so the pages,
views and canned queries are those of a SQLite ledger, on the same events.

What the snapshot is not: live (appends made after it was taken are not shown;
restart ``serve`` to see them), and it holds the log and what is derived from it,
not the gateway's working state (the scheduler's ``session_deadlines`` and the
hooks' ``hook_deliveries`` stay in PostgreSQL, so ``hook-failures`` is empty).

The snapshot lives in a new directory of its own under the temporary directory,
readable by this user only (0700, the file 0600), since it holds every transcript;
``postgres_snapshot`` removes it when the block ends (Ctrl-C and SIGTERM included;
a SIGKILL leaves it, owner-only, for the temporary directory's cleaning).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hermes_ledger.gateway.sessions import reports
from hermes_ledger.ledger.clock import format_utc, system_clock

__all__ = ["PostgresSnapshot", "postgres_snapshot"]

_PREFIX = "hermes-ledger-serve-"


@dataclass(frozen=True)
class PostgresSnapshot:
    """The snapshot file, the ledger it was taken of (``host:port/dbname as user``),
    the last position it holds and when it was taken (UTC text)."""

    path: Path
    source: str
    position: int
    taken_at: str


@contextmanager
def postgres_snapshot(dsn: str) -> Iterator[PostgresSnapshot]:
    """Take a read-only SQLite snapshot of the PostgreSQL ledger at ``dsn`` (with its
    projections built), yield it, and remove it afterwards (see the module)."""
    from hermes_ledger.gateway.sessions.postgres import open_postgres
    from hermes_ledger.ledger.postgres.reading import export
    from hermes_ledger.ledger.restore import import_jsonl

    directory = Path(tempfile.mkdtemp(prefix=_PREFIX))  # 0700
    try:
        path = directory / "ledger-snapshot.db"
        lines = directory / "export.jsonl"
        taken_at = format_utc(system_clock())
        with open_postgres(dsn, projections=False) as log:
            source = log.where
            export(log, lines, format="jsonl")
        import_jsonl(path, lines)
        lines.unlink()
        with reports.open_existing(path) as led:  # builds the projections
            position = led.head()
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if name.exists():
                os.chmod(name, 0o600)
        yield PostgresSnapshot(path, source, position, taken_at)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
