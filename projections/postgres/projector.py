"""Applying events to the PostgreSQL projection tables.

``apply(conn, target, projections, records)`` folds the ``Recorded`` into the
tables, rule for rule as SQLite's single-event twins (``projections.statements``)
do, as primary-key upserts: ``session_history`` per session, ``session_map`` per
key (its status, counts and tokens copied from the current session's history
row), ``messages`` per non-synthetic message.

The records go in batches (``BATCH``, an append's events are one) and each batch
writes each row once, with the state its records would leave one by one
(``_Batch``): a history rule's bindings folded per session (``_FOLDS``: counts and
tokens add up, first/last times are the least/greatest, a start, close or end is
the first, a flush the last), one ``session_map`` upsert per key with its least
and greatest time, the key's last start, then one UPDATE copying each touched
session's state. The statements go in one pipeline (one round trip), the messages
by COPY. tests/test_postgres_projections.py checks a 1,000-event batch against
the same events one by one and against SQLite.

What is computed from an event's JSON body where SQLite's rules compute it in SQL
(the transcript row, the business time, the cost in billionths, the expiry
deadline, the session's origin as JSON) is computed by the very same SQL fragments,
evaluated by an in-memory SQLite connection: the transcript rows come from
``ledger.transcript``'s value templates (one prepared statement), so both backends
give the same row, byte for byte, by construction. The rest are plain fields of
the body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from itertools import islice
from typing import Any

import apsw
import psycopg

from hermes_ledger.ledger.events import EVENT_TYPES, body_json
from hermes_ledger.ledger.records import Recorded
from hermes_ledger.ledger.transcript import SYNTHETIC, transcript_names, transcript_values
from hermes_ledger.projections.definitions import SESSIONS, TRANSCRIPTS, Projection, compact
from hermes_ledger.projections.quoting import Target
from hermes_ledger.projections.statements import EVENT_TIME, FRAGMENTS
from hermes_ledger.projections.tables import MESSAGES, SESSION_HISTORY, SESSION_MAP

__all__ = ["apply", "current_body", "event_time", "start_values", "transcript_row"]

Connection = psycopg.Connection[Any]

# -- what SQLite's rules compute from a body, evaluated by SQLite itself ---------

_BOUND: dict[str, Any] = {
    "position": "?1",
    "stream": "?2",
    "session_id": "?3",
    "body": "?4",
    "ts": "?5",
}
EVAL_TRANSCRIPT_ROW = compact(
    "SELECT " + transcript_values(**_BOUND) + " WHERE NOT " + SYNTHETIC.format(body="?4")
)
"""The transcript row of a message (none for a synthetic turn), bound ?1..?5: one
prepared statement, run per message (each body bound as it is; the templates over
a batch's JSON array, json_each, re-extracted the body from the array for every
field: about 2.5 times as long at 1,000 messages)."""
EVAL_TIME = EVENT_TIME
"""The business time, from ?1 data and ?2 recorded_at."""
EVAL_COST = "SELECT " + FRAGMENTS["bound_cost"].replace("?4", "?1")
"""A usage's cost in billionths of a US dollar, from ?1 data."""
EVAL_DEADLINE = "SELECT " + FRAGMENTS["bound_deadline"].replace("?4", "?1")
"""An expiry's deadline as UTC text, from ?1 data."""
EVAL_ORIGIN = "SELECT ?1 -> '$.source'"
"""A session start's source, as the JSON text SQLite's ``->`` gives."""

_NO_OCCURRED_AT = '{"occurred_at":null'


class _Evaluator(threading.local):
    """One in-memory SQLite connection per thread (apsw connections are not shared)."""

    def __init__(self) -> None:
        self.conn = apsw.Connection(":memory:")

    def one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        for row in self.conn.execute(sql, args):
            return tuple(row)
        return None

    def all(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.conn.execute(sql, args)]


_EVAL = _Evaluator()

# -- the PostgreSQL statements, one per rule ------------------------------------

_C = 'COLLATE "C"'  # times are fixed-width text: compared bytewise, as SQLite does

