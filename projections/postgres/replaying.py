"""Verify and state_at on PostgreSQL: replays into temporary tables.

Both run in one ``REPEATABLE READ`` transaction that is rolled back at the end, so
the replay and the live tables are read in the same snapshot (appends may go on)
and the temporary tables vanish with it. ``verify`` replays each projection up to
its live checkpoint and compares every column of every row (``EXCEPT`` both ways);
``state_at`` replays up to a position and hands back ``projections.State``, as the
SQLite ``state_at`` does, so the two can be compared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg

from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.records import Recorded
from hermes_ledger.projections.definitions import Projection, by_name
from hermes_ledger.projections.errors import ProjectionError
from hermes_ledger.projections.postgres.live import _held
from hermes_ledger.projections.postgres.projector import apply
from hermes_ledger.projections.postgres.tables import (
    LIVE,
    SCRATCH,
    create_tables,
    read_checkpoints,
    tables_exist,
)
from hermes_ledger.projections.quoting import Target, quote_ident
from hermes_ledger.projections.state import State, utc_text
from hermes_ledger.projections.tables import MESSAGES, SESSION_HISTORY, SESSION_MAP, TableSpec
from hermes_ledger.projections.verifying import Difference, VerifyReport

__all__ = ["live_state", "state_at", "verify"]

Connection = psycopg.Connection[Any]

SQL_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
SQL_SCRATCH_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
SQL_EXCEPT = "SELECT {columns} FROM {a} EXCEPT ALL SELECT {columns} FROM {b}"
SQL_COUNT = "SELECT count(*) FROM {table}"
SQL_ROWS = "SELECT {columns} FROM {table}"
# "As of time T" (projections.state's SQL_LAST_POSITION_BY and SQL_LAST_OCCURRED_BY,
# bounded by the head read in the same snapshot). Times are ledger text, compared
# byte for byte as SQLite does.
SQL_LAST_POSITION_BY = (
    'SELECT coalesce((SELECT min(position) FROM events WHERE recorded_at > %s COLLATE "C") - 1, %s)'
)
"""The end of the longest prefix of the log recorded at or before the time."""
SQL_LAST_OCCURRED_BY = (
    'SELECT coalesce(max(position), 0) FROM events WHERE occurred_at <= %s COLLATE "C"'
    " AND position <= %s"
)
"""The last position among the events that happened at or before the time."""
SQL_HAPPENED_AFTER = (
    'SELECT position FROM events WHERE occurred_at > %s COLLATE "C" AND position <= %s'
)
"""The events up to a position that happened after the time (left out of its replay)."""


@contextmanager
def _snapshot(log: PostgresLog, *, scratch: bool) -> Iterator[Connection]:
    """One repeatable-read transaction on the log's connection, always rolled back."""
    conn = log.connection
    with _held(log), conn.transaction(force_rollback=True):
        conn.execute(SQL_SCRATCH_SNAPSHOT if scratch else SQL_SNAPSHOT)
        yield conn


def verify(log: PostgresLog, *, projections: Sequence[Projection] | None = None) -> VerifyReport:
    """Replay the log into temporary tables and compare them with the live ones."""
    differences: list[Difference] = []
    positions: dict[str, int] = {}
    rows: dict[str, int] = {}
    with _snapshot(log, scratch=True) as conn:
        head = log.head()
        checkpoints = read_checkpoints(conn)
        exist = tables_exist(conn)
        for projection in by_name() if projections is None else projections:
            recorded = checkpoints.get(projection.name)
            if not exist or recorded is None:
                differences.append(Difference(projection.name, "projection",
                                              live="not attached (no live tables)"))  # fmt: skip
                continue
            if recorded[0] != projection.version:
                differences.append(Difference(projection.name, "projection",
                                              live=f"version {recorded[0]}, the code's is"
                                              f" {projection.version}"))  # fmt: skip
                continue
            positions[projection.name] = recorded[1]
            create_tables(conn, (projection,), SCRATCH, indexes=False)
            apply(conn, SCRATCH, (projection,), log.read_all(0, limit=recorded[1]))
            for table in projection.data_tables:
                found, count = _compare(conn, table)
                differences += found
                rows[table.name] = count
    return VerifyReport(not differences, head, positions, rows, tuple(differences))


