"""``hermes-ledger demo --db postgresql://…`` (issue 14): the SQLite demo's story in a
PostgreSQL database, with its safety rules: the demo's ledger (the database's
``hermes_ledger`` schema) is replaced on each run, and a database holding anything
else of the ledger's is refused untouched. Real PostgreSQL (tests/pg_support.py),
real click invocations."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import pg_uri
from click.testing import Result
from pg_support import fresh_database

from hermes_ledger.ledger import open_log
from hermes_ledger.ledger.events import SessionStarted, Source
from hermes_ledger.ledger.postgres import describe_dsn, load_migrations, migrate

Cli = Callable[..., Result]
ROLES = ("hermes_ledger_writer", "hermes_ledger_eraser", "hermes_ledger_reader")


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as found:
        yield found


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [tuple(row) for row in conn.execute(sql.encode()).fetchall()]


def _ledger_state(dsn: str) -> list[tuple[Any, ...]]:
    """Head, event count, head hash and the ledger's tables: what a refusal keeps."""
    return _rows(
        dsn,
        "SELECT (SELECT count(*) FROM hermes_ledger.events),"
        " (SELECT max(position) FROM hermes_ledger.events),"
        " (SELECT hash FROM hermes_ledger.events ORDER BY position DESC LIMIT 1),"
        " (SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
        "  WHERE schemaname = 'hermes_ledger')",
    )


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def _demo(cli: Cli, db: str | Path, *extra: str) -> str:
    return _ok(cli("demo", "--db", str(db), *extra))


def test_the_same_story_as_on_sqlite_into_a_ledger_that_verifies(
    dsn: str, cli: Cli, tmp_path: Path, hermes_home: Path
) -> None:
    uri = pg_uri(dsn)
    sqlite = tmp_path / "d.db"
    on_sqlite = _demo(cli, sqlite)
    on_postgres = _demo(cli, uri)
    export = hermes_home / "ledger-demo-export.jsonl"
    normalised = [
        on_sqlite.replace(str(tmp_path / "d-export.jsonl"), "EXPORT").replace(str(sqlite), "DB"),
        on_postgres.replace(str(export), "EXPORT")
        .replace("postgresql://" + describe_dsn(uri, user=False), "DB")
        .replace(describe_dsn(uri), "DB"),
    ]
    assert normalised[0] == normalised[1]
    assert on_postgres.startswith(f"Simulating a gateway day into {describe_dsn(uri)} …\n")
    assert "Exported 72 events to " + str(export) in on_postgres
    assert "agent:demo:telegram:dm:1001" in on_postgres
    # The same events in every stream (their ids are random, so their hashes differ;
    # the order of one tick's closes across streams is each scheduler's own).
    exported = [
        sorted(
            (e["stream"], e["version"], e["type"], e["session_id"], json.dumps(e["data"]))
            for e in map(json.loads, p.read_text().splitlines()[:-1])
        )
        for p in (tmp_path / "d-export.jsonl", export)
    ]
    assert exported[0] == exported[1] and len(exported[1]) == 72
    with open_log(uri) as log:
        report = log.verify()
        assert report.ok, report.problem
        assert log.head() == 72
    assert "projections: ok" in _ok(cli("verify", "--db", uri))


def test_a_second_run_replaces_the_demo_ledger(dsn: str, cli: Cli) -> None:
    uri = pg_uri(dsn)
    first = json.loads(_demo(cli, uri, "--json"))
    state = _ledger_state(dsn)
    second = json.loads(_demo(cli, uri, "--json"))
    assert second == first and first["ledger"] == describe_dsn(uri)
    again = _ledger_state(dsn)
    assert state[0][:2] == again[0][:2] == (72, 72)  # the same 72 events: not doubled
    assert again[0][3] == state[0][3]  # the same tables
    assert again[0][2] != state[0][2]  # a new log (new event ids), not the old one kept
    assert _rows(dsn, "SELECT count(*) FROM hermes_ledger.session_map") == [(7,)]
    with open_log(uri) as log:
        assert log.verify().ok


