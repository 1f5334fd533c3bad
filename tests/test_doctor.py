"""`hermes-ledger doctor`: each check's failing case, for real, and the output."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import psycopg
import pytest
from backends import pg_uri
from click.testing import Result
from helpers import ManualClock, installed_script
from pg_support import as_user, fresh_database, login_role

from hermes_ledger.gateway import SessionSource
from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.health import CHECK_NAMES, POSTGRES_CHECK_NAMES, diagnose
from hermes_ledger.gateway.plugin.spool import SpoolWriter
from hermes_ledger.gateway.scheduler.postgres import refresh_deadlines
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.anchors import Witness
from hermes_ledger.ledger.events import SessionReset, SessionStarted, Source
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.log import describe_dsn
from hermes_ledger.ledger.postgres.schema import load_migrations
from hermes_ledger.projections import postgres as pg_projections

GOOD = "def handle(event_type, context):\n    pass\n"
FAILING = 'def handle(event_type, context):\n    raise RuntimeError("boom")\n'


def make_home(tmp_path: Path, handler: str = GOOD, ledger_section: str = "") -> Path:
    home = tmp_path / "home"
    hook = home / "hooks" / "audit"
    hook.mkdir(parents=True)
    for d in (home, home / "hooks", hook):
        d.chmod(0o700)
    (hook / "HOOK.yaml").write_text('name: audit\nevents: ["session:*"]\n')
    (hook / "handler.py").write_text(handler)
    (home / "config.yaml").write_text(
        "session_reset:\n  mode: idle\n  idle_minutes: 30\n" + ledger_section
    )
    return home


def seed(db: Path, home: Path, chat: str = "5", clock: ManualClock | None = None) -> str:
    clock = clock or ManualClock()
    with Ledger.open(db, clock=clock) as led:
        store = SessionStore(led, GatewayConfig.load(home, env={}), clock)
        entry = store.get_or_create_session(
            SessionSource(platform="telegram", chat_id=chat, chat_type="dm", user_id=chat)
        )
        store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi"})
        return entry.session_id


def healthy(tmp_path: Path, **home: Any) -> tuple[Path, Path]:
    """A home and a ledger with one session, anchored: every check ok."""
    home_dir = make_home(tmp_path, **home)
    db = home_dir / "ledger.db"
    seed(db, home_dir)
    with Ledger.open(db) as led:
        Witness.in_directory(home_dir).anchor(led)
    return home_dir, db


def doctor(cli: Callable[..., Result], home: Path, db: Path | str, *more: str) -> Result:
    return cli("doctor", "--db", str(db), "--config", str(home), *more)


def checks(result: Result) -> dict[str, dict[str, Any]]:
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == list(CHECK_NAMES)
    return {c["name"]: c for c in report["checks"]}


def statuses(result: Result) -> dict[str, str]:
    return {name: c["status"] for name, c in checks(result).items()}


def test_a_healthy_ledger_is_all_ok(tmp_path: Path, cli: Callable[..., Result]) -> None:
    home, db = healthy(tmp_path)
    result = doctor(cli, home, db)
    assert result.exit_code == 0, result.output
    with Ledger.open(db) as led:
        expected = len(led.check_file().expected)
        anchored = Witness.in_directory(home).last(db)
    assert anchored is not None
    assert result.stdout.splitlines() == [
        f"✓ ledger       hash chain intact (2 events), {expected} triggers and indexes as"
        " migrated, pages sound",
        f"✓ anchors      1 anchor holds, the last at position 2 ({anchored.at})",
        "✓ projections  2 projections at the head (2)",
        f"✓ hooks        1 hook load from {home / 'hooks'}",
        "✓ deliveries   no dead letters",
        "✓ closes       no close stuck or overdue for over 15 min",
        "✓ spool        no records waiting",
        "✓ file_modes   the ledger, its key and anchors, hooks and spool are private",
        "8 ok, 0 warnings, 0 failures: all ok",
    ]
    report = json.loads(doctor(cli, home, db, "--json").stdout)
    assert (report["status"], report["ok"]) == ("ok", True)
    assert report["counts"] == {"ok": 8, "warn": 0, "fail": 0}
    assert report["checks"][0] == {
        "name": "ledger",
        "status": "ok",
        "detail": f"hash chain intact (2 events), {expected} triggers and indexes as migrated,"
        " pages sound",
        "hint": None,
    }


def test_a_tampered_ledger_fails_ledger_and_anchors(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    home, db = healthy(tmp_path)
    conn = apsw.Connection(str(db))
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("DROP TRIGGER events_refuse_delete")
    conn.execute("UPDATE events SET data = json_set(data, '$.reason', 'resume') WHERE position = 1")
    conn.execute("DELETE FROM events WHERE position = 2")
    conn.close()
    result = doctor(cli, home, db, "--json")
    assert result.exit_code == 1
    found = checks(result)
    assert found["ledger"]["status"] == "fail"
    detail = found["ledger"]["detail"]
    assert detail.startswith("hash chain FAILED at position 1")
    assert "trigger events_refuse_update is missing" in detail
    assert "trigger events_refuse_delete is missing" in detail
    assert found["anchors"]["status"] == "fail"
    assert found["anchors"]["detail"].startswith(
        "FAILED: truncated: the log ends at position 1, but position 2 was anchored"
    )
    text = doctor(cli, home, db)
    assert text.exit_code == 1
    assert text.stdout.splitlines()[0].startswith("✗ ledger       hash chain FAILED")
    assert text.stdout.splitlines()[-1] == "6 ok, 0 warnings, 2 failures: needs attention"


def test_a_world_writable_hooks_dir_fails_hooks_and_file_modes(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    home, db = healthy(tmp_path)
    (home / "hooks").chmod(0o777)
    found = checks(doctor(cli, home, db, "--json"))
    assert found["hooks"]["status"] == "fail"
    assert found["hooks"]["detail"].startswith(
        f"{home / 'hooks'}: refused: writable by everyone (mode 777)"
    )
    assert found["file_modes"] == {
        "name": "file_modes",
        "status": "fail",
        "detail": f"{home / 'hooks'}: writable by everyone (mode 777); hooks run as code with the"
        f" gateway's rights, so only their owner may change them (chmod go-w {home / 'hooks'})",
        "hint": "make them owner-only: chmod go-w on directories, chmod 600 on files, chown to"
        " the gateway's user; then find out who else could have changed them",
    }
    assert [n for n, s in statuses(doctor(cli, home, db, "--json")).items() if s != "ok"] == [
        "hooks",
        "file_modes",
    ]


def test_a_ledger_others_may_read_warns_and_a_readable_key_fails(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    home, db = healthy(tmp_path)
    db.chmod(0o644)
    found = checks(doctor(cli, home, db, "--json"))
    assert found["file_modes"]["status"] == "warn"
    assert found["file_modes"]["detail"] == (
        f"{db} is readable by others (mode 644): every transcript"
    )
    (home / "ledger.key").chmod(0o640)
    result = doctor(cli, home, db, "--json")
    assert result.exit_code == 1
    found = checks(result)
    assert found["file_modes"]["status"] == "fail"
    assert found["anchors"]["status"] == "fail"  # the witness refuses such a key


def test_a_dead_letter_warns(tmp_path: Path, cli: Callable[..., Result]) -> None:
    home, db = healthy(tmp_path, handler=FAILING, ledger_section="ledger:\n  hook_attempts: 1\n")
    # The idle close's session:end goes to the failing hook, which is given one attempt.
    ticked = cli("tick", "--db", str(db), "--config", str(home), "--now", "2026-11-22T09:31:00Z")
    assert ticked.exit_code == 0, ticked.output
    result = doctor(cli, home, db, "--json")
    assert result.exit_code == 1
    found = checks(result)
    assert found["deliveries"] == {
        "name": "deliveries",
        "status": "warn",
        "detail": "1 dead letter (audit: 1)",
        "hint": "see why with `hermes-ledger hooks`, fix the hook, then `hermes-ledger hooks"
        " retry`",
    }
    assert [n for n, s in statuses(result).items() if s != "ok"] == ["deliveries"]


def test_a_spool_with_old_records_warns(tmp_path: Path, cli: Callable[..., Result]) -> None:
    home, db = healthy(tmp_path)
    writer = SpoolWriter(home)
    assert writer.append({"kind": "message", "at": "2026-11-22T09:00:00.000000Z"})
    assert writer.append({"kind": "message", "at": "2026-11-22T09:00:01.000000Z"})
    writer.close()
    found = checks(doctor(cli, home, db, "--json"))
    assert found["spool"] == {
        "name": "spool",
        "status": "warn",
        "detail": "2 records not yet in the ledger (the oldest from 2026-11-22T09:00:00.000000Z)",
        "hint": "the gateway drains them while it runs; `hermes-ledger sync` drains them now",
    }


def test_a_stuck_close_and_an_overdue_session_warn(
    tmp_path: Path, cli: Callable[..., Result], monkeypatch: Any
) -> None:
    module = tmp_path / "mods" / "bad_memory.py"
    module.parent.mkdir()
    module.write_text("def flush(context, transcript):\n    raise OSError('disk full')\n")
    monkeypatch.syspath_prepend(str(module.parent))
    home, db = healthy(tmp_path, ledger_section="ledger:\n  flusher: bad_memory:flush\n")
    late = ManualClock()
    late.advance(minutes=20)
    other = seed(db, home, chat="7", clock=late)  # idle until 09:50
    base = ["--db", str(db), "--config", str(home)]
    # 09:31: the first session's close begins, its flush fails (a retry is due in a minute);
    # the other's deadline (09:50) is recorded. Neither is finished: no tick comes again.
    assert cli("tick", *base, "--now", "2026-11-22T09:31:00Z").exit_code == 0
    with Ledger.open(db) as led:
        (first,) = [r.session_id for r in led.read_all(types={"session_expired"})]
    result = doctor(cli, home, db, "--json")
    assert result.exit_code == 1
    closes = checks(result)["closes"]
    assert closes["status"] == "warn"
    assert closes["detail"] == (
        f"1 close unfinished for over 15 min (the oldest: agent:main:telegram:dm:5 session"
        f" {first}, closing since 2026-11-22T09:31:00.000000Z); 1 session past its deadline"
        f" by over 15 min (the oldest: agent:main:telegram:dm:7 session {other}, due"
        " 2026-11-22T09:50:00.000000Z)"
    )


def test_projections_behind_the_head_warn(tmp_path: Path, cli: Callable[..., Result]) -> None:
    home, db = healthy(tmp_path)
    with Ledger.open(db) as led:  # a writer without the projections attached
        led.append("k", [SessionStarted(session_id="s9", source=Source(platform="local"))])
    found = checks(doctor(cli, home, db, "--json"))
    assert found["projections"] == {
        "name": "projections",
        "status": "warn",
        "detail": "sessions is 1 event behind; transcripts is 1 event behind (head 3)",
        "hint": "the next writer with projections attached catches them up; `hermes-ledger"
        " replay` rebuilds them now",
    }
    assert found["anchors"]["status"] == "ok"  # one event after the anchor, just made


def test_no_ledger_is_a_failure_and_nothing_is_created(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    home = make_home(tmp_path)
    db = tmp_path / "missing.db"
    result = doctor(cli, home, db)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"✗ ledger      there is no ledger at {db}")
    assert lines[1].startswith("              Try: ")
    assert [line[2:].split()[0] for line in lines if line[:1] in "✓✗!"] == [
        "ledger", "hooks", "spool", "file_modes",
    ]  # fmt: skip
    assert lines[-1] == "3 ok, 0 warnings, 1 failure: needs attention"
    assert result.stderr == f"Error: {lines[0][14:]}\nTry: {lines[1][19:]}\n"
    assert not db.exists()


def test_doctor_library_and_ascii_output(tmp_path: Path) -> None:
    home, db = healthy(tmp_path)
    (home / "hooks" / "audit" / "handler.py").write_text("def nothing(:\n")
    report = diagnose(db, home=home)
    assert report.status == "fail" and not report.ok
    (hooks,) = [c for c in report.checks if c.name == "hooks"]
    assert hooks.detail.startswith(f"{home / 'hooks' / 'audit' / 'handler.py'}: import failed:")
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "HERMES_HOME": str(home)}
    run = subprocess.run(
        [installed_script(), "doctor", "--db", str(db)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines()[0].startswith("+ ledger ")
    assert run.stdout.splitlines()[3].startswith("X hooks ")
    assert run.stderr == ""


def test_doctor_explains_bad_options(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("doctor", "--db", str(tmp_path / "l.db"), "--stuck-after", "0")
    assert result.exit_code == 2
    assert "0 is not between 1 and 2.592e+06 seconds" in result.output


# -- on a PostgreSQL ledger (--db postgresql://…) -----------------------------------------


@pytest.fixture
def pg_home(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A home and a fresh PostgreSQL ledger with one session (projections attached),
    anchored: every check ok."""
    home = make_home(tmp_path)
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        clock = ManualClock()
        with PostgresLog.open(uri, clock=clock) as log:
            pg_projections.attach(log)
            store = SessionStore(log, GatewayConfig.load(home, env={}), clock)
            entry = store.get_or_create_session(
                SessionSource(platform="telegram", chat_id="5", chat_type="dm", user_id="5")
            )
            store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi"})
            Witness.in_directory(home).anchor(log)
        yield home, uri


