"""Named audit reports: the day-to-day questions about sessions, each one SQL query
with typed, named parameters (``hermes-ledger report NAME --param k=v``).

Each ``Report`` has a name, a one-line description, its SQL (stated here and
nowhere else: docs/sql.md lists the reports, ``hermes-ledger report NAME --sql``
prints the query), its parameters with their types and defaults, and its output
columns. ``run_report`` checks the parameters and runs the query through
``ledger.query.run_sql``: on a read-only connection of its own, bounded by a
timeout. The queries read the projections and their views (docs/sql.md), the log
and the hook delivery table, with SQLite built-ins only, so the SQL also runs in
any SQLite client (``.param set :since NULL``…). Each report also states its
PostgreSQL query (``postgres_sql``, run by ``projections.postgres.reporting`` on a
``PostgresLog``): the same columns and rows, from the same tables there (the
``session_closes`` view inlined).

    from hermes_ledger.projections.audits import run_report

    result = run_report(led, "unflushed-ends", {"since": "7d", "platform": "telegram"})
    print(result.columns, list(result.rows))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.clock import Clock, system_clock
from hermes_ledger.ledger.query import DEFAULT_SQL_TIMEOUT, QueryResult, parse_time, run_sql
from hermes_ledger.projections.statements import TS

if TYPE_CHECKING:
    from hermes_ledger.ledger.postgres import PostgresLog

__all__ = [
    "REPORTS",
    "Param",
    "Report",
    "ReportUsageError",
    "bind_params",
    "describe_reports",
    "get_report",
    "reports_markdown",
    "run_report",
]


class ReportUsageError(LedgerError):
    """An unknown report, or a parameter it does not take or cannot read (nothing ran)."""


Kind = Literal["text", "int", "time"]
_KIND_HELP = {
    "text": "text",
    "int": "a whole number >= 1",
    "time": "a time: ISO-8601 (2026-11-22, 2026-11-22T09:30Z) or a duration ago (7d, 2h)",
}


@dataclass(frozen=True)
class Param:
    """A named parameter (``:name`` in the SQL): its type, its default (None: the
    condition it drives is off) and what it means."""

    name: str
    kind: Kind
    help: str
    default: int | str | None = None

    def read(self, text: str, *, now: Clock = system_clock) -> int | str:
        """``text`` (as given on the command line) as this parameter's value."""
        if self.kind == "int":
            digits = text.strip()
            if not digits.isascii() or not digits.isdigit() or not 1 <= int(digits) < 2**63:
                raise ReportUsageError(
                    f"--param {self.name}={text}: not {_KIND_HELP['int']}",
                    hint=f"e.g. --param {self.name}={self.default or 10}",
                )
            return int(digits)
        if self.kind == "time":
            try:
                return parse_time(text, now=now)
            except LedgerError:
                raise ReportUsageError(
                    f"--param {self.name}={text}: not {_KIND_HELP['time']}",
                    hint=f"e.g. --param {self.name}=7d or --param {self.name}=2026-11-20",
                ) from None
        if not text:
            raise ReportUsageError(
                f"--param {self.name}= is empty", hint=f"give a value: --param {self.name}=VALUE"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "default": self.default, "help": self.help}

    def describe(self) -> str:
        """``name=DEFAULT (kind): help`` for listings."""
        default = "" if self.default is None else f"={self.default}"
        return f"{self.name}{default} ({self.kind}): {self.help}"


@dataclass(frozen=True)
class Report:
    """One named audit query."""

    name: str
    description: str
    sql: str
    columns: tuple[str, ...]
    params: tuple[Param, ...] = ()
    postgres_sql: str = ""
    """The same query on a PostgreSQL ledger (``%(name)s`` bindings): the same
    columns, rows and order, values of the same Python types."""

    def sql_for(self, backend: Literal["sqlite", "postgresql"]) -> str:
        """The report's SQL on ``backend``."""
        return self.postgres_sql if backend == "postgresql" else self.sql

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": [p.to_dict() for p in self.params],
            "columns": list(self.columns),
            "sql": self.sql,
            "postgres_sql": self.postgres_sql,
        }


# -- the parameters the reports share ---------------------------------------------

_SINCE = Param("since", "time", "only from this time on (inclusive)")
_UNTIL = Param("until", "time", "only before this time")
_PLATFORM = Param("platform", "text", "only this platform (telegram, discord, slack…)")


def _columns(names: str) -> tuple[str, ...]:
    return tuple(names.split())


