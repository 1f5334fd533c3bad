"""Running projections on a connection: setup, table lifecycle, ranges, checkpoints.

Every function here runs inside a transaction the caller owns (``Ledger.write``
for the live tables, a read transaction plus writes to ``temp`` for scratch
replays), so rows and checkpoints always commit together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import apsw

from hermes_ledger.ledger.events import body_json, from_stored
from hermes_ledger.ledger.sql import SQL_HEAD_POSITION, scalar
from hermes_ledger.projections.definitions import Projection
from hermes_ledger.projections.quoting import Target, quote_ident
from hermes_ledger.projections.statements import CLEAR_RANGE, DECODE_RANGE, RANGE_TABLE_DDL
from hermes_ledger.projections.tables import CHECKPOINTS_DDL, REBUILD_LEASE_DDL

__all__ = [
    "Checkpoints",
    "create_indexes",
    "create_tables",
    "drop_tables",
    "ensure_bookkeeping",
    "head",
    "prepare_connection",
    "read_checkpoints",
    "replay",
    "replay_chunks",
    "replay_range",
    "save_checkpoint",
    "table_exists",
]

Checkpoints = dict[str, tuple[int, int]]
"""Projection name -> (schema version, applied position)."""

SQL_READ_CHECKPOINTS = "SELECT name, version, position FROM main.projection_checkpoints"
SQL_SAVE_CHECKPOINT = (
    "INSERT INTO main.projection_checkpoints (name, version, position) VALUES (?1, ?2, ?3)"
    " ON CONFLICT (name) DO UPDATE SET version = excluded.version, position = excluded.position"
)
SQL_ADVANCE_CHECKPOINT = "UPDATE main.projection_checkpoints SET position = ?2 WHERE name = ?1"
SQL_TABLE_EXISTS = "SELECT count(*) FROM {schema}.sqlite_schema WHERE type = 'table' AND name = ?1"
DECODE_RANGE_OCCURRED_BY = DECODE_RANGE + " AND e.occurred_at <= ?3"
"""``DECODE_RANGE`` keeping only the events that happened at or before ?3 (business
time): what a replay "as of business time T" folds, in log order."""

EVENT_BODY_FUNCTION = "hermes_event_body"


def _event_body(*args: Any) -> str:
    """SQL function (type, event_id, data, meta): a stored body of an older schema
    version, upcast to the current shape."""
    event_type, event_id, data, meta = args
    version = json.loads(meta).get("schema_version", 1) if meta else 1
    return body_json(from_stored(event_type, event_id, data, int(version)))


def prepare_connection(conn: apsw.Connection) -> None:
    """Register the SQL function the range statements call for old event shapes, and
    create the connection's private table that holds a decoded range."""
    conn.create_scalar_function(EVENT_BODY_FUNCTION, _event_body, 4, deterministic=True)
    conn.execute(RANGE_TABLE_DDL)


def head(conn: apsw.Connection) -> int:
    """The last position in the log (0 when it is empty)."""
    return int(scalar(conn, SQL_HEAD_POSITION))


def table_exists(conn: apsw.Connection, name: str, schema: str = "main") -> bool:
    sql = SQL_TABLE_EXISTS.format(schema=quote_ident(schema))
    return bool(scalar(conn, sql, (name,)))


def ensure_bookkeeping(conn: apsw.Connection) -> None:
    """Create the checkpoint and rebuild-lease tables if they are missing."""
    conn.execute(CHECKPOINTS_DDL)
    conn.execute(REBUILD_LEASE_DDL)


def read_checkpoints(conn: apsw.Connection) -> Checkpoints:
    if not table_exists(conn, "projection_checkpoints"):
        return {}
    return {name: (version, position) for name, version, position in
            conn.execute(SQL_READ_CHECKPOINTS)}  # fmt: skip


def save_checkpoint(conn: apsw.Connection, projection: Projection, position: int) -> None:
    conn.execute(SQL_SAVE_CHECKPOINT, (projection.name, projection.version, position))


def advance_checkpoint(conn: apsw.Connection, projection: Projection, position: int) -> None:
    conn.execute(SQL_ADVANCE_CHECKPOINT, (projection.name, position))


def create_tables(
    conn: apsw.Connection, projection: Projection, target: Target, *, indexes: bool = True
) -> None:
    for table in projection.tables:
        conn.execute(table.create_sql(target))
    if indexes:
        create_indexes(conn, projection, target)


def create_indexes(conn: apsw.Connection, projection: Projection, target: Target) -> None:
    for table in projection.tables:
        for sql in table.index_sql(target):
            conn.execute(sql)


def drop_tables(conn: apsw.Connection, projection: Projection, target: Target) -> None:
    """Drop the projection's tables (their indexes, and FTS shadow tables, go with them)."""
    for table in reversed(projection.tables):
        conn.execute(f"DROP TABLE IF EXISTS {target.table(table.name)}")


def replay(
    conn: apsw.Connection,
    projection: Projection,
    target: Target,
    first: int,
    last: int,
) -> None:
    """Fold events ``first..last`` (inclusive) into ``target``'s tables."""
    replay_range(conn, (projection,), target, first, last)


def replay_range(
    conn: apsw.Connection,
    projections: Sequence[Projection],
    target: Target,
    first: int,
    last: int,
    occurred_by: str | None = None,
) -> None:
    """Decode events ``first..last`` once, then fold them into each projection.

    With ``occurred_by`` (UTC text), only the events of the range whose business
    time (``occurred_at``) is at or before it."""
    if last < first:
        return
    bounds = (first, last)
    if occurred_by is None:
        conn.execute(DECODE_RANGE, bounds)
    else:
        conn.execute(DECODE_RANGE_OCCURRED_BY, (*bounds, occurred_by))
    try:
        for projection in projections:
            for sql in projection.sql(target):
                conn.execute(sql, bounds)
    finally:
        conn.execute(CLEAR_RANGE)


def replay_chunks(
    conn: apsw.Connection,
    projections: tuple[Projection, ...],
    target: Target,
    after: int,
    until: int,
    chunk_size: int,
    progress: Callable[[int, int], None] | None = None,
    occurred_by: str | None = None,
) -> None:
    """Replay ``after+1..until`` into ``target`` in chunks (one caller-owned transaction);
    with ``occurred_by``, only the events that happened at or before it (see
    ``replay_range``)."""
    done = after
    while done < until:
        upto = min(done + chunk_size, until)
        replay_range(conn, projections, target, done + 1, upto, occurred_by)
        done = upto
        if progress is not None:
            progress(done, until)