def pg_checks(result: Result) -> dict[str, dict[str, Any]]:
    report = json.loads(result.stdout)
    return {c["name"]: c for c in report["checks"]}


def test_a_healthy_postgres_ledger_is_all_ok(
    pg_home: tuple[Path, str], cli: Callable[..., Result]
) -> None:
    home, uri = pg_home
    result = doctor(cli, home, uri)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line[2:].split()[0] for line in lines if line[:1] in "✓✗!"] == list(
        POSTGRES_CHECK_NAMES
    )
    assert lines[0].startswith("✓ server       PostgreSQL 15.")
    with psycopg.connect(uri) as conn:
        who = conn.info.user
    version = len(load_migrations())
    assert lines[0].endswith(f", connected as {who} (a superuser)")
    assert lines[1:4] == [
        f"✓ ledger       hash chain intact (2 events), schema v{version} as migrated, 5 append-only"
        " triggers enabled",
        lines[2],
        "✓ projections  2 projections at the head (2)",
    ]
    assert lines[2].startswith("✓ anchors      1 anchor holds, the last at position 2 (")
    assert lines[7:] == [
        "✓ spool        no records waiting",
        f"✓ privileges   {who} may read and append; PUBLIC holds nothing on the ledger's"
        " tables, only the owner may change events",
        "✓ file_modes   the anchor key and witness, hooks and spool are private",
        "- not on PostgreSQL: SQLite's page integrity check (the server's own: data checksums,"
        " pg_amcheck)",
        "- not on PostgreSQL: the modes of a ledger file and its -wal/-shm (the privileges check"
        " stands in)",
        "10 ok, 0 warnings, 0 failures: all ok",
    ]
    report = json.loads(doctor(cli, home, uri, "--json").stdout)
    assert (report["status"], report["counts"]) == ("ok", {"ok": 10, "warn": 0, "fail": 0})
    assert len(report["not_applicable"]) == 2