def _limit(default: int) -> Param:
    return Param("limit", "int", "at most this many rows", default)


def _window(column: str) -> str:
    """SQL: ``column`` within ``:since`` / ``:until`` (each condition off when NULL)."""
    return f"(:since IS NULL OR {column} >= :since) AND (:until IS NULL OR {column} < :until)"


_ON_PLATFORM = "(:platform IS NULL OR platform = :platform)"

# The PostgreSQL spelling of the same conditions and values. Text is compared and
# ordered byte for byte (COLLATE "C", SQLite's BINARY); NULLs sort first ascending
# and last descending, as on SQLite; sums of integers are cast back to bigint (not
# numeric); durations are whole milliseconds apart, as julianday() computes them;
# round() is SQLite's (half away from zero, not PostgreSQL's float half to even).
_C = 'COLLATE "C"'


def _pg_window(column: str, cast: str = "text") -> str:
    """``_window`` on PostgreSQL: ``column`` (text, or ``cast``) within ``since`` /
    ``until``."""
    bound = "{} " + _C if cast == "text" else "{}::" + cast
    since, until = bound.format("%(since)s::text"), bound.format("%(until)s::text")
    return (
        f"(%(since)s::text IS NULL OR {column} >= {since})"
        f" AND (%(until)s::text IS NULL OR {column} < {until})"
    )


_PG_ON_PLATFORM = "(%(platform)s::text IS NULL OR platform = %(platform)s::text)"


def _pg_ms(text: str) -> str:
    return f"round(extract(epoch FROM {text}::timestamptz) * 1000)"


def _pg_seconds(later: str, earlier: str) -> str:
    """``round((julianday(later) - julianday(earlier)) * 86400.0, 3)`` on PostgreSQL."""
    return f"(({_pg_ms(later)} - {_pg_ms(earlier)}) / 1000)::float8"


def _pg_round(value: str) -> str:
    """SQLite's ``CAST(round(value) AS INTEGER)`` of a float8."""
    return f"trunc({value} + CASE WHEN {value} < 0 THEN -0.5 ELSE 0.5 END)::bigint"


def _pg_time(column: str) -> str:
    """A timestamptz as the ledger's UTC text (``2026-11-22T09:30:00.000000Z``)."""
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


_PG_SESSION_CLOSES = f"""session_closes AS (
    SELECT h.*,
        {_pg_seconds("h.ended_at", "h.last_message_at")} AS seconds_from_last_message_to_end
    FROM session_history AS h
    WHERE h.close_requested_at IS NOT NULL OR h.ended_at IS NOT NULL
)"""
"""The columns of the SQLite view ``session_closes`` (projections/views.py) the reports read."""

# -- the reports -------------------------------------------------------------------

UNFLUSHED_ENDS = Report(
    "unflushed-ends",
    "Sessions that ended without a successful memory flush (failed, skipped or none).",
    f"""SELECT session_id, session_key, platform, coalesce(flush_status, 'none') AS flush_status,
       flush_attempts, flush_detail, end_reason, ended_at
FROM session_closes
WHERE ended_at IS NOT NULL AND coalesce(flush_status, 'none') <> 'ok'
  AND {_window("ended_at")} AND {_ON_PLATFORM}
ORDER BY ended_at, session_id
LIMIT :limit""",
    _columns(
        "session_id session_key platform flush_status flush_attempts flush_detail"
        " end_reason ended_at"
    ),
    (_SINCE, _UNTIL, _PLATFORM, _limit(1000)),
    postgres_sql=f"""WITH {_PG_SESSION_CLOSES}
SELECT session_id, session_key, platform, coalesce(flush_status, 'none') AS flush_status,
       flush_attempts, flush_detail, end_reason, ended_at
FROM session_closes
WHERE ended_at IS NOT NULL AND coalesce(flush_status, 'none') <> 'ok'
  AND {_pg_window("ended_at")} AND {_PG_ON_PLATFORM}
ORDER BY ended_at {_C} NULLS FIRST, session_id {_C}
LIMIT %(limit)s::bigint""",
)

