"""``hermes-ledger sql`` on a PostgreSQL ledger: one user query, read-only, bounded.

``run_sql`` is ``ledger.query.run_sql`` for a PostgreSQL ledger: the query runs on a
connection of its own, in a ``READ ONLY`` repeatable-read transaction whose
``statement_timeout`` is the command's ``--timeout``, with the ledger's schema on
the search path, so ``events``, ``event_bodies`` (each event whole, "[erased]" once
erased) and the projection tables are named as on SQLite. Only a query runs
(``SELECT``, ``WITH``, ``VALUES``, ``TABLE``, ``SHOW``, ``EXPLAIN``); the read-only
transaction refuses any write inside one (a data-modifying ``WITH``, ``nextval``…),
and either way the refusal is the SQLite command's: nothing changes.

A read-only transaction still runs functions whose effects are outside it; those
this server ships (``SIDE_EFFECTS``: ending other sessions, advisory locks, settings,
server files, large-object export, running a query given as text) are refused by
name wherever they appear outside literals and comments, before anything runs.
That is a list, not a privilege; the bound is the role the query runs as. When the
connecting role may (a member of ``hermes_ledger_reader``: an auditor, a writer, the
owner that migration 6 made a member, a superuser), the transaction runs under
``SET LOCAL ROLE hermes_ledger_reader`` (migration 6: SELECT on the ledger's tables,
nothing else), so whatever a query calls (a custom function that writes, signals
another session or reads a server file) runs with that role's privileges. When it
may not, the query runs as the connecting role, as ``psql`` would, after one line
saying which GRANT makes it run as the reader (``warn``; on stderr by default): the
connecting role's own privileges are then the bound, and the name list the only
second line. ``SET ROLE`` changes the current user, not the session's: a function
that itself sets ``role`` (``set_config``, refused by name, inside a function someone
created) may go back to any role the session user belongs to. So an untrusted user
logs in as an auditor's role (a LOGIN role granted only the reader), whose session
user holds nothing more; the owner's ``sql`` as the reader guards against mistakes
and ordinary functions, not against one written to undo it.

Placeholders are SQLite's ``:name`` (``-p NAME VALUE``), read outside string
literals, quoted identifiers, dollar quotes and comments, and never in a ``::``
cast; they are bound by the server, never spliced into the text.

The rows stream from the server as they are printed; a query that returns none
runs a second time in the same snapshot (the same result) to learn its columns.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres.log import connect, describe_dsn
from hermes_ledger.ledger.postgres.schema import READER_ROLE, SCHEMA
from hermes_ledger.ledger.readonly_sql import (
    DEFAULT_SQL_TIMEOUT,
    QueryResult,
    QueryTimeoutError,
    refuse_write,
)

__all__ = [
    "QUERY_KEYWORDS",
    "READER_ROLE",
    "SIDE_EFFECTS",
    "assume_reader",
    "run_sql",
    "warn_on_stderr",
]


QUERY_KEYWORDS = frozenset({"select", "with", "values", "table", "show", "explain"})
"""The first word of a statement ``run_sql`` runs; any other is refused as a write."""
SIDE_EFFECTS = frozenset(
    {
        "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
        "pg_switch_wal", "pg_create_restore_point", "pg_notify", "set_config",
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared", "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared",
        "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared", "pg_advisory_unlock",
        "pg_advisory_unlock_shared", "pg_advisory_unlock_all", "pg_read_file",
        "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_export", "lo_import",
        "lo_from_bytea", "lo_put", "lo_create", "lo_unlink", "dblink", "dblink_exec",
        "dblink_connect", "query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema",
        "cursor_to_xml", "cursor_to_xmlschema", "pg_logical_emit_message",
    }
)  # fmt: skip
"""Functions a query may not name: their effects reach outside a read-only
transaction (or, for the ``*_to_xml`` ones, they run SQL given as text)."""

SQL_BEGIN = "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
SQL_SETTINGS = (
    "SELECT set_config('statement_timeout', %s, true), set_config('search_path', %s, true)"
)
SQL_HAS_LEDGER = f"SELECT to_regclass('{SCHEMA}.events') IS NOT NULL"
# Whether the reader role is set up in this database (it may SELECT events: migration
# 6 ran here; the role itself is the cluster's) and whether the connected role may
# SET ROLE to it (membership; a superuser always may).
SQL_READER = (
    "SELECT coalesce(bool_or(has_table_privilege(r.oid, to_regclass(%s), 'SELECT')), false),"
    " coalesce(bool_or(pg_has_role(current_user, r.oid, 'MEMBER')), false), current_user"
    " FROM pg_roles AS r WHERE r.rolname = %s"
)
SQL_SET_READER = f"SET LOCAL ROLE {READER_ROLE}"

_SQL_HINT = (
    'list the tables with `hermes-ledger sql "SELECT table_name FROM'
    f" information_schema.tables WHERE table_schema = '{SCHEMA}'\"` and a table's columns"
    ' with `hermes-ledger sql "SELECT column_name, data_type FROM'
    " information_schema.columns WHERE table_name = 'events'\"`"
)
_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*|/\*)"""
    r"""|(?P<string>[eE]'(?:[^'\\]|\\.|'')*'?|'(?:[^']|'')*'?)"""
    r"""|(?P<ident>"(?:[^"]|"")*"?)"""
    r"""|(?P<dollar>\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$)"""
    r"""|(?P<cast>::)"""
    r"""|(?P<param>:[A-Za-z_][A-Za-z_0-9]*)"""
    r"""|(?P<semicolon>;)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z_0-9$]*)"""
    r"""|(?P<other>\s+|.)""",
    re.DOTALL,
)


