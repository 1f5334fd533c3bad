"""A user's read-only SQL on a SQLite ledger (``hermes-ledger sql``): ``run_sql`` runs
one query on a connection that cannot write, bounded by a timeout; ``refuse_write``
is the refusal both backends give (``ledger.postgres.query`` runs the same command
on PostgreSQL). ``ledger.query`` re-exports these names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apsw
import apsw.ext

from hermes_ledger.ledger.errors import LedgerError, translate
from hermes_ledger.ledger.schema import connect
from hermes_ledger.ledger.store import Ledger

__all__ = [
    "DEFAULT_SQL_TIMEOUT",
    "SQL_PRAGMA_LOOKUPS",
    "SQL_PRAGMA_READS",
    "QueryResult",
    "QueryTimeoutError",
    "refuse_write",
    "run_sql",
]


@dataclass
class QueryResult:
    """The columns of a query and an iterator over its rows (tuples).

    Iterate the rows before closing the ledger the query ran on.
    """

    columns: list[str]
    rows: Iterator[tuple[Any, ...]]


# What the authorizer lets a query do: read, call functions, recurse, and the
# pragmas below. Anything else (INSERT, CREATE, ATTACH, VACUUM INTO, setting any
# pragma…) is refused when the statement is prepared, before it can run.
_ALLOWED = {
    apsw.SQLITE_SELECT,
    apsw.SQLITE_READ,
    apsw.SQLITE_FUNCTION,
    apsw.SQLITE_RECURSIVE,
}
# Pragmas that only report (``PRAGMA name``, no value), and those that describe
# or check the named table or index (``PRAGMA name(arg)``). docs/export.md lists
# the same names; no other pragma runs.
SQL_PRAGMA_READS = frozenset(
    {
        "application_id",
        "collation_list",
        "compile_options",
        "data_version",
        "database_list",
        "encoding",
        "foreign_keys",
        "freelist_count",
        "function_list",
        "module_list",
        "page_count",
        "page_size",
        "pragma_list",
        "schema_version",
        "user_version",
    }
)
SQL_PRAGMA_LOOKUPS = frozenset(
    {
        "foreign_key_check",
        "foreign_key_list",
        "index_info",
        "index_list",
        "index_xinfo",
        "integrity_check",
        "quick_check",
        "table_info",
        "table_list",
        "table_xinfo",
    }
)
DEFAULT_SQL_TIMEOUT = 30.0
# SQLite calls the progress handler every this many virtual-machine steps (well
# under a millisecond): it checks the deadline and lets Ctrl-C through.
_PROGRESS_STEPS = 10_000
_SQL_HINT = (
    'list the tables with `hermes-ledger sql "SELECT name FROM sqlite_schema WHERE type = '
    "'table'\"` and a table's columns with `hermes-ledger sql \"PRAGMA table_info(events)\"`"
)
_READ_ONLY_HINT = (
    "query with SELECT (e.g. SELECT type, count(*) FROM events GROUP BY type); "
    "the log changes only by appending events"
)
# What may follow the one statement: whitespace, semicolons and comments (an
# unterminated /* comment runs to the end, as SQLite reads it).
_NOTHING = re.compile(r"(?:\s+|;|--[^\n]*(?:\n|\Z)|/\*(?:[^*]|\*(?!/))*(?:\*/|\Z))*")


class QueryTimeoutError(LedgerError):
    """A ``run_sql`` query ran past its timeout and was stopped (nothing changed)."""

    hint = (
        "narrow the query (a WHERE or a LIMIT), or give it more time with "
        "--timeout SECONDS (0: no limit)"
    )

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the query ran longer than {seconds:g} s and was stopped")


def _authorize(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
    if action == apsw.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in SQL_PRAGMA_LOOKUPS or (name in SQL_PRAGMA_READS and arg2 is None):
            return apsw.SQLITE_OK
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK if action in _ALLOWED else apsw.SQLITE_DENY


def refuse_write(sql: str) -> LedgerError:
    """The error for a statement that would change the ledger (both backends)."""
    shown = " ".join(sql.split())
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return LedgerError(
        f"the ledger is open read-only for queries; refused: {shown}",
        hint=_READ_ONLY_HINT,
    )


def _is_nothing(sql: str) -> bool:
    """Whether ``sql`` is only whitespace, semicolons and comments."""
    return _NOTHING.fullmatch(sql) is not None


def _query_connection(led: Ledger) -> apsw.Connection:
    """A new read-only connection to ``led``'s file, in ``query_only`` mode with the
    authorizer: the ledger's own connection (which may be the one that appends) is
    never changed."""
    conn, _version = connect(led.path, readonly=True)
    try:
        conn.execute("PRAGMA query_only = ON").fetchall()
        conn.authorizer = _authorize
    except BaseException:
        conn.close()
        raise
    return conn


def run_sql(
    led: Ledger,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] = (),
    *,
    timeout: float | None = DEFAULT_SQL_TIMEOUT,
) -> QueryResult:
    """Run one SQL statement on ``led``'s file and return its columns and rows.

    The query runs on a connection of its own, opened read-only, in ``query_only``
    mode and with an authorizer that refuses, when the statement is prepared,
    anything but reads (and the pragmas in ``SQL_PRAGMA_READS`` and
    ``SQL_PRAGMA_LOOKUPS``): a statement that would write raises a LedgerError
    saying so, and nothing changes. ``led`` itself is not touched, so a read-write
    ``Ledger`` keeps appending. ``params`` are the bindings (a sequence for ``?``,
    a mapping for ``:name``).

    ``timeout`` (seconds, from this call to the last row, the caller's time between
    rows included; ``None`` or 0: no limit) bounds the query: past it the query
    stops with QueryTimeoutError. A KeyboardInterrupt (Ctrl-C) stops it within
    milliseconds. Either way, and once the rows are exhausted or closed, the
    query's connection is closed, which ends its read of the WAL.
    """
    text = sql.strip()
    if _is_nothing(text):
        raise LedgerError("the query is empty", hint="e.g. SELECT count(*) FROM events")
    limit = timeout if timeout else None
    deadline = None if limit is None else time.monotonic() + limit
    conn = _query_connection(led)
    try:
        columns, cursor = _start(conn, text, params, deadline)
    except apsw.InterruptError:
        conn.close()
        raise QueryTimeoutError(limit or 0) from None
    except BaseException:
        conn.close()
        raise
    rows = _rows(conn, cursor, text, deadline, limit or 0, str(led.path))
    next(rows)  # started: closing the iterator (or dropping it) closes the connection
    return QueryResult(columns, rows)


def _start(
    conn: apsw.Connection,
    text: str,
    params: Sequence[Any] | Mapping[str, Any],
    deadline: float | None,
) -> tuple[list[str], apsw.Cursor]:
    """Check that ``text`` is one read, then execute it (its first step)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise LedgerError(
            "the query is not valid UTF-8 text (it holds bytes the terminal could not decode)",
            hint="check the shell's locale, or write the query in UTF-8",
        ) from None
    try:
        info = apsw.ext.query_info(conn, text)
    except apsw.AuthError:
        raise refuse_write(text) from None
    except apsw.Error as exc:
        raise LedgerError(f"the query failed: {exc}", hint=_SQL_HINT) from None
    if not _is_nothing(info.query_remaining or ""):
        raise LedgerError(
            "the query holds more than one statement",
            hint="run one statement per `hermes-ledger sql` call",
        )
    if not info.is_readonly:
        raise refuse_write(text)

    def progress() -> bool:
        # Python code runs here, so a pending Ctrl-C is raised here (SQLite stops).
        return deadline is not None and time.monotonic() > deadline

    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    columns = [name for name, _decl in info.description or ()]
    try:
        return columns, conn.execute(text, params)
    except (apsw.AuthError, apsw.ReadOnlyError):
        raise refuse_write(text) from None
    except (apsw.BindingsError, KeyError) as exc:  # KeyError: a :NAME with no value
        raise LedgerError(
            f"the query's parameters do not match its placeholders: {exc}",
            hint="give one -p NAME VALUE per :NAME placeholder",
        ) from None
    except apsw.InterruptError:
        raise
    except apsw.Error as exc:
        raise LedgerError(f"the query failed: {exc}", hint=_SQL_HINT) from None


def _rows(
    conn: apsw.Connection,
    cursor: apsw.Cursor,
    text: str,
    deadline: float | None,
    limit: float,
    path: str,
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``cursor`` (after one priming ``None``); closes ``conn`` at the end."""
    try:
        yield ()
        for row in cursor:
            yield row
            if deadline is not None and time.monotonic() > deadline:
                raise QueryTimeoutError(limit)
    except apsw.InterruptError:
        raise QueryTimeoutError(limit) from None
    except (apsw.AuthError, apsw.ReadOnlyError):
        raise refuse_write(text) from None
    except apsw.Error as exc:
        translate(exc, path=path)
    finally:
        conn.close(True)  # force: also when the caller stops between rows
