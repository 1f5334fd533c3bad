"""The reader role on PostgreSQL (migration 6, ``hermes_ledger_reader``): SELECT on the
ledger's tables and nothing else. An auditor's LOGIN role granted it reads with every
reading command and writes by no path; ``sql`` and ``report`` run under it (``SET
LOCAL ROLE``) whoever connects, so a function a query calls has only its privileges;
a projection table a rebuild swaps in stays readable.

Real PostgreSQL (tests/pg_support.py): a fresh database per test, LOGIN roles made
and dropped by the test, click's CliRunner for the commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from backends import pg_uri
from click.testing import Result
from helpers import ManualClock
from pg_support import as_user, fresh_database, login_role
from psycopg import sql as pgsql

from hermes_ledger.gateway import SessionSource
from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.events import MessageAppended
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.schema import READER_ROLE, load_migrations, migrate
from hermes_ledger.projections import postgres as pg_projections
from hermes_ledger.projections.postgres.reporting import run_report_sql

Cli = Callable[..., Result]

KEY_SOURCE = SessionSource(platform="telegram", chat_id="5", chat_type="dm", user_id="5")


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A fresh ledger (the superuser's URI) with one session and two messages, the
    projections attached; and the session's id."""
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        clock = ManualClock()
        with PostgresLog.open(uri, clock=clock) as log:
            pg_projections.attach(log)
            store = SessionStore(log, GatewayConfig.load(tmp_path, env={}), clock)
            entry = store.get_or_create_session(KEY_SOURCE)
            store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi there"})
            store.append_to_transcript(entry.session_id, {"role": "assistant", "content": "hello"})
        yield uri, entry.session_id


@pytest.fixture
def auditor(owner: tuple[str, str]) -> Iterator[str]:
    """The URI of a LOGIN role granted hermes_ledger_reader, as an operator makes one."""
    with login_role(READER_ROLE) as name:
        yield pg_uri(as_user(owner[0], name))


def _events(uri: str) -> int:
    with psycopg.connect(uri) as conn:
        found = conn.execute("SELECT count(*) FROM hermes_ledger.events").fetchone()
    assert found is not None
    return int(found[0])


def test_the_reader_may_select_every_table_and_nothing_else(owner: tuple[str, str]) -> None:
    uri, _ = owner
    with psycopg.connect(uri) as conn:
        rows = conn.execute(
            "SELECT c.relname, p.privilege, has_table_privilege(%s, c.oid, p.privilege)"
            " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',"
            "  'REFERENCES', 'TRIGGER']) AS p(privilege)"
            " WHERE n.nspname = 'hermes_ledger' AND c.relkind IN ('r', 'v')",
            (READER_ROLE,),
        ).fetchall()
        functions = conn.execute(
            "SELECT p.proname FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'hermes_ledger' AND p.prosecdef"
            " AND has_function_privilege(%s, p.oid, 'EXECUTE')",
            (READER_ROLE,),
        ).fetchall()
        schema = conn.execute(
            "SELECT has_schema_privilege(%s, 'hermes_ledger', 'USAGE'),"
            " has_schema_privilege(%s, 'hermes_ledger', 'CREATE'),"
            " (SELECT rolcanlogin OR rolsuper FROM pg_roles WHERE rolname = %s)",
            (READER_ROLE, READER_ROLE, READER_ROLE),
        ).fetchone()
    tables = {name for name, _, _ in rows}
    assert {"events", "payloads", "event_bodies", "schema_migrations", "session_deadlines",
            "hook_subscriptions", "hook_deliveries", "session_map", "session_history", "messages",
            "projection_checkpoints"} <= tables  # fmt: skip
    held = {(name, privilege) for name, privilege, may in rows if may}
    assert held == {(name, "SELECT") for name in tables}
    assert functions == []  # hl_append_state (the append's lock) is not its to call
    assert schema == (True, False, False)