class _Parsed:
    """A statement read for ``run_sql``: its first word, whether more statements
    follow, the ``:name`` placeholders it uses, and its text for psycopg with them
    (``%(name)s``, every other ``%`` doubled)."""

    def __init__(self, sql: str) -> None:
        self.first: str | None = None
        self.more = False
        self.names: list[str] = []
        self.words: set[str] = set()
        out: list[str] = []
        ended = False
        i = 0
        while i < len(sql):
            match = _TOKEN.match(sql, i)
            assert match is not None  # "other" matches any character
            kind, text = match.lastgroup, match.group()
            end = match.end()
            if kind == "comment" and text == "/*":
                end = _comment_end(sql, end)
                text = sql[i:end]
            elif kind == "dollar":
                close = sql.find(text, end)
                end = len(sql) if close < 0 else close + len(text)
                text = sql[i:end]
            significant = kind not in ("comment", "other") or not text.isspace()
            if kind == "semicolon":
                ended = ended or self.first is not None
            elif significant and kind != "comment":
                if ended:
                    self.more = True
                if self.first is None:
                    self.first = text.lower() if kind == "word" else text
            if kind == "word":
                self.words.add(text.lower())
            elif kind == "ident":
                self.words.add(text.strip('"').replace('""', '"'))
            if kind == "param":
                self.names.append(text[1:])
                out.append(f"%({text[1:]})s")
            else:  # psycopg reads every % of a text with bindings, quoted or not
                out.append(text.replace("%", "%%"))
            i = end
        self.text = "".join(out)


def _comment_end(sql: str, at: int) -> int:
    """Where the ``/*`` comment opened before ``at`` ends (PostgreSQL nests them)."""
    depth = 1
    while depth and at < len(sql):
        if sql.startswith("/*", at):
            depth, at = depth + 1, at + 2
        elif sql.startswith("*/", at):
            depth, at = depth - 1, at + 2
        else:
            at += 1
    return at


def warn_on_stderr(line: str) -> None:
    """The default ``warn`` of ``run_sql``: ``Warning: LINE`` on stderr."""
    print(f"Warning: {line}", file=sys.stderr, flush=True)


def assume_reader(conn: psycopg.Connection[Any], what: str) -> str | None:
    """In ``conn``'s open transaction, ``SET LOCAL ROLE hermes_ledger_reader`` when the
    connected role may; else leave the role as it is and return the one line that says
    so and what to GRANT (``what`` names the command: "the query", "the report")."""
    found: Any = conn.execute(SQL_READER, (f"{SCHEMA}.events", READER_ROLE)).fetchone()
    set_up, member, user = found
    if set_up and member:
        conn.execute(SQL_SET_READER)
        return None
    if not set_up:
        return (
            f"{what} runs as {user}, not as {READER_ROLE} (this ledger predates it): apply"
            " its migration with `hermes-ledger init --db URI` as the database's owner"
        )
    return (
        f"{what} runs as {user}, not as {READER_ROLE} (a role that may only read the"
        f" ledger): GRANT {READER_ROLE} TO {user} (as a superuser or a role with CREATEROLE)"
    )


def _failed(exc: psycopg.Error) -> LedgerError:
    message = (exc.diag.message_primary or str(exc)).strip()
    return LedgerError(f"the query failed: {message}", hint=_SQL_HINT)