def _compare(conn: Connection, table: TableSpec) -> tuple[list[Difference], int]:
    columns = table.columns
    listed = ", ".join(quote_ident(c) for c in columns)
    live, rebuilt = LIVE.table(table.name), SCRATCH.table(table.name)
    key = columns.index(table.key)
    only_live = {
        r[key]: r for r in conn.execute(SQL_EXCEPT.format(columns=listed, a=live, b=rebuilt))
    }
    only_rebuilt = {
        r[key]: r for r in conn.execute(SQL_EXCEPT.format(columns=listed, a=rebuilt, b=live))
    }
    found: list[Difference] = []
    for k in sorted(only_live.keys() | only_rebuilt.keys(), key=repr):
        a, b = only_live.get(k), only_rebuilt.get(k)
        if a is not None and b is not None:
            found += [
                Difference(table.name, "changed", k, column, x, y)
                for column, x, y in zip(columns, a, b, strict=True)
                if x != y
            ]
        elif a is not None:
            found.append(
                Difference(table.name, "extra", k, live=dict(zip(columns, a, strict=True)))
            )
        elif b is not None:
            found.append(
                Difference(table.name, "missing", k, rebuilt=dict(zip(columns, b, strict=True)))
            )
    count = conn.execute(SQL_COUNT.format(table=rebuilt)).fetchone()
    return found, int(count[0]) if count else 0


def state_at(
    log: PostgresLog,
    *,
    position: int | None = None,
    time: datetime | str | None = None,
    recorded: bool = False,
) -> State:
    """The session map, history and transcripts as they were after ``position`` (the
    head when neither it nor ``time`` is given), or as of ``time``, read as the
    SQLite ``projections.state_at`` reads it: business time (the events that happened
    by then, in log order; ``State.position`` the last of them), or with
    ``recorded`` the longest prefix of the log recorded by then. A replay into
    temporary tables; the live tables are not read."""
    if position is not None and time is not None:
        raise ValueError("give position or time, not both")
    if position is not None and position < 0:
        raise ValueError("position must be >= 0")
    with _snapshot(log, scratch=True) as conn:
        head = log.head()
        records: Iterable[Recorded]
        if time is None:
            until = head if position is None else min(position, head)
            records = log.read_all(0, limit=until)
        elif recorded:
            until = _scalar(conn, SQL_LAST_POSITION_BY, (utc_text(time), head))
            records = log.read_all(0, limit=until)
        else:
            moment = utc_text(time)
            until = _scalar(conn, SQL_LAST_OCCURRED_BY, (moment, head))
            later = {int(r[0]) for r in conn.execute(SQL_HAPPENED_AFTER, (moment, until))}
            records = (r for r in log.read_all(0, limit=until) if r.position not in later)
        chosen = by_name()
        create_tables(conn, chosen, SCRATCH, indexes=False)
        apply(conn, SCRATCH, chosen, records)
        return _read_state(conn, SCRATCH, until)


def _scalar(conn: Connection, sql: str, args: tuple[Any, ...]) -> int:
    row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def live_state(log: PostgresLog) -> State:
    """The live tables, read in one snapshot, in ``State``'s shape."""
    with _snapshot(log, scratch=False) as conn:
        if not tables_exist(conn):
            raise ProjectionError(
                f"{log.where} has no live projections",
                hint="attach them first (projections.postgres.attach) or use state_at",
            )
        checkpoints = read_checkpoints(conn)
        at = min((checkpoints.get(p.name, (0, 0))[1] for p in by_name()), default=0)
        return _read_state(conn, LIVE, at)


def _rows(conn: Connection, target: Target, table: TableSpec) -> list[dict[str, Any]]:
    columns = table.columns
    sql = SQL_ROWS.format(columns=", ".join(quote_ident(c) for c in columns),
                          table=target.table(table.name))  # fmt: skip
    found = [dict(zip(columns, row, strict=True)) for row in conn.execute(sql)]
    return sorted(found, key=lambda r: r[table.key])


def _read_state(conn: Connection, target: Target, position: int) -> State:
    transcripts: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(conn, target, MESSAGES):
        transcripts.setdefault(row["session_id"], []).append(row)
    return State(
        position=position,
        session_map={r["session_key"]: r for r in _rows(conn, target, SESSION_MAP)},
        session_history={r["session_id"]: r for r in _rows(conn, target, SESSION_HISTORY)},
        transcripts=transcripts,
    )