SQL_HISTORY_START = """INSERT INTO {session_history} AS h (session_id, session_key, platform,
    chat_type, user_id, user_name, start_reason, previous_session_id, started_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET
    platform = EXCLUDED.platform, chat_type = EXCLUDED.chat_type, user_id = EXCLUDED.user_id,
    user_name = EXCLUDED.user_name, start_reason = EXCLUDED.start_reason,
    previous_session_id = EXCLUDED.previous_session_id, started_at = EXCLUDED.started_at
WHERE h.started_at IS NULL"""

SQL_HISTORY_MESSAGE = f"""INSERT INTO {{session_history}} AS h (session_id, session_key,
    message_count, first_message_at, last_message_at)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET
    message_count = h.message_count + EXCLUDED.message_count,
    first_message_at = CASE WHEN EXCLUDED.first_message_at IS NOT NULL
        AND (h.first_message_at IS NULL OR EXCLUDED.first_message_at < h.first_message_at {_C})
        THEN EXCLUDED.first_message_at ELSE h.first_message_at END,
    last_message_at = CASE WHEN EXCLUDED.last_message_at IS NOT NULL
        AND (h.last_message_at IS NULL OR EXCLUDED.last_message_at > h.last_message_at {_C})
        THEN EXCLUDED.last_message_at ELSE h.last_message_at END"""

SQL_HISTORY_USAGE = """INSERT INTO {session_history} AS h (session_id, session_key,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nano_usd)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET
    input_tokens = h.input_tokens + EXCLUDED.input_tokens,
    output_tokens = h.output_tokens + EXCLUDED.output_tokens,
    cache_read_tokens = h.cache_read_tokens + EXCLUDED.cache_read_tokens,
    cache_write_tokens = h.cache_write_tokens + EXCLUDED.cache_write_tokens,
    cost_nano_usd = h.cost_nano_usd + EXCLUDED.cost_nano_usd"""

SQL_HISTORY_CLOSE_CAUSE = """INSERT INTO {session_history} AS h (session_id, session_key,
    close_cause, close_detail, close_actor, close_deadline, close_requested_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET
    close_cause = EXCLUDED.close_cause, close_detail = EXCLUDED.close_detail,
    close_actor = EXCLUDED.close_actor, close_deadline = EXCLUDED.close_deadline,
    close_requested_at = EXCLUDED.close_requested_at
WHERE h.close_requested_at IS NULL"""

SQL_HISTORY_FLUSH = """INSERT INTO {session_history} AS h (session_id, session_key,
    flush_status, flush_provider, flush_detail, flushed_at, flush_attempts)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET
    flush_status = EXCLUDED.flush_status, flush_provider = EXCLUDED.flush_provider,
    flush_detail = EXCLUDED.flush_detail, flushed_at = EXCLUDED.flushed_at,
    flush_attempts = h.flush_attempts + EXCLUDED.flush_attempts"""

SQL_HISTORY_END = """INSERT INTO {session_history} AS h (session_id, session_key, ended_at,
    end_reason)
VALUES (%s, %s, %s, %s)
ON CONFLICT (session_id) DO UPDATE SET ended_at = EXCLUDED.ended_at,
    end_reason = EXCLUDED.end_reason
WHERE h.ended_at IS NULL"""

SQL_MAP_ROW = f"""INSERT INTO {{session_map}} AS m (session_key, created_at, updated_at)
VALUES (%s, %s, %s)
ON CONFLICT (session_key) DO UPDATE SET
    created_at = LEAST(m.created_at {_C}, EXCLUDED.created_at),
    updated_at = GREATEST(m.updated_at {_C}, EXCLUDED.updated_at)"""

SQL_MAP_CURRENT_SESSION = """UPDATE {session_map} SET
    session_id = %s, start_reason = %s, session_started_at = %s, platform = %s,
    chat_type = %s, chat_id = %s, chat_name = %s, user_id = %s, user_name = %s,
    thread_id = %s, origin = %s, display_name = %s
WHERE session_key = %s"""

# The single-session form; bench/postgres.py's raw reference sends it per event.
SQL_MAP_SESSION_STATE = (
    "UPDATE {session_map} SET ({map_state_columns}) = ("
    " SELECT {map_state_values} FROM {session_history} AS h WHERE h.session_id = %s)"
    " WHERE session_id = %s"
)

