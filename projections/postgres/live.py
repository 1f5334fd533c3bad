"""Live projections on PostgreSQL: attach them to a ``PostgresLog``, project every
append inside its transaction, rebuild them with a swap.

``attach`` creates what is missing (by a rebuild), rebuilds a projection whose
recorded version is older than the code's, catches a lagging one up, and registers
the inline projector with ``PostgresLog.add_inline_projector``: the append's events,
the projection rows and the checkpoints commit together (or not at all). A process
that appends without projections leaves them behind; the next projected append
applies everything after the checkpoints, so nothing is lost. It registers the
erasure scrubber too (``projections.postgres.erasing``): an erase rewrites the
rows of the erased events in its transaction.

``rebuild`` is one transaction: it takes the log's append lock (``LOCK TABLE events
IN EXCLUSIVE MODE``, as an append does: appends wait, readers do not), fills fresh
tables from position 1, then drops the live tables and renames the fresh ones into
place, checkpoints included. Readers see the old tables until the commit, then the
new ones.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from hermes_ledger.ledger.postgres import SCHEMA, PostgresLog
from hermes_ledger.ledger.records import Recorded
from hermes_ledger.projections.definitions import Projection, by_name
from hermes_ledger.projections.errors import ProjectionError
from hermes_ledger.projections.postgres.erasing import scrubber
from hermes_ledger.projections.postgres.projector import apply
from hermes_ledger.projections.postgres.tables import (
    LIVE,
    NEXT,
    SQL_DROP,
    SQL_READ_CHECKPOINTS,
    create_tables,
    ensure_bookkeeping,
    read_checkpoints,
    save_checkpoint,
    swap_in,
    tables_exist,
)
from hermes_ledger.projections.rebuilding import RebuildReport

__all__ = ["AttachReport", "attach", "rebuild"]

Connection = psycopg.Connection[Any]

SQL_LOCK_LOG = f"SELECT head_position FROM {SCHEMA}.hl_append_state('')"
"""The lock every append takes (``hl_append_state``, which the writer role may call):
held, no append can commit."""
SQL_ADVANCE = f"UPDATE {SCHEMA}.projection_checkpoints SET position = %s WHERE name = ANY(%s)"

_ATTACHED: weakref.WeakKeyDictionary[PostgresLog, InlineProjector] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class AttachReport:
    """What attaching did: ``rebuilt`` projections (missing or an older version),
    events ``caught_up`` per projection, projections ``skipped`` (a newer version
    owns them), the ``position`` they were at when attach returned."""

    position: int
    rebuilt: tuple[str, ...] = ()
    caught_up: dict[str, int] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    already_attached: bool = False


class InlineProjector:
    """Runs inside every append's transaction (under its lock): brings each owned
    projection up to the append's last position, then advances the checkpoints."""

    def __init__(self, log: PostgresLog, projections: Sequence[Projection]) -> None:
        self._log = weakref.ref(log)
        self.projections = tuple(projections)

    def __call__(self, conn: Connection, records: Sequence[Recorded]) -> None:
        if not self.projections or not records:
            return
        first, last = records[0].position, records[-1].position
        # attach made the checkpoint table (or found it): read it without asking
        checkpoints = {n: (v, p) for n, v, p in conn.execute(SQL_READ_CHECKPOINTS).fetchall()}
        current = [p for p in self.projections if checkpoints.get(p.name) == (p.version, first - 1)]
        if current:
            apply(conn, LIVE, current, records)
        advanced = [p.name for p in current]
        for projection in self.projections:
            if projection in current:
                continue
            recorded = checkpoints.get(projection.name)
            if recorded is None or recorded[0] != projection.version or recorded[1] >= last:
                continue  # owned by other code (its checkpoint is its own), or already applied
            log = self._log()
            if log is None:
                raise ProjectionError("the log of these projections is gone")
            behind = log.read_all(recorded[1], limit=last - recorded[1])
            apply(conn, LIVE, (projection,), behind)
            advanced.append(projection.name)
        if advanced:
            conn.execute(SQL_ADVANCE, (last, advanced))


def attach(log: PostgresLog, *, projections: Sequence[Projection] | None = None) -> AttachReport:
    """Bring the projections up to date and keep them so on every append of ``log``.

    Idempotent per log object. Creating or rebuilding tables needs a role that may
    create them in the log's schema (the database owner); an attach that only
    catches up, and the appends after it, work as the writer role."""
    if log in _ATTACHED:
        return AttachReport(position=log.head(), already_attached=True)
    wanted = by_name() if projections is None else tuple(projections)
    conn = log.connection
    with _held(log):
        checkpoints = read_checkpoints(conn)
        skipped = [p for p in wanted if checkpoints.get(p.name, (0, 0))[0] > p.version]
        owned = tuple(p for p in wanted if p not in skipped)
        outdated = tuple(p for p in owned if checkpoints.get(p.name, (0, 0))[0] < p.version) or (
            owned if owned and not tables_exist(conn) else ()
        )
    if outdated:
        rebuild(log, projections=outdated)
    caught_up = _catch_up(log, owned)
    projector = InlineProjector(log, owned)
    log.add_inline_projector(projector)
    log.add_scrubber(scrubber(owned))
    _ATTACHED[log] = projector
    return AttachReport(
        position=log.head(),
        rebuilt=tuple(p.name for p in outdated),
        caught_up=caught_up,
        skipped=tuple(p.name for p in skipped),
    )


def _catch_up(log: PostgresLog, owned: Sequence[Projection]) -> dict[str, int]:
    conn = log.connection
    applied: dict[str, int] = {}
    with _held(log), conn.transaction():
        conn.execute(SQL_LOCK_LOG)
        checkpoints = read_checkpoints(conn)
        head = log.head()
        for projection in owned:
            position = checkpoints.get(projection.name, (0, head))[1]
            if position < head:
                apply(conn, LIVE, (projection,), log.read_all(position))
                save_checkpoint(conn, projection, head)
                applied[projection.name] = head - position
    return applied


def rebuild(log: PostgresLog, *, projections: Sequence[Projection] | None = None) -> RebuildReport:
    """Replay the whole log into fresh tables and swap them in, in one transaction
    (appends wait for it; readers keep reading the old tables until it commits)."""
    chosen = by_name() if projections is None else tuple(projections)
    conn = log.connection
    started = time.perf_counter()
    try:
        with _held(log), conn.transaction():
            conn.execute(SQL_LOCK_LOG)
            ensure_bookkeeping(conn)
            for table in (t for p in chosen for t in p.data_tables):
                conn.execute(SQL_DROP.format(table=NEXT.table(table.name)))
            create_tables(conn, chosen, NEXT)
            head = log.head()
            apply(conn, NEXT, chosen, log.read_all(0, limit=head))
            swap_in(conn, chosen)
            for projection in chosen:
                save_checkpoint(conn, projection, head)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ProjectionError(
            f"{log.where}: cannot create the projection tables: {exc.diag.message_primary}",
            hint="rebuild (or attach for the first time) as the database owner",
        ) from None
    return RebuildReport(tuple(p.name for p in chosen), head, head, time.perf_counter() - started)


class _held:
    """The log's own lock (one connection, calls take turns), for work that spans
    several of its calls."""

    def __init__(self, log: PostgresLog) -> None:
        self._lock = log._lock

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
