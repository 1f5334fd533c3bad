"""The queries ``hermes-ledger serve`` offers as Datasette canned queries.

Two kinds: the named reports (``projections.audits.REPORTS``, as for
``hermes-ledger report NAME``), taken from there and adapted to a web form by
``from_report``; and the example queries of docs/sql.md that are not reports
(``DOC_QUERIES``), text for text: ``tests/test_serve.py`` checks each against the
docs' query of the same name, so the two cannot drift (and docs/sql.md's own test
runs them against a known history).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hermes_ledger.projections.audits import REPORTS, Report

__all__ = ["AUDIT_QUERIES", "DOC_QUERIES", "AuditQuery", "from_report"]

_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class AuditQuery:
    """One named query: ``name`` (its URL), ``title``, and ``sql`` with ``:named``
    parameters."""

    name: str
    title: str
    sql: str
    description: str = ""

    @property
    def params(self) -> tuple[str, ...]:
        """The named parameters, in order of first use."""
        return tuple(dict.fromkeys(_PARAMETER.findall(self.sql)))


def from_report(report: Report) -> AuditQuery:
    """``report`` as a canned query. A web form sends every field, an empty one as
    ``''``: each ``:name`` becomes ``nullif(:name, '')`` (an empty field turns its
    condition off, as a parameter left out does in ``hermes-ledger report``), and
    one with a default falls back to it. Times are compared as text, so a field
    takes an ISO-8601 time (``2026-11-20``), not ``7d``."""
    defaults = {p.name: p.default for p in report.params}

    def bind(match: re.Match[str]) -> str:
        name = match.group(1)
        value = f"nullif(:{name}, '')"
        default = defaults.get(name)
        if default is None:
            return value
        return (
            f"coalesce({value}, {default!r})"
            if isinstance(default, str)
            else (f"coalesce({value}, {int(default)})")
        )

    described = "; ".join(f"{p.name}: {p.help}" for p in report.params)
    return AuditQuery(
        report.name,
        report.description,
        _PARAMETER.sub(bind, report.sql),
        f"hermes-ledger report {report.name}. Empty fields are off. {described}".strip(),
    )


DOC_QUERIES: tuple[AuditQuery, ...] = (
    AuditQuery(
        "idle_expiries_in_window",
        "Sessions closed by idle expiry in a time window",
        """SELECT session_id, session_key, close_deadline, ended_at, end_reason
FROM session_closes
WHERE close_cause = 'expired' AND close_detail = 'idle'
  AND ended_at >= :since AND ended_at < :until
ORDER BY ended_at;""",
    ),
    AuditQuery(
        "messages_per_platform_per_day",
        "Messages per platform per day",
        """SELECT day, platform, messages, user_messages, assistant_messages, sessions
FROM daily_messages
ORDER BY day, platform;""",
    ),
    AuditQuery(
        "full_text_search",
        "Full-text search over transcripts",
        """SELECT m.session_id, m.role, snippet(messages_fts, 0, '[', ']', '…', 6) AS excerpt
FROM messages_fts JOIN messages AS m ON m.position = messages_fts.rowid
WHERE messages_fts MATCH :query
ORDER BY rank, m.position;""",
    ),
    AuditQuery(
        "usage_per_platform",
        "Tokens and cost per platform",
        """SELECT platform, count(*) AS sessions, sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens, sum(cost_nano_usd) / 1e9 AS cost_usd
FROM session_history
GROUP BY platform
ORDER BY platform;""",
    ),
    AuditQuery(
        "stuck_closes",
        "Closes that are stuck (cause recorded, no end yet)",
        """SELECT session_key, session_id, close_cause, close_requested_at,
       flush_status, flush_attempts
FROM session_history
WHERE close_requested_at IS NOT NULL AND ended_at IS NULL
ORDER BY close_requested_at;""",
    ),
    AuditQuery(
        "failed_flush_attempts",
        "Failed memory-flush attempts, with their errors",
        """SELECT session_id, provider, attempt, detail AS error, at
FROM flush_outcomes
WHERE outcome = 'failed'
ORDER BY position;""",
    ),
    AuditQuery(
        "transcript",
        "One session's transcript",
        """SELECT role, content, tool_name, tool_call_id
FROM messages
WHERE session_id = :session_id
ORDER BY position;""",
    ),
    AuditQuery(
        "sessions_of_a_key",
        "The sessions of one key, oldest first",
        """SELECT session_id, start_reason, previous_session_id, end_reason, message_count
FROM session_history
WHERE session_key = :session_key
ORDER BY started_at;""",
    ),
    AuditQuery(
        "ends_without_cause_or_flush",
        "Every end preceded by its cause and a flush outcome (empty is good)",
        """SELECT e.session_id, e.position
FROM events AS e
WHERE e.type = 'session_ended'
  AND (NOT EXISTS (SELECT 1 FROM events AS c
                   WHERE c.session_id = e.session_id AND c.position < e.position
                     AND c.type IN ('session_reset', 'session_expired'))
    OR NOT EXISTS (SELECT 1 FROM events AS f
                   WHERE f.session_id = e.session_id AND f.position < e.position
                     AND f.type IN ('memory_flushed', 'memory_flush_failed',
                                    'memory_flush_skipped')))
ORDER BY e.position;""",
    ),
    AuditQuery(
        "projection_lag",
        "How far behind the log each projection is",
        """SELECT c.name, c.version, c.position,
       (SELECT coalesce(max(position), 0) FROM events) - c.position AS behind
FROM projection_checkpoints AS c
ORDER BY c.name;""",
    ),
    AuditQuery(
        "next_deadlines",
        "Open sessions and their next deadline",
        """SELECT m.session_key, m.session_id, m.status, d.deadline AS next_deadline, d.reason
FROM session_map AS m
LEFT JOIN session_deadlines AS d
  ON d.session_key = m.session_key AND d.session_id = m.session_id
WHERE m.status IN ('open', 'closing')
ORDER BY d.deadline IS NULL, d.deadline, m.session_key;""",
    ),
)
"""The example queries of docs/sql.md that are not named reports, in its order."""

AUDIT_QUERIES: tuple[AuditQuery, ...] = (
    *(from_report(r) for r in REPORTS.values()),
    *DOC_QUERIES,
)
"""Every canned query: the named reports, then the docs' example queries."""