SQL_MAP_SESSIONS_STATE = (
    "UPDATE {session_map} AS m SET ({map_state_columns}) = ("
    " SELECT {map_state_values} FROM {session_history} AS h WHERE h.session_id = m.session_id)"
    " WHERE m.session_id = ANY(%s)"
)
"""Every key whose current session is one of %s takes that session's state: what
``SQL_MAP_SESSION_STATE`` after each of their records leaves, once per batch."""

SQL_MESSAGE_INSERT = (
    "INSERT INTO {messages} (" + transcript_names() + ") VALUES ("
    + ", ".join(["%s"] * len(MESSAGES.columns)) + ")"
)  # fmt: skip

SQL_COPY_MESSAGES = "COPY {messages} (" + transcript_names() + ") FROM STDIN"
"""A batch's messages rows, streamed (one statement, however many rows)."""

_HISTORY_RULES = {
    "session_started": SQL_HISTORY_START,
    "message_appended": SQL_HISTORY_MESSAGE,
    "usage_recorded": SQL_HISTORY_USAGE,
    "session_reset": SQL_HISTORY_CLOSE_CAUSE,
    "session_expired": SQL_HISTORY_CLOSE_CAUSE,
    "memory_flushed": SQL_HISTORY_FLUSH,
    "memory_flush_failed": SQL_HISTORY_FLUSH,
    "memory_flush_skipped": SQL_HISTORY_FLUSH,
    "session_ended": SQL_HISTORY_END,
}
_NOT_A_SESSIONS = frozenset({"subject_erased"})  # no session_map row (as MAP_ROWS)


@cache
def _sql(template: str, target: Target) -> str:
    names = {t.name: target.table(t.name) for t in (SESSION_MAP, SESSION_HISTORY, MESSAGES)}
    return compact(template.format(**names, **FRAGMENTS))


_CURRENT_META = {
    t: (f'{{"schema_version":{m.schema_version},', f'{{"schema_version":{m.schema_version}}}')
    for t, m in EVENT_TYPES.items()
}


def current_body(rec: Recorded) -> str:
    """The record's data JSON in the current shape (upcast when stored older)."""
    prefixes = _CURRENT_META.get(rec.type)
    if prefixes is not None and rec.meta_json.startswith(prefixes):
        return rec.data_json
    return body_json(rec.event)


def _business_time(data: str, recorded_at: str) -> str:
    if data.startswith(_NO_OCCURRED_AT):
        return recorded_at
    row = _EVAL.one(EVAL_TIME, (data, recorded_at))
    assert row is not None
    return str(row[0])


def _source_fields(body: dict[str, Any]) -> dict[str, Any]:
    source = body.get("source") or {}
    return {k: source.get(k) for k in ("platform", "chat_type", "chat_id", "chat_name",
                                       "user_id", "user_name", "thread_id")}  # fmt: skip


def start_values(data: str, body: dict[str, Any]) -> dict[str, Any]:
    """What a ``session_started`` writes into its key's ``session_map`` row: the
    source's fields, ``origin`` (its JSON) and ``display_name``."""
    s = _source_fields(body)
    (origin,) = _EVAL.one(EVAL_ORIGIN, (data,)) or (None,)
    display = next((s[k] for k in ("chat_name", "user_name", "user_id", "chat_id")
                    if s[k] is not None), None)  # fmt: skip
    return {**s, "origin": origin, "display_name": display}


def transcript_row(rec: Recorded, data: str, ts: str) -> tuple[Any, ...] | None:
    """The ``messages`` row of a message (``transcript_names()`` order), None for a
    synthetic turn."""
    return _EVAL.one(EVAL_TRANSCRIPT_ROW, (rec.position, rec.stream, rec.session_id, data, ts))


def event_time(rec: Recorded, data: str) -> str:
    """The business time the rules use for ``rec`` (``data``: its current body)."""
    return _business_time(data, rec.recorded_at_text)


