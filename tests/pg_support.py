"""PostgreSQL for the tests: which server, a fresh database per test, login roles,
and a writer process for the concurrency tests.

The server is ``HERMES_LEDGER_TEST_PG`` (a libpq URI of a role that may CREATE
DATABASE and CREATE ROLE), else the local one. When it cannot be reached the
PostgreSQL tests skip, saying how to point them at a server, unless
``HERMES_LEDGER_REQUIRE_PG=1`` (``.ci/run`` sets it): then they fail.

Run as a script, it is the writer process of tests/test_postgres_log.py:
``python pg_support.py DSN STREAM COUNT`` appends COUNT events to STREAM, one per
call, after printing ``ready`` and reading one line from stdin (the start signal).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

__all__ = ["ADMIN_DSN", "admin_connection", "as_user", "dsn_for", "fresh_database", "login_role"]

DEFAULT_DSN = "postgresql://127.0.0.1:5432/postgres"
ADMIN_DSN = os.environ.get("HERMES_LEDGER_TEST_PG") or DEFAULT_DSN
REQUIRED = os.environ.get("HERMES_LEDGER_REQUIRE_PG") == "1"


def admin_connection() -> psycopg.Connection:
    """An autocommit connection to the test server; skips (fails when required) the
    test if the server cannot be reached."""
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = (
            f"no PostgreSQL server at {ADMIN_DSN} ({str(exc).strip().splitlines()[0]}); "
            "point the PostgreSQL tests at one with HERMES_LEDGER_TEST_PG="
            "postgresql://USER@HOST:PORT/postgres (a role that may CREATE DATABASE and "
            "CREATE ROLE)"
        )
        if REQUIRED:
            pytest.fail(f"HERMES_LEDGER_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)


def dsn_for(dbname: str, **changes: str) -> str:
    """The test server's connection string with another database (and user…)."""
    return psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=dbname, **changes)


def as_user(dsn: str, user: str) -> str:
    """``dsn`` logging in as ``user``."""
    return psycopg.conninfo.make_conninfo(dsn, user=user)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database ``hl_test_<random>`` on the test server (its DSN), dropped
    afterwards (with FORCE: a child process may still hold a connection)."""
    admin = admin_connection()
    name = f"hl_test_{secrets.token_hex(6)}"
    try:
        admin.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8'").format(sql.Identifier(name)))
        try:
            yield dsn_for(name)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        admin.close()


@contextmanager
def login_role(member_of: str) -> Iterator[str]:
    """A new LOGIN role ``hl_test_<random>`` granted ``member_of`` (its name), dropped
    afterwards. The server must let it log in (the CI server trusts local TCP)."""
    admin = admin_connection()
    name = f"hl_test_{secrets.token_hex(6)}"
    try:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(member_of)
            )
        )
        try:
            yield name
        finally:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        admin.close()


def _write(dsn: str, stream: str, count: int) -> None:
    from hermes_ledger.ledger.events import MessageAppended
    from hermes_ledger.ledger.postgres import PostgresLog

    with PostgresLog.open(dsn) as log:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(count):
            event = MessageAppended(session_id=stream, role="assistant", content=f"m{i}")
            log.append(stream, [event])
    print("done", flush=True)


if __name__ == "__main__":
    _write(sys.argv[1], sys.argv[2], int(sys.argv[3]))
