"""What each projection does with a range of the log, as set-based SQL.

Every rule is a ``Statement`` with two forms.

``sql`` folds the events with ``position BETWEEN ?1 AND ?2`` into a projection's
tables, set-based. It serves the catch-up of a lagging projection, a rebuild
(chunks of many thousand events) and the scratch replays of verify/state_at.
That is only correct if applying (a, b] then (b, c] gives the same rows as
applying (a, c]; every column is therefore a count, a sum, a minimum/maximum,
the value of the first event (guarded by a column that is NULL until that event
is seen) or of the last event (the range's last overrides).

``one`` is the same rule for one freshly appended event, with its fields bound
as parameters instead of re-read from the log (no grouping, primary-key
upserts): the inline projector's hot path. Its parameters: ?1 position,
?2 stream, ?3 session_id, ?4 data (JSON text, current shape), ?5 business time,
?6 meta (JSON text), ?7 type. ``types`` says which event types a rule reacts to.

Rules run in the order listed. The property tests check that the two forms
agree: live tables (one append at a time, through the twins) == rebuilt tables
(big chunks, through the range forms), row for row.

The range forms read the range decoded into ``temp.projection_range`` (alias
``r``: type, position, stream, session_id, business time ``ts``), joined to the
events rows (alias ``e``) where they need JSON fields. Placeholders: each
table's name, ``{ts}``, ``{body}`` and the ``FRAGMENTS`` (filled in by
``projections.definitions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hermes_ledger.ledger.events import EVENT_TYPES
from hermes_ledger.ledger.personal import PERSONAL_TYPES, merged_sql
from hermes_ledger.ledger.sql import business_time, utc_text
from hermes_ledger.ledger.transcript import (
    SYNTHETIC,
    TRANSCRIPT_KEY,
    TRANSCRIPT_SEARCHED,
    transcript_names,
    transcript_values,
)

__all__ = [
    "BODY",
    "CLEAR_RANGE",
    "DECODE_RANGE",
    "EVENTS",
    "EVENT_TIME",
    "FRAGMENTS",
    "RANGE_TABLE_DDL",
    "SESSIONS_STATEMENTS",
    "TRANSCRIPTS_STATEMENTS",
    "TS",
    "Statement",
    "body_for",
    "merged_body",
    "utc_text",
]


@dataclass(frozen=True)
class Statement:
    """One named rule: ``sql`` folds a range of the log, ``one`` folds a single
    bound event; ``types`` None means every event type matters. ``one`` is None
    when the other twins already do what the rule does."""

    name: str
    sql: str
    one: str | None
    types: frozenset[str] | None = None


def _types(*names: str) -> frozenset[str]:
    unknown = set(names) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"unknown event types {sorted(unknown)}")
    return frozenset(names)


TS = business_time("e.data", "e.recorded_at")
"""An event's business time: ``occurred_at`` if set, else ``recorded_at``, as UTC text."""

EVENT_TIME = "SELECT " + business_time("?1", "?2")
"""The business time of one event, from its data (?1) and recorded_at (?2)."""


def _current_meta(version: int) -> str:
    """SQL: true when ``e.meta`` starts as the ledger writes it for ``version``."""
    return (
        f"substr(e.meta, 1, {len(str(version)) + 19}) IN"
        f" ('{{\"schema_version\":{version},', '{{\"schema_version\":{version}}}')"
    )


def body_for(types: frozenset[str] | None) -> str:
    """SQL: the body of an event of one of ``types`` in its current shape.

    Only a type whose current schema version is above 1 can have older stored
    shapes; its rows go through the upcasters (the ``hermes_event_body`` SQL
    function) unless ``meta`` shows the current version. A body stored by newer
    code is read as it is, field by field, as far as this code knows the fields.
    """
    versions = {EVENT_TYPES[t].schema_version for t in (types or EVENT_TYPES)}
    if versions == {1}:
        return "e.data"
    upcast = "hermes_event_body(e.type, e.event_id, e.data, e.meta)"
    if len(versions) == 1:
        return f"(CASE WHEN {_current_meta(versions.pop())} THEN e.data ELSE {upcast} END)"
    cases = " ".join(
        f"WHEN '{t}' THEN {_current_meta(EVENT_TYPES[t].schema_version)}"
        for t in sorted(types or EVENT_TYPES)
    )
    return f"(CASE WHEN CASE e.type {cases} ELSE true END THEN e.data ELSE {upcast} END)"