IDLE_BEFORE_CLOSE = Report(
    "idle-before-close",
    "Idle time between each closed session's last message and its end, longest first.",
    f"""SELECT session_id, session_key, platform, last_message_at, ended_at, end_reason,
       seconds_from_last_message_to_end AS idle_seconds
FROM session_closes
WHERE ended_at IS NOT NULL AND last_message_at IS NOT NULL
  AND {_window("ended_at")} AND {_ON_PLATFORM}
ORDER BY idle_seconds DESC, session_id
LIMIT :limit""",
    _columns("session_id session_key platform last_message_at ended_at end_reason idle_seconds"),
    (_SINCE, _UNTIL, _PLATFORM, _limit(1000)),
    postgres_sql=f"""WITH {_PG_SESSION_CLOSES}
SELECT session_id, session_key, platform, last_message_at, ended_at, end_reason,
       seconds_from_last_message_to_end AS idle_seconds
FROM session_closes
WHERE ended_at IS NOT NULL AND last_message_at IS NOT NULL
  AND {_pg_window("ended_at")} AND {_PG_ON_PLATFORM}
ORDER BY idle_seconds DESC NULLS LAST, session_id {_C}
LIMIT %(limit)s::bigint""",
)

RESETS_BY_USER = Report(
    "resets-by-user",
    "Manual resets (/new, /reset, api…) by user: the recorded actor, else the session's user.",
    f"""SELECT coalesce(close_actor, user_id) AS user_id, user_name, session_id, session_key,
       platform, close_detail AS trigger, close_requested_at AS reset_at
FROM session_closes
WHERE close_cause = 'reset'
  AND (:user IS NULL OR coalesce(close_actor, user_id) = :user)
  AND {_window("close_requested_at")} AND {_ON_PLATFORM}
ORDER BY coalesce(close_actor, user_id), close_requested_at, session_id
LIMIT :limit""",
    ("user_id", "user_name", "session_id", "session_key", "platform", "trigger", "reset_at"),
    (
        Param("user", "text", "only resets by this user id"),
        _SINCE,
        _UNTIL,
        _PLATFORM,
        _limit(1000),
    ),
    postgres_sql=f"""WITH {_PG_SESSION_CLOSES}
SELECT coalesce(close_actor, user_id) AS user_id, user_name, session_id, session_key,
       platform, close_detail AS trigger, close_requested_at AS reset_at
FROM session_closes
WHERE close_cause = 'reset'
  AND (%(user)s::text IS NULL OR coalesce(close_actor, user_id) = %(user)s::text)
  AND {_pg_window("close_requested_at")} AND {_PG_ON_PLATFORM}
ORDER BY coalesce(close_actor, user_id) {_C} NULLS FIRST, close_requested_at {_C} NULLS FIRST,
    session_id {_C}
LIMIT %(limit)s::bigint""",
)

# Usage is read from the log (each usage_recorded event's own day), in both of its
# stored shapes (v1 named the token counts prompt_tokens / completion_tokens); cost
# in whole billionths of a dollar, summed exactly, as session_history keeps it.
USAGE_BY_PLATFORM_DAY = Report(
    "usage-by-platform-day",
    "Tokens and cost per platform per UTC day, from the usage_recorded events.",
    f"""SELECT day, platform, count(DISTINCT session_id) AS sessions, count(*) AS turns,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cache_read_tokens) AS cache_read_tokens, sum(cost_nano_usd) / 1e9 AS cost_usd
FROM (
    SELECT substr({TS}, 1, 10) AS day, {TS} AS at, e.session_id, h.platform,
        coalesce(e.data ->> '$.input_tokens', e.data ->> '$.prompt_tokens', 0) AS input_tokens,
        coalesce(e.data ->> '$.output_tokens', e.data ->> '$.completion_tokens', 0)
            AS output_tokens,
        coalesce(e.data ->> '$.cache_read_tokens', 0) AS cache_read_tokens,
        CAST(round(coalesce(e.data ->> '$.cost_usd', 0) * 1e9) AS INTEGER) AS cost_nano_usd
    FROM events AS e LEFT JOIN session_history AS h ON h.session_id = e.session_id
    WHERE e.type = 'usage_recorded'
)
WHERE {_window("at")} AND {_ON_PLATFORM}
GROUP BY day, platform
ORDER BY day, platform""",
    _columns("day platform sessions turns input_tokens output_tokens cache_read_tokens cost_usd"),
    (_SINCE, _UNTIL, _PLATFORM),
    postgres_sql=f"""SELECT day, platform, count(DISTINCT session_id) AS sessions,
       count(*) AS turns,
       sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,
       sum(cache_read_tokens)::bigint AS cache_read_tokens,
       sum(cost_nano_usd)::float8 / 1e9::float8 AS cost_usd
FROM (
    SELECT substr(e.occurred_at, 1, 10) AS day, e.occurred_at AS at, e.session_id, h.platform,
        coalesce((b.d ->> 'input_tokens')::bigint, (b.d ->> 'prompt_tokens')::bigint, 0)
            AS input_tokens,
        coalesce((b.d ->> 'output_tokens')::bigint, (b.d ->> 'completion_tokens')::bigint, 0)
            AS output_tokens,
        coalesce((b.d ->> 'cache_read_tokens')::bigint, 0) AS cache_read_tokens,
        {_pg_round("coalesce((b.d ->> 'cost_usd')::float8, 0) * 1e9::float8")} AS cost_nano_usd
    FROM events AS e
    CROSS JOIN LATERAL (SELECT replace(e.data, '\\u0000', '\\u0020')::jsonb AS d) AS b
    LEFT JOIN session_history AS h ON h.session_id = e.session_id
    WHERE e.type = 'usage_recorded'
) AS usage
WHERE {_pg_window("at")} AND {_PG_ON_PLATFORM}
GROUP BY day, platform
ORDER BY day {_C} NULLS FIRST, platform {_C} NULLS FIRST""",
)