def test_an_auditor_reads_with_every_reading_command(
    owner: tuple[str, str], auditor: str, cli: Cli
) -> None:
    _, session_id = owner
    result = cli("sql", "--db", auditor, "SELECT count(*) AS n, current_user AS u FROM events",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 3, "u": READER_ROLE}]
    assert result.stderr == ""
    body = cli("sql", "--db", auditor, "SELECT data FROM event_bodies ORDER BY position", "--csv")
    assert body.exit_code == 0 and "hi there" in body.stdout, body.output
    report = cli("report", "busiest-sessions", "--db", auditor, "--json")
    assert report.exit_code == 0, report.output
    assert [row["session_id"] for row in json.loads(report.stdout)] == [session_id]
    sessions = cli("sessions", "--db", auditor, "--json")
    assert sessions.exit_code == 0, sessions.output
    assert [s["session_id"] for s in json.loads(sessions.stdout)] == [session_id]
    transcript = cli("transcript", session_id, "--db", auditor)
    assert transcript.exit_code == 0 and "hi there" in transcript.stdout, transcript.output
    events = cli("events", "--db", auditor)
    assert events.exit_code == 0 and "message_appended" in events.stdout, events.output
    verify = cli("verify", "--db", auditor)
    assert verify.exit_code == 0, verify.output


def test_doctor_passes_an_auditors_privileges(auditor: str, cli: Cli, tmp_path: Path) -> None:
    result = cli("doctor", "--db", auditor, "--config", str(tmp_path), "--json")
    found = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    who = str(psycopg.conninfo.conninfo_to_dict(auditor).get("user"))
    assert found["ledger"]["status"] == "ok", found["ledger"]
    assert found["privileges"]["status"] == "ok", found["privileges"]
    assert found["privileges"]["detail"] == (
        f"{who} may read the ledger, not append to it (a read-only role); PUBLIC holds nothing,"
        " only the owner may change events"
    )
    assert found["server"]["detail"].endswith(f"connected as {who} (a member of {READER_ROLE})")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO hermes_ledger.hook_subscriptions (hook, hook_events)"
        " VALUES ('evil', '{session:end}')",
        "UPDATE hermes_ledger.session_map SET status = 'ended'",
        "DELETE FROM hermes_ledger.payloads",
        "DELETE FROM hermes_ledger.hook_deliveries",
        "TRUNCATE hermes_ledger.session_deadlines",
        "SELECT * FROM hermes_ledger.hl_append_state('k')",
        "CREATE TABLE hermes_ledger.notes (t text)",
    ],
)
def test_an_auditor_may_not_write_even_on_its_own_connection(auditor: str, statement: str) -> None:
    """Outside `sql` (psql, a script): the role itself refuses, not a read-only mode."""
    with (
        psycopg.connect(auditor, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


def test_an_auditor_may_not_append_or_erase(owner: tuple[str, str], auditor: str, cli: Cli) -> None:
    uri, session_id = owner
    with PostgresLog.open(auditor) as log, pytest.raises(LedgerError):
        log.append("k", [MessageAppended(session_id=session_id, role="user", content="x")])
    erase = cli("erase", "--db", auditor, "--session-id", session_id, "--yes")
    assert erase.exit_code != 0, erase.output
    assert erase.output.startswith("Error: ")
    with psycopg.connect(uri) as conn:
        bodies = conn.execute("SELECT count(*) FROM hermes_ledger.payloads").fetchone()
    assert _events(uri) == 3 and bodies == (2,)


REFUSED = {
    "auditor": "must be a member of the role whose process is being terminated or member of"
    " pg_signal_backend",
    "owner": "must be a superuser to terminate superuser process",
}


def _other_backend(uri: str) -> psycopg.Connection:
    return psycopg.connect(uri, autocommit=True)


@pytest.mark.parametrize("who", ["auditor", "owner"])
def test_a_function_made_by_someone_else_cannot_end_another_session(
    owner: tuple[str, str], auditor: str, who: str, cli: Cli
) -> None:
    """A SECURITY INVOKER function whose name is on no list ends another backend of
    the connecting role: under the reader role it may not (it is a member of no
    role whose sessions it could signal)."""
    uri = owner[0]
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION public.hl_test_stop(p integer) RETURNS boolean"
            " LANGUAGE sql SECURITY INVOKER RETURN pg_terminate_backend(p)"
        )
    target = auditor if who == "auditor" else uri
    with _other_backend(target) as victim:
        pid = victim.info.backend_pid
        result = cli("sql", "--db", target, "SELECT public.hl_test_stop(:pid::integer) AS s",
                     "-p", "pid", str(pid))  # fmt: skip
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: the query failed: {REFUSED[who]}\n")
        assert victim.execute("SELECT 1").fetchone() == (1,)  # still connected


def test_a_function_made_by_someone_else_cannot_write_or_read_files_for_the_owner(
    owner: tuple[str, str], cli: Cli
) -> None:
    """The owner (here a superuser) is what the query would run as without the
    reader role: a SECURITY INVOKER function that writes through dblink (a connection
    of its own, not read-only) or reads a server file would then succeed."""
    uri = owner[0]
    with psycopg.connect(uri, autocommit=True) as conn:
        dbname, user = conn.info.dbname, conn.info.user
        conn.execute("CREATE EXTENSION dblink SCHEMA public")
        conn.execute(
            "CREATE FUNCTION public.hl_test_note() RETURNS text LANGUAGE sql SECURITY INVOKER"
            f" RETURN public.dblink_exec('host=127.0.0.1 dbname={dbname} user={user}',"
            " 'INSERT INTO hermes_ledger.hook_subscriptions (hook, hook_events)"
            " VALUES (''evil'', ''{session:end}'')')"
        )
        conn.execute(
            "CREATE FUNCTION public.hl_test_file() RETURNS text LANGUAGE sql SECURITY INVOKER"
            " RETURN pg_read_file('PG_VERSION')"
        )
    note = cli("sql", "--db", uri, "SELECT public.hl_test_note()")
    assert note.exit_code == 1, note.output
    assert note.output.startswith("Error: the query failed: password is required\n")
    read = cli("sql", "--db", uri, "SELECT public.hl_test_file()")
    assert read.exit_code == 1, read.output
    assert read.output.startswith(
        "Error: the query failed: permission denied for function pg_read_file\n"
    )
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT count(*) FROM hermes_ledger.hook_subscriptions").fetchone() == (
            0,
        )