BODY = body_for(None)
"""The body of any event in its current shape (see ``body_for``)."""

EVENTS = '"main"."events"'
"""The log, always read from the ledger's main schema."""

PAYLOADS = '"main"."payloads"'
"""The events' personal fields (``ledger.personal``), beside the log."""


def merged_body(types: frozenset[str] | None) -> str:
    """SQL: ``body_for(types)`` with the payload merged in (``p``, joined by
    ``decoded_events``) when ``types`` has personal fields other than a message's
    (a message's are read field by field, see ``_READ``): session starts and
    flushes are few, so merging their whole body costs nothing."""
    body = body_for(types)
    if types is not None and types & (PERSONAL_TYPES - {"message_appended"}):
        return merged_sql(body, "p.body")
    return body


RANGE_TABLE_DDL = """CREATE TEMP TABLE IF NOT EXISTS projection_range (
    type       TEXT NOT NULL,
    position   INTEGER NOT NULL,
    stream     TEXT NOT NULL,
    session_id TEXT,
    ts         TEXT NOT NULL,
    PRIMARY KEY (type, position)
) WITHOUT ROWID"""
"""The range being replayed, decoded once: every rule seeks to its event types here
(and reads JSON fields from the events row only for those), instead of each rule
scanning the whole range of the log and recomputing business times."""

DECODE_RANGE = (
    "INSERT INTO temp.projection_range (type, position, stream, session_id, ts)"
    f" SELECT e.type, e.position, e.stream, e.session_id, {TS}"
    f" FROM {EVENTS} AS e WHERE e.position BETWEEN ?1 AND ?2"
)
CLEAR_RANGE = "DELETE FROM temp.projection_range"

_COST = "CAST(round(coalesce({data} ->> '$.cost_usd', 0) * 1e9) AS INTEGER)"

FRAGMENTS: dict[str, str] = {
    "range": "r.position BETWEEN ?1 AND ?2",
    "decoded": "temp.projection_range AS r",
    # The payload of each event (its personal fields, NULL once erased): statements
    # read those fields with ``personal_sql`` or the merged ``{body}``; SQLite drops
    # the join from a statement that reads nothing of it.
    "decoded_events": f"temp.projection_range AS r JOIN {EVENTS} AS e ON e.position = r.position"
    f" LEFT JOIN {PAYLOADS} AS p ON p.position = r.position",
    "body_synthetic": SYNTHETIC.format(body=body_for(frozenset({"message_appended"}))),
    "bound_synthetic": SYNTHETIC.format(body="?4"),
    "body_cost": _COST.format(data=body_for(frozenset({"usage_recorded"}))),
    "bound_cost": _COST.format(data="?4"),
    "body_deadline": utc_text(f"({body_for(frozenset({'session_expired'}))} ->> '$.deadline')"),
    "bound_deadline": utc_text("(?4 ->> '$.deadline')"),
    "map_state_columns": "status, message_count, input_tokens, output_tokens,"
    " cache_read_tokens, cache_write_tokens, cost_nano_usd",
    "map_state_values": "CASE WHEN h.ended_at IS NOT NULL THEN 'closed'"
    " WHEN h.close_requested_at IS NOT NULL THEN 'closing' ELSE 'open' END,"
    " h.message_count, h.input_tokens, h.output_tokens, h.cache_read_tokens,"
    " h.cache_write_tokens, h.cost_nano_usd",
}
"""Shared pieces of the templates, by placeholder name."""

# -- sessions: session_history (per session_id) and session_map (per key) -------
#
# A history row is created by the first event of its session (with that event's
# stream as the key); in the twins every rule is an upsert that does the same.

HISTORY_ROWS = Statement(
    "history_rows",
    sql="""INSERT INTO {session_history} (session_id, session_key)
SELECT session_id, stream FROM (
    SELECT r.session_id, r.stream, min(r.position)
    FROM {decoded}
    WHERE {range} AND r.session_id IS NOT NULL
    GROUP BY r.session_id
) WHERE true
ON CONFLICT (session_id) DO NOTHING""",
    one=None,  # every twin below creates the row itself
)

