"""Payloads on PostgreSQL (migration 3): ``verify``'s check of the content, and
the erasure's statements.

The judgement is the SQLite ledger's own (``personal.judge_payloads``: every
payload matches the digest in its event's meta, no payload without a digest);
what is PostgreSQL's here is reading the rows, and finding which events a scope
covers: ``ledger.erasure.SCOPE_PARTS`` (the one definition of every scope) spelled
in PostgreSQL's SQL by ``PG_DIALECT`` (``data::json``; ``\\u0000`` read as a space,
as ``hl_business_time`` does, since PostgreSQL cannot decode it).

The erasure (``PostgresLog.erase``) fills ``pg_temp.erasing`` (dropped at the
commit) with the scope's positions, as SQLite's fills ``temp.erasing``; the
counts, the payload delete and the projections' scrubbers read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import apsw
import psycopg

from hermes_ledger.ledger.erasure import (
    SCOPE_PARTS,
    ErasureScope,
    ScopeDialect,
    scope_sql,
)
from hermes_ledger.ledger.events import SubjectErased, from_stored
from hermes_ledger.ledger.personal import PERSONAL, UNCOVERED, held_in_log_sql, judge_payloads

__all__ = [
    "ERASER_ROLE",
    "PG_DIALECT",
    "SCOPE_SQL",
    "SQL_PAYLOAD_ROWS",
    "Scrubber",
    "check_payloads",
    "count_erasing",
    "delete_payloads",
    "fill_erasing",
    "may_vacuum",
    "vacuum",
]

Connection = psycopg.Connection[Any]

ERASER_ROLE = "hermes_ledger_eraser"
"""The role (migration 3) that may delete payload rows: an erasure needs it."""

Scrubber = Callable[[Connection], Iterable[str]]
"""Runs inside the erasure's transaction, after the payloads are deleted: rewrites
its read-model rows of the positions in ``pg_temp.erasing``; returns the tables it
changed rows in (qualified names), which the erase VACUUMs after the commit."""

SQL_PAYLOAD_ROWS = (
    "SELECT e.position, hl_payload_digest(e.meta), p.salt, p.body FROM events AS e"
    " FULL JOIN payloads AS p ON p.position = e.position"
    " WHERE hl_payload_digest(e.meta) IS NOT NULL OR p.position IS NOT NULL"
    " ORDER BY coalesce(e.position, p.position)"
)
SQL_ERASURES = "SELECT position, data FROM events WHERE type = 'subject_erased' ORDER BY position"

_JSON = "replace(data, '\\u0000', '\\u0020')::json"


def _json_text(path: tuple[str, ...]) -> str:
    steps = "".join(f" -> '{step}'" for step in path[:-1])
    return f"{_JSON}{steps} ->> '{path[-1]}'"


PG_DIALECT = ScopeDialect(
    events="events",
    binding=lambda name: f"%({name})s::{'bigint' if name == 'through' else 'text'}",
    json_text=_json_text,
)
"""``SCOPE_PARTS`` in PostgreSQL's SQL: typed bindings (``%(name)s::text``, so that
``IS NULL`` of an unset one needs no guess), JSON read from ``data`` as ``json``."""

SCOPE_SQL: dict[str, str] = {kind: scope_sql(kind, PG_DIALECT) for kind in SCOPE_PARTS}
"""Per scope kind: the positions it covers, as ``ledger.erasure.SCOPE_SQL``."""

SQL_ERASING_DDL = "CREATE TEMP TABLE erasing (position bigint PRIMARY KEY) ON COMMIT DROP"
SQL_ERASING_FILL = "INSERT INTO pg_temp.erasing (position) {scope} ON CONFLICT DO NOTHING"
SQL_ERASING_COUNTS = (
    "SELECT count(*), count(*) FILTER (WHERE e.type = 'message_appended'),"
    " count(p.position) FROM pg_temp.erasing AS x JOIN events AS e ON e.position = x.position"
    " LEFT JOIN payloads AS p ON p.position = x.position"
)
SQL_ERASING_SESSIONS = (
    'SELECT DISTINCT e.session_id COLLATE "C" FROM pg_temp.erasing AS x'
    " JOIN events AS e ON e.position = x.position"
    " WHERE e.session_id IS NOT NULL ORDER BY 1"
)
# Events without a payload digest that may hold content in the log (before v4);
# whether they do is SQLite's rule (personal.held_in_log_sql), evaluated below.
SQL_ERASING_UNSPLIT = (
    "SELECT e.data, e.meta, e.type FROM pg_temp.erasing AS x"
    " JOIN events AS e ON e.position = x.position"
    " WHERE hl_payload_digest(e.meta) IS NULL AND e.type = ANY(%s)"
)
SQL_DELETE_PAYLOADS = (
    "DELETE FROM payloads WHERE position IN (SELECT position FROM pg_temp.erasing)"
)
# VACUUM needs the table's owner, the database's owner or a superuser (PostgreSQL
# 15; 16 adds pg_maintain); otherwise it warns and skips the table.
SQL_MAY_VACUUM = (
    "SELECT bool_and(pg_has_role(c.relowner, 'USAGE')"
    " OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()),"
    " 'USAGE') OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))"
    " FROM pg_class AS c WHERE c.oid = ANY(%s::regclass[])"
)
SQL_VACUUM = "VACUUM {tables}"


def fill_erasing(conn: Connection, scope: ErasureScope, through: int) -> None:
    """``pg_temp.erasing`` := the positions ``scope`` covers up to ``through``
    (inside the caller's transaction; the table is dropped at its end)."""
    conn.execute(SQL_ERASING_DDL)
    conn.execute(SQL_ERASING_FILL.format(scope=SCOPE_SQL[scope.kind]), scope.bindings(through))


@cache
def _held_sql() -> str:
    return "SELECT " + held_in_log_sql("?1", "?2", "?3")


def count_erasing(conn: Connection) -> tuple[int, int, tuple[str, ...], int, int]:
    """(events, messages, sessions, payloads held, events holding content in the
    log) of ``pg_temp.erasing``: what ``ErasureReport`` counts."""
    row: Any = conn.execute(SQL_ERASING_COUNTS).fetchone()
    sessions = tuple(r[0] for r in conn.execute(SQL_ERASING_SESSIONS).fetchall())
    held = 0
    unsplit = conn.execute(SQL_ERASING_UNSPLIT, (sorted(PERSONAL),)).fetchall()
    if unsplit:
        judge = apsw.Connection(":memory:")
        try:
            for args in unsplit:
                held += bool(next(iter(judge.execute(_held_sql(), tuple(args))))[0])
        finally:
            judge.close()
    return int(row[0]), int(row[1]), sessions, int(row[2]), held


def delete_payloads(conn: Connection) -> None:
    """Delete the payload rows of ``pg_temp.erasing`` (needs ``ERASER_ROLE``)."""
    conn.execute(SQL_DELETE_PAYLOADS)


def may_vacuum(conn: Connection, tables: Iterable[str]) -> bool:
    """Whether the connected role may VACUUM every one of ``tables``."""
    row = conn.execute(SQL_MAY_VACUUM, (list(tables),)).fetchone()
    return bool(row and row[0])


def vacuum(conn: Connection, tables: Iterable[str]) -> bool:
    """VACUUM ``tables`` (outside any transaction) when the role may; False when it
    may not (nothing run: an operator must)."""
    names = list(dict.fromkeys(tables))
    if not may_vacuum(conn, names):
        return False
    conn.execute(SQL_VACUUM.format(tables=", ".join(names)))
    return True


def _covered(conn: Connection, missing: set[int]) -> set[int]:
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


def check_payloads(conn: Connection, head: int) -> tuple[int, str] | None:
    """(first bad position, problem) of the payloads up to ``head``, or None when
    each matches its digest and each missing one is covered by an erasure."""
    problem, missing = judge_payloads(conn.execute(SQL_PAYLOAD_ROWS), head)
    if problem is not None or not missing:
        return problem
    uncovered = sorted(set(missing) - _covered(conn, set(missing)))
    return (uncovered[0], UNCOVERED) if uncovered else None