@pytest.mark.parametrize(
    "query",
    [
        "WITH x AS (INSERT INTO hook_subscriptions (hook, hook_events)"
        " VALUES ('evil', '{session:end}') RETURNING 1) SELECT * FROM x",
        "SELECT pg_advisory_lock(1)",
        "SELECT * FROM hl_append_state('k')",
    ],
)
def test_an_auditors_sql_changes_nothing(
    owner: tuple[str, str], auditor: str, query: str, cli: Cli
) -> None:
    result = cli("sql", "--db", auditor, query)
    assert result.exit_code != 0, result.output
    assert result.output.startswith("Error: ")
    with psycopg.connect(owner[0]) as conn:
        assert conn.execute("SELECT count(*) FROM hermes_ledger.hook_subscriptions").fetchone() == (
            0,
        )
        assert conn.execute("SELECT pg_try_advisory_lock(1)").fetchone() == (True,)


def test_the_owners_sql_and_report_run_as_the_reader(owner: tuple[str, str], cli: Cli) -> None:
    uri = owner[0]
    with psycopg.connect(uri) as conn:
        me = conn.info.user
    result = cli("sql", "--db", uri, "SELECT current_user AS u, session_user AS s", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"u": READER_ROLE, "s": me}]
    assert result.stderr == ""
    with PostgresLog.open(uri) as log:
        rows = run_report_sql(log, "SELECT current_user AS u", {}, timeout=5)
        assert list(rows.rows) == [(READER_ROLE,)]
        after = log.connection.execute("SELECT current_user").fetchone()
    assert after == (me,)  # SET LOCAL: the log's connection is itself again


def test_a_gateways_sql_runs_as_the_reader(owner: tuple[str, str], cli: Cli) -> None:
    with login_role("hermes_ledger_writer") as gateway:
        uri = pg_uri(as_user(owner[0], gateway))
        result = cli("sql", "--db", uri, "SELECT current_user AS u", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"u": READER_ROLE}]


def test_a_role_that_may_not_assume_the_reader_says_what_to_grant(
    owner: tuple[str, str], cli: Cli
) -> None:
    """A role given SELECT by hand, not the reader's membership: the query runs as
    that role (its own privileges bound it), after one line that says so."""
    with login_role("pg_monitor") as name, psycopg.connect(owner[0], autocommit=True) as conn:
        conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA hermes_ledger TO {}").format(
            pgsql.Identifier(name)))  # fmt: skip
        conn.execute(pgsql.SQL("GRANT SELECT ON hermes_ledger.events TO {}").format(
            pgsql.Identifier(name)))  # fmt: skip
        try:
            uri = pg_uri(as_user(owner[0], name))
            result = cli("sql", "--db", uri, "SELECT current_user AS u", "--json")
        finally:
            conn.execute(pgsql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA hermes_ledger FROM {}")
                         .format(pgsql.Identifier(name)))  # fmt: skip
            conn.execute(pgsql.SQL("REVOKE ALL ON SCHEMA hermes_ledger FROM {}").format(
                pgsql.Identifier(name)))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"u": name}]
    assert result.stderr == (
        f"Warning: the query runs as {name}, not as {READER_ROLE} (a role that may only read"
        f" the ledger): GRANT {READER_ROLE} TO {name} (as a superuser or a role with"
        " CREATEROLE)\n"
    )