def test_postgres_tampering_fails_ledger_and_anchors(
    pg_home: tuple[Path, str], cli: Callable[..., Result]
) -> None:
    home, uri = pg_home
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("ALTER TABLE hermes_ledger.events DISABLE TRIGGER events_refuse_delete")
        conn.execute("DELETE FROM hermes_ledger.payloads WHERE position = 2")
        conn.execute("DELETE FROM hermes_ledger.events WHERE position = 2")
    result = doctor(cli, home, uri, "--json")
    assert result.exit_code == 1
    found = pg_checks(result)
    assert found["ledger"]["status"] == "fail"
    assert found["ledger"]["detail"].endswith("trigger events_refuse_delete on events is disabled")
    assert found["anchors"]["status"] == "fail"
    assert "truncated" in found["anchors"]["detail"]


def test_postgres_projections_behind_warn(
    pg_home: tuple[Path, str], cli: Callable[..., Result]
) -> None:
    home, uri = pg_home
    with PostgresLog.open(uri) as log:  # a writer without the projections attached
        log.append("k", [SessionStarted(session_id="s9", source=Source(platform="local"))])
    found = pg_checks(doctor(cli, home, uri, "--json"))
    assert found["projections"]["status"] == "warn"
    assert found["projections"]["detail"] == (
        "sessions is 1 event behind; transcripts is 1 event behind (head 3)"
    )