def _history_args(rec: Recorded, data: str, body: dict[str, Any], ts: str) -> tuple[Any, ...]:
    """The bindings of the history rule for ``rec``'s type (``_HISTORY_RULES``)."""
    sid, key, kind = rec.session_id, rec.stream, rec.type
    if kind == "session_started":
        s = _source_fields(body)
        return (sid, key, s["platform"], s["chat_type"], s["user_id"], s["user_name"],
                body.get("reason"), body.get("previous_session_id"), ts)  # fmt: skip
    if kind == "message_appended":
        synthetic = bool(body.get("synthetic"))
        at = None if synthetic else ts
        return (sid, key, 0 if synthetic else 1, at, at)
    if kind == "usage_recorded":
        (cost,) = _EVAL.one(EVAL_COST, (data,)) or (0,)
        return (sid, key, body.get("input_tokens") or 0, body.get("output_tokens") or 0,
                body.get("cache_read_tokens") or 0, body.get("cache_write_tokens") or 0,
                cost)  # fmt: skip
    if kind in ("session_reset", "session_expired"):
        reset = kind == "session_reset"
        (deadline,) = _EVAL.one(EVAL_DEADLINE, (data,)) or (None,)
        return (sid, key, "reset" if reset else "expired",
                body.get("trigger") if reset else body.get("reason"),
                rec.meta.get("actor"), deadline, ts)  # fmt: skip
    if kind in ("memory_flushed", "memory_flush_failed", "memory_flush_skipped"):
        status, field = {"memory_flushed": ("ok", "detail"),
                         "memory_flush_failed": ("failed", "error"),
                         "memory_flush_skipped": ("skipped", "reason")}[kind]  # fmt: skip
        return (sid, key, status, body.get("provider"), body.get(field), ts,
                0 if kind == "memory_flush_skipped" else 1)  # fmt: skip
    assert kind == "session_ended"
    return (sid, key, ts, body.get("reason"))


def _wants(projections: Iterable[Projection]) -> tuple[bool, bool]:
    names = {p.name for p in projections}
    return SESSIONS.name in names, TRANSCRIPTS.name in names


# -- folding a batch: each row written once, with its final state -------------------