HISTORY_STARTS = Statement(
    "history_starts",
    sql="""UPDATE {session_history} AS h SET
    platform = s.platform, chat_type = s.chat_type, user_id = s.user_id,
    user_name = s.user_name, start_reason = s.reason,
    previous_session_id = s.previous_session_id, started_at = s.ts
FROM (
    SELECT e.session_id, min(e.position),
        {body} ->> '$.source.platform' AS platform,
        {body} ->> '$.source.chat_type' AS chat_type,
        {body} ->> '$.source.user_id' AS user_id,
        {body} ->> '$.source.user_name' AS user_name,
        {body} ->> '$.reason' AS reason,
        {body} ->> '$.previous_session_id' AS previous_session_id,
        {ts} AS ts
    FROM {decoded_events}
    WHERE r.type = 'session_started' AND {range}
    GROUP BY e.session_id
) AS s
WHERE h.session_id = s.session_id AND h.started_at IS NULL""",
    one="""INSERT INTO {session_history} (session_id, session_key, platform, chat_type, user_id,
    user_name, start_reason, previous_session_id, started_at)
VALUES (?3, ?2, ?4 ->> '$.source.platform', ?4 ->> '$.source.chat_type',
    ?4 ->> '$.source.user_id', ?4 ->> '$.source.user_name', ?4 ->> '$.reason',
    ?4 ->> '$.previous_session_id', ?5)
ON CONFLICT (session_id) DO UPDATE SET
    platform = excluded.platform, chat_type = excluded.chat_type, user_id = excluded.user_id,
    user_name = excluded.user_name, start_reason = excluded.start_reason,
    previous_session_id = excluded.previous_session_id, started_at = excluded.started_at
WHERE started_at IS NULL""",
    types=_types("session_started"),
)

HISTORY_MESSAGES = Statement(
    "history_messages",
    sql="""UPDATE {session_history} AS h SET
    message_count = h.message_count + m.n,
    first_message_at = CASE WHEN h.first_message_at IS NULL OR m.first_at < h.first_message_at
        THEN m.first_at ELSE h.first_message_at END,
    last_message_at = CASE WHEN h.last_message_at IS NULL OR m.last_at > h.last_message_at
        THEN m.last_at ELSE h.last_message_at END
FROM (
    SELECT e.session_id, count(*) AS n, min({ts}) AS first_at, max({ts}) AS last_at
    FROM {decoded_events}
    WHERE r.type = 'message_appended' AND {range}
        AND NOT {body_synthetic}
    GROUP BY e.session_id
) AS m
WHERE h.session_id = m.session_id""",
    one="""INSERT INTO {session_history} (session_id, session_key, message_count,
    first_message_at, last_message_at)
SELECT ?3, ?2, 1 - synthetic, iif(synthetic, NULL, ?5), iif(synthetic, NULL, ?5)
FROM (SELECT {bound_synthetic} AS synthetic)
WHERE true
ON CONFLICT (session_id) DO UPDATE SET
    message_count = message_count + excluded.message_count,
    first_message_at = CASE WHEN excluded.first_message_at IS NOT NULL
        AND (first_message_at IS NULL OR excluded.first_message_at < first_message_at)
        THEN excluded.first_message_at ELSE first_message_at END,
    last_message_at = CASE WHEN excluded.last_message_at IS NOT NULL
        AND (last_message_at IS NULL OR excluded.last_message_at > last_message_at)
        THEN excluded.last_message_at ELSE last_message_at END""",
    types=_types("message_appended"),
)