END_REASONS = Report(
    "end-reasons",
    "How sessions ended: sessions and messages per end reason and platform.",
    f"""SELECT end_reason, platform, count(*) AS sessions, sum(message_count) AS messages,
       sum(coalesce(flush_status, 'none') <> 'ok') AS without_successful_flush
FROM session_history
WHERE ended_at IS NOT NULL AND {_window("ended_at")} AND {_ON_PLATFORM}
GROUP BY end_reason, platform
ORDER BY sessions DESC, end_reason, platform""",
    ("end_reason", "platform", "sessions", "messages", "without_successful_flush"),
    (_SINCE, _UNTIL, _PLATFORM),
    postgres_sql=f"""SELECT end_reason, platform, count(*) AS sessions,
       sum(message_count)::bigint AS messages,
       sum(CASE WHEN coalesce(flush_status, 'none') <> 'ok' THEN 1 ELSE 0 END)::bigint
           AS without_successful_flush
FROM session_history
WHERE ended_at IS NOT NULL AND {_pg_window("ended_at")} AND {_PG_ON_PLATFORM}
GROUP BY end_reason, platform
ORDER BY sessions DESC, end_reason {_C} NULLS FIRST, platform {_C} NULLS FIRST""",
)

BUSIEST_SESSIONS = Report(
    "busiest-sessions",
    "The sessions with the most messages (then tokens), open or closed.",
    f"""SELECT session_id, session_key, platform, status, message_count AS messages,
       input_tokens, output_tokens, cost_usd, started_at, ended_at
FROM session_overview
WHERE {_window("started_at")} AND {_ON_PLATFORM}
ORDER BY message_count DESC, input_tokens + output_tokens DESC, session_id
LIMIT :limit""",
    _columns(
        "session_id session_key platform status messages input_tokens output_tokens"
        " cost_usd started_at ended_at"
    ),
    (
        Param("since", "time", "only sessions started from this time on"),
        _UNTIL,
        _PLATFORM,
        _limit(10),
    ),
    postgres_sql=f"""SELECT session_id, session_key, platform,
       CASE WHEN ended_at IS NOT NULL THEN 'closed'
           WHEN close_requested_at IS NOT NULL THEN 'closing' ELSE 'open' END AS status,
       message_count AS messages, input_tokens, output_tokens,
       cost_nano_usd::float8 / 1e9::float8 AS cost_usd, started_at, ended_at
FROM session_history
WHERE {_pg_window("started_at")} AND {_PG_ON_PLATFORM}
ORDER BY message_count DESC NULLS LAST, input_tokens + output_tokens DESC NULLS LAST,
    session_id {_C}
LIMIT %(limit)s::bigint""",
)

