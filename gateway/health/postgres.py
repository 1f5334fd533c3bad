"""``hermes-ledger doctor`` on a PostgreSQL ledger (``--db postgresql://…``).

The checks that mean the same on both backends are the SQLite ones, run on the
``PostgresLog`` (``anchors``, ``hooks``, ``deliveries``, ``spool``); the others are
spelled for PostgreSQL here:

* ``server``: the connection, the server's version, who is connected, and whether
  the server takes writes (a standby does not);
* ``ledger``: the hash chain and payloads end to end, the schema version against
  this code's migrations, and the append-only triggers enabled;
* ``projections``: each projection's checkpoint at the head;
* ``closes``: stuck closes and overdue sessions (``session_deadlines``);
* ``privileges`` (instead of the ledger file's modes): the connected role may read
  (and append to) the ledger, PUBLIC holds nothing, and no role but the owner may
  change or remove events;
* ``file_modes``: the files that stay in ``$HERMES_HOME`` (anchor key and witness,
  hooks, spool).

Not on PostgreSQL, and said so in the report: SQLite's page integrity check and the
modes of a ledger file and its ``-wal``/``-shm``. Nothing is written: the schema is
looked at before ``PostgresLog.open`` (which would apply missing migrations), and a
database it would change is reported instead of opened.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.health.checks import (
    check_anchors,
    check_deliveries,
    check_hooks,
    check_spool,
    closes_check,
)
from hermes_ledger.gateway.health.modes import check_file_modes
from hermes_ledger.gateway.health.results import Check, DoctorReport
from hermes_ledger.ledger.anchors import Witness
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.log import describe_dsn
from hermes_ledger.ledger.postgres.schema import READER_ROLE, load_migrations
from hermes_ledger.projections import PROJECTIONS
from hermes_ledger.projections.postgres.tables import read_checkpoints, tables_exist

__all__ = ["NOT_ON_POSTGRES", "diagnose_postgres"]

NOT_ON_POSTGRES = (
    "SQLite's page integrity check (the server's own: data checksums, pg_amcheck)",
    "the modes of a ledger file and its -wal/-shm (the privileges check stands in)",
)
"""The SQLite checks that have no meaning on a PostgreSQL ledger."""

SCHEMA = "hermes_ledger"
WRITER_ROLE = "hermes_ledger_writer"
TRIGGERS = (
    ("events", "events_refuse_update"),
    ("events", "events_refuse_delete"),
    ("events", "events_refuse_truncate"),
    ("payloads", "payloads_refuse_update"),
    ("payloads", "payloads_refuse_truncate"),
)
"""The append-only triggers of migrations 1 and 3."""

SQL_SERVER = (
    "SELECT current_setting('server_version'), current_user, pg_is_in_recovery(),"
    " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
    " pg_has_role(current_user, (SELECT datdba FROM pg_database"
    "  WHERE datname = current_database()), 'MEMBER'),"
    " EXISTS (SELECT FROM pg_roles WHERE rolname = %s) AND pg_has_role(current_user, %s, 'USAGE'),"
    " EXISTS (SELECT FROM pg_roles WHERE rolname = %s) AND pg_has_role(current_user, %s, 'USAGE')"
)
SQL_TABLE = (
    "SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relname = %s"
)
_OID = (
    "(SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %(schema)s AND c.relname = '{}')"
)
# By oid, not by name: looking a name up in a schema the role has no USAGE on is an
# error, where the question is whether it may.
SQL_MAY = (
    "SELECT has_schema_privilege(%(schema)s, 'USAGE'),"
    f" has_table_privilege({_OID.format('events')}, 'SELECT'),"
    f" has_table_privilege({_OID.format('events')}, 'INSERT'),"
    f" has_table_privilege({_OID.format('schema_migrations')}, 'SELECT')"
)
SQL_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM hermes_ledger.schema_migrations"
# Who, besides the table's owner, holds a privilege on the ledger's tables: PUBLIC
# (grantee 0) holding anything, or any role holding a privilege that changes events.
SQL_GRANTS = (
    "SELECT c.relname, coalesce(r.rolname, 'PUBLIC'), a.privilege_type"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " CROSS JOIN LATERAL aclexplode(c.relacl) AS a"
    " LEFT JOIN pg_roles AS r ON r.oid = a.grantee"
    " WHERE n.nspname = %s AND c.relkind IN ('r', 'v', 'p') AND a.grantee <> c.relowner"
    " AND (a.grantee = 0 OR (c.relname = 'events'"
    "  AND a.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER', 'REFERENCES')))"
    ' ORDER BY c.relname COLLATE "C", coalesce(r.rolname, \'PUBLIC\') COLLATE "C",'
    " a.privilege_type"
)
SQL_TRIGGERS = (
    "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger AS t"
    " JOIN pg_class AS c ON c.oid = t.tgrelid JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND NOT t.tgisinternal"
)
SQL_STUCK_CLOSING = (
    "SELECT session_key, session_id, updated_at FROM session_map"
    " WHERE status = 'closing' AND updated_at <= %s COLLATE \"C\""
    ' ORDER BY updated_at COLLATE "C"'
)
SQL_OVERDUE = (
    "SELECT d.session_key, d.session_id, d.deadline FROM session_deadlines AS d"
    " JOIN session_map AS m ON m.session_key = d.session_key AND m.session_id = d.session_id"
    " WHERE m.status = 'open' AND d.deadline <= %s ORDER BY d.deadline"
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:g} min"


@dataclass(frozen=True)
class _Role:
    """What the connected role is (``SQL_SERVER``) and may do (``SQL_MAY``, once the
    ledger's schema is known to exist)."""

    name: str
    superuser: bool
    owner: bool
    writer: bool
    reader: bool = False
    usage: bool = False
    select: bool = False
    insert: bool = False
    migrations: bool = False

    @property
    def kind(self) -> str:
        if self.superuser:
            return "a superuser"
        if self.owner:
            return "the database's owner"
        if self.writer:
            return f"a member of {WRITER_ROLE}"
        if self.reader:
            return f"a member of {READER_ROLE}"
        return f"not a member of {WRITER_ROLE}"

    @property
    def may_read(self) -> bool:
        return self.usage and self.select and self.migrations


def _grant_hint(role: str) -> str:
    return (
        f"as the database's owner: GRANT {WRITER_ROLE} TO {role} (a gateway), or connect as a"
        f" member of {WRITER_ROLE}"
    )


def check_server(conn: psycopg.Connection[Any], where: str) -> tuple[Check, _Role]:
    """``server``: the version, the role and whether the server takes writes (and
    who the connected role is)."""
    row = conn.execute(SQL_SERVER, (WRITER_ROLE,) * 2 + (READER_ROLE,) * 2).fetchone()
    assert row is not None
    version, user, standby, superuser, owner, writer, reader = row
    role = _Role(user, bool(superuser), bool(owner), bool(writer), bool(reader))
    detail = f"PostgreSQL {version} at {where}, connected as {user} ({role.kind})"
    if standby:
        standby_detail = f"{detail}; the server is a standby: it takes no appends"
        return Check("server", "warn", standby_detail, "point gateways at the primary"), role
    return Check("server", "ok", detail), role


def _privileges(conn: psycopg.Connection[Any], role: _Role) -> _Role:
    """``role`` with what it may do on the ledger's schema and tables."""
    may = conn.execute(SQL_MAY, {"schema": SCHEMA}).fetchone()
    assert may is not None
    usage, select, insert, migrations = (bool(v) for v in may)
    return replace(role, usage=usage, select=select, insert=insert, migrations=migrations)


def check_privileges(conn: psycopg.Connection[Any], role: _Role) -> Check:
    """``privileges``: the role may read (and append to) the ledger; PUBLIC holds
    nothing on its tables; no role but the owner may change or remove events."""
    fails: list[str] = []
    if not role.may_read:
        missing = [what for what, ok in (
            (f"USAGE on schema {SCHEMA}", role.usage), (f"SELECT on {SCHEMA}.events", role.select),
            (f"SELECT on {SCHEMA}.schema_migrations", role.migrations),
        ) if not ok]  # fmt: skip
        fails.append(f"{role.name} may not read the ledger (no {', no '.join(missing)})")
    grants = conn.execute(SQL_GRANTS, (SCHEMA,)).fetchall()
    for table, grantee, privilege in grants:
        if grantee == "PUBLIC":
            fails.append(f"PUBLIC holds {privilege} on {SCHEMA}.{table}")
        else:
            fails.append(f"{grantee} holds {privilege} on {SCHEMA}.events: it may change the log")
    if fails:
        hint = (
            _grant_hint(role.name)
            if not role.may_read and not grants
            else "as the owner: REVOKE those privileges (the migrations grant only SELECT and"
            f" INSERT, to {WRITER_ROLE}); then verify the log and its anchors"
        )
        return Check("privileges", "fail", "; ".join(fails), hint)
    if not role.insert and not (role.superuser or role.owner):
        return Check(
            "privileges", "ok",
            f"{role.name} may read the ledger, not append to it (a read-only role); PUBLIC"
            " holds nothing, only the owner may change events",
        )  # fmt: skip
    return Check(
        "privileges", "ok",
        f"{role.name} may read and append; PUBLIC holds nothing on the ledger's tables, only"
        " the owner may change events",
    )  # fmt: skip


def _triggers(conn: psycopg.Connection[Any]) -> list[str]:
    """The append-only triggers that are missing or disabled."""
    found = {(t, n): e for t, n, e in conn.execute(SQL_TRIGGERS, (SCHEMA,)).fetchall()}
    problems = []
    for table, name in TRIGGERS:
        state = found.get((table, name))
        if state is None:
            problems.append(f"trigger {name} on {table} is missing")
        elif state == "D":
            problems.append(f"trigger {name} on {table} is disabled")
    return problems


def check_ledger(log: PostgresLog, version: int) -> Check:
    """``ledger``: the chain and payloads end to end, the append-only triggers."""
    try:
        chain = log.verify()
    except (LedgerError, psycopg.Error) as exc:
        return Check("ledger", "fail", f"the log could not be read: {exc}",
                     "check the role's privileges; restore the ledger from a backup")  # fmt: skip
    problems = [] if chain.ok else [f"hash chain {chain}"]
    problems += _triggers(log.connection)
    if problems:
        return Check(
            "ledger", "fail", "; ".join(problems),
            "someone changed the database: keep it as evidence, restore the ledger from a backup"
            " or an export taken before the change (`hermes-ledger verify --db URI` shows the"
            " details)",
        )  # fmt: skip
    return Check(
        "ledger", "ok",
        f"hash chain intact ({_plural(chain.checked, 'event')}), schema v{version} as migrated,"
        f" {len(TRIGGERS)} append-only triggers enabled",
    )  # fmt: skip


def check_projections(log: PostgresLog) -> Check:
    """``projections``: each projection's checkpoint at the head, at this code's version."""
    conn = log.connection
    head = log.head()
    if not tables_exist(conn):
        return Check(
            "projections", "warn", f"none in this database (head {head}): sessions, history,"
            " transcript, search and report need them",
            "create them with `hermes-ledger replay --db URI` (as the database owner)",
        )  # fmt: skip
    checkpoints = read_checkpoints(conn)
    behind = []
    for projection in PROJECTIONS:
        recorded = checkpoints.get(projection.name)
        if recorded is None:
            behind.append(f"{projection.name} was never built")
        elif recorded[0] != projection.version:
            behind.append(f"{projection.name} is at version {recorded[0]}, this code builds"
                          f" {projection.version}")  # fmt: skip
        elif recorded[1] < head:
            behind.append(f"{projection.name} is {_plural(head - recorded[1], 'event')} behind")
    if behind:
        return Check(
            "projections", "warn", f"{'; '.join(behind)} (head {head})",
            "the next writer with projections attached catches them up; `hermes-ledger replay"
            " --db URI` rebuilds them now",
        )  # fmt: skip
    return Check(
        "projections", "ok", f"{_plural(len(PROJECTIONS), 'projection')} at the head ({head})"
    )


def check_closes(log: PostgresLog, now: datetime, stuck_after: timedelta) -> Check:
    """``closes``: no session ``closing`` for longer than ``stuck_after``, none past its
    deadline by more than that."""
    conn = log.connection
    if not tables_exist(conn):
        return Check("closes", "ok", "no sessions yet (no session map)")
    cutoff = now - stuck_after
    stuck = conn.execute(SQL_STUCK_CLOSING, (format_utc(cutoff),)).fetchall()
    overdue = [(k, s, format_utc(d)) for k, s, d in conn.execute(SQL_OVERDUE, (cutoff,))]
    return closes_check(stuck, overdue, stuck_after, "`hermes-ledger run` against this database")


def _unopened(
    ledger: Check, extra: list[Check], root: Path, hooks: Path, at: datetime, stuck: timedelta
) -> DoctorReport:
    checks = [*extra[:1], ledger, check_hooks(hooks), check_spool(root, at, stuck), *extra[1:],
              check_file_modes(None, root, hooks)]  # fmt: skip
    return DoctorReport(tuple(checks), ledger, NOT_ON_POSTGRES)


@dataclass(frozen=True)
class _Inspected:
    server: Check
    privileges: Check
    version: int


def _inspect(conn: psycopg.Connection[Any], where: str) -> _Inspected | tuple[Check, list[Check]]:
    """What the catalogue says before the ledger is opened: the server, the role's
    privileges and the schema version; or the ``ledger`` failure (and the checks
    made) when there is no ledger or the role may not read it."""
    server, role = check_server(conn, where)
    user = role.name
    if conn.execute(SQL_TABLE, (SCHEMA, "events")).fetchone() is None:
        return Check("ledger", "fail", f"there is no ledger in {where} (no {SCHEMA}.events)",
                     "create one with `hermes-ledger init --db URI` (as the database"
                     " owner)"), [server]  # fmt: skip
    role = _privileges(conn, role)
    privileges = check_privileges(conn, role)
    if not role.may_read:
        return Check("ledger", "fail", f"{user} may not read the ledger in {where}",
                     _grant_hint(user)), [server, privileges]  # fmt: skip
    row = conn.execute(SQL_SCHEMA_VERSION).fetchone()
    return _Inspected(server, privileges, int(row[0]) if row else 0)


def diagnose_postgres(
    dsn: str, *, root: Path, hooks: Path, settings: RunnerSettings, at: datetime,
    stuck_after: timedelta,
) -> DoctorReport:  # fmt: skip
    """``checks.diagnose`` for the PostgreSQL ledger at ``dsn`` (see the module)."""
    where = describe_dsn(dsn)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, client_encoding="utf8")
    except psycopg.Error as exc:
        failed = Check("ledger", "fail", f"cannot connect to PostgreSQL at {where}: "
                       f"{str(exc).strip()}", "check the connection string (host, port, dbname,"
                       " user) and that the server is running")  # fmt: skip
        return _unopened(failed, [], root, hooks, at, stuck_after)
    with conn:
        try:
            found = _inspect(conn, where)
        except psycopg.Error as exc:
            failed = Check("ledger", "fail", f"cannot read the catalogue of {where}:"
                           f" {str(exc).strip()}", "check the role's privileges")  # fmt: skip
            return _unopened(failed, [], root, hooks, at, stuck_after)
    if isinstance(found, tuple):
        failed, extra = found
        return _unopened(failed, extra, root, hooks, at, stuck_after)
    server, privileges, version = found.server, found.privileges, found.version
    known = len(load_migrations())
    if version != known:
        newer = version > known
        failed = Check(
            "ledger", "fail",
            f"the ledger in {where} is at schema v{version}, this code's is v{known}",
            "upgrade hermes-ledger" if newer else
            "apply the missing migrations with `hermes-ledger init --db URI` (as the owner)",
        )  # fmt: skip
        return _unopened(failed, [server, privileges], root, hooks, at, stuck_after)
    try:
        log = PostgresLog.open(dsn)
    except LedgerError as exc:
        failed = Check("ledger", "fail", str(exc), exc.hint)
        return _unopened(failed, [server, privileges], root, hooks, at, stuck_after)
    with log:
        checks = [
            server,
            check_ledger(log, version),
            check_anchors(log, Witness.in_directory(root), settings),
            check_projections(log),
            check_hooks(hooks),
            check_deliveries(log),
            check_closes(log, at, stuck_after),
        ]
    checks += [check_spool(root, at, stuck_after), privileges, check_file_modes(None, root, hooks)]
    return DoctorReport(tuple(checks), None, NOT_ON_POSTGRES)