HISTORY_USAGE = Statement(
    "history_usage",
    sql="""UPDATE {session_history} AS h SET
    input_tokens = h.input_tokens + u.input_tokens,
    output_tokens = h.output_tokens + u.output_tokens,
    cache_read_tokens = h.cache_read_tokens + u.cache_read_tokens,
    cache_write_tokens = h.cache_write_tokens + u.cache_write_tokens,
    cost_nano_usd = h.cost_nano_usd + u.cost_nano_usd
FROM (
    SELECT e.session_id,
        sum(coalesce({body} ->> '$.input_tokens', 0)) AS input_tokens,
        sum(coalesce({body} ->> '$.output_tokens', 0)) AS output_tokens,
        sum(coalesce({body} ->> '$.cache_read_tokens', 0)) AS cache_read_tokens,
        sum(coalesce({body} ->> '$.cache_write_tokens', 0)) AS cache_write_tokens,
        sum({body_cost}) AS cost_nano_usd
    FROM {decoded_events}
    WHERE r.type = 'usage_recorded' AND {range}
    GROUP BY e.session_id
) AS u
WHERE h.session_id = u.session_id""",
    one="""INSERT INTO {session_history} (session_id, session_key, input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, cost_nano_usd)
VALUES (?3, ?2, coalesce(?4 ->> '$.input_tokens', 0), coalesce(?4 ->> '$.output_tokens', 0),
    coalesce(?4 ->> '$.cache_read_tokens', 0), coalesce(?4 ->> '$.cache_write_tokens', 0),
    {bound_cost})
ON CONFLICT (session_id) DO UPDATE SET
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
    cost_nano_usd = cost_nano_usd + excluded.cost_nano_usd""",
    types=_types("usage_recorded"),
)

HISTORY_CLOSE_CAUSES = Statement(
    "history_close_causes",
    sql="""UPDATE {session_history} AS h SET
    close_cause = c.cause, close_detail = c.detail, close_actor = c.actor,
    close_deadline = c.deadline, close_requested_at = c.ts
FROM (
    SELECT e.session_id, min(e.position),
        CASE e.type WHEN 'session_reset' THEN 'reset' ELSE 'expired' END AS cause,
        CASE e.type WHEN 'session_reset' THEN {body} ->> '$.trigger'
            ELSE {body} ->> '$.reason' END AS detail,
        e.meta ->> '$.actor' AS actor,
        {body_deadline} AS deadline,
        {ts} AS ts
    FROM {decoded_events}
    WHERE r.type IN ('session_reset', 'session_expired') AND {range}
    GROUP BY e.session_id
) AS c
WHERE h.session_id = c.session_id AND h.close_requested_at IS NULL""",
    one="""INSERT INTO {session_history} (session_id, session_key, close_cause, close_detail,
    close_actor, close_deadline, close_requested_at)
VALUES (?3, ?2, CASE ?7 WHEN 'session_reset' THEN 'reset' ELSE 'expired' END,
    CASE ?7 WHEN 'session_reset' THEN ?4 ->> '$.trigger' ELSE ?4 ->> '$.reason' END,
    ?6 ->> '$.actor', {bound_deadline}, ?5)
ON CONFLICT (session_id) DO UPDATE SET
    close_cause = excluded.close_cause, close_detail = excluded.close_detail,
    close_actor = excluded.close_actor, close_deadline = excluded.close_deadline,
    close_requested_at = excluded.close_requested_at
WHERE close_requested_at IS NULL""",
    types=_types("session_reset", "session_expired"),
)

HISTORY_FLUSHES = Statement(
    "history_flushes",
    sql="""UPDATE {session_history} AS h SET
    flush_status = f.status, flush_provider = f.provider, flush_detail = f.detail,
    flushed_at = f.ts, flush_attempts = h.flush_attempts + f.attempts
FROM (
    SELECT e.session_id, max(e.position),
        CASE e.type WHEN 'memory_flushed' THEN 'ok' WHEN 'memory_flush_failed' THEN 'failed'
            ELSE 'skipped' END AS status,
        {body} ->> '$.provider' AS provider,
        CASE e.type WHEN 'memory_flushed' THEN {body} ->> '$.detail'
            WHEN 'memory_flush_failed' THEN {body} ->> '$.error'
            ELSE {body} ->> '$.reason' END AS detail,
        {ts} AS ts,
        sum(e.type <> 'memory_flush_skipped') AS attempts
    FROM {decoded_events}
    WHERE r.type IN ('memory_flushed', 'memory_flush_failed', 'memory_flush_skipped') AND {range}
    GROUP BY e.session_id
) AS f
WHERE h.session_id = f.session_id""",
    one="""INSERT INTO {session_history} (session_id, session_key, flush_status, flush_provider,
    flush_detail, flushed_at, flush_attempts)
VALUES (?3, ?2,
    CASE ?7 WHEN 'memory_flushed' THEN 'ok' WHEN 'memory_flush_failed' THEN 'failed'
        ELSE 'skipped' END,
    ?4 ->> '$.provider',
    CASE ?7 WHEN 'memory_flushed' THEN ?4 ->> '$.detail'
        WHEN 'memory_flush_failed' THEN ?4 ->> '$.error' ELSE ?4 ->> '$.reason' END,
    ?5, ?7 <> 'memory_flush_skipped')
ON CONFLICT (session_id) DO UPDATE SET
    flush_status = excluded.flush_status, flush_provider = excluded.flush_provider,
    flush_detail = excluded.flush_detail, flushed_at = excluded.flushed_at,
    flush_attempts = flush_attempts + excluded.flush_attempts""",
    types=_types("memory_flushed", "memory_flush_failed", "memory_flush_skipped"),
)

