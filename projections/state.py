"""State as of a position or a time: a replay of the log that stops there.

"As of time T" is business time by default: the replay, in log order, of the
events that happened at or before T (``occurred_at``), so a session imported today
from last week shows as it was last week. With ``recorded=True`` it is the log as
it stood at T: the longest prefix of events recorded at or before T.

``state_at`` replays into scratch tables and hands back plain data; ``live_state``
reads the live tables into the same shape, so the two can be compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import apsw

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.sql import SQL_HEAD_POSITION, scalar
from hermes_ledger.projections.definitions import by_name
from hermes_ledger.projections.errors import ProjectionError
from hermes_ledger.projections.quoting import LIVE, SCRATCH, Target, quote_ident
from hermes_ledger.projections.rebuilding import DEFAULT_CHUNK
from hermes_ledger.projections.replay import head, read_checkpoints, table_exists
from hermes_ledger.projections.scratch import build_scratch, snapshot
from hermes_ledger.projections.tables import MESSAGES, SESSION_HISTORY, SESSION_MAP, TableSpec

__all__ = ["State", "live_state", "state_at", "utc_text"]

SQL_LAST_POSITION_BY = (
    "SELECT coalesce((SELECT min(position) FROM main.events WHERE recorded_at > ?1) - 1,"
    f" ({SQL_HEAD_POSITION}))"
)
"""The end of the longest prefix of the log recorded at or before ?1."""

SQL_LAST_OCCURRED_BY = "SELECT coalesce(max(position), 0) FROM main.events WHERE occurred_at <= ?1"
"""The last position among the events that happened at or before ?1."""


Row = dict[str, Any]


@dataclass(frozen=True)
class State:
    """The projections as of ``position``: ``session_map`` by session key,
    ``session_history`` by session id, and ``transcripts`` (messages in order) by
    session id. Rows are plain dicts of the tables' columns."""

    position: int
    session_map: dict[str, Row]
    session_history: dict[str, Row]
    transcripts: dict[str, list[Row]]


def state_at(
    ledger: Ledger,
    *,
    position: int | None = None,
    time: datetime | str | None = None,
    recorded: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> State:
    """The session map, history and transcripts as they were after ``position``,
    or as of ``time`` (an aware datetime or UTC text as ``parse_time`` gives it).
    With neither, as of the current head. Works on read-only ledgers and never
    touches the live tables.

    ``time`` is business time: the replay, in log order, of every event whose
    ``occurred_at`` is at or before it (``State.position`` is the last of them).
    With ``recorded``, recorded time: the replay stops at the first event recorded
    after ``time``.
    """
    if position is not None and time is not None:
        raise ValueError("give position or time, not both")
    if position is not None and position < 0:
        raise ValueError("position must be >= 0")
    with snapshot(ledger) as conn:
        occurred_by = None
        if time is None:
            until = head(conn) if position is None else min(position, head(conn))
        elif recorded:
            until = int(scalar(conn, SQL_LAST_POSITION_BY, (utc_text(time),)))
        else:
            occurred_by = utc_text(time)
            until = int(scalar(conn, SQL_LAST_OCCURRED_BY, (occurred_by,)))
        build_scratch(conn, by_name(), until, chunk_size, occurred_by=occurred_by)
        return _read_state(conn, SCRATCH, until)


def live_state(ledger: Ledger) -> State:
    """The live projection tables, read in one snapshot, in ``State``'s shape."""
    with snapshot(ledger) as conn:
        if not all(table_exists(conn, t.name) for t in (SESSION_MAP, SESSION_HISTORY, MESSAGES)):
            raise ProjectionError(
                f"{ledger.path} has no live projections",
                hint="attach them first (projections.attach) or use projections.state_at",
            )
        checkpoints = read_checkpoints(conn)
        positions = {checkpoints.get(p.name, (0, 0))[1] for p in by_name()}
        return _read_state(conn, LIVE, min(positions))


def utc_text(moment: datetime | str) -> str:
    """``moment`` as UTC text in the format of the log's time columns."""
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        raise ValueError(f"time must be timezone-aware, not naive {moment!r}")
    return format_utc(moment)


def _rows(conn: apsw.Connection, target: Target, table: TableSpec) -> list[Row]:
    columns = table.columns
    listed = ", ".join(quote_ident(c) for c in columns)
    sql = f"SELECT {listed} FROM {target.table(table.name)} ORDER BY {quote_ident(table.key)}"
    return [dict(zip(columns, row, strict=True)) for row in conn.execute(sql)]


def _read_state(conn: apsw.Connection, target: Target, position: int) -> State:
    transcripts: dict[str, list[Row]] = {}
    for row in _rows(conn, target, MESSAGES):
        transcripts.setdefault(row["session_id"], []).append(row)
    return State(
        position=position,
        session_map={r["session_key"]: r for r in _rows(conn, target, SESSION_MAP)},
        session_history={r["session_id"]: r for r in _rows(conn, target, SESSION_HISTORY)},
        transcripts=transcripts,
    )
