"""Erasure in the PostgreSQL read models: the rows of erased events rewritten as a
rebuild would now write them, as ``projections.erasing`` does on SQLite.

``scrubber(projections)`` is what ``attach`` registers with
``PostgresLog.add_scrubber``. It runs inside the erasure's transaction, after the
payloads are deleted, for the positions in ``pg_temp.erasing``. Which rows and
columns it rewrites are ``projections.erasing``'s (``SCRUBBED_*``, the SQLite
scrubber's); each value is computed by the projector's own rules
(``projector.transcript_row``, ``start_values``) from the event as the log now
gives it (``event_bodies``: "[erased]" in every personal field), so the live
tables equal a rebuild's row for row. ``messages.search_vector`` is a generated
column: rewriting ``content`` rewrites it (and its GIN entries). A row already as
the log says is left alone, so a re-run changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

from hermes_ledger.ledger.records import Recorded
from hermes_ledger.ledger.transcript import transcript_names
from hermes_ledger.projections.definitions import SESSIONS, TRANSCRIPTS, Projection
from hermes_ledger.projections.erasing import (
    ERASED,
    SCRUBBED_FLUSH_STATUSES,
    SCRUBBED_FLUSHES,
    SCRUBBED_MAP_COLUMNS,
    SCRUBBED_MESSAGE_COLUMNS,
    SCRUBBED_START_COLUMNS,
)
from hermes_ledger.projections.postgres.projector import (
    current_body,
    event_time,
    start_values,
    transcript_row,
)
from hermes_ledger.projections.postgres.tables import LIVE
from hermes_ledger.projections.quoting import Target, quote_ident
from hermes_ledger.projections.tables import MESSAGES, SESSION_HISTORY, SESSION_MAP

__all__ = ["scrub_target", "scrubber"]

Connection = psycopg.Connection[Any]

_COLUMNS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"
SQL_ERASED_EVENTS = (
    f"SELECT {_COLUMNS} FROM event_bodies"
    " WHERE position IN (SELECT position FROM pg_temp.erasing) AND type = ANY(%s)"
    " ORDER BY position"
)
_SCRUBBED_TYPES = ["message_appended", "session_started", *SCRUBBED_FLUSHES]


def _set(columns: Sequence[str]) -> tuple[str, str]:
    """(``SET a = %s, …``, the "differs" test ``(a, …) IS DISTINCT FROM (%s, …)``)."""
    names = [quote_ident(c) for c in columns]
    marks = ", ".join(["%s"] * len(names))
    return (
        ", ".join(f"{n} = %s" for n in names),
        f"({', '.join(names)}) IS DISTINCT FROM ({marks})",
    )


_MESSAGE_SET, _MESSAGE_DIFFERS = _set(SCRUBBED_MESSAGE_COLUMNS)
SQL_MESSAGE = f"UPDATE {{messages}} SET {_MESSAGE_SET} WHERE position = %s AND {_MESSAGE_DIFFERS}"
_START_SET, _START_DIFFERS = _set(SCRUBBED_START_COLUMNS)
SQL_HISTORY_START = (
    f"UPDATE {{history}} SET {_START_SET} WHERE session_id = %s AND {_START_DIFFERS}"
)
_MAP_SET, _MAP_DIFFERS = _set(SCRUBBED_MAP_COLUMNS)
SQL_MAP_START = f"UPDATE {{map}} SET {_MAP_SET} WHERE session_id = %s AND {_MAP_DIFFERS}"
SQL_HISTORY_FLUSH = (
    "UPDATE {history} SET flush_detail = %s WHERE session_id = %s"
    " AND flush_status = ANY(%s) AND flush_detail IS NOT NULL AND flush_detail <> %s"
)
SQL_TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"

_MESSAGE_INDEX = [
    [n.strip() for n in transcript_names().split(",")].index(c) for c in SCRUBBED_MESSAGE_COLUMNS
]


def _exists(conn: Connection, table: str) -> bool:
    row = conn.execute(SQL_TABLE_EXISTS, (table,)).fetchone()
    return bool(row and row[0])


def scrub_target(
    conn: Connection,
    target: Target = LIVE,
    projections: Iterable[Projection] = (SESSIONS, TRANSCRIPTS),
) -> list[str]:
    """Rewrite ``target``'s rows of the events in ``pg_temp.erasing``; returns the
    tables it changed rows in (for the erase's VACUUM)."""
    names = {p.name for p in projections}
    tables = {
        "messages": target.table(MESSAGES.name),
        "history": target.table(SESSION_HISTORY.name),
        "map": target.table(SESSION_MAP.name),
    }
    present = {k: _exists(conn, t) for k, t in tables.items()}
    transcripts = TRANSCRIPTS.name in names and present["messages"]
    sessions = SESSIONS.name in names and present["history"] and present["map"]
    changed: set[str] = set()
    rows = conn.execute(SQL_ERASED_EVENTS, (_SCRUBBED_TYPES,)).fetchall()
    with conn.cursor() as cur:
        for row in rows:
            rec = Recorded(*row)
            data = current_body(rec)
            if rec.type == "message_appended" and transcripts:
                values = transcript_row(rec, data, event_time(rec, data))
                if values is not None:
                    new = [values[i] for i in _MESSAGE_INDEX]
                    cur.execute(SQL_MESSAGE.format(**tables), (*new, rec.position, *new))
                    if cur.rowcount:
                        changed.add(tables["messages"])
            elif rec.type == "session_started" and sessions and rec.session_id is not None:
                start = start_values(data, json.loads(data))
                new = [start[c] for c in SCRUBBED_START_COLUMNS]
                cur.execute(SQL_HISTORY_START.format(**tables), (*new, rec.session_id, *new))
                if cur.rowcount:
                    changed.add(tables["history"])
                new = [start[c] for c in SCRUBBED_MAP_COLUMNS]
                cur.execute(SQL_MAP_START.format(**tables), (*new, rec.session_id, *new))
                if cur.rowcount:
                    changed.add(tables["map"])
            elif rec.type in SCRUBBED_FLUSHES and sessions and rec.session_id is not None:
                cur.execute(
                    SQL_HISTORY_FLUSH.format(**tables),
                    (ERASED, rec.session_id, list(SCRUBBED_FLUSH_STATUSES), ERASED),
                )
                if cur.rowcount:
                    changed.add(tables["history"])
    return sorted(changed)


def scrubber(projections: Sequence[Projection]) -> Callable[[Connection], list[str]]:
    """The live projections' scrubber for the owned ``projections``."""
    owned = tuple(projections)

    def scrub(conn: Connection) -> list[str]:
        return scrub_target(conn, LIVE, owned)

    return scrub
