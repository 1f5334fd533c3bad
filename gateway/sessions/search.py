"""Full-text search over transcripts: ``SearchFilter``, ``search_messages`` and ``SearchHit``.

Behind ``hermes-ledger search``. The text is an FTS5 query over the ``messages_fts``
index of the ``transcripts`` projection (words, ``"a phrase"``, ``prefix*``, ``AND``
/ ``OR`` / ``NOT``, ``NEAR(a b)``; diacritics folded), passed to SQLite as a binding.
Each hit is one transcript message with its key, session, role, time, the
session's origin and a snippet around the match whose matched words are marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import apsw

from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.errors import InvalidInputError

__all__ = [
    "SEARCH_ORDERS",
    "SQL_SEARCH",
    "SearchFilter",
    "SearchHit",
    "SearchOrder",
    "SearchSyntaxError",
    "search_messages",
    "search_query",
]

SearchOrder = Literal["newest", "relevance"]
SEARCH_ORDERS: tuple[SearchOrder, ...] = ("newest", "relevance")
"""``newest``: latest in the log first (stops at the limit: fast for common words);
``relevance``: FTS5's bm25 rank, best first (ranks every match)."""

# What snippet() puts around each matched phrase; control characters that chat
# text does not carry, split out again by SearchHit.
_OPEN, _CLOSE = "\x02", "\x03"
_SNIPPET_TOKENS = 12
_ORDER_SQL = {
    "newest": "messages_fts.rowid DESC",
    "relevance": "messages_fts.rank, m.position",
}
# "{where}" and "{order}" are built from the fixed fragments below and _ORDER_SQL;
# every value (the query text included) is a binding, except "{limit}", a checked
# int written into the text: FTS5 is told a constant LIMIT only, and stops early
# with it (a bound LIMIT made a search ~25% slower in bench/queries.py).
SQL_SEARCH = (
    "SELECT m.position, m.session_key, m.session_id, m.role, m.ts, h.platform,"
    " coalesce(m.user_id, h.user_id), coalesce(m.user_name, h.user_name),"
    " snippet(messages_fts, -1, ?, ?, '…', ?)"
    " FROM messages_fts JOIN messages AS m ON m.position = messages_fts.rowid"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id"
    " WHERE messages_fts MATCH ?{where} ORDER BY {order} LIMIT {limit}"
)
_WHERE_KEY = "m.session_key = ?"
_WHERE_PLATFORM = "h.platform = ?"
# who spoke; a message that names nobody (the agent's turns, events recorded before
# messages named their speaker) counts as its session's user's
_WHERE_USER = (
    "(CASE WHEN m.user_id IS NULL AND m.user_name IS NULL"
    " THEN h.user_id = ? OR h.user_name = ? COLLATE NOCASE"
    " ELSE m.user_id = ? OR m.user_name = ? COLLATE NOCASE END)"
)
_WHERE_SINCE = "m.ts >= ?"
_WHERE_UNTIL = "m.ts < ?"

_SYNTAX_HINT = (
    'words find words (cafe finds café); "a phrase" in double quotes; prefix*; AND, OR,'
    ' NOT; NEAR(a b); put a word with - . : or \' in double quotes ("e-mail")'
)

# How FTS5's messages about a query it cannot parse begin ("no such column": a
# word before a colon, or after a -, is read as a column filter).
_FTS5_QUERY_ERRORS = ("fts5: ", "no such column", "unterminated string", "unknown special query")


class SearchSyntaxError(InvalidInputError):
    """The search text is not a query FTS5 can read (nothing was searched): a usage
    error (exit status 2 on the command line)."""

    hint = _SYNTAX_HINT


@dataclass(frozen=True)
class SearchFilter:
    """Which messages are searched: all the given conditions hold.

    ``session_key`` exact; ``platform`` is the message's session origin's
    (``session_history``); ``user`` (user id exact, or user name case-insensitive)
    is who spoke (``messages.user_id``/``user_name``), and for a message that names
    nobody (the agent's turns) its session's user; ``since`` (inclusive) and
    ``until`` (exclusive) compare the message's time (``messages.ts``), as ledger time text (see
    ``hermes_ledger.ledger.query.parse_time``).
    """

    session_key: str | None = None
    platform: str | None = None
    user: str | None = None
    since: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        for name in ("session_key", "platform", "user", "since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidInputError(f"the {name.replace('_', ' ')} filter is empty",
                                  hint="give a value, or leave the filter out")  # fmt: skip

    def where(self) -> tuple[str, tuple[Any, ...]]:
        """``" AND …"`` conditions (possibly empty) and their bindings, in order."""
        parts: list[str] = []
        args: list[Any] = []
        for fragment, value in (
            (_WHERE_KEY, self.session_key),
            (_WHERE_PLATFORM, self.platform),
            (_WHERE_SINCE, self.since),
            (_WHERE_UNTIL, self.until),
        ):
            if value is not None:
                parts.append(fragment)
                args.append(value)
        if self.user is not None:
            parts.append(_WHERE_USER)
            args.extend((self.user,) * 4)
        return "".join(f" AND {p}" for p in parts), tuple(args)