HOOK_FAILURES = Report(
    "hook-failures",
    "Hook deliveries that failed at least once: dead, still retrying, or delivered later.",
    f"""SELECT hook, hook_event AS event, session_id, status, attempts, last_error,
       CASE WHEN status = 'pending' THEN next_attempt_at END AS next_retry_at,
       delivered_at, position
FROM hook_deliveries
WHERE last_error IS NOT NULL AND (:hook IS NULL OR hook = :hook)
  AND {_window("created_at")}
ORDER BY hook, position
LIMIT :limit""",
    _columns(
        "hook event session_id status attempts last_error next_retry_at delivered_at position"
    ),
    (
        Param("hook", "text", "only this hook"),
        Param("since", "time", "only deliveries queued from this time on"),
        Param("until", "time", "only deliveries queued before this time"),
        _limit(1000),
    ),
    postgres_sql=f"""SELECT hook, hook_event AS event, session_id, status, attempts, last_error,
       CASE WHEN status = 'pending' THEN {_pg_time("next_attempt_at")} END AS next_retry_at,
       {_pg_time("delivered_at")} AS delivered_at, position
FROM hook_deliveries
WHERE last_error IS NOT NULL AND (%(hook)s::text IS NULL OR hook = %(hook)s::text)
  AND {_pg_window("created_at", "timestamptz")}
ORDER BY hook {_C}, position
LIMIT %(limit)s::bigint""",
)

REPORTS: Mapping[str, Report] = {
    r.name: r
    for r in (
        UNFLUSHED_ENDS,
        IDLE_BEFORE_CLOSE,
        RESETS_BY_USER,
        USAGE_BY_PLATFORM_DAY,
        END_REASONS,
        BUSIEST_SESSIONS,
        HOOK_FAILURES,
    )
}
"""Every report, by name, in the order they are listed."""


# -- finding, binding, running ---------------------------------------------------


def get_report(name: str) -> Report:
    """The report called ``name`` (ReportUsageError naming the valid ones if none)."""
    report = REPORTS.get(name)
    if report is None:
        raise ReportUsageError(
            f"no report named {name!r}", hint=f"use one of: {', '.join(REPORTS)}"
        )
    return report


def bind_params(
    report: Report, given: Mapping[str, str], *, now: Clock = system_clock
) -> dict[str, Any]:
    """Every parameter of ``report`` as a binding: the ``given`` text read by its
    type, else its default. An unknown name or an unreadable value raises
    ReportUsageError (the hint lists the report's parameters)."""
    unknown = sorted(set(given) - {p.name for p in report.params})
    if unknown:
        names = ", ".join(p.name for p in report.params) or "none"
        raise ReportUsageError(
            f"report {report.name!r} has no parameter {unknown[0]!r}",
            hint=f"its parameters: {names} (hermes-ledger report --list)",
        )
    values: dict[str, Any] = {}
    for param in report.params:
        given_text = given.get(param.name)
        values[param.name] = (
            param.default if given_text is None else param.read(given_text, now=now)
        )
    return values


def run_report(
    led: Ledger | PostgresLog,
    name: str,
    params: Mapping[str, str] | None = None,
    *,
    timeout: float | None = DEFAULT_SQL_TIMEOUT,
    now: Clock = system_clock,
) -> QueryResult:
    """Run the report ``name`` with ``params`` (text, as given on the command line)
    on ``led``, read-only and bounded by ``timeout`` seconds: on a SQLite ledger's
    file through ``run_sql`` (iterate the rows before closing ``led``), on a
    PostgreSQL ledger its ``postgres_sql`` (``projections.postgres.reporting``)."""
    report = get_report(name)
    values = bind_params(report, params or {}, now=now)
    if isinstance(led, Ledger):
        return run_sql(led, report.sql, values, timeout=timeout)
    from hermes_ledger.projections.postgres.reporting import run_report_sql

    return run_report_sql(led, report.postgres_sql, values, timeout=timeout)


# -- listings ----------------------------------------------------------------------


def describe_reports() -> list[str]:
    """What ``hermes-ledger report --list`` prints: each report, its description,
    its parameters."""
    lines: list[str] = []
    for report in REPORTS.values():
        lines.append(f"{report.name}  {report.description}")
        lines.extend(f"    --param {p.describe()}" for p in report.params)
        lines.append(f"    columns: {' '.join(report.columns)}")
    lines.append("Run one: hermes-ledger report NAME [--param KEY=VALUE]... [--json | --csv]")
    return lines


def reports_markdown() -> str:
    """The list of reports as docs/sql.md shows it (a test keeps the page equal)."""
    out: list[str] = []
    for report in REPORTS.values():
        out.append(f"* `{report.name}` — {report.description}")
        if report.params:
            params = ", ".join(
                f"`{p.name}`" + ("" if p.default is None else f" (default {p.default})")
                for p in report.params
            )
            out.append(f"  Parameters: {params}.")
        out.append(f"  Columns: {', '.join(f'`{c}`' for c in report.columns)}.")
    return "\n".join(out) + "\n"
