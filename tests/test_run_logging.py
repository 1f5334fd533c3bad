"""What `run` and `tick` log: a line per close, per hook delivery or failure, a broken
hook once per change; text or JSON lines on stderr, --quiet, -v with tracebacks."""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from helpers import ManualClock, installed_script, next_line

from hermes_ledger.gateway import SessionSource
from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistry
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger

KEY = "agent:main:telegram:dm:5"
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
FAILING = 'def handle(event_type, context):\n    raise RuntimeError("boom")\n'
BROKEN_YAML = "name: broken\nevents: [\n"
GOOD_YAML = 'name: broken\nevents: ["session:start"]\n'


def write_hook(hooks: Path, name: str, manifest: str, handler: str) -> Path:
    hook = hooks / name
    hook.mkdir(mode=0o700, parents=True)
    (hook / "HOOK.yaml").write_text(manifest)
    (hook / "handler.py").write_text(handler)
    return hook


def make_home(tmp_path: Path, ledger_section: str = "") -> Path:
    """A home with an idle policy, a hook that always fails and one whose HOOK.yaml
    does not parse."""
    home = tmp_path / "home"
    (home / "hooks").mkdir(mode=0o700, parents=True)
    home.chmod(0o700)
    write_hook(home / "hooks", "audit", 'name: audit\nevents: ["session:end"]\n', FAILING)
    write_hook(home / "hooks", "broken", BROKEN_YAML, "def handle(t, c):\n    pass\n")
    (home / "config.yaml").write_text(
        "session_reset:\n  mode: idle\n  idle_minutes: 30\n" + ledger_section
    )
    return home


def seed(db: Path, home: Path) -> str:
    """One telegram session, last active on 2026-11-22 (long past its idle expiry)."""
    clock = ManualClock()
    with Ledger.open(db, clock=clock) as led:
        store = SessionStore(led, GatewayConfig.load(home, env={}), clock)
        entry = store.get_or_create_session(
            SessionSource(platform="telegram", chat_id="5", chat_type="dm", user_id="5")
        )
        return entry.session_id


class Lines:
    """A child's stderr, line by line, read in a thread: a test waits for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stderr is not None
        stderr = proc.stderr
        threading.Thread(target=self._read, args=(stderr,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60.0) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"no such line within {timeout} s; stderr so far: {self.seen}")
            if line is None:
                pytest.fail(f"the child exited first; stderr: {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def stop(self) -> list[str]:
        """SIGTERM, then every line up to the child's exit."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        while (line := self._queue.get(timeout=60)) is not None:
            self.seen.append(line)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        assert self.proc.returncode == 0, self.seen
        return self.seen


