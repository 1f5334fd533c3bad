"""Full-text search over the PostgreSQL transcripts: ``search_messages``.

The query is ``websearch_to_tsquery`` text (words, ``"a phrase"``, ``-word``,
``or``), or with ``plain=True`` ``plainto_tsquery`` (every word, nothing special),
under the ``hl_words`` configuration of ``messages.search_vector`` (no stemming, no
stop words, diacritics folded when ``unaccent`` is installed). Neither parser
raises on odd input. A hit has the fields of the SQLite search's ``SearchHit``
(``gateway.sessions.search``), its excerpt from ``ts_headline`` with each matched
word between the same two control characters.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from hermes_ledger.ledger.errors import InvalidInputError
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.projections.postgres.live import _held
from hermes_ledger.projections.postgres.tables import LIVE, SEARCH_CONFIG, SEARCH_VECTOR

__all__ = ["MessageHit", "search_messages"]

MARK_OPEN, MARK_CLOSE = "\x02", "\x03"
_HEADLINE = (
    f'StartSel="{MARK_OPEN}", StopSel="{MARK_CLOSE}", MaxWords=12, MinWords=4,'
    ' ShortWord=0, MaxFragments=1, FragmentDelimiter="…"'
)
_ORDERS = {
    "newest": "m.position DESC",
    "relevance": f"ts_rank(m.{SEARCH_VECTOR}, q) DESC, m.position",
}
_PARSERS = {False: "websearch_to_tsquery", True: "plainto_tsquery"}

SQL_SEARCH = (
    "SELECT m.position, m.session_key, m.session_id, m.role, m.ts, h.platform,"
    " coalesce(m.user_id, h.user_id), coalesce(m.user_name, h.user_name),"
    f" ts_headline('{SEARCH_CONFIG}'::regconfig, m.content, q, %s)"
    f" FROM {LIVE.table('messages')} AS m"
    f" CROSS JOIN {{parser}}('{SEARCH_CONFIG}'::regconfig, %s) AS q"
    f" LEFT JOIN {LIVE.table('session_history')} AS h ON h.session_id = m.session_id"
    f" WHERE m.{SEARCH_VECTOR} @@ q{{where}} ORDER BY {{order}} LIMIT %s"
)
# The conditions of gateway.sessions.search.SearchFilter, as PostgreSQL spells them:
# text compared byte for byte (COLLATE "C", SQLite's BINARY), a user name with ASCII
# letters folded (SQLite's NOCASE); who spoke, or for a message that names nobody
# (the agent's turns) its session's user.
_ASCII_LOWER = "translate({}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
_NAME_IS = f"{_ASCII_LOWER.format('{}')} = {_ASCII_LOWER.format('%s')}"
_WHERE = {
    "session_key": " AND m.session_key = %s",
    "platform": " AND h.platform = %s",
    "since": ' AND m.ts >= %s COLLATE "C"',
    "until": ' AND m.ts < %s COLLATE "C"',
}
_WHERE_USER = (
    " AND (CASE WHEN m.user_id IS NULL AND m.user_name IS NULL"
    f" THEN h.user_id = %s OR {_NAME_IS.format('h.user_name')}"
    f" ELSE m.user_id = %s OR {_NAME_IS.format('m.user_name')} END)"
)


class MessageHit(NamedTuple):
    """One matching message: the fields of ``gateway.sessions.search.SearchHit``."""

    position: int
    session_key: str
    session_id: str
    role: str
    ts: str
    platform: str | None
    user_id: str | None
    user_name: str | None
    excerpt: str | None

    def marked(self, before: str = "[", after: str = "]") -> str:
        """The excerpt with each matched word between ``before`` and ``after``."""
        return (self.excerpt or "").replace(MARK_OPEN, before).replace(MARK_CLOSE, after)


def search_messages(
    log: PostgresLog,
    text: str,
    *,
    session_key: str | None = None,
    platform: str | None = None,
    user: str | None = None,
    since: str | None = None,
    until: str | None = None,
    order: Literal["newest", "relevance"] = "newest",
    limit: int = 20,
    plain: bool = False,
) -> list[MessageHit]:
    """The transcript messages matching ``text``, newest first (or by ``ts_rank``),
    with the conditions of ``gateway.sessions.search.SearchFilter``: ``session_key``
    exact, ``platform`` the session's, ``user`` who spoke (id exact or name with
    ASCII case folded; the agent's turns count as their session's user's), ``since``
    (inclusive) and ``until`` (exclusive) on the message's time as ledger time text."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("the search text is empty", hint="give one or more words")
    if order not in _ORDERS:
        raise InvalidInputError(f"unknown order {order!r}", hint="newest or relevance")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"the limit must be a positive integer, not {limit!r}")
    where = ""
    args: list[Any] = [_HEADLINE, text]
    given = {"session_key": session_key, "platform": platform, "since": since, "until": until}
    for name, value in given.items():
        if value is not None:
            where += _WHERE[name]
            args.append(value)
    if user is not None:
        where += _WHERE_USER
        args.extend((user,) * 4)
    sql = SQL_SEARCH.format(parser=_PARSERS[plain], where=where, order=_ORDERS[order])
    args.append(limit)
    with _held(log):
        rows = log.connection.execute(sql, args).fetchall()
    return [MessageHit(*row) for row in rows]