def test_postgres_role_without_privileges(
    pg_home: tuple[Path, str], cli: Callable[..., Result]
) -> None:
    """A login role that is not a member of hermes_ledger_writer: the ledger cannot be
    read, said with the GRANT that fixes it; nothing else is tried."""
    home, uri = pg_home
    with login_role("pg_monitor") as nobody:
        login = pg_uri(as_user(uri, nobody))
        result = doctor(cli, home, login, "--json")
        assert result.exit_code == 1
        found = pg_checks(result)
        assert list(found) == ["server", "ledger", "hooks", "spool", "privileges", "file_modes"]
        assert found["server"]["status"] == "ok"
        assert found["server"]["detail"].endswith(
            f"connected as {nobody} (not a member of hermes_ledger_writer)"
        )
        assert found["ledger"]["status"] == "fail"
        assert found["privileges"]["detail"] == (
            f"{nobody} may not read the ledger (no USAGE on schema hermes_ledger, no SELECT on"
            " hermes_ledger.events, no SELECT on hermes_ledger.schema_migrations)"
        )
        assert found["privileges"]["hint"] == (
            f"as the database's owner: GRANT hermes_ledger_writer TO {nobody} (a gateway), or"
            " connect as a member of hermes_ledger_writer"
        )
        text = doctor(cli, home, login)
        assert text.stderr == (
            f"Error: {nobody} may not read the ledger in {describe_dsn(login)}\n"
            f"Try: {found['privileges']['hint']}\n"
        )
    with login_role("hermes_ledger_writer") as gateway:
        found = pg_checks(doctor(cli, home, pg_uri(as_user(uri, gateway)), "--json"))
        assert {name: c["status"] for name, c in found.items()} == dict.fromkeys(
            POSTGRES_CHECK_NAMES, "ok"
        )
        assert found["privileges"]["detail"].startswith(f"{gateway} may read and append;")


