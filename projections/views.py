"""Views for auditors, over the projection tables (and, for flushes, the log itself).

They use only built-in SQLite functions, so they work from any SQLite client.
``ensure_views`` (re)creates a view only when its stored definition differs.
"""

from __future__ import annotations

import apsw

from hermes_ledger.projections.quoting import quote_ident
from hermes_ledger.projections.statements import TS

__all__ = ["VIEWS", "drop_views", "ensure_views"]

SESSION_CLOSES = """CREATE VIEW session_closes AS
SELECT h.session_id, h.session_key, h.platform, h.chat_type, h.user_id, h.user_name,
    h.close_cause, h.close_detail, h.close_actor, h.close_deadline, h.close_requested_at,
    h.flush_status, h.flush_attempts, h.flush_provider, h.flush_detail, h.flushed_at,
    h.ended_at, h.end_reason, h.started_at, h.last_message_at, h.message_count,
    round((julianday(h.ended_at) - julianday(h.last_message_at)) * 86400.0, 3)
        AS seconds_from_last_message_to_end,
    round((julianday(h.ended_at) - julianday(h.close_requested_at)) * 86400.0, 3)
        AS seconds_to_close
FROM session_history AS h
WHERE h.close_requested_at IS NOT NULL OR h.ended_at IS NOT NULL"""
"""Every session with a close cause or an end: why, the flush outcome, and when."""

FLUSH_OUTCOMES = (
    """CREATE VIEW flush_outcomes AS
SELECT e.position, e.session_id, e.stream AS session_key,
    CASE e.type WHEN 'memory_flushed' THEN 'ok' WHEN 'memory_flush_failed' THEN 'failed'
        ELSE 'skipped' END AS outcome,
    e.data ->> '$.provider' AS provider,
    e.data ->> '$.attempt' AS attempt,
    coalesce(p.body ->> '$.detail', p.body ->> '$.error',
        e.data ->> '$.detail', e.data ->> '$.error', e.data ->> '$.reason') AS detail,
    """
    + TS
    + """ AS at
FROM events AS e LEFT JOIN payloads AS p ON p.position = e.position
WHERE e.type IN ('memory_flushed', 'memory_flush_failed', 'memory_flush_skipped')"""
)
"""Every memory-flush attempt, read straight from the log (one row per event)."""

SESSION_OVERVIEW = """CREATE VIEW session_overview AS
SELECT h.session_id, h.session_key, h.platform, h.chat_type, h.user_id,
    CASE WHEN h.ended_at IS NOT NULL THEN 'closed'
        WHEN h.close_requested_at IS NOT NULL THEN 'closing' ELSE 'open' END AS status,
    h.started_at, h.ended_at, h.end_reason,
    round((julianday(h.ended_at) - julianday(h.started_at)) * 86400.0, 3) AS duration_seconds,
    h.message_count, h.input_tokens, h.output_tokens, h.cache_read_tokens, h.cache_write_tokens,
    h.cost_nano_usd / 1e9 AS cost_usd
FROM session_history AS h"""
"""One row per session with its status, duration, tokens and cost in USD."""

DAILY_MESSAGES = """CREATE VIEW daily_messages AS
SELECT substr(m.ts, 1, 10) AS day, h.platform,
    count(*) AS messages,
    sum(m.role = 'user') AS user_messages,
    sum(m.role = 'assistant') AS assistant_messages,
    sum(m.role = 'tool') AS tool_messages,
    count(DISTINCT m.session_id) AS sessions
FROM messages AS m LEFT JOIN session_history AS h ON h.session_id = m.session_id
GROUP BY day, h.platform"""
"""Transcript messages per UTC day and platform."""

VIEWS: dict[str, str] = {
    "session_closes": SESSION_CLOSES,
    "flush_outcomes": FLUSH_OUTCOMES,
    "session_overview": SESSION_OVERVIEW,
    "daily_messages": DAILY_MESSAGES,
}

SQL_VIEW_DEFINITION = "SELECT sql FROM main.sqlite_schema WHERE type = 'view' AND name = ?1"


def ensure_views(conn: apsw.Connection) -> None:
    """Create the audit views in ``main``, replacing any whose definition changed."""
    for name, sql in VIEWS.items():
        row = conn.execute(SQL_VIEW_DEFINITION, (name,)).fetchone()
        if row is not None and row[0] == sql:
            continue
        if row is not None:
            conn.execute(f"DROP VIEW main.{quote_ident(name)}")
        conn.execute(sql)


def drop_views(conn: apsw.Connection) -> None:
    for name in VIEWS:
        conn.execute(f"DROP VIEW IF EXISTS main.{quote_ident(name)}")
