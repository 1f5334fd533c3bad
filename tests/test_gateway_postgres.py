"""The gateway side on a PostgreSQL ledger, end to end: the installed
``hermes-ledger run --db postgresql://…`` closes an idle session and delivers its
``session:end`` to a real hook directory once, and SIGTERM ends it cleanly; the
composition root wires the PostgreSQL parts (issue 14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import pg_uri
from click.testing import Result
from helpers import ManualClock, installed_script, next_line
from pg_support import fresh_database

from hermes_ledger.gateway import SessionSource
from hermes_ledger.gateway.bootstrap import build_gateway, open_gateway
from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistry
from hermes_ledger.gateway.hooks.postgres_delivery import PostgresDeliveryQueue
from hermes_ledger.gateway.scheduler.postgres import PostgresScheduler
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import open_log
from hermes_ledger.ledger.postgres import PostgresLog

HOOK_YAML = 'name: recorder\ndescription: test hook\nevents: ["session:*"]\n'
HOOK_PY = """\
import json
from pathlib import Path

def handle(event_type, context):
    with Path(__file__).with_name("calls.jsonl").open("a") as out:
        out.write(json.dumps({"event": event_type, **context}) + "\\n")
"""
SOURCE = SessionSource(platform="telegram", chat_id="5", chat_type="dm", user_id="5")


@pytest.fixture
def uri() -> Iterator[str]:
    with fresh_database() as dsn:
        yield pg_uri(dsn)


def make_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    hook = home / "hooks" / "recorder"
    hook.mkdir(parents=True)
    for d in (home, home / "hooks", hook):
        d.chmod(0o700)
    (hook / "HOOK.yaml").write_text(HOOK_YAML)
    (hook / "handler.py").write_text(HOOK_PY)
    (home / "config.yaml").write_text("session_reset:\n  mode: idle\n  idle_minutes: 30\n")
    return home


def calls(home: Path) -> list[dict[str, object]]:
    path = home / "hooks" / "recorder" / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_on_postgresql_closes_an_idle_session_and_delivers_its_end_once(
    tmp_path: Path, uri: str, clock: ManualClock
) -> None:
    home = make_home(tmp_path)
    # A session 30 minutes idle long ago (the test clock), written by a plain store
    # with no hooks: the runner registers the hook, then closes the session.
    with open_log(uri, clock=clock) as log:
        store = SessionStore(log, GatewayConfig.load(home, env={}), clock)  # type: ignore[arg-type]
        sid = store.get_or_create_session(SOURCE).session_id
        store.append_to_transcript(sid, {"role": "user", "content": "hi"})
    env = {**os.environ, "HERMES_HOME": str(home), "HERMES_LEDGER_DB": uri}
    proc = subprocess.Popen(
        [installed_script(), "run", "--config", str(home), "--interval", "0.05",
         "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        first = next_line(proc)  # "Running on …": the signal handlers are in place
        deadline = time.monotonic() + 60
        while not any(c["event"] == "session:end" for c in calls(home)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no session:end delivered within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    with open_log(uri) as log:
        identity = log.identity
        ended = [r for r in log.read_all() if r.type == "session_ended"]
    assert first.startswith(f"Running on {identity}: a pass every 0.05s")
    assert "@" not in first  # no user (nor password) in what is printed
    assert "Stopped after" in rest
    records = [json.loads(line) for line in err.splitlines()]
    assert any(r.get("event") == "stopping" and r.get("signal") == "SIGTERM" for r in records)
    assert [(r.session_id, r.event.reason) for r in ended] == [(sid, "idle_expiry")]  # type: ignore[union-attr]
    # A later pass (another process) neither closes nor delivers anything again.
    tick = subprocess.run(
        [installed_script(), "tick", "--config", str(home), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert tick.returncode == 0, tick.stderr
    report = json.loads(tick.stdout)
    assert report["tick"]["closed"] == [] and report["delivered"] == 0
    ends = [c for c in calls(home) if c["event"] == "session:end"]
    assert len(ends) == 1
    assert ends[0]["session_id"] == sid and ends[0]["reason"] == "idle_expiry"
    assert ends[0]["platform"] == "telegram" and ends[0]["user_id"] == "5"
    assert not any(c["event"] == "session:start" for c in calls(home))  # before the hook


def test_build_gateway_on_a_postgres_log_uses_the_postgresql_parts(
    tmp_path: Path, uri: str, clock: ManualClock
) -> None:
    home = make_home(tmp_path)
    with open_gateway(uri, home=home, clock=clock) as gw:
        assert isinstance(gw.ledger, PostgresLog)
        assert isinstance(gw.scheduler, PostgresScheduler)
        assert isinstance(gw.dispatcher._queue, PostgresDeliveryQueue)
        again = build_gateway(gw.ledger, home=home, clock=clock)  # the plugin may build twice
        sid = again.store.get_or_create_session(SOURCE).session_id
        clock.advance(minutes=31)
        report = gw.runner.once()
        assert [c.session_id for c in report.tick.closed] == [sid]
        # Delivered once though two gateways (two runners' outboxes) share the log.
        assert report.delivered == 2 and again.runner.once().delivered == 0
    assert [c["event"] for c in calls(home)] == ["session:start", "session:end"]


def test_the_runner_anchors_a_postgresql_ledger_by_its_identity(
    tmp_path: Path, uri: str, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    home = make_home(tmp_path)
    settings = RunnerSettings(anchor_interval=600)
    witness = home / "ledger.anchors"
    with open_gateway(uri, home=home, settings=settings, clock=clock) as gw:
        gw.store.get_or_create_session(SOURCE)
        report = gw.runner.once()
        identity, head = gw.ledger.identity, gw.ledger.head()
    assert report.anchored is not None and report.anchored["position"] == head
    (line,) = [json.loads(x) for x in witness.read_text().splitlines()]
    assert line["ledger"] == identity and identity.startswith("postgresql://")
    # A restarted runner times its interval from the witness's last anchor of this
    # database (found by its identity, not a file path).
    with open_gateway(uri, home=home, settings=settings, clock=clock) as gw:
        clock.advance(minutes=5)
        gw.store.append_to_transcript(
            gw.store.get_or_create_session(SOURCE).session_id, {"role": "user", "content": "hi"}
        )
        assert gw.runner.once().anchored is None  # 5 of 10 minutes
        clock.advance(minutes=5)
        again = gw.runner.once()
        assert again.anchored is not None and again.anchored["position"] == gw.ledger.head()
    verified = cli("verify", "--db", uri)
    assert verified.exit_code == 0, verified.output


def test_hooks_lists_a_postgresql_ledgers_pending_claimed_and_dead_deliveries(
    tmp_path: Path, uri: str, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    home = make_home(tmp_path)
    hooks_dir = home / "hooks"
    (hooks_dir / "recorder" / "handler.py").write_text(
        "def handle(event_type, context):\n    raise RuntimeError('down')\n"
    )
    with open_gateway(uri, home=home, clock=clock) as gw:
        gw.store.get_or_create_session(SOURCE)  # one session:start to deliver
        dispatcher = HookDispatcher(
            gw.ledger, HookRegistry.discover(hooks_dir), clock=clock, max_attempts=2
        )
        (failed,) = dispatcher.deliver().outcomes
        assert (failed.status, failed.attempt) == ("retry", 1)
        listed = json.loads(cli("hooks", "--db", uri, "--hooks-dir", str(hooks_dir), "--json")
                            .output)  # fmt: skip
        (pending,) = listed["pending"]
        assert (pending["delivery_id"], pending["status"], pending["attempts"]) == (
            failed.delivery_id, "pending", 1,
        )  # fmt: skip
        assert pending["next_attempt_at"] == "2026-11-22T09:00:02.000000Z"  # the backoff
        assert pending["last_error"] == "RuntimeError: down"
        assert listed["hooks"][0]["state"] == {
            "hook": "recorder", "checkpoint": gw.ledger.head(), "pending": 1, "claimed": 0,
            "done": 0, "dead": 0,
        }  # fmt: skip
        clock.advance(seconds=2)
        (dead,) = dispatcher.deliver().outcomes
        assert dead.status == "dead"
    shown = cli("hooks", "--db", uri, "--hooks-dir", str(hooks_dir))
    assert shown.exit_code == 0, shown.output
    assert f"  {failed.delivery_id}  recorder  session:start  position 1" in shown.output
    assert "2 attempts  RuntimeError: down" in shown.output
    retried = cli("hooks", "retry", "--db", uri, "--json")
    assert json.loads(retried.output) == {"requeued": [failed.delivery_id]}
    assert "No dead letters." in cli("hooks", "--db", uri, "--hooks-dir", str(hooks_dir)).output


def test_run_on_postgresql_exits_with_an_error_on_a_database_error_not_a_lost_connection(
    tmp_path: Path, uri: str
) -> None:
    """A lost connection is ridden out (tests/test_run_reconnect.py); any other
    database error still ends run with Error: (exit 1), not a retry."""
    home = make_home(tmp_path)
    env = {**os.environ, "HERMES_HOME": str(home)}
    proc = subprocess.Popen(
        [installed_script(), "run", "--db", uri, "--config", str(home), "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        next_line(proc)  # connected, passes running
        with psycopg.connect(uri, autocommit=True) as owner:  # the table the tick claims from
            owner.execute("ALTER TABLE hermes_ledger.session_deadlines RENAME TO gone")
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "reconnecting" not in err
    last = err.splitlines()[-1]
    assert last.startswith("Error: ") and "session_deadlines" in last, err


def test_two_runs_on_one_postgresql_ledger_close_and_deliver_each_session_once(
    tmp_path: Path, uri: str, clock: ManualClock
) -> None:
    """Two `hermes-ledger run` processes (two hosts' runners) share one database
    and one hooks directory: every idle session is closed once and its
    session:end delivered once, whichever runner claimed it."""
    home = make_home(tmp_path)
    with open_log(uri, clock=clock) as log:
        store = SessionStore(log, GatewayConfig.load(home, env={}), clock)  # type: ignore[arg-type]
        sids = {
            store.get_or_create_session(
                SessionSource(platform="telegram", chat_id=str(n), chat_type="dm", user_id=str(n))
            ).session_id
            for n in range(30)
        }
    env = {**os.environ, "HERMES_HOME": str(home)}
    command = [installed_script(), "run", "--db", uri, "--config", str(home), "--interval",
               "0.05", "--quiet"]  # fmt: skip
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [
        subprocess.Popen(command, text=True, env=env, cwd=tmp_path, **options) for _ in range(2)
    ]
    try:
        for proc in procs:
            next_line(proc)
        deadline = time.monotonic() + 90
        while len([c for c in calls(home) if c["event"] == "session:end"]) < len(sids):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "not every session:end was delivered in 90 s"
            time.sleep(0.05)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        results = [proc.communicate(timeout=30) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert [p.returncode for p in procs] == [0, 0], results
    with open_log(uri) as log:
        ended = [r.session_id for r in log.read_all(types=["session_ended"])]
    assert sorted(ended) == sorted(sids)  # each closed once
    ends = [c["session_id"] for c in calls(home) if c["event"] == "session:end"]
    assert sorted(ends) == sorted(sids)  # each delivered once