def run_sql(
    dsn: str,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] = (),
    *,
    timeout: float | None = DEFAULT_SQL_TIMEOUT,
    warn: Callable[[str], None] = warn_on_stderr,
) -> QueryResult:
    """Run one query on the PostgreSQL ledger at ``dsn``, read-only, and return its
    columns and rows (see the module docstring). ``params`` binds the ``:name``
    placeholders (a mapping; a sequence only when empty). A write, or any statement
    but a query, raises the LedgerError ``ledger.query.run_sql`` raises, and nothing
    changes. ``timeout`` (seconds; None or 0: no limit) is the transaction's
    ``statement_timeout`` and bounds the time to the last row, as on SQLite
    (QueryTimeoutError). The query runs as ``hermes_ledger_reader`` when the
    connected role may assume it; when it may not, ``warn`` is given the line that
    says so (``assume_reader``) and the query runs as the connected role. The
    connection is closed once the rows are exhausted or closed."""
    text = sql.strip()
    parsed = _Parsed(text)
    if parsed.first is None:
        raise LedgerError("the query is empty", hint="e.g. SELECT count(*) FROM events")
    if parsed.more:
        raise LedgerError(
            "the query holds more than one statement",
            hint="run one statement per `hermes-ledger sql` call",
        )
    if parsed.first not in QUERY_KEYWORDS and parsed.first != "(":
        raise refuse_write(text)
    if parsed.words & SIDE_EFFECTS:
        raise refuse_write(text)
    bindings = _bindings(parsed, params)
    limit = timeout if timeout else None
    deadline = None if limit is None else time.monotonic() + limit
    conn = _connect(dsn, limit, warn)
    try:
        query = parsed.text if bindings is not None else text
        columns, rows = _start(conn, query, bindings, text, limit or 0)
    except BaseException:
        conn.close()
        raise
    result = _rows(conn, rows, text, deadline, limit or 0)
    next(result)  # started: closing the iterator (or dropping it) closes the connection
    return QueryResult(columns, result)


def _bindings(parsed: _Parsed, params: Sequence[Any] | Mapping[str, Any]) -> dict[str, Any] | None:
    """The values of ``parsed``'s placeholders (None when it has none)."""
    if not isinstance(params, Mapping):
        if params:
            raise LedgerError(
                "a PostgreSQL query takes its parameters by name",
                hint="write :NAME in the query and give -p NAME VALUE",
            )
        params = {}
    missing = sorted(set(parsed.names) - set(params))
    if missing:
        raise LedgerError(
            f"the query's parameters do not match its placeholders: no value for :{missing[0]}",
            hint="give one -p NAME VALUE per :NAME placeholder",
        )
    return {name: params[name] for name in parsed.names} if parsed.names else None


def _connect(dsn: str, limit: float | None, warn: Callable[[str], None]) -> psycopg.Connection[Any]:
    """A connection of its own in a read-only transaction, the timeout and search
    path set for it, as the reader role when it may be, on a database that holds a
    ledger."""
    where = describe_dsn(dsn)
    conn = connect(dsn)
    try:
        conn.execute(SQL_BEGIN)
        milliseconds = str(max(1, round(limit * 1000))) if limit else "0"
        conn.execute(SQL_SETTINGS, (milliseconds, f"{SCHEMA}, pg_temp"))
        found: Any = conn.execute(SQL_HAS_LEDGER).fetchone()
        unbounded = assume_reader(conn, "the query") if found[0] else None
    except psycopg.Error as exc:
        conn.close()
        raise LedgerError(f"cannot read the ledger at {where}: {str(exc).strip()}") from None
    if not found[0]:
        conn.close()
        raise LedgerError(
            f"there is no ledger at {where}",
            hint="create it with `hermes-ledger init --db postgresql://…`",
        )
    if unbounded is not None:
        warn(unbounded)
    return conn


def _start(
    conn: psycopg.Connection[Any],
    query: str,
    bindings: dict[str, Any] | None,
    text: str,
    limit: float,
) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Execute the query, return its columns and its rows (the first one read)."""
    cursor = conn.cursor()
    try:
        rows = cursor.stream(query, bindings)
        first = next(rows, None)
        if first is None:  # no rows: the same query again, for its columns
            cursor.execute(query, bindings)
            return _names(cursor), iter(())
        return _names(cursor), _chained(first, rows)
    except pg_errors.ReadOnlySqlTransaction:
        raise refuse_write(text) from None
    except pg_errors.QueryCanceled:
        raise QueryTimeoutError(limit) from None
    except psycopg.Error as exc:
        raise _failed(exc) from None


def _names(cursor: psycopg.Cursor[Any]) -> list[str]:
    return [column.name for column in cursor.description or ()]


def _chained(first: tuple[Any, ...], rest: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    yield first
    yield from rest


def _rows(
    conn: psycopg.Connection[Any],
    rows: Iterator[tuple[Any, ...]],
    text: str,
    deadline: float | None,
    limit: float,
) -> Iterator[tuple[Any, ...]]:
    """The rows (after one priming ``()``); closes ``conn`` at the end."""
    try:
        yield ()
        for row in rows:
            yield tuple(row)
            if deadline is not None and time.monotonic() > deadline:
                raise QueryTimeoutError(limit)
    except pg_errors.QueryCanceled:
        raise QueryTimeoutError(limit) from None
    except pg_errors.ReadOnlySqlTransaction:
        raise refuse_write(text) from None
    except psycopg.Error as exc:
        raise _failed(exc) from None
    finally:
        conn.close()
