"""The Hermes plugin, ``sync``, ``backfill`` and ``import --from-hermes`` on a PostgreSQL
ledger (issue 14): the same events as on SQLite, the plugin's ledger chosen by
``HERMES_LEDGER_DB`` or config.yaml's ``ledger.db``, and a spool that keeps what an
unreachable server could not take.

The in-process tests here run over ``HermesFixture`` homes (the recorder and the
import only read state.db); the real Hermes gateway (its PluginManager, GatewayRunner
and SessionStore in a subprocess) is driven in tests/test_plugin_postgres_hosts.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import Backend, pg_uri
from click.testing import Result
from hermes_fixture import HermesFixture, StandardHome, build_standard_home, origin, sid
from pg_support import fresh_database
from test_erasure import DM, MARK, OTHER, fill, jsonl_bytes

from hermes_ledger.gateway.config.files import ConfigError
from hermes_ledger.gateway.hermes.importing import import_hermes_home
from hermes_ledger.gateway.hermes.live import LiveRecorder
from hermes_ledger.gateway.plugin.location import plugin_ledger
from hermes_ledger.gateway.plugin.spool import SpoolWriter, pending_records
from hermes_ledger.gateway.plugin.status import history_gap
from hermes_ledger.gateway.plugin.worker import SpoolWorker, sync_home
from hermes_ledger.ledger import EventLog, open_log
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.events import MessageAppended

NOW = datetime.now().astimezone()
OLD = NOW - timedelta(days=3)
PLUGIN_CONFIG = "plugins:\n  enabled: [ledger]\n  disabled: []\n"


def rows(log: EventLog) -> list[tuple[Any, ...]]:
    """Every event as the log holds it, positions and times aside."""
    return [
        (r.event_id, r.stream, r.version, r.type, r.session_id, r.event.model_dump_json())
        for r in log.read_all()
    ]


@pytest.fixture
def pg() -> Iterator[str]:
    """A fresh PostgreSQL database's URI."""
    with fresh_database() as dsn:
        yield pg_uri(dsn)


@pytest.fixture
def standard(tmp_path: Path) -> StandardHome:
    return build_standard_home(tmp_path / "hermes")


# -- import --from-hermes ------------------------------------------------------------------


def test_a_hermes_home_imports_into_postgresql_as_into_sqlite(
    standard: StandardHome, pg: str, tmp_path: Path
) -> None:
    with open_log(tmp_path / "ledger.db") as sqlite, open_log(pg) as postgres:
        on_sqlite = import_hermes_home(sqlite, standard.path)
        on_postgres = import_hermes_home(postgres, standard.path)
        assert on_postgres.events == on_sqlite.events == 64
        assert (on_postgres.sessions, on_postgres.messages, on_postgres.ended) == (14, 36, 9)
        assert rows(postgres) == rows(sqlite)
        again = import_hermes_home(postgres, standard.path)
        assert (again.events, again.skipped, again.warnings) == (0, 14, [])
        assert postgres.verify().ok
    assert on_postgres.ledger.endswith(pg.rsplit("/", 1)[1])  # host:port/dbname, no password


