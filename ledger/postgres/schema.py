"""The PostgreSQL schema: numbered migrations, each applied in one transaction.

The migrations are the ``migrations/NNNN_name.sql`` files of this package; a
database's ``hermes_ledger.schema_migrations`` table names those it has. ``migrate``
applies the missing ones in order, each together with its row in one transaction,
under a transaction-scoped advisory lock, so two processes opening a new database at
once apply each migration once. A database that already has every migration is left
alone without any DDL, so the writer role (which may not create anything) can open it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources

import psycopg

from hermes_ledger.ledger.errors import LedgerError, LedgerTooNewError
from hermes_ledger.ledger.schema import Migration

__all__ = [
    "READER_ROLE",
    "SCHEMA",
    "WRITER_ROLE",
    "applied_versions",
    "load_migrations",
    "migrate",
]

SCHEMA = "hermes_ledger"
"""The PostgreSQL schema that holds the log (connections put it on their search_path)."""

WRITER_ROLE = "hermes_ledger_writer"
"""The role that may only SELECT and INSERT on the log (migration 2)."""
READER_ROLE = "hermes_ledger_reader"
"""The role that may only SELECT the ledger's tables (migration 6)."""

MIGRATION_LOCK_KEY = int.from_bytes(b"HRML", "big")
"""The ``pg_advisory_xact_lock`` key a migrating process holds."""
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

SQL_CREATE_SCHEMA = f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"
SQL_CREATE_MIGRATIONS = (
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
    " version integer PRIMARY KEY, name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())"
)
SQL_MIGRATIONS_EXIST = f"SELECT to_regclass('{SCHEMA}.schema_migrations') IS NOT NULL"
SQL_APPLIED = f"SELECT version FROM {SCHEMA}.schema_migrations ORDER BY version"
SQL_RECORD = f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)"
SQL_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(%s)"
SQL_SEARCH_PATH = f"SET LOCAL search_path = {SCHEMA}, pg_temp"


def load_migrations() -> list[Migration]:
    """The shipped PostgreSQL migrations, in order, checked to be numbered 1..n."""
    found = []
    for entry in (resources.files("hermes_ledger.ledger.postgres") / "migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migrations are not numbered 1..n: {migration.name} is #{expected}")
    return found


def applied_versions(conn: psycopg.Connection) -> list[int]:
    """The migration versions the database has (none when it holds no ledger yet)."""
    if not conn.execute(SQL_MIGRATIONS_EXIST).fetchone()[0]:  # type: ignore[index]
        return []
    return [row[0] for row in conn.execute(SQL_APPLIED).fetchall()]


def migrate(conn: psycopg.Connection, migrations: Sequence[Migration] | None = None) -> int:
    """Apply the migrations the database lacks; return its schema version.

    ``conn`` is in autocommit mode. LedgerTooNewError for a database that has
    migrations this code does not know; LedgerError (with a hint) when migrations are
    missing and the connected role may not apply them."""
    if migrations is None:
        migrations = load_migrations()
    known = {m.version for m in migrations}
    applied = applied_versions(conn)
    _refuse_newer(applied, known)
    if set(applied) >= known:
        return len(migrations)
    try:
        with conn.transaction():
            conn.execute(SQL_MIGRATION_LOCK, (MIGRATION_LOCK_KEY,))
            conn.execute(SQL_CREATE_SCHEMA)
            conn.execute(SQL_CREATE_MIGRATIONS)
        for migration in migrations:
            with conn.transaction():
                conn.execute(SQL_MIGRATION_LOCK, (MIGRATION_LOCK_KEY,))
                if migration.version in applied_versions(conn):
                    continue  # another process applied it meanwhile
                conn.execute(SQL_SEARCH_PATH)
                conn.execute(migration.sql.encode())
                conn.execute(SQL_RECORD, (migration.version, migration.name))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise LedgerError(
            f"the PostgreSQL ledger needs migrations this role may not apply: {exc}",
            hint="open it once as the database owner (that applies the migrations),"
            f" then connect as a member of {WRITER_ROLE}",
        ) from None
    final = applied_versions(conn)
    _refuse_newer(final, known)
    return len(final)


def _refuse_newer(applied: Sequence[int], known: set[int]) -> None:
    newer = [v for v in applied if v not in known]
    if newer:
        raise LedgerTooNewError(
            f"the PostgreSQL ledger has schema migration {max(newer)}, which this version"
            " of hermes-ledger does not know",
            hint="upgrade hermes-ledger",
        )