HISTORY_ENDS = Statement(
    "history_ends",
    sql="""UPDATE {session_history} AS h SET ended_at = x.ts, end_reason = x.reason
FROM (
    SELECT e.session_id, min(e.position), {body} ->> '$.reason' AS reason, {ts} AS ts
    FROM {decoded_events}
    WHERE r.type = 'session_ended' AND {range}
    GROUP BY e.session_id
) AS x
WHERE h.session_id = x.session_id AND h.ended_at IS NULL""",
    one="""INSERT INTO {session_history} (session_id, session_key, ended_at, end_reason)
VALUES (?3, ?2, ?5, ?4 ->> '$.reason')
ON CONFLICT (session_id) DO UPDATE SET ended_at = excluded.ended_at,
    end_reason = excluded.end_reason
WHERE ended_at IS NULL""",
    types=_types("session_ended"),
)

MAP_ROWS = Statement(
    "map_rows",
    sql="""INSERT INTO {session_map} (session_key, created_at, updated_at)
SELECT r.stream, min(r.ts), max(r.ts)
FROM {decoded}
WHERE {range} AND r.type <> 'subject_erased'
GROUP BY r.stream
ON CONFLICT (session_key) DO UPDATE SET
    created_at = min(created_at, excluded.created_at),
    updated_at = max(updated_at, excluded.updated_at)""",
    one="""INSERT INTO {session_map} (session_key, created_at, updated_at) VALUES (?2, ?5, ?5)
ON CONFLICT (session_key) DO UPDATE SET
    created_at = min(created_at, excluded.created_at),
    updated_at = max(updated_at, excluded.updated_at)""",
    types=_types(*(t for t in EVENT_TYPES if t != "subject_erased")),  # not a session's
)

MAP_CURRENT_SESSION = Statement(
    "map_current_session",
    sql="""UPDATE {session_map} AS m SET
    session_id = s.session_id, start_reason = s.reason, session_started_at = s.ts,
    platform = s.platform, chat_type = s.chat_type, chat_id = s.chat_id,
    chat_name = s.chat_name, user_id = s.user_id, user_name = s.user_name,
    thread_id = s.thread_id, origin = s.origin,
    display_name = coalesce(s.chat_name, s.user_name, s.user_id, s.chat_id)
FROM (
    SELECT e.stream, max(e.position), e.session_id,
        {body} ->> '$.reason' AS reason,
        {body} -> '$.source' AS origin,
        {body} ->> '$.source.platform' AS platform,
        {body} ->> '$.source.chat_type' AS chat_type,
        {body} ->> '$.source.chat_id' AS chat_id,
        {body} ->> '$.source.chat_name' AS chat_name,
        {body} ->> '$.source.user_id' AS user_id,
        {body} ->> '$.source.user_name' AS user_name,
        {body} ->> '$.source.thread_id' AS thread_id,
        {ts} AS ts
    FROM {decoded_events}
    WHERE r.type = 'session_started' AND {range}
    GROUP BY e.stream
) AS s
WHERE m.session_key = s.stream""",
    one="""UPDATE {session_map} SET
    session_id = ?3, start_reason = ?4 ->> '$.reason', session_started_at = ?5,
    platform = ?4 ->> '$.source.platform', chat_type = ?4 ->> '$.source.chat_type',
    chat_id = ?4 ->> '$.source.chat_id', chat_name = ?4 ->> '$.source.chat_name',
    user_id = ?4 ->> '$.source.user_id', user_name = ?4 ->> '$.source.user_name',
    thread_id = ?4 ->> '$.source.thread_id', origin = ?4 -> '$.source',
    display_name = coalesce(?4 ->> '$.source.chat_name', ?4 ->> '$.source.user_name',
        ?4 ->> '$.source.user_id', ?4 ->> '$.source.chat_id')
WHERE session_key = ?2""",
    types=_types("session_started"),
)