def _fold_message(old: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
    """Counts add up; the first and last message times are the least and greatest
    non-null ones (the CASEs of ``SQL_HISTORY_MESSAGE``; fixed-width text, so
    Python's ordering is the bytewise one of ``COLLATE "C"``)."""
    first = min((t for t in (old[3], new[3]) if t is not None), default=None)
    last = max((t for t in (old[4], new[4]) if t is not None), default=None)
    return (old[0], old[1], old[2] + new[2], first, last)


def _fold_usage(old: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
    """Tokens and cost add up."""
    return (old[0], old[1], *(a + b for a, b in zip(old[2:], new[2:], strict=True)))


def _fold_flush(old: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
    """The last flush's status, provider, detail and time; the attempts add up."""
    return (old[0], old[1], *new[2:6], old[6] + new[6])


def _first_wins(old: tuple[Any, ...], new: tuple[Any, ...]) -> tuple[Any, ...]:
    """A start, a close cause and an end are written once (``WHERE h.… IS NULL``):
    the business time they set is never null, so later ones change nothing."""
    return old


_FOLDS = {
    SQL_HISTORY_START: _first_wins,
    SQL_HISTORY_MESSAGE: _fold_message,
    SQL_HISTORY_USAGE: _fold_usage,
    SQL_HISTORY_CLOSE_CAUSE: _first_wins,
    SQL_HISTORY_FLUSH: _fold_flush,
    SQL_HISTORY_END: _first_wins,
}
"""How two bindings of one history rule for one session combine into the one
binding whose single upsert leaves the row as the two upserts in turn would."""

BATCH = 1000
"""Records folded and written together (a rebuild's log goes by in batches)."""


class _Batch:
    """What a run of records writes, folded per row.

    ``history``: (rule, session id) -> bindings, in the order of each group's first
    record (the row's ``session_key`` is its first record's, as one by one);
    ``map_rows``: key -> (key, least time, greatest time); ``current``: key -> the
    bindings of its last ``session_started``; ``sessions``: the session ids whose
    ``session_map`` rows take their history row's state; ``messages``: transcript
    inputs (position, stream, session id, body, time)."""

    def __init__(self) -> None:
        self.history: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.map_rows: dict[str, tuple[str, str, str]] = {}
        self.current: dict[str, tuple[Any, ...]] = {}
        self.sessions: dict[str, None] = {}
        self.messages: list[tuple[Any, ...]] = []

    def add(self, rec: Recorded, sessions: bool, transcripts: bool) -> None:
        data = current_body(rec)
        ts = _business_time(data, rec.recorded_at_text)
        if transcripts and rec.type == "message_appended":
            self.messages.append((rec.position, rec.stream, rec.session_id, data, ts))
        if sessions:
            self._add_sessions(rec, data, ts)

    def _add_sessions(self, rec: Recorded, data: str, ts: str) -> None:
        sid, key = rec.session_id, rec.stream
        rule = _HISTORY_RULES.get(rec.type)
        body: dict[str, Any] | None = None
        if rule is not None and sid is not None:
            body = json.loads(data)
            args = _history_args(rec, data, body, ts)
            old = self.history.get((rule, sid))
            self.history[(rule, sid)] = args if old is None else _FOLDS[rule](old, args)
        if rec.type not in _NOT_A_SESSIONS:
            row = self.map_rows.get(key)
            self.map_rows[key] = (key, ts, ts) if row is None else (
                key, min(row[1], ts), max(row[2], ts))  # fmt: skip
        if rec.type == "session_started" and body is not None:
            s = start_values(data, body)
            self.current[key] = (
                sid, body.get("reason"), ts, s["platform"], s["chat_type"], s["chat_id"],
                s["chat_name"], s["user_id"], s["user_name"], s["thread_id"], s["origin"],
                s["display_name"], key,
            )  # fmt: skip
        if sid is not None:
            self.sessions[sid] = None

    def transcript_rows(self) -> list[tuple[Any, ...]]:
        """The ``messages`` rows of the batch's messages, synthetic turns left out
        (``EVAL_TRANSCRIPT_ROW`` per message)."""
        rows = (_EVAL.one(EVAL_TRANSCRIPT_ROW, message) for message in self.messages)
        return [row for row in rows if row is not None]


def _batches(records: Iterable[Recorded]) -> Iterator[list[Recorded]]:
    if isinstance(records, Sequence) and len(records) <= BATCH:
        yield list(records)
        return
    it = iter(records)
    while chunk := list(islice(it, BATCH)):
        yield chunk


def apply(
    conn: Connection,
    target: Target,
    projections: Sequence[Projection],
    records: Iterable[Recorded],
) -> int:
    """Fold ``records`` (in log order) into the tables of ``projections`` at
    ``target``; returns the last position applied (0 if none).

    The rows are the ones the rules give applied one record at a time; each batch
    of records writes each row once, with its final state (``_Batch``), its
    statements sent in one pipeline (one round trip)."""
    sessions, transcripts = _wants(projections)
    last = 0
    for chunk in _batches(records):
        if not chunk:
            break
        batch = _Batch()
        for rec in chunk:
            batch.add(rec, sessions, transcripts)
        _write(conn, target, batch)
        last = chunk[-1].position
    return last


def _pipeline(conn: Connection) -> AbstractContextManager[Any]:
    """The connection's pipeline (a libpq before 14 has none: one trip per statement)."""
    return conn.pipeline() if psycopg.Pipeline.is_supported() else nullcontext()


def _write(conn: Connection, target: Target, batch: _Batch) -> None:
    """The batch's statements, in dependency order: history rows, then the keys'
    rows and current sessions, then the sessions' state copied from history."""
    messages = batch.transcript_rows()
    with _pipeline(conn), conn.cursor() as cur:
        for (rule, _sid), args in batch.history.items():
            cur.execute(_sql(rule, target), args)
        if batch.map_rows:
            cur.executemany(_sql(SQL_MAP_ROW, target), list(batch.map_rows.values()))
        for args in batch.current.values():
            cur.execute(_sql(SQL_MAP_CURRENT_SESSION, target), args)
        if batch.sessions:
            cur.execute(_sql(SQL_MAP_SESSIONS_STATE, target), (list(batch.sessions),))
        if len(messages) == 1:
            cur.execute(_sql(SQL_MESSAGE_INSERT, target), messages[0])
    if len(messages) > 1:  # COPY is not allowed in a pipeline
        with conn.cursor() as cur, cur.copy(_sql(SQL_COPY_MESSAGES, target)) as copy:
            for row in messages:
                copy.write_row(row)