def test_a_ledger_with_other_sessions_is_refused_untouched(
    dsn: str, cli: Cli, hermes_home: Path
) -> None:
    uri = pg_uri(dsn)
    tg = Source(platform="telegram", chat_id="1")
    with open_log(uri) as log:
        log.append("agent:demo:telegram:dm:1", [SessionStarted(session_id="d1", source=tg)])
        log.append("agent:main:telegram:dm:1", [SessionStarted(session_id="m1", source=tg)])
    before = _ledger_state(dsn)
    for args in ((), ("--json",)):
        result = cli("demo", "--db", uri, *args)
        assert result.exit_code == 1, result.output
        assert result.output.splitlines() == [
            f"Error: {describe_dsn(uri)} is not a demo ledger: the demo replaces its ledger"
            " on each run",
            "Try: give the demo a database of its own, e.g. createdb hermes_demo, then"
            " --db postgresql://HOST/hermes_demo",
        ]
    assert _ledger_state(dsn) == before
    assert before[0][:2] == (2, 2)
    assert not hermes_home.exists()  # no export, nothing written


def test_other_schemas_and_tables_of_the_database_are_kept(dsn: str, cli: Cli) -> None:
    uri = pg_uri(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.orders (id int PRIMARY KEY, item text)")
        conn.execute("INSERT INTO app.orders VALUES (1, 'tea'), (2, 'cake')")
        conn.execute("CREATE TABLE public.notes (body text)")
        conn.execute("INSERT INTO public.notes VALUES ('keep me')")
    roles = _rows(dsn, f"SELECT oid, rolname FROM pg_roles WHERE rolname IN {ROLES} ORDER BY 2")
    _demo(cli, uri)
    _demo(cli, uri)  # the replacing run drops only hermes_ledger
    assert _rows(dsn, "SELECT * FROM app.orders ORDER BY id") == [(1, "tea"), (2, "cake")]
    assert _rows(dsn, "SELECT * FROM public.notes") == [("keep me",)]
    assert len(roles) == 3  # the cluster's roles: the same ones, never dropped
    assert _rows(dsn, f"SELECT oid, rolname FROM pg_roles WHERE rolname IN {ROLES} ORDER BY 2") == (
        roles
    )
    assert _ledger_state(dsn)[0][:2] == (72, 72)


def test_a_drop_that_would_take_the_operators_objects_along_is_refused(dsn: str, cli: Cli) -> None:
    """A view of the operator's over the demo ledger: DROP … CASCADE would drop it,
    so the demo rolls back and refuses, the ledger and the view as they were."""
    uri = pg_uri(dsn)
    _demo(cli, uri)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE VIEW public.demo_count AS SELECT count(*) AS n FROM hermes_ledger.events"
        )
    before = _ledger_state(dsn)
    result = cli("demo", "--db", uri)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        f"Error: the demo ledger at {describe_dsn(uri)} was not replaced: dropping it would"
        " drop relation public.demo_count, which depend on it",
        "Try: drop those objects yourself, or give the demo a database of its own",
    ]
    assert _ledger_state(dsn) == before
    assert _rows(dsn, "SELECT n FROM public.demo_count") == [(72,)]


def test_a_schema_of_that_name_that_is_not_a_ledger_is_refused(dsn: str, cli: Cli) -> None:
    uri = pg_uri(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA hermes_ledger")
        conn.execute("CREATE TABLE hermes_ledger.mine (x int)")
        conn.execute("INSERT INTO hermes_ledger.mine VALUES (7)")
    result = cli("demo", "--db", uri)
    assert result.exit_code == 1 and "is not a demo ledger" in result.output, result.output
    assert _rows(dsn, "SELECT x FROM hermes_ledger.mine") == [(7,)]
    assert _rows(dsn, "SELECT to_regclass('hermes_ledger.events')") == [(None,)]


def test_an_empty_ledger_at_an_older_schema_is_replaced(dsn: str, cli: Cli) -> None:
    """No event but the demo's (none at all): the demo's to replace, as on SQLite a
    demo ledger an older hermes-ledger wrote; the new one has every migration."""
    uri = pg_uri(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert migrate(conn, load_migrations()[:3]) == 3
    _demo(cli, uri)
    versions = _rows(dsn, "SELECT max(version) FROM hermes_ledger.schema_migrations")
    assert versions == [(len(load_migrations()),)]
    assert _ledger_state(dsn)[0][:2] == (72, 72)


def test_the_real_ledger_in_hermes_ledger_db_is_never_used(
    dsn: str, cli: Cli, hermes_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = pg_uri(dsn)
    with open_log(uri) as log:
        log.append(
            "agent:main:telegram:dm:1",
            [SessionStarted(session_id="m1", source=Source(platform="telegram"))],
        )
    before = _ledger_state(dsn)
    monkeypatch.setenv("HERMES_LEDGER_DB", uri)
    out = _ok(cli("demo"))
    assert out.startswith(f"Simulating a gateway day into {hermes_home / 'ledger-demo.db'} …")
    assert _ledger_state(dsn) == before
