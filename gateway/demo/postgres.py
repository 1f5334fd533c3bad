"""The demo on PostgreSQL: making room for a fresh demo ledger in a database.

The SQLite demo removes a previous demo ledger file; here the ledger is the
database's ``hermes_ledger`` schema. ``prepare_demo_database`` leaves a database
with no ledger alone (opening the log creates one) and replaces a demo ledger by
dropping that schema (CASCADE), in one transaction that first locks the log's
``events`` table and asks the SQLite demo's question (``day.SQL_NOT_DEMO``: does
any event lie outside the demo's streams?). Anything else — a schema of that name
that is not a ledger, a ledger newer than this code, one holding other sessions —
is refused with nothing changed. The drop touches only the ledger's own schema:
if it would take anything outside it along (a view or a constraint of the
operator's over the ledger's tables), the transaction is rolled back and the
demo refuses. Roles belong to the cluster and are never dropped.
"""

from __future__ import annotations

from typing import Any

import psycopg

from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres import SCHEMA, describe_dsn, load_migrations
from hermes_ledger.ledger.postgres.log import connect
from hermes_ledger.ledger.postgres.schema import applied_versions

__all__ = ["prepare_demo_database"]

LOCK_TIMEOUT = "10s"
"""How long the demo waits for other connections' transactions on its ledger."""
SQL_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
SQL_HAS_SCHEMA = f"SELECT to_regnamespace('{SCHEMA}') IS NOT NULL"
SQL_HAS_EVENTS = f"SELECT to_regclass('{SCHEMA}.events') IS NOT NULL"
SQL_LOCK_EVENTS = f"LOCK TABLE {SCHEMA}.events IN ACCESS EXCLUSIVE MODE"
SQL_SEARCH_PATH = f"SET LOCAL search_path = {SCHEMA}, pg_temp"
SQL_DROP = f"DROP SCHEMA {SCHEMA} CASCADE"
SQL_OUTSIDE = f"""\
SELECT 'relation ' || c.oid::regclass::text FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname <> '{SCHEMA}' AND n.nspname NOT LIKE 'pg_toast%'
UNION ALL SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname <> '{SCHEMA}'
UNION ALL SELECT 'type ' || t.oid::regtype::text FROM pg_type t
  JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE n.nspname <> '{SCHEMA}' AND n.nspname NOT LIKE 'pg_toast%'
  AND t.typrelid = 0 AND t.typcategory <> 'A'
UNION ALL SELECT 'constraint ' || co.conname || ' ' || co.oid FROM pg_constraint co
  JOIN pg_namespace n ON n.oid = co.connamespace WHERE n.nspname <> '{SCHEMA}'
UNION ALL SELECT 'trigger ' || tg.tgname || ' on ' || tg.tgrelid::regclass::text
  FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname <> '{SCHEMA}'
UNION ALL SELECT 'default of ' || d.adrelid::regclass::text || ' ' || d.oid FROM pg_attrdef d
  JOIN pg_class c ON c.oid = d.adrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname <> '{SCHEMA}'
UNION ALL SELECT 'policy ' || po.polname || ' ' || po.oid FROM pg_policy po
  JOIN pg_class c ON c.oid = po.polrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname <> '{SCHEMA}'
UNION ALL SELECT 'extension ' || e.extname FROM pg_extension e
  JOIN pg_namespace n ON n.oid = e.extnamespace WHERE n.nspname <> '{SCHEMA}'
UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname <> '{SCHEMA}'"""
"""Every object of the database outside the ledger's schema that a DROP SCHEMA …
CASCADE could take along (the toast tables of the ledger's own tables aside; the
row and array types that go with a relation or a type are not listed apart)."""


def prepare_demo_database(dsn: str, sql_not_demo: str, foreign: LedgerError) -> None:
    """Make room for a fresh demo ledger in the database at ``dsn``: nothing to do
    when it holds no ledger; drop the ledger's schema when ``sql_not_demo`` (one
    count, run with the ledger's schema on the search path) finds no event but the
    demo's; otherwise raise ``foreign`` with nothing changed (see the module
    docstring)."""
    where = describe_dsn(dsn)
    conn = connect(dsn)
    try:
        with conn.transaction():
            _replace(conn, sql_not_demo, foreign, where)
    except psycopg.errors.LockNotAvailable:
        raise LedgerError(
            f"the demo ledger at {where} is in use: another connection kept it busy"
            f" for {LOCK_TIMEOUT}",
            hint="stop what runs on the demo database (hermes-ledger run, serve), then"
            " run the demo again",
        ) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise LedgerError(
            f"this role may not replace the demo ledger at {where}: {str(exc).strip()}",
            hint="run the demo as the owner of the demo database (it drops and"
            f" re-creates the {SCHEMA} schema)",
        ) from None
    except psycopg.Error as exc:
        raise LedgerError(
            f"cannot replace the demo ledger at {where}: {str(exc).strip()}",
            hint="check the database, or give the demo a database of its own",
        ) from None
    finally:
        conn.close()


def _replace(
    conn: psycopg.Connection[Any], sql_not_demo: str, foreign: LedgerError, where: str
) -> None:
    if not _one(conn, SQL_HAS_SCHEMA):
        return  # no ledger: opening the log creates it
    if not _one(conn, SQL_HAS_EVENTS):
        raise foreign  # a schema of the ledger's name that holds no log
    known = {m.version for m in load_migrations()}
    if not set(applied_versions(conn)) <= known:
        raise foreign  # a newer hermes-ledger's ledger: as on SQLite, not opened
    conn.execute(SQL_LOCK_TIMEOUT)
    conn.execute(SQL_LOCK_EVENTS)  # no append may slip in between the count and the drop
    conn.execute(SQL_SEARCH_PATH)
    if _one(conn, sql_not_demo):
        raise foreign
    before = _outside(conn)
    conn.execute(SQL_DROP)
    lost = sorted(before - _outside(conn))
    if lost:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        raise LedgerError(
            f"the demo ledger at {where} was not replaced: dropping it would drop {shown},"
            " which depend on it",
            hint="drop those objects yourself, or give the demo a database of its own",
        )


def _one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql.encode()).fetchone()
    return None if row is None else row[0]


def _outside(conn: psycopg.Connection[Any]) -> set[str]:
    return {row[0] for row in conn.execute(SQL_OUTSIDE.encode()).fetchall()}