def start_run(db: Path, home: Path, *options: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen(
        [installed_script(), "run", "--db", str(db), "--config", str(home),
         "--interval", "0.05", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = Lines(proc)
    next_line(proc)  # "Running on …": the signal handlers are in place
    return proc, lines


def test_run_logs_closes_hook_failures_and_a_broken_hook_once_per_change(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path)
    db = tmp_path / "ledger.db"
    sid = seed(db, home)
    _proc, lines = start_run(db, home)
    closed = lines.wait_for(lambda line: " closed " in line)
    assert re.fullmatch(
        f"{TS} INFO closed {KEY} session {sid} reason idle_expiry;"
        r" flush skipped \(no flusher configured\)",
        closed,
    ), closed
    failed = lines.wait_for(lambda line: "hook audit failed" in line)
    assert re.fullmatch(
        f"{TS} WARNING hook audit failed on session:end {KEY} \\(attempt 1/5, retry in 2 s\\):"
        " RuntimeError: boom",
        failed,
    ), failed
    # The second attempt comes two seconds later: many passes, each loading nothing new.
    lines.wait_for(lambda line: "(attempt 2/5, retry in 4 s): RuntimeError: boom" in line)
    (home / "hooks" / "broken" / "HOOK.yaml").write_text(GOOD_YAML)
    fixed = lines.wait_for(lambda line: "loads again" in line)
    assert re.fullmatch(f"{TS} INFO hook broken loads again: {home / 'hooks' / 'broken'}", fixed)
    seen = lines.stop()
    skipped = [line for line in seen if "hook skipped" in line]
    assert len(skipped) == 1, seen
    assert re.fullmatch(
        f"{TS} WARNING hook skipped: {home / 'hooks' / 'broken' / 'HOOK.yaml'}: invalid YAML: .*",
        skipped[0],
    )
    assert sum("loads again" in line for line in seen) == 1
    assert not any("Traceback" in line for line in seen)  # tracebacks only with -v
    assert any(re.fullmatch(f"{TS} INFO SIGTERM: finishing the current pass", x) for x in seen)


def test_run_json_lines_have_stable_keys_and_verbose_shows_the_handler_traceback(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path)
    db = tmp_path / "ledger.db"
    sid = seed(db, home)
    _proc, lines = start_run(db, home, "--log-format", "json", "-v")
    lines.wait_for(lambda line: json.loads(line)["event"] == "hook_traceback")
    seen = [json.loads(line) for line in lines.stop()]
    by_event: dict[str, list[dict[str, object]]] = {}
    for record in seen:
        assert set(record) >= {"ts", "level", "event", "logger", "message"}
        assert re.fullmatch(TS, str(record["ts"]))
        by_event.setdefault(str(record["event"]), []).append(record)
    (broken,) = by_event["hook_broken"]
    assert broken["level"] == "warning"
    assert broken["path"] == str(home / "hooks" / "broken" / "HOOK.yaml")
    (closed,) = by_event["session_closed"]
    assert {k: v for k, v in closed.items() if k not in ("ts", "message")} == {
        "level": "info",
        "event": "session_closed",
        "logger": "hermes_ledger.gateway.sessions.closing",
        "session_key": KEY,
        "session_id": sid,
        "reason": "idle_expiry",
        "flush": "skipped",
        "provider": None,
        "error": None,
    }
    failed = by_event["hook_failed"][0]
    assert {k: v for k, v in failed.items() if k not in ("ts", "message", "delivery_id")} == {
        "level": "warning",
        "event": "hook_failed",
        "logger": "hermes_ledger.gateway.hooks.dispatch",
        "hook": "audit",
        "hook_event": "session:end",
        "session_key": KEY,
        "session_id": sid,
        "attempt": 1,
        "max_attempts": 5,
        "retry_in": 2.0,
        "error": "RuntimeError: boom",
    }
    traceback = by_event["hook_traceback"][0]
    assert traceback["level"] == "debug" and traceback["hook"] == "audit"
    assert 'raise RuntimeError("boom")' in str(traceback["traceback"])
    assert by_event["pass"][0]["level"] == "debug"
    assert by_event["stopping"] == [
        {**by_event["stopping"][0], "level": "info", "signal": "SIGTERM"}
    ]


def test_run_quiet_logs_warnings_only(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    db = tmp_path / "ledger.db"
    sid = seed(db, home)
    _proc, lines = start_run(db, home, "--quiet")
    lines.wait_for(lambda line: "hook audit failed" in line)
    seen = lines.stop()
    assert {line.split(" ", 2)[1] for line in seen} == {"WARNING"}, seen
    assert any("hook skipped: " in line for line in seen)
    with Ledger.open(db) as led:  # the close happened, it was just not logged
        assert [r.session_id for r in led.read_all(types={"session_ended"})] == [sid]


def test_run_refuses_quiet_with_verbose(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("run", "--db", str(tmp_path / "l.db"), "--quiet", "--verbose")
    assert result.exit_code == 2
    assert "--quiet and --verbose cannot be used together" in result.output
    assert not (tmp_path / "l.db").exists()


def test_tick_logs_a_failing_flush_and_hook_on_stderr(
    tmp_path: Path, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mods" / "bad_memory.py"
    module.parent.mkdir()
    module.write_text("def flush(context, transcript):\n    raise OSError('disk full')\n")
    monkeypatch.syspath_prepend(str(module.parent))
    home = make_home(tmp_path, "ledger:\n  flusher: bad_memory:flush\n")
    db = tmp_path / "ledger.db"
    sid = seed(db, home)
    base = ["--db", str(db), "--config", str(home), "--now", "2026-11-22T10:00:00Z"]
    result = cli("tick", *base, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tick"]["waiting_for_retry"] == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines  # no info lines from tick: its report is on stdout
    broken = home / "hooks" / "broken" / "HOOK.yaml"
    assert re.fullmatch(f"{TS} WARNING hook skipped: {broken}: invalid YAML: .*", lines[0])
    assert re.fullmatch(
        f"{TS} WARNING flush failed for {KEY} session {sid} \\(attempt 1/3, retry in 60 s\\):"
        " OSError: disk full",
        lines[1],
    ), lines
    result = cli("tick", *base, "--log-format", "json")  # the retry is not due yet
    assert result.exit_code == 0 and json.loads(result.stderr.splitlines()[0])["event"] == (
        "hook_broken"
    )


def test_a_dispatcher_reports_a_broken_hook_once_until_it_is_fixed(
    tmp_path: Path, led: Ledger, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir(mode=0o700)
    write_hook(hooks, "broken", BROKEN_YAML, "def handle(t, c):\n    pass\n")
    with caplog.at_level(logging.INFO, logger="hermes_ledger"):
        dispatcher = HookDispatcher(led, HookRegistry.discover(hooks), clock=clock)
        for _ in range(3):
            dispatcher.reload(HookRegistry.discover(hooks))
        assert [r.event for r in caplog.records] == ["hook_broken"]  # type: ignore[attr-defined]
        (hooks / "broken" / "HOOK.yaml").write_text("name: broken\nevents: 7\n")
        dispatcher.reload(HookRegistry.discover(hooks))  # broken another way: a change
        (hooks / "broken" / "HOOK.yaml").write_text(GOOD_YAML)
        dispatcher.reload(HookRegistry.discover(hooks))
        dispatcher.reload(HookRegistry.discover(hooks))
    assert [(r.levelname, r.getMessage()) for r in caplog.records[1:]] == [
        (
            "WARNING",
            f"hook skipped: {hooks / 'broken' / 'HOOK.yaml'}: 'events' is missing or not a"
            " non-empty list of event types",
        ),
        ("INFO", f"hook broken loads again: {hooks / 'broken'}"),
    ]