def test_import_from_hermes_and_backfill_on_a_postgresql_uri(
    cli: Callable[..., Result], hermes_home: Path, pg: str, tmp_path: Path
) -> None:
    build_standard_home(hermes_home)
    done = cli("import", "--from-hermes", str(hermes_home), "--db", pg, "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["events"], report["sessions"], report["warnings"]) == (64, 14, [])
    reference = cli("import", "--from-hermes", str(hermes_home), "--db", str(tmp_path / "r.db"))
    with open_log(pg) as postgres, open_log(tmp_path / "r.db") as sqlite:
        assert rows(postgres) == rows(sqlite)
    assert reference.exit_code == 0
    again = cli("backfill", "--db", pg)  # the home in use, into the same database
    assert again.exit_code == 0, again.output
    assert again.output.startswith("Nothing new to import from ")
    # the projections the import leaves are what the CLI reads, as on SQLite
    listed = [cli("sessions", "--db", db, "--all", "--json") for db in (pg, str(tmp_path / "r.db"))]
    assert listed[0].exit_code == 0, listed[0].output
    assert json.loads(listed[0].output) == json.loads(listed[1].output)


def test_import_erasures_from_re_applies_a_sqlite_ledgers_erasures_in_postgresql(
    cli: Callable[..., Result], db_path: Path, tmp_path: Path, pg: str
) -> None:
    fill(db_path)
    older = tmp_path / "before.jsonl"
    older.write_bytes(jsonl_bytes(db_path))  # made before the erasure: holds u1's content
    assert cli("erase", "--db", str(db_path), "--user", "u1", "--yes").exit_code == 0
    missing = cli("import", str(older), "--db", pg, "--erasures-from", str(tmp_path / "no.db"))
    assert missing.exit_code == 1 and missing.output.startswith("Error: "), missing.output
    assert json.loads(cli("status", "--db", pg, "--json").output)["events"] == 0

    done = cli("import", str(older), "--db", pg, "--erasures-from", str(db_path))
    assert done.exit_code == 0, done.output
    assert cli("replay", "--db", pg).exit_code == 0  # the projections, from the log
    transcript = cli("transcript", "--db", pg, "s1")
    assert MARK not in transcript.output and "[erased]" in transcript.output
    assert OTHER in cli("transcript", "--db", pg, "s2").output  # u2's DM is kept
    assert MARK not in stored_text(pg)
    assert cli("verify", "--db", pg).exit_code == 0
    # the same as the SQLite import does with the same export and erasures
    same = cli("import", str(older), "--db", str(tmp_path / "b.db"), "--erasures-from",
               str(db_path))  # fmt: skip
    assert same.exit_code == 0, same.output
    with open_log(pg) as postgres, open_log(tmp_path / "b.db") as sqlite:
        assert content(postgres) == content(sqlite)
        notes = [[r.event.requested_by for r in log.read_all(types=["subject_erased"])]
                 for log in (postgres, sqlite)]  # type: ignore[union-attr]  # fmt: skip
    assert notes[0] == notes[1] and len(notes[0]) == 1
    assert f"(re-applied from {db_path}, position " in notes[0][0]


def test_an_export_made_after_the_erasure_is_not_erased_again(
    cli: Callable[..., Result], db_path: Path, tmp_path: Path, pg: str
) -> None:
    fill(db_path)
    assert cli("erase", "--db", str(db_path), "--user", "u1", "--yes").exit_code == 0
    fill_more(db_path)  # u1 talks again after the erasure: that content stays
    after = tmp_path / "after.jsonl"
    after.write_bytes(jsonl_bytes(db_path))
    done = cli("import", str(after), "--db", pg, "--erasures-from", str(db_path))
    assert done.exit_code == 0, done.output
    with open_log(pg) as postgres, open_log(db_path) as sqlite:
        assert content(postgres) == content(sqlite)  # nothing erased twice, nothing more
        assert len(list(postgres.read_all(types=["subject_erased"]))) == 1
    assert "later, again" in stored_text(pg)


def fill_more(path: Path) -> None:
    with open_log(path) as led:
        led.append(DM, [MessageAppended(session_id="s1", role="user", user_id="u1",
                                        content="later, again")])  # fmt: skip


def content(log: EventLog) -> list[tuple[Any, ...]]:
    """Each event's id, type and body (as read: "[erased]" where erased)."""
    return [(r.event_id, r.type, r.event.model_dump_json(exclude={"requested_by", "at"}))
            for r in log.read_all() if r.type != "subject_erased"]  # fmt: skip


def stored_text(uri: str) -> str:
    """Everything the database holds in the log's tables, as text."""
    with psycopg.connect(uri) as conn:
        row = conn.execute(
            "SELECT (SELECT string_agg(data || meta, ' ') FROM hermes_ledger.events)"
            " || coalesce((SELECT string_agg(body, ' ') FROM hermes_ledger.payloads), '')"
        ).fetchone()
    assert row is not None
    return str(row[0])


# -- the plugin's ledger -------------------------------------------------------------------


def test_the_plugins_ledger_is_the_env_then_config_yaml_then_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("HERMES_LEDGER_DB", raising=False)
    assert plugin_ledger(home) == home / "ledger.db"
    uri = "postgresql://gw@db.internal:5433/ledger"
    (home / "config.yaml").write_text(f"ledger:\n  db: {uri}\n")
    assert plugin_ledger(home) == uri
    (home / "config.yaml").write_text("ledger:\n  db: shared/ledger.db\n")
    assert plugin_ledger(home) == home / "shared" / "ledger.db"  # relative to the home
    monkeypatch.setenv("HERMES_LEDGER_DB", "postgresql://other/ledger")
    assert plugin_ledger(home) == "postgresql://other/ledger"  # the environment wins
    monkeypatch.setenv("HERMES_LEDGER_DB", str(tmp_path / "env.db"))
    assert plugin_ledger(home) == tmp_path / "env.db"
    monkeypatch.delenv("HERMES_LEDGER_DB")
    (home / "config.yaml").write_text("ledger:\n  db: ''\n")
    with pytest.raises(ConfigError, match=r"ledger\.db"):
        plugin_ledger(home)


# -- the worker and sync over a HermesFixture home, both backends ----------------------------


@pytest.fixture
def fixture_home(tmp_path: Path) -> Iterator[HermesFixture]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.yaml").write_text(PLUGIN_CONFIG)
    with HermesFixture(home) as h:
        yield h


def chat(h: HermesFixture, session_id: str, start: datetime, chat_id: str) -> None:
    key = f"agent:main:telegram:dm:{chat_id}"
    source = origin("telegram", chat_id, user_id="u1")
    h.create_session(session_id, "telegram", started_at=start.timestamp(), session_key=key,
                     origin=source)  # fmt: skip
    h.append_message(session_id, "user", "hi", at=start.timestamp() + 1)
    h.append_message(session_id, "assistant", "hello", at=start.timestamp() + 2)
    h.route(key, session_id, origin=source, at=start.timestamp() + 2)


def spool_activity(home: Path, session_id: str, chat_id: str) -> None:
    writer = SpoolWriter(home)
    writer.append({"kind": "activity", "at": format_utc(datetime.now(UTC)),
                   "session_id": session_id, "session_key": f"agent:main:telegram:dm:{chat_id}",
                   "platform": "telegram", "hook": "post_llm_call"})  # fmt: skip
    writer.close()


def test_the_worker_and_sync_record_into_either_backend_and_see_the_history_gap(
    fixture_home: HermesFixture, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fixture_home.home
    monkeypatch.setenv("HERMES_LEDGER_DB", backend.target)
    old, new = sid(OLD, "01d00001"), sid(NOW, "ae000001")
    chat(fixture_home, old, OLD, "1")
    fixture_home.end_session(old, "idle", at=OLD.timestamp() + 600)
    chat(fixture_home, new, NOW - timedelta(seconds=30), "3")

    worker = SpoolWorker(home, deliver_hooks=False)
    assert worker.ledger_target == (backend.target if backend.name == "postgresql" else
                                    Path(backend.target))  # fmt: skip
    spool_activity(home, new, "3")
    outcome = worker.run_pass()
    worker._close_gateway()
    assert outcome.ok, outcome.error
    assert outcome.drained is not None and outcome.drained.applied == 1
    assert pending_records(home) == []
    with backend.open() as log:
        assert [r.type for r in log.read_all()] == [
            "session_started", "message_appended", "message_appended"]  # fmt: skip
        gap = history_gap(log, home)
        assert gap is not None and gap.sessions == 1  # the old session, before the plugin

    spool_activity(home, new, "3")
    report = sync_home(home)
    assert (report.records, report.applied, report.events) == (1, 1, 0)
    assert report.history is not None and report.history.sessions == 1
    assert "postgresql://" not in report.ledger  # host:port/dbname, as status says
    with backend.open() as log:
        import_hermes_home(log, home)  # the backfill
        assert history_gap(log, home).sessions == 0  # type: ignore[union-attr]
        assert backend.projections.verify(log).ok


def test_a_lost_connection_fails_one_pass_and_the_next_reconnects_and_records(
    fixture_home: HermesFixture, pg: str
) -> None:
    home = fixture_home.home
    s1 = sid(NOW, "ae000009")
    chat(fixture_home, s1, NOW - timedelta(seconds=30), "9")
    worker = SpoolWorker(home, ledger=pg, deliver_hooks=False)
    spool_activity(home, s1, "9")
    assert worker.run_pass().ok
    # the server drops the worker's connection (a restart, a failover, an admin)
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    fixture_home.append_message(s1, "user", "still there?", at=NOW.timestamp())
    spool_activity(home, s1, "9")
    failed = worker.run_pass()
    assert not failed.ok and failed.drained is None
    assert len(pending_records(home)) == 1  # kept for the next pass
    again = worker.run_pass()  # a new connection
    worker._close_gateway()
    assert again.ok, again.error
    assert again.drained is not None and again.drained.applied == 1
    assert pending_records(home) == []
    with open_log(pg) as log:
        texts = [r.event.content for r in log.read_all(types=["message_appended"])]  # type: ignore[union-attr]
        assert texts == ["hi", "hello", "still there?"]
        assert log.verify().ok


def test_hermes_ledger_commands_default_to_the_plugins_ledger(
    hermes_home: Path,
    pg: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hermes_ledger.gateway.plugin import cli as plugin_cli

    hermes_home.mkdir(mode=0o700)
    (hermes_home / "config.yaml").write_text(PLUGIN_CONFIG + f"ledger:\n  db: {pg}\n")
    assert plugin_cli.run(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["where"].endswith(pg.rsplit("/", 1)[1]) and shown["plugin"]["waiting"] == 0
    assert "HERMES_LEDGER_DB" not in os.environ  # set for the command only
    assert not (hermes_home / "ledger.db").exists()
    monkeypatch.setenv("HERMES_LEDGER_DB", str(tmp_path / "env.db"))  # the environment wins
    assert plugin_cli.run(["init"]) == 0
    assert (tmp_path / "env.db").exists()


# -- one key, two homes -----------------------------------------------------------------------


def test_a_key_two_homes_share_is_never_closed_by_the_other_home(
    tmp_path: Path, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    # Two gateways (two homes, one profile name) see the same chat: one key. While
    # home A's session is open on it, home B's session there is skipped, saying why;
    # A's session is not closed on A's behalf and what A says next is recorded. Once
    # A's session has ended, B's (still open in B) is recorded whole.
    key, who = "agent:main:telegram:dm:1001", origin("telegram", "1001", user_id="1001")
    start = NOW - timedelta(minutes=10)
    sa, sb = sid(start, "aaaa0001"), sid(start + timedelta(minutes=1), "bbbb0001")

    def act(session_id: str) -> dict[str, Any]:
        return {"kind": "activity", "at": format_utc(datetime.now(UTC)), "session_id": session_id,
                "session_key": key, "platform": "telegram", "hook": "post_llm_call"}  # fmt: skip

    with (
        HermesFixture(tmp_path / "a") as a,
        HermesFixture(tmp_path / "b") as b,
        backend.open() as log,
    ):
        ra, rb = LiveRecorder(log, a.home), LiveRecorder(log, b.home)
        a.create_session(sa, "telegram", started_at=start.timestamp(), session_key=key,
                         origin=who)  # fmt: skip
        a.append_message(sa, "user", "a1", at=start.timestamp() + 60)
        assert ra.apply([act(sa)]).events == 2
        b.create_session(sb, "telegram", started_at=start.timestamp() + 60, session_key=key,
                         origin=who)  # fmt: skip
        b.append_message(sb, "user", "b1", at=start.timestamp() + 120)
        skipped = rb.apply([act(sb)])
        assert (skipped.events, skipped.closes) == (0, [])
        [why] = [s.reason for s in skipped.skipped]
        assert f"holds the open session {sa} of another Hermes home" in why
        assert "its own Hermes profile" in why
        assert rb.apply([act(sb)]).skipped  # still skipped; said once in the log
        said_once = [r.getMessage() for r in caplog.records if r.name == "hermes_plugins.ledger"]
        assert said_once == [f"ledger plugin: {why}"]
        imported = import_hermes_home(log, b.home)  # B's backfill: the same answer
        assert imported.events == 0
        assert f"holds the open session {sa} of another Hermes home" in imported.warnings[0]
        a.append_message(sa, "user", "a2", at=start.timestamp() + 180)
        assert ra.apply([act(sa)]).events == 1  # A's session goes on, whole
        a.end_session(sa, "session_reset", at=start.timestamp() + 240)
        closed = ra.apply([{**act(sa), "kind": "finalize", "reason": "new_session"}])
        assert [c.reason for c in closed.closes] == ["manual_reset"]
        later = rb.apply([act(sb)])  # the key is free: B's session, from its start
        assert later.skipped == [] and later.events == 2
        said = [(r.session_id, r.event.content) for r in log.read_stream(key)
                if r.type == "message_appended"]  # type: ignore[union-attr]  # fmt: skip
        assert said == [(sa, "a1"), (sa, "a2"), (sb, "b1")]
        ended = [r.session_id for r in log.read_all(types=["session_ended"])]
        assert ended == [sa]  # nothing closed that Hermes did not close
        homes = {r.session_id: r.meta.get("home") for r in log.read_stream(key)
                 if r.type == "session_started"}  # fmt: skip
        assert homes[sa].endswith(str(a.home.resolve())) and homes[sb] != homes[sa]


def test_erasures_from_another_ledger_than_the_exports_are_refused(
    cli: Callable[..., Result], db_path: Path, tmp_path: Path, pg: str
) -> None:
    fill(db_path)  # the export's ledger
    fill_more(db_path)
    export = tmp_path / "x.jsonl"
    export.write_bytes(jsonl_bytes(db_path))
    other = tmp_path / "other.db"  # another ledger, with an erasure inside the export's range
    with open_log(other) as led:
        led.append(DM, [MessageAppended(session_id="o1", role="user", user_id="u1",
                                        content="other")])  # fmt: skip
    assert cli("erase", "--db", str(other), "--user", "u1", "--yes").exit_code == 0
    refused = cli("import", str(export), "--db", pg, "--erasures-from", str(other))
    assert refused.exit_code == 1
    assert refused.output.startswith(
        f"Error: the erasure at position 2 of {other} is not in the imported ledger"
    ), refused.output
    assert "\nTry: re-apply it by hand with `hermes-ledger erase --db URI" in refused.output
