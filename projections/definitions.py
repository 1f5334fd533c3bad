"""The projections: name, schema version, tables, and the statements that fill them.

Bump a projection's ``version`` whenever its tables or statements change: a
ledger whose checkpoint records an older version is rebuilt when projections are
attached to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from hermes_ledger.projections.quoting import Target
from hermes_ledger.projections.statements import (
    FRAGMENTS,
    SESSIONS_STATEMENTS,
    TRANSCRIPTS_STATEMENTS,
    Statement,
    merged_body,
)
from hermes_ledger.projections.tables import (
    MESSAGES,
    MESSAGES_FTS,
    SESSION_HISTORY,
    SESSION_MAP,
    TableSpec,
)

__all__ = [
    "PROJECTIONS",
    "SESSIONS",
    "TRANSCRIPTS",
    "Projection",
    "by_name",
    "compact",
]


@dataclass(frozen=True)
class Projection:
    """A read model: tables plus the statements that fold a range of events into them."""

    name: str
    version: int
    tables: tuple[TableSpec, ...]
    statements: tuple[Statement, ...]

    def sql(self, target: Target) -> tuple[str, ...]:
        """Every range statement, in order, with ``target``'s table names."""
        return _compiled(self, target)

    def one_sql(self, target: Target, event_type: str) -> tuple[tuple[str, int], ...]:
        """The single-event twins that matter for ``event_type``, in order, each with
        the number of parameters it takes (a prefix of the twin parameter list)."""
        return _compiled_one(self, target, event_type)

    @property
    def data_tables(self) -> tuple[TableSpec, ...]:
        """The tables compared row for row (not the full-text indexes)."""
        return tuple(t for t in self.tables if not t.fts)


def compact(sql: str) -> str:
    """``sql`` with each run of whitespace outside quotes replaced by one space
    (shorter text is cheaper to look up in the statement cache on every call)."""
    out: list[str] = []
    quote = ""
    pending_space = False
    for ch in sql:
        if quote:
            out.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch.isspace():
            pending_space = bool(out)
            continue
        if pending_space:
            out.append(" ")
            pending_space = False
        out.append(ch)
        if ch in "'\"":
            quote = ch
    return "".join(out)


@cache
def _compiled(projection: Projection, target: Target) -> tuple[str, ...]:
    names = {t.name: target.table(t.name) for t in projection.tables}
    return tuple(
        compact(s.sql.format(ts="r.ts", body=merged_body(s.types), **FRAGMENTS, **names))
        for s in projection.statements
    )


_PARAMETER = re.compile(r"\?(\d+)")


@cache
def _compiled_one(
    projection: Projection, target: Target, event_type: str
) -> tuple[tuple[str, int], ...]:
    names = {t.name: target.table(t.name) for t in projection.tables}
    out = []
    for s in projection.statements:
        if s.one is None or (s.types is not None and event_type not in s.types):
            continue
        sql = compact(s.one.format(**FRAGMENTS, **names))
        out.append((sql, max(int(n) for n in _PARAMETER.findall(sql))))
    return tuple(out)


SESSIONS = Projection(
    name="sessions",
    version=2,  # 2: session_map lost next_deadline (the scheduler's, in session_deadlines)
    tables=(SESSION_HISTORY, SESSION_MAP),
    statements=SESSIONS_STATEMENTS,
)
"""``session_history`` (one row per session_id) and ``session_map`` (one row per key)."""

TRANSCRIPTS = Projection(
    name="transcripts",
    version=2,  # 2: messages gained user_id and user_name; messages_fts as sqlite-utils declares it
    tables=(MESSAGES, MESSAGES_FTS),
    statements=TRANSCRIPTS_STATEMENTS,
)
"""``messages`` (non-synthetic messages in log order) and its FTS5 index ``messages_fts``."""

PROJECTIONS: tuple[Projection, ...] = (SESSIONS, TRANSCRIPTS)


def by_name(names: str | Iterable[str] | None = None) -> tuple[Projection, ...]:
    """The projections called ``names`` (all of them for None), in canonical order."""
    if names is None:
        return PROJECTIONS
    wanted = {names} if isinstance(names, str) else set(names)
    known = {p.name for p in PROJECTIONS}
    if wanted - known:
        raise ValueError(
            f"unknown projections {sorted(wanted - known)} (known: {', '.join(sorted(known))})"
        )
    return tuple(p for p in PROJECTIONS if p.name in wanted)
