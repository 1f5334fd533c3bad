"""Payloads on PostgreSQL (migration 3): ``verify``'s check of the content.

The judgement is the SQLite ledger's own (``personal.judge_payloads``: every
payload matches the digest in its event's meta, no payload without a digest);
what is PostgreSQL's here is reading the rows, and finding whether a missing
payload is covered by a recorded ``subject_erased``: the scopes of
``ledger.erasure.SCOPE_SQL`` in PostgreSQL's SQL (``data::json``; ``\\u0000`` read
as a space, as ``hl_business_time`` does, since PostgreSQL cannot decode it).
"""

from __future__ import annotations

from typing import Any

import psycopg

from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import SubjectErased, from_stored
from hermes_ledger.ledger.personal import UNCOVERED, judge_payloads

__all__ = ["SCOPE_SQL", "SQL_PAYLOAD_ROWS", "check_payloads"]

SQL_PAYLOAD_ROWS = (
    "SELECT e.position, hl_payload_digest(e.meta), p.salt, p.body FROM events AS e"
    " FULL JOIN payloads AS p ON p.position = e.position"
    " WHERE hl_payload_digest(e.meta) IS NOT NULL OR p.position IS NOT NULL"
    " ORDER BY coalesce(e.position, p.position)"
)
SQL_ERASURES = "SELECT position, data FROM events WHERE type = 'subject_erased' ORDER BY position"

_JSON = "replace(data, '\\u0000', '\\u0020')::json"
_SESSIONS_OF_USER = (
    "SELECT session_id FROM events WHERE type = 'session_started'"
    f" AND {_JSON} -> 'source' ->> 'user_id' = %(value)s"
)
_RETAINED_SESSIONS = (
    "SELECT session_id FROM events WHERE type = 'session_started'"
    f" AND (%(platform)s::text IS NULL OR {_JSON} -> 'source' ->> 'platform' = %(platform)s)"
    f" AND (%(chat_type)s::text IS NULL OR {_JSON} -> 'source' ->> 'chat_type' = %(chat_type)s)"
)
SCOPE_SQL: dict[str, str] = {
    "user": "SELECT position FROM events WHERE position <= %(through)s"
    f" AND session_id IN ({_SESSIONS_OF_USER})"
    " UNION ALL SELECT position FROM events WHERE position <= %(through)s"
    f" AND type = 'message_appended' AND {_JSON} ->> 'user_id' = %(value)s",
    "session_key": "SELECT position FROM events WHERE stream = %(value)s"
    " AND position <= %(through)s",
    "session_id": "SELECT position FROM events WHERE session_id = %(value)s"
    " AND position <= %(through)s",
    "retention": "SELECT position FROM events WHERE position <= %(through)s"
    f" AND occurred_at < %(before)s AND session_id IN ({_RETAINED_SESSIONS})",
}
"""Per scope kind: the positions it covers, as ``ledger.erasure.SCOPE_SQL``."""


def _covered(conn: psycopg.Connection[Any], missing: set[int]) -> set[int]:
    """The positions of ``missing`` some recorded erasure covers."""
    covered: set[int] = set()
    for _position, data in conn.execute(SQL_ERASURES).fetchall():
        event = from_stored("subject_erased", "x", data, 1)
        assert isinstance(event, SubjectErased)
        scope = ErasureScope.of_event(event)
        rows = conn.execute(SCOPE_SQL[scope.kind], scope.bindings(event.through)).fetchall()
        covered.update(r[0] for r in rows if r[0] in missing)
        if covered >= missing:
            break
    return covered


def check_payloads(conn: psycopg.Connection[Any], head: int) -> tuple[int, str] | None:
    """(first bad position, problem) of the payloads up to ``head``, or None when
    each matches its digest and each missing one is covered by an erasure."""
    problem, missing = judge_payloads(conn.execute(SQL_PAYLOAD_ROWS), head)
    if problem is not None or not missing:
        return problem
    uncovered = sorted(set(missing) - _covered(conn, set(missing)))
    return (uncovered[0], UNCOVERED) if uncovered else None