def test_postgres_grants_that_let_others_change_the_log_fail(
    pg_home: tuple[Path, str], cli: Callable[..., Result]
) -> None:
    home, uri = pg_home
    with login_role("hermes_ledger_writer") as rogue, psycopg.connect(uri, autocommit=True) as c:
        c.execute(f"GRANT UPDATE, DELETE ON hermes_ledger.events TO {rogue}")
        c.execute("GRANT SELECT ON hermes_ledger.payloads TO PUBLIC")
        found = pg_checks(doctor(cli, home, uri, "--json"))
        c.execute(f"REVOKE ALL ON hermes_ledger.events FROM {rogue}")
    assert found["privileges"]["status"] == "fail"
    assert found["privileges"]["detail"] == (
        f"{rogue} holds DELETE on hermes_ledger.events: it may change the log; {rogue} holds"
        " UPDATE on hermes_ledger.events: it may change the log; PUBLIC holds SELECT on"
        " hermes_ledger.payloads"
    )


def test_postgres_without_a_ledger_writes_nothing(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    home = make_home(tmp_path)
    with fresh_database() as dsn:
        result = doctor(cli, home, pg_uri(dsn))
        assert result.exit_code == 1
        assert "Error: there is no ledger in " in result.stderr
        assert "Try: create one with `hermes-ledger init --db URI`" in result.stderr
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT to_regnamespace('hermes_ledger')").fetchone()
        assert row == (None,)  # the schema was not created
    result = doctor(cli, home, "postgresql://127.0.0.1:1/nowhere")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot connect to PostgreSQL at 127.0.0.1:1/nowhere")


def test_postgres_a_stuck_close_and_an_overdue_session_warn(
    pg_home: tuple[Path, str], cli: Callable[..., Result]
) -> None:
    """A close begun (its cause recorded) and never finished, and a key whose idle
    deadline (from session_deadlines) passed long ago, as on SQLite."""
    home, uri = pg_home
    clock = ManualClock()
    clock.advance(minutes=20)
    with PostgresLog.open(uri, clock=clock) as log:
        pg_projections.attach(log)
        store = SessionStore(log, GatewayConfig.load(home, env={}), clock)
        other = store.get_or_create_session(
            SessionSource(platform="telegram", chat_id="7", chat_type="dm", user_id="7")
        ).session_id  # last active 09:20: due at 09:50
        (first,) = {r.session_id for r in log.read_all(types={"session_started"})} - {other}
        clock.advance(minutes=11)
        log.append("agent:main:telegram:dm:5", [SessionReset(session_id=first, trigger="/new")])
        refresh_deadlines(log, GatewayConfig.load(home, env={}))
    closes = pg_checks(doctor(cli, home, uri, "--json"))["closes"]
    assert closes["status"] == "warn"
    assert closes["detail"] == (
        f"1 close unfinished for over 15 min (the oldest: agent:main:telegram:dm:5 session"
        f" {first}, closing since 2026-11-22T09:31:00.000000Z); 1 session past its deadline"
        f" by over 15 min (the oldest: agent:main:telegram:dm:7 session {other}, due"
        " 2026-11-22T09:50:00.000000Z)"
    )


def test_postgres_a_dead_letter_warns(
    pg_home: tuple[Path, str], cli: Callable[..., Result]
) -> None:
    """A delivery the hooks' runner gave up on (a row of hook_deliveries, as a runner
    on another host leaves it) is a dead letter on PostgreSQL too."""
    home, uri = pg_home
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("SET search_path = hermes_ledger")
        conn.execute("INSERT INTO hook_subscriptions (hook, hook_events) VALUES ('crm', %s)",
                     (["session:start"],))  # fmt: skip
        row = conn.execute(
            "SELECT event_id, stream, session_id FROM events WHERE position = 1"
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id, hook_event,"
            " session_key, session_id, context, status, attempts, last_error)"
            " VALUES ('d1', 'crm', 1, %s, 'session:start', %s, %s, '{}', 'dead', 5, 'boom')",
            row,
        )
    found = pg_checks(doctor(cli, home, uri, "--json"))
    assert found["deliveries"] == {
        "name": "deliveries",
        "status": "warn",
        "detail": "1 dead letter (crm: 1)",
        "hint": "see why with `hermes-ledger hooks`, fix the hook, then `hermes-ledger hooks"
        " retry`",
    }
