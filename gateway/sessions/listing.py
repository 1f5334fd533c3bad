"""Which session keys ``hermes-ledger sessions`` lists: ``SessionFilter`` and ``list_sessions``.

One row per session key (the ``session_map`` projection), describing the key's
current session: its status, its origin (platform, chat type, user), how it ended
(``session_history``) and the scheduler's next deadline for it
(``session_deadlines``). Every filter is a fixed SQL fragment with a binding; the
statement is ``SQL_SESSIONS_PAGE`` with the fragments of the filters that are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.errors import InvalidInputError

__all__ = [
    "SESSION_FIELDS",
    "SESSION_STATUSES",
    "SQL_SESSIONS_PAGE",
    "SessionFilter",
    "list_sessions",
    "sessions_query",
]

SESSION_STATUSES = ("open", "closing", "closed")
"""The values of ``session_map.status``, in the order a session goes through them."""

# (name in the result, SQL expression), in output order.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("session_key", "m.session_key"),
    ("session_id", "m.session_id"),
    ("status", "m.status"),
    ("platform", "m.platform"),
    ("chat_type", "m.chat_type"),
    ("user_id", "m.user_id"),
    ("user_name", "m.user_name"),
    ("display_name", "m.display_name"),
    ("created_at", "m.created_at"),
    ("updated_at", "m.updated_at"),
    ("message_count", "m.message_count"),
    ("input_tokens", "m.input_tokens"),
    ("output_tokens", "m.output_tokens"),
    ("ended_at", "h.ended_at"),
    ("end_reason", "h.end_reason"),
    ("next_deadline", "d.deadline"),
)
SESSION_FIELDS = tuple(name for name, _ in _FIELDS)
"""The keys of each row ``list_sessions`` returns, in order."""

# The key's current session with how it ended and the scheduler's deadline for it
# (the projection is derived from the log only; the deadline is scheduler state,
# joined on key and session so a previous session's deadline is never shown).
# "{where}" is built by SessionFilter.where() from the fixed fragments below.
SQL_SESSIONS_PAGE = (
    "SELECT " + ", ".join(expr for _, expr in _FIELDS) + " FROM session_map AS m"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id"
    " LEFT JOIN session_deadlines AS d"
    " ON d.session_key = m.session_key AND d.session_id = m.session_id"
    " WHERE 1{where} ORDER BY m.updated_at DESC, m.session_key LIMIT ?"
)
_WHERE_PLATFORM = "m.platform = ?"
_WHERE_CHAT_TYPE = "m.chat_type = ?"
_WHERE_USER = "(m.user_id = ? OR m.user_name = ? COLLATE NOCASE)"
_WHERE_KEY = "m.session_key GLOB ?"
_WHERE_SINCE = "m.updated_at >= ?"
_WHERE_UNTIL = "m.updated_at < ?"
_WHERE_END_REASON = "h.end_reason = ?"


def _where_status(count: int) -> str:
    return f"m.status IN ({', '.join('?' for _ in range(count))})"


@dataclass(frozen=True)
class SessionFilter:
    """Which keys: all the given conditions hold, each on the key's current session.

    * ``statuses``: any of ``open``, ``closing``, ``closed``. Empty: ``open`` only,
      unless ``all_`` or ``end_reason`` is set (a session with an end reason is
      closed), then any status.
    * ``platform``, ``chat_type``: exact values of the session's origin.
    * ``user``: the origin's user id (exact) or user name (case-insensitive).
    * ``key``: a glob over the session key (SQLite ``GLOB``: ``*`` any text, ``?``
      one character, ``[...]`` a set, case-sensitive; ``[*]`` is a literal ``*``).
      A pattern without wildcards matches that key only.
    * ``since`` (inclusive) and ``until`` (exclusive): the key's last activity,
      ``session_map.updated_at`` (the time of its latest event), as ledger time text
      (see ``hermes_ledger.ledger.query.parse_time``).
    * ``end_reason``: how the session ended (``session_ended.reason``: idle_expiry,
      manual_reset, …).
    """

    statuses: tuple[str, ...] = ()
    all_: bool = False
    platform: str | None = None
    chat_type: str | None = None
    user: str | None = None
    key: str | None = None
    since: str | None = None
    until: str | None = None
    end_reason: str | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.statuses if s not in SESSION_STATUSES]
        if unknown:
            raise InvalidInputError(
                f"unknown session status {unknown[0]!r}",
                hint=f"use one of: {', '.join(SESSION_STATUSES)}",
            )
        for name in ("platform", "chat_type", "user", "key", "end_reason", "since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidInputError(f"the {name.replace('_', ' ')} filter is empty",
                                  hint="give a value, or leave the filter out")  # fmt: skip

    @property
    def wanted_statuses(self) -> tuple[str, ...]:
        """The statuses listed: ``statuses``, or none (any) with ``all_`` or an
        ``end_reason``, else ``open``."""
        if self.statuses:
            return self.statuses
        return () if self.all_ or self.end_reason is not None else ("open",)

    def where(self) -> tuple[str, tuple[Any, ...]]:
        """``" AND …"`` conditions (possibly empty) and their bindings, in order."""
        parts: list[str] = []
        args: list[Any] = []
        statuses = self.wanted_statuses
        if statuses:
            parts.append(_where_status(len(statuses)))
            args.extend(statuses)
        for fragment, value in (
            (_WHERE_PLATFORM, self.platform),
            (_WHERE_CHAT_TYPE, self.chat_type),
            (_WHERE_KEY, self.key),
            (_WHERE_SINCE, self.since),
            (_WHERE_UNTIL, self.until),
            (_WHERE_END_REASON, self.end_reason),
        ):
            if value is not None:
                parts.append(fragment)
                args.append(value)
        if self.user is not None:
            parts.append(_WHERE_USER)
            args.extend((self.user, self.user))
        return "".join(f" AND {p}" for p in parts), tuple(args)


def sessions_query(
    which: SessionFilter = SessionFilter(), *, limit: int = 1000
) -> tuple[str, tuple[Any, ...]]:
    """The statement and bindings ``list_sessions`` runs (for benchmarks and EXPLAIN)."""
    if limit < 0:
        raise InvalidInputError(f"limit must be >= 0, not {limit}")
    where, args = which.where()
    return SQL_SESSIONS_PAGE.format(where=where), (*args, limit)


def list_sessions(
    ledger: Ledger, which: SessionFilter = SessionFilter(), *, limit: int = 1000
) -> list[dict[str, Any]]:
    """The keys matching ``which``, most recently active first (at most ``limit``),
    each a dict with the keys ``SESSION_FIELDS``. ``ledger`` needs its projections
    attached (``reports.open_existing``)."""
    sql, args = sessions_query(which, limit=limit)
    return [dict(zip(SESSION_FIELDS, row, strict=True)) for row in ledger.query(sql, args)]