def test_a_rebuilt_projection_table_is_still_readable_by_the_reader(
    owner: tuple[str, str], auditor: str, cli: Cli
) -> None:
    uri = owner[0]
    with psycopg.connect(uri) as conn:
        before = conn.execute("SELECT 'hermes_ledger.messages'::regclass::oid").fetchone()
    replay = cli("replay", "--db", uri)
    assert replay.exit_code == 0, replay.output
    with psycopg.connect(uri) as conn:
        after = conn.execute("SELECT 'hermes_ledger.messages'::regclass::oid").fetchone()
    assert after != before  # fresh tables, swapped in
    result = cli("sql", "--db", auditor, "SELECT count(*) AS n FROM messages", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 2}]
    sessions = cli("sessions", "--db", auditor, "--json")
    assert sessions.exit_code == 0, sessions.output


@pytest.mark.parametrize("createrole", [True, False])
def test_an_owner_who_is_not_a_superuser(createrole: bool, cli: Cli) -> None:
    """Migration 6 makes the migrating owner a member of the reader role when it may
    grant it (CREATEROLE); an owner who may not is told the GRANT to ask for."""
    with login_role("pg_monitor") as name, fresh_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as admin:
            ident = pgsql.Identifier(name)
            if createrole:
                admin.execute(pgsql.SQL("ALTER ROLE {} CREATEROLE").format(ident))
            admin.execute(
                pgsql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    pgsql.Identifier(admin.info.dbname), ident
                )
            )
            admin.execute(
                pgsql.SQL("REVOKE {} FROM {}").format(pgsql.Identifier(READER_ROLE), ident)
            )
        uri = pg_uri(as_user(dsn, name))
        init = cli("init", "--db", uri)
        assert init.exit_code == 0, init.output
        result = cli("sql", "--db", uri, "SELECT current_user AS u", "--json")
    assert result.exit_code == 0, result.output
    if createrole:
        assert json.loads(result.stdout) == [{"u": READER_ROLE}]
        assert result.stderr == ""
    else:
        assert json.loads(result.stdout) == [{"u": name}]
        assert result.stderr == (
            f"Warning: the query runs as {name}, not as {READER_ROLE} (a role that may only"
            f" read the ledger): GRANT {READER_ROLE} TO {name} (as a superuser or a role"
            " with CREATEROLE)\n"
        )


def test_projections_a_superuser_creates_on_an_owners_ledger_are_readable(
    cli: Cli, tmp_path: Path
) -> None:
    """Migration 6's default privileges are the migrating role's; tables another role
    creates (a superuser's first attach or replay) get the reader's SELECT from
    create_tables."""
    with login_role("pg_monitor") as name, fresh_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                pgsql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    pgsql.Identifier(admin.info.dbname), pgsql.Identifier(name)
                )
            )
        init = cli("init", "--db", pg_uri(as_user(dsn, name)))
        assert init.exit_code == 0, init.output
        clock = ManualClock()
        with PostgresLog.open(pg_uri(dsn), clock=clock) as log:  # the superuser
            pg_projections.attach(log)
            store = SessionStore(log, GatewayConfig.load(tmp_path, env={}), clock)
            entry = store.get_or_create_session(KEY_SOURCE)
            store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi"})
        with login_role(READER_ROLE) as reader:
            uri = pg_uri(as_user(dsn, reader))
            result = cli("sql", "--db", uri, "SELECT count(*) AS n FROM messages", "--json")
            sessions = cli("sessions", "--db", uri, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"n": 1}]
    assert sessions.exit_code == 0, sessions.output
    assert [s["session_id"] for s in json.loads(sessions.stdout)] == [entry.session_id]


def test_a_ledger_before_the_reader_role_says_to_migrate(cli: Cli) -> None:
    """A database at schema v5 (no grants to the reader yet; ``sql`` applies no
    migrations): the query runs as the connecting role, saying how to get the reader."""
    with fresh_database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn, load_migrations()[:5])
        me = conn.info.user
        result = cli("sql", "--db", pg_uri(dsn), "SELECT current_user AS u", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"u": me}]
    assert result.stderr == (
        f"Warning: the query runs as {me}, not as {READER_ROLE} (this ledger predates it):"
        " apply its migration with `hermes-ledger init --db URI` as the database's owner\n"
    )
