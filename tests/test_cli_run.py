"""tick / run / demo: the background work through the CLI, and the runner's settings.

The tests that take ``backend`` run on a SQLite file and on PostgreSQL
(``--db postgresql://…``; tests/backends.py)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from backends import Backend
from click.testing import Result
from helpers import ManualClock, installed_script, next_line

from hermes_ledger.gateway import SessionSource
from hermes_ledger.gateway.config.gateway import ConfigError, GatewayConfig
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.gateway.usercode.flushers import load_flusher
from hermes_ledger.ledger import Ledger, open_log
from hermes_ledger.ledger.events import SessionStarted, Source
from hermes_ledger.ledger.schema import load_migrations

HOOK_YAML = 'name: recorder\ndescription: test hook\nevents: ["session:*"]\n'
HOOK_PY = """\
import json
from pathlib import Path

def handle(event_type, context):
    with Path(__file__).with_name("calls.jsonl").open("a") as out:
        out.write(json.dumps({"event": event_type, **context}) + "\\n")
"""


def make_home(tmp_path: Path, ledger_section: str = "") -> Path:
    home = tmp_path / "home"
    hook = home / "hooks" / "recorder"
    hook.mkdir(parents=True)
    for d in (home, home / "hooks", hook):
        d.chmod(0o700)
    (hook / "HOOK.yaml").write_text(HOOK_YAML)
    (hook / "handler.py").write_text(HOOK_PY)
    (home / "config.yaml").write_text(
        "session_reset:\n  mode: idle\n  idle_minutes: 30\n" + ledger_section
    )
    return home


def seed(db: Path | str, clock: ManualClock, home: Path) -> str:
    with open_log(db, clock=clock) as led:
        store = SessionStore(led, GatewayConfig.load(home, env={}), clock)  # type: ignore[arg-type]
        entry = store.get_or_create_session(
            SessionSource(platform="telegram", chat_id="5", chat_type="dm", user_id="5")
        )
        store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi"})
        return entry.session_id


def test_tick_closes_due_sessions_and_delivers_hooks(
    tmp_path: Path, backend: Backend, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    home = make_home(tmp_path)
    db = backend.target
    sid = seed(db, clock, home)
    base = ["--db", db, "--config", str(home)]
    result = cli("tick", *base, "--now", "2026-11-22T09:20:00Z")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "tick at 2026-11-22T09:20:00.000000Z"
    assert "closed" not in result.output.splitlines()[1]
    result = cli("tick", *base, "--now", "2026-11-22T09:31:00Z", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(c["session_id"], c["reason"], c["deadline"]) for c in report["tick"]["closed"]] == [
        (sid, "idle_expiry", "2026-11-22T09:30:00.000000Z")
    ]
    calls = [
        json.loads(line)
        for line in (home / "hooks" / "recorder" / "calls.jsonl").read_text().splitlines()
    ]
    end = [c for c in calls if c["event"] == "session:end"]
    assert len(end) == 1 and end[0]["session_id"] == sid and end[0]["reason"] == "idle_expiry"
    assert end[0]["platform"] == "telegram" and end[0]["user_id"] == "5"


def test_tick_explains_bad_input(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("tick", "--db", str(tmp_path / "l.db"), "--now", "soon")
    assert result.exit_code == 1
    assert result.output == (
        "Error: --now 'soon' is not an ISO-8601 time\nTry: e.g. --now 2026-11-22T09:30:00Z\n"
    )
    home = make_home(tmp_path, "ledger:\n  flush_timeout: -1\n")
    result = cli("tick", "--db", str(tmp_path / "l.db"), "--config", str(home))
    assert (
        result.exit_code == 1
        and "ledger.flush_timeout" in result.output
        and "greater than 0" in result.output
    )


def test_settings_and_flushers_come_from_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mods" / "my_memory.py"
    module.parent.mkdir()
    module.write_text("def flush(context, transcript):\n    return 'kept'\n")
    monkeypatch.syspath_prepend(str(module.parent))
    home = make_home(tmp_path, "ledger:\n  flusher: my_memory:flush\n  flush_attempts: 2\n")
    settings = RunnerSettings.load(home)
    assert settings.flusher == "my_memory:flush" and settings.flush_attempts == 2
    assert load_flusher("my_memory:flush")(None, []) == "kept"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        load_flusher("no_such_module:flush")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_flusher("my_memory:nope")
    with pytest.raises(ConfigError, match="no such entry point"):
        load_flusher("not-installed")
    (home / "config.yaml").write_text("ledger:\n  colour: blue\n")
    with pytest.raises(ConfigError, match=r"ledger\.colour"):
        RunnerSettings.load(home)


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, backend: Backend, clock: ManualClock) -> None:
    home = make_home(tmp_path)
    db = backend.target
    seed(db, clock, home)
    with backend.open() as log:  # what it runs on: the file as given, or the database
        where = db if isinstance(log, Ledger) else log.identity
    proc = subprocess.Popen(
        [sys.executable, "-m", "hermes_ledger.gateway", "run", "--db", db,
         "--config", str(home), "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = next_line(proc)  # "Running on …": the signal handlers are in place
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=30)
    out = first + rest
    assert proc.returncode == 0, err
    assert out.startswith(f"Running on {where}: a pass every 0.05s")
    assert "Stopped after" in out and "SIGTERM: finishing the current pass" in err


def test_demo_is_the_main_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "HERMES_HOME": str(home), "HERMES_LEDGER_DB": str(tmp_path / "real.db")}
    command = [installed_script()]
    started = time.monotonic()
    demo = subprocess.run([*command, "demo"], env=env, capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    assert time.monotonic() - started < 60
    out = demo.stdout
    assert "Session map (demo profile):" in out and "agent:demo:telegram:dm:1001" in out
    for reason in ("idle_expiry", "daily_reset", "auto_reset", "manual_reset"):
        assert reason in out
    # Its own ledger, never the real one (HERMES_LEDGER_DB), nor the home's ledger.db.
    ledger = home / "ledger-demo.db"
    assert f"Simulating a gateway day into {ledger} …" in out
    assert not (tmp_path / "real.db").exists() and not (home / "ledger.db").exists()
    export = home / "ledger-demo-export.jsonl"
    assert f"to {export}" in out
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    verify = subprocess.run(
        [*command, "verify", "--db", str(ledger)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The same story on every run: the ledger is replaced, not appended to.
    again = subprocess.run([*command, "demo"], env=env, capture_output=True, text=True, timeout=120)
    assert (again.returncode, again.stdout) == (0, out)


def test_demo_refuses_a_ledger_that_is_not_the_demos(
    tmp_path: Path, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    home = make_home(tmp_path)
    real = tmp_path / "real.db"
    seed(real, clock, home)
    before = real.read_bytes()
    result = cli("demo", "--db", str(real))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {real} is not a demo ledger: the demo replaces its ledger on each run\n"
        "Try: give the demo a file of its own with --db, e.g. --db ledger-demo.db\n"
    )
    assert real.read_bytes() == before


def test_demo_replaces_a_demo_ledger_an_older_version_wrote(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    older = load_migrations()[:3]  # the schema before forgettable content
    demo, other = tmp_path / "demo.db", tmp_path / "other.db"
    for path, key in ((demo, "agent:demo:telegram:dm:1"), (other, "agent:main:telegram:dm:1")):
        with Ledger.open(path, migrations=older) as led:
            led.append(key, [SessionStarted(session_id="s1", source=Source(platform="telegram"))])
    before = other.read_bytes()
    result = cli("demo", "--db", str(other))
    assert result.exit_code == 1 and "is not a demo ledger" in result.output
    assert other.read_bytes() == before  # an older ledger of someone else's: untouched
    result = cli("demo", "--db", str(demo), "--json")
    assert result.exit_code == 0, result.output
    with Ledger.open(demo, readonly=True) as led:
        assert led.query("SELECT count(*) FROM events WHERE session_id = 's1'") == [(0,)]
        assert led.head() > 1  # replaced by today's demo, at today's schema


def test_demo_removes_its_hooks_folder_and_never_runs_the_operators_hooks(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path)  # an operator hook that records every call it gets
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "HERMES_HOME": str(home), "TMPDIR": str(scratch)}
    demo = subprocess.run(
        [installed_script(), "demo", "--json"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["hook_calls"] > 0
    assert list(scratch.iterdir()) == []  # its temporary hooks folder is gone
    assert not (home / "hooks" / "recorder" / "calls.jsonl").exists()


def test_demo_json(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("demo", "--db", str(tmp_path / "d.db"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    reasons = {c["reason"] for c in report["closed"]}
    assert {"idle_expiry", "daily_reset"} <= reasons
    assert report["hook_calls"] > 0 and report["events"] > 50
