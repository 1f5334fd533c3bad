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
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import pg_uri
from helpers import ManualClock, installed_script, next_line
from pg_support import fresh_database

from hermes_ledger.gateway import SessionSource
from hermes_ledger.gateway.bootstrap import build_gateway, open_gateway
from hermes_ledger.gateway.config.gateway import GatewayConfig
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