class SearchHit(NamedTuple):
    """One matching message, a row of the search (a named tuple: cheap to build).

    ``excerpt`` is FTS5's snippet around the match (``…`` where the message was
    cut) with each matched phrase between two control characters; read it through
    ``parts``, ``snippet`` or ``marked()``."""

    position: int
    session_key: str
    session_id: str
    role: str
    ts: str
    platform: str | None
    user_id: str | None
    user_name: str | None
    excerpt: str | None

    @property
    def parts(self) -> tuple[tuple[str, bool], ...]:
        """The snippet as ``(text, matched)`` pieces, in order."""
        parts: list[tuple[str, bool]] = []
        for i, piece in enumerate((self.excerpt or "").split(_OPEN)):
            matched, _, rest = piece.partition(_CLOSE) if i else ("", "", piece)
            if matched:
                parts.append((matched, True))
            if rest:
                parts.append((rest, False))
        return tuple(parts)

    @property
    def snippet(self) -> str:
        """The snippet as plain text."""
        return (self.excerpt or "").replace(_OPEN, "").replace(_CLOSE, "")

    def marked(self, before: str = "[", after: str = "]") -> str:
        """The snippet with each matched piece between ``before`` and ``after``."""
        return (self.excerpt or "").replace(_OPEN, before).replace(_CLOSE, after)

    def to_dict(self) -> dict[str, Any]:
        """The ``search --json`` object of this hit."""
        return {
            "position": self.position,
            "session_key": self.session_key,
            "session_id": self.session_id,
            "role": self.role,
            "ts": self.ts,
            "platform": self.platform,
            "user_id": self.user_id,
            "user_name": self.user_name,
            "snippet": self.snippet,
            "highlighted": self.marked(),
        }


def search_query(
    text: str,
    which: SearchFilter = SearchFilter(),
    *,
    limit: int = 20,
    order: SearchOrder = "newest",
) -> tuple[str, tuple[Any, ...]]:
    """The statement and bindings ``search_messages`` runs (for benchmarks and EXPLAIN)."""
    if not text.strip():
        raise SearchSyntaxError(
            "the search text is empty", hint="give the words to look for, e.g. search deploy"
        )
    if order not in _ORDER_SQL:
        raise InvalidInputError(
            f"unknown order {order!r}", hint=f"use one of: {', '.join(_ORDER_SQL)}"
        )
    if not isinstance(limit, int) or limit < 0:
        raise InvalidInputError(f"limit must be an int >= 0, not {limit!r}")
    where, args = which.where()
    sql = SQL_SEARCH.format(where=where, order=_ORDER_SQL[order], limit=int(limit))
    return sql, (_OPEN, _CLOSE, _SNIPPET_TOKENS, text, *args)


def search_messages(
    ledger: Ledger,
    text: str,
    which: SearchFilter = SearchFilter(),
    *,
    limit: int = 20,
    order: SearchOrder = "newest",
) -> list[SearchHit]:
    """The transcript messages matching the FTS5 query ``text`` and ``which``, at
    most ``limit``, in ``order`` (see ``SEARCH_ORDERS``). ``ledger`` needs its
    projections attached (``reports.open_existing``).

    Raises SearchSyntaxError (with a hint on the query syntax) when FTS5 cannot
    read ``text`` (the statement is fixed: the errors FTS5 gives for a query it
    cannot parse are about the text it was given).
    """
    sql, args = search_query(text, which, limit=limit, order=order)
    try:
        rows = ledger.query(sql, args)
    except LedgerError as exc:
        cause = exc.__cause__
        reason = str(cause).split("SQLError: ", 1)[-1].rstrip(": ")
        if isinstance(cause, apsw.SQLError) and reason.startswith(_FTS5_QUERY_ERRORS):
            raise SearchSyntaxError(f"cannot read {text!r} as a search query ({reason})") from None
        raise
    return list(map(SearchHit._make, rows))
