"""Full-text search over the PostgreSQL transcripts: ``search_messages``.

The query is ``websearch_to_tsquery`` text (words, ``"a phrase"``, ``-word``,
``or``), or with ``plain=True`` ``plainto_tsquery`` (every word, nothing special),
under the ``hl_words`` configuration of ``messages.search_vector`` (no stemming, no
stop words, diacritics folded when ``unaccent`` is installed). Neither parser
raises on odd input. A hit has the fields of the SQLite search's ``SearchHit``
(``gateway.sessions.search``), its excerpt from ``ts_headline`` with each matched
word between the same two control characters.

CJK text (Chinese, Japanese kana and kanji, Korean hangul: ``cjk.CJK``) has no spaces
between words, and the parser reads a run of it as one word, so ``東京`` would not
find ``東京に行きます``. A search term holding a CJK character (a word, or a quoted
phrase as a whole) is therefore matched as a substring of the content instead
(``ILIKE``, its ``%`` ``_`` and ``\\`` taken literally, served by the trigram index
``messages_content_trgm`` of the messages holding CJK, from three characters on;
shorter terms match by scan),
``-`` before it excludes it, and it is ANDed with the query of the other words. Such
hits get their excerpt here, each CJK match between the marks as well. ``or``
beside a CJK term is refused (a CJK term is always required or excluded).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal, NamedTuple

from hermes_ledger.ledger.errors import InvalidInputError
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.projections.postgres.cjk import CJK, CJK_SQL
from hermes_ledger.projections.postgres.live import _held
from hermes_ledger.projections.postgres.tables import LIVE, SEARCH_CONFIG, SEARCH_VECTOR

__all__ = ["MessageHit", "search_messages", "split_cjk"]

MARK_OPEN, MARK_CLOSE = "\x02", "\x03"
_HEADLINE = (
    f'StartSel="{MARK_OPEN}", StopSel="{MARK_CLOSE}", MaxWords=12, MinWords=4,'
    ' ShortWord=0, MaxFragments=1, FragmentDelimiter="…"'
)
_HEADLINE_ALL = f'StartSel="{MARK_OPEN}", StopSel="{MARK_CLOSE}", HighlightAll=true'
_ORDERS = {
    "newest": "m.position DESC",
    "relevance": f"ts_rank(m.{SEARCH_VECTOR}, q) DESC, m.position",
}
_PARSERS = {False: "websearch_to_tsquery", True: "plainto_tsquery"}
# A websearch term: a quoted phrase (to the next quote or the end), or a word.
_TERM = re.compile(r'(-?)"([^"]*)(?:"|$)|[^\s"]+')
_MARKED = re.compile(f"({MARK_OPEN}[^{MARK_CLOSE}]*{MARK_CLOSE})")
_CJK_EXCERPT_CHARS = 64
_CJK_EXCERPT_BEFORE = 20

SQL_SEARCH = (
    "SELECT m.position, m.session_key, m.session_id, m.role, m.ts, h.platform,"
    " coalesce(m.user_id, h.user_id), coalesce(m.user_name, h.user_name),"
    f" {{excerpt}}"
    f" FROM {LIVE.table('messages')} AS m"
    f" CROSS JOIN {{parser}}('{SEARCH_CONFIG}'::regconfig, %s) AS q"
    f" LEFT JOIN {LIVE.table('session_history')} AS h ON h.session_id = m.session_id"
    f" WHERE {{match}}{{where}} ORDER BY {{order}} LIMIT %s"
)
_EXCERPT = f"ts_headline('{SEARCH_CONFIG}'::regconfig, m.content, q, %s)"
_MATCH = f"m.{SEARCH_VECTOR} @@ q"
SQL_QUERY_HAS_WORDS = f"SELECT numnode({{parser}}('{SEARCH_CONFIG}'::regconfig, %s)) > 0"
# A CJK term, as a pattern bound to %s; the negated form holds for no content too.
# A required term's content holds a CJK character: said in the trigram index's own
# words (its predicate), so the planner knows the index covers every match.
_CJK_HAS = "m.content ILIKE %s"
_HOLDS_CJK = f"m.content ~ {CJK_SQL}"
_CJK_HAS_NOT = "coalesce(m.content, '') NOT ILIKE %s"
_ORDER_NO_RANK = "m.position DESC"
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
    rest, cjk = split_cjk(text, plain=plain)
    parser = _PARSERS[plain]
    with _held(log):
        words = not cjk or _has_words(log, parser, rest)
        match = ([_MATCH] if words else []) + [_CJK_HAS_NOT if no else _CJK_HAS for _, no in cjk]
        if not all(no for _, no in cjk):
            match.append(_HOLDS_CJK)
        args: list[Any] = [_HEADLINE_ALL if cjk else _HEADLINE] if words else []
        excerpt = _EXCERPT if words else "m.content"
        args.append(rest)
        args.extend(_like_pattern(term) for term, _ in cjk)
        where = ""
        given = {"session_key": session_key, "platform": platform, "since": since, "until": until}
        for name, value in given.items():
            if value is not None:
                where += _WHERE[name]
                args.append(value)
        if user is not None:
            where += _WHERE_USER
            args.extend((user,) * 4)
        sql = SQL_SEARCH.format(
            excerpt=excerpt,
            parser=parser,
            match=" AND ".join(match) or "true",
            where=where,
            order=_ORDERS[order] if words else _ORDER_NO_RANK,
        )
        args.append(limit)
        rows = log.connection.execute(sql, args).fetchall()
    hits = [MessageHit(*row) for row in rows]
    wanted = [term for term, negated in cjk if not negated]
    if wanted:
        hits = [h._replace(excerpt=_cjk_excerpt(h.excerpt, wanted)) for h in hits]
    return hits


def _has_words(log: PostgresLog, parser: str, rest: str) -> bool:
    """Whether ``rest`` (the text without its CJK terms) gives a query of any word."""
    if not rest.strip():
        return False
    row = log.connection.execute(SQL_QUERY_HAS_WORDS.format(parser=parser), (rest,)).fetchone()
    return bool(row and row[0])


def split_cjk(text: str, *, plain: bool = False) -> tuple[str, list[tuple[str, bool]]]:
    """``text`` split into the query of its words without CJK and its CJK terms, each
    (substring, excluded): a word or a quoted phrase holding a CJK character, without
    the quotes, or the punctuation around a word (but ``%``, ``_`` and ``\\``, which
    are searched for as written); ``-`` before it excludes it. With ``plain``, quotes
    and ``-`` are nothing special, as in ``plainto_tsquery``."""
    if CJK.search(text) is None:
        return text, []
    tokens = text.split() if plain else [m.group(0) for m in _TERM.finditer(text)]
    rest: list[str] = []
    terms: list[tuple[str, bool]] = []
    for i, token in enumerate(tokens):
        if CJK.search(token) is None:
            rest.append(token)
            continue
        negated = not plain and token.startswith("-")
        token = token[1:] if negated else token
        quoted = not plain and token.startswith('"')
        term = token.strip('"').strip() if quoted else _trim(token)
        if not plain and "or" in [
            t.lower() for t in tokens[max(i - 1, 0) : i] + tokens[i + 1 : i + 2]
        ]:
            raise InvalidInputError(
                f"or beside the CJK term {term!r} is not supported",
                hint="a CJK term is matched as a substring and always required (or excluded"
                " with -): drop the or, or search for each term on its own",
            )
        terms.append((term, negated))
    return " ".join(rest), terms


def _trim(word: str) -> str:
    """``word`` without the punctuation around it (not ``%``, ``_``, ``\\``)."""
    keep = lambda c: not unicodedata.category(c).startswith("P") or c in "%_\\"  # noqa: E731
    start, end = 0, len(word)
    while start < end and not keep(word[start]):
        start += 1
    while end > start and not keep(word[end - 1]):
        end -= 1
    return word[start:end]


def _like_pattern(term: str) -> str:
    """``term`` as an ``ILIKE`` pattern of content holding it: its wildcards literal."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _cjk_excerpt(excerpt: str | None, terms: list[str]) -> str | None:
    """The excerpt of a hit of CJK ``terms``: ``excerpt`` (the whole content, the
    other words already marked) with every match of a term marked too, cut to about
    64 characters from a little before the first mark."""
    if excerpt is None:
        return None
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    at = 0
    for piece in _MARKED.split(excerpt):
        if piece.startswith(MARK_OPEN):  # a word ts_headline marked
            piece = piece[1:-1]
            spans.append((at, at + len(piece)))
        pieces.append(piece)
        at += len(piece)
    content = "".join(pieces)
    for term in terms:
        if term:
            pattern = re.compile(re.escape(term), re.IGNORECASE)
            spans.extend(m.span() for m in pattern.finditer(content))
    merged: list[list[int]] = []
    for begin, end in sorted(spans):
        if merged and begin < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    if not merged:
        return excerpt
    cut_from = max(0, merged[0][0] - _CJK_EXCERPT_BEFORE)
    cut_to = max(merged[0][1], cut_from + _CJK_EXCERPT_CHARS)
    for begin, end in merged:
        if begin < cut_to < end:
            cut_to = end
    out, at = [], cut_from
    for begin, end in merged:
        if end <= cut_from or begin >= cut_to:
            continue
        out.append(content[at:begin] + MARK_OPEN + content[begin:end] + MARK_CLOSE)
        at = end
    out.append(content[at:cut_to])
    head = "…" if cut_from > 0 else ""
    tail = "…" if cut_to < len(content) else ""
    return head + "".join(out) + tail