# A key's status, counts and tokens are those of its current session, copied from
# session_history. They can only change for rows whose current session had events
# in the range: history rows change only through their own session's events, and a
# key's current session changes only through a session_started, which carries the
# new session's id.
MAP_SESSION_STATE = Statement(
    "map_session_state",
    sql="""UPDATE {session_map} AS m SET
    ({map_state_columns}) = ({map_state_values})
FROM (
    SELECT DISTINCT r.session_id FROM {decoded}
    WHERE {range} AND r.session_id IS NOT NULL
) AS touched, {session_history} AS h
WHERE m.session_id = touched.session_id AND h.session_id = m.session_id""",
    one="""UPDATE {session_map} SET ({map_state_columns}) = (
    SELECT {map_state_values}
    FROM {session_history} AS h WHERE h.session_id = ?3)
WHERE session_id = ?3""",
)

SESSIONS_STATEMENTS = (
    HISTORY_ROWS,
    HISTORY_STARTS,
    HISTORY_MESSAGES,
    HISTORY_USAGE,
    HISTORY_CLOSE_CAUSES,
    HISTORY_FLUSHES,
    HISTORY_ENDS,
    MAP_ROWS,
    MAP_CURRENT_SESSION,
    MAP_SESSION_STATE,
)

# -- transcripts: messages and their full-text index ----------------------------

# Both forms insert the row ``ledger.transcript`` declares, from the same value
# templates: the range form with the event read from the log (the range's business
# time is ``{ts}``), the single-event form with the event bound as parameters.
_READ: dict[str, Any] = {
    "position": "e.position", "stream": "e.stream", "session_id": "e.session_id",
    "body": "{body}", "ts": "{ts}", "private": "p.body",
}  # fmt: skip
_BOUND: dict[str, Any] = {
    "position": "?1", "stream": "?2", "session_id": "?3", "body": "?4", "ts": "?5",
}  # fmt: skip
_INSERT_MESSAGE = "INSERT INTO {messages} (" + transcript_names() + ")\nSELECT "
_SEARCHED = transcript_values(**_BOUND, names=(TRANSCRIPT_SEARCHED,))

MESSAGES_INSERT = Statement(
    "messages_insert",
    sql=_INSERT_MESSAGE
    + transcript_values(**_READ)
    + """
FROM {decoded_events}
WHERE r.type = 'message_appended' AND {range}
    AND NOT {body_synthetic}""",
    one=_INSERT_MESSAGE
    + transcript_values(**_BOUND)
    + """
WHERE NOT {bound_synthetic}""",
    types=_types("message_appended"),
)

MESSAGES_INDEX = Statement(
    "messages_index",
    sql=f"""INSERT INTO {{messages_fts}} (rowid, {TRANSCRIPT_SEARCHED})
SELECT m.{TRANSCRIPT_KEY}, m.{TRANSCRIPT_SEARCHED} FROM {{messages}} AS m
WHERE m.{TRANSCRIPT_KEY} BETWEEN ?1 AND ?2 AND m.{TRANSCRIPT_SEARCHED} IS NOT NULL""",
    one=f"""INSERT INTO {{messages_fts}} (rowid, {TRANSCRIPT_SEARCHED})
SELECT ?1, {_SEARCHED}
WHERE NOT {{bound_synthetic}} AND {_SEARCHED} IS NOT NULL""",
    types=_types("message_appended"),
)

TRANSCRIPTS_STATEMENTS = (MESSAGES_INSERT, MESSAGES_INDEX)
