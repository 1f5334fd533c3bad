"""Rebuild: replay the whole log into fresh tables, then swap them in atomically.

The fresh tables (``<name>__next``) are filled in chunks, each its own short
write transaction, so appends (and their inline projections on the live tables)
go on meanwhile. The swap is one transaction: replay what was appended since
the last chunk, drop the live tables, rename the fresh ones into place, build
their indexes and record the checkpoints. A crash before the swap commits leaves
the live tables untouched (the next rebuild drops the leftovers and starts
again); a crash during it is rolled back by SQLite.

Two rebuilds at once: the last one to start owns the fresh tables (a lease row
holds its token), and the earlier one stops with ``RebuildSuperseded``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import apsw

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.sql import scalar
from hermes_ledger.projections.definitions import Projection, by_name
from hermes_ledger.projections.errors import RebuildSuperseded
from hermes_ledger.projections.quoting import LIVE, NEXT, quote_ident
from hermes_ledger.projections.replay import (
    create_indexes,
    create_tables,
    drop_tables,
    ensure_bookkeeping,
    head,
    prepare_connection,
    read_checkpoints,
    replay_range,
    save_checkpoint,
    table_exists,
)
from hermes_ledger.projections.views import ensure_views

__all__ = ["DEFAULT_CHUNK", "RebuildReport", "lease", "rebuild", "rebuild_outdated"]

DEFAULT_CHUNK = 20_000
"""Events per rebuild transaction: long enough to be efficient, short enough not to
keep appenders waiting for long."""

SQL_CLAIM_LEASE = (
    "INSERT OR REPLACE INTO main.projection_rebuild (id, token, names, position)"
    " VALUES (1, ?1, ?2, 0)"
)
SQL_LEASE = "SELECT token, names, position FROM main.projection_rebuild WHERE id = 1"
SQL_LEASE_PROGRESS = "UPDATE main.projection_rebuild SET position = ?2 WHERE token = ?1"
SQL_RELEASE_LEASE = "DELETE FROM main.projection_rebuild WHERE token = ?1"


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild did: the projections swapped in, the position they are at,
    how many events were replayed and how long it took."""

    projections: tuple[str, ...]
    position: int
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"rebuilt {', '.join(self.projections)} from {self.events} events up to position "
            f"{self.position} in {self.seconds:.2f}s ({self.events_per_second:,.0f} events/s)"
        )


def rebuild(
    ledger: Ledger,
    *,
    progress: Callable[[int, int], None] | None = None,
    projections: str | Iterable[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> RebuildReport:
    """Replay the log from position 0 into fresh tables and swap them in atomically.

    ``progress(done, total)`` is called after each chunk (``total`` is the head when
    the rebuild started; the final call reports the swapped-in position).
    ``projections`` names the ones to rebuild (default: all). Safe to run while
    other threads and processes append. Raises ``RebuildSuperseded`` if another
    rebuild starts before this one finishes (the live tables stay as they were).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    report = rebuild_outdated(
        ledger, by_name(projections), chunk_size=chunk_size, progress=progress, only_outdated=False
    )
    assert report is not None
    return report


def rebuild_outdated(
    ledger: Ledger,
    chosen: tuple[Projection, ...],
    *,
    chunk_size: int,
    progress: Callable[[int, int], None] | None,
    only_outdated: bool,
) -> RebuildReport | None:
    """``rebuild``; with ``only_outdated``, first check under the write lock that some
    chosen projection is still missing or at an older version (another process may
    have rebuilt it meanwhile) and return None if not."""
    token = uuid.uuid4().hex
    started = time.perf_counter()

    def begin(conn: apsw.Connection) -> int | None:
        prepare_connection(conn)
        ensure_bookkeeping(conn)
        if only_outdated:
            checkpoints = read_checkpoints(conn)
            if all(checkpoints.get(p.name, (0, 0))[0] >= p.version for p in chosen):
                return None
        conn.execute(SQL_CLAIM_LEASE, (token, ",".join(p.name for p in chosen)))
        for projection in by_name():  # leftovers of an interrupted rebuild
            drop_tables(conn, projection, NEXT)
        for projection in chosen:
            create_tables(conn, projection, NEXT, indexes=False)
        return head(conn)

    total = ledger.write(begin)
    if total is None:
        return None
    built = 0
    if progress is not None:
        progress(0, total)
    while built < total:
        upto = min(built + chunk_size, total)
        ledger.write(_chunk_work(token, chosen, built + 1, upto))
        built = upto
        if progress is not None:
            progress(built, total)
    position = ledger.write(_swap_work(token, chosen, built))
    if progress is not None:
        progress(position, position)
    return RebuildReport(
        tuple(p.name for p in chosen), position, position, time.perf_counter() - started
    )


def lease(conn: apsw.Connection) -> tuple[str, str, int] | None:
    """The rebuild in progress (token, projection names, position built), if any."""
    if not table_exists(conn, "projection_rebuild"):
        return None
    row = conn.execute(SQL_LEASE).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def _check_lease(conn: apsw.Connection, token: str) -> None:
    current = lease(conn)
    if current is None or current[0] != token:
        raise RebuildSuperseded(
            "another rebuild started and took over the fresh tables; this one stopped "
            "(the live projections are unchanged)"
        )


def _chunk_work(
    token: str, chosen: tuple[Projection, ...], first: int, last: int
) -> Callable[[apsw.Connection], None]:
    def work(conn: apsw.Connection) -> None:
        _check_lease(conn, token)
        replay_range(conn, chosen, NEXT, first, last)
        conn.execute(SQL_LEASE_PROGRESS, (token, last))

    return work


def _swap_work(
    token: str, chosen: tuple[Projection, ...], built: int
) -> Callable[[apsw.Connection], int]:
    def work(conn: apsw.Connection) -> int:
        _check_lease(conn, token)
        position = head(conn)
        replay_range(conn, chosen, NEXT, built + 1, position)
        legacy = scalar(conn, "PRAGMA legacy_alter_table")
        # Legacy mode: renaming does not re-check (or rewrite) every view and trigger in
        # the schema; the views name the canonical tables, which exist again at commit.
        conn.execute("PRAGMA legacy_alter_table = ON")
        try:
            for projection in chosen:
                drop_tables(conn, projection, LIVE)
                for table in projection.tables:
                    conn.execute(
                        f"ALTER TABLE {NEXT.table(table.name)} RENAME TO {quote_ident(table.name)}"
                    )
                create_indexes(conn, projection, LIVE)
                save_checkpoint(conn, projection, position)
        finally:
            conn.execute(f"PRAGMA legacy_alter_table = {int(legacy)}")
        checkpoints = read_checkpoints(conn)
        if all(checkpoints.get(p.name, (0, 0))[0] == p.version for p in by_name()):
            ensure_views(conn)
        conn.execute(SQL_RELEASE_LEASE, (token,))
        return position

    return work
