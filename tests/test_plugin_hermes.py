"""The plugin with the real Hermes Agent 0.19, end to end: a gateway day → the ledger.

The headline tests run Hermes in a subprocess (``plugin_workers.py hermes-day``,
``sys.executable -I``, a temporary ``HERMES_HOME`` whose config.yaml enables the
plugin and sets an idle reset policy): Hermes's ``PluginManager`` loads the
plugin from its entry point, Hermes's ``GatewayRunner``/``SessionStore`` run the
sessions, and every hook is fired through ``PluginManager.invoke_hook`` with its
call site's keyword arguments. The ledger is drained by the plugin's worker
(``live``) or, after the process was killed with SIGKILL, by the real ``hermes
ledger sync`` (``killed``). A recording hook in ``$HERMES_HOME/ledger-hooks``
hears the closes; one in Hermes's own ``hooks/`` must hear nothing from the ledger.

The backfill suggestion and ``sync``'s reports are tested in-process over a
``HermesFixture`` home (no Hermes import needed: the recorder only reads state.db).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import Backend
from click.testing import Result
from helpers import hold_write_lock, installed_script
from hermes_fixture import HermesFixture, origin, sid
from test_plugin_capture import hermes_env, kill9, line_of

from hermes_ledger.gateway.hermes.importing import import_hermes_home
from hermes_ledger.gateway.hermes.live import FLUSH_NOT_REPORTED
from hermes_ledger.gateway.plugin import worker as worker_module
from hermes_ledger.gateway.plugin.spool import SpoolWriter, pending_records, spool_dir
from hermes_ledger.gateway.plugin.status import history_gap
from hermes_ledger.gateway.plugin.worker import SpoolWorker, sync_home
from hermes_ledger.ledger import Ledger, open_log
from hermes_ledger.ledger.clock import format_utc

WORKER = Path(__file__).with_name("plugin_workers.py")
TIMEOUT = 120.0
KEY = "agent:main:telegram:dm:77"
CONFIG = """\
plugins:
  enabled: [ledger]
  disabled: []
session_reset:
  mode: idle
  idle_minutes: 60
ledger:
  plugin_interval: 0.05
"""

# a hook handler appending {"phase", "event", "context"} per call; it fails (phase
# "failed") while the marker file FAIL_WHILE names exists
HANDLER = """\
import json, os

CALLS = {calls!r}
FAIL_WHILE = {fail_while!r}


def _write(line):
    fd = os.open(CALLS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\\n").encode())
    finally:
        os.close(fd)


def handle(event_type, context):
    if FAIL_WHILE and os.path.exists(FAIL_WHILE):
        _write({{"phase": "failed", "event": event_type, "context": context}})
        raise RuntimeError("told to fail")
    _write({{"phase": "done", "event": event_type, "context": context}})
"""


def private_hook(hooks_dir: Path, name: str, calls: Path, fail_while: Path | None = None) -> None:
    """``hooks_dir/name`` with HOOK.yaml and handler.py: directories 0700, files 0600."""
    for folder in (hooks_dir, hooks_dir / name):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
    files = {
        "HOOK.yaml": f"name: {name}\nevents: ['session:*']\n",
        "handler.py": HANDLER.format(
            calls=str(calls), fail_while=str(fail_while) if fail_while else None
        ),
    }
    for filename, text in files.items():
        path = hooks_dir / name / filename
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)


def calls_of(path: Path, phase: str = "done") -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if line["phase"] == phase]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    (path / "config.yaml").write_text(CONFIG)
    return path


def hermes(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed ``hermes`` script in ``home`` (``env``: more variables)."""
    env = {"HOME": str(home), "HERMES_HOME": str(home), "PATH": os.defpath, "TZ": "UTC",
           **(env or {})}  # fmt: skip
    return subprocess.run(
        [installed_script("hermes"), *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def day(
    home: Path, mode: str, calls: Path, chat_id: str = "77", env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Hermes's gateway through the day (``plugin_workers.hermes_day``) in ``home``."""
    env = hermes_env(home) | {"TZ": "UTC", "HOME": str(home)} | (env or {})
    return subprocess.Popen(
        [sys.executable, "-I", str(WORKER), "hermes-day", mode, str(calls), chat_id],
        cwd=home.parent,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


CLOSED = ("idle_expiry", "auto_reset", "manual_reset")  # the day's closes, in order


def check_the_day(
    home: Path, ids: list[str], calls: Path, *, target: str | None = None, key: str = KEY
) -> None:
    """What the ledger and the ledger hook must hold after the day, however drained.
    ``target``: the ledger (default ``home/ledger.db``); ``key``: the day's key."""
    check_the_events(target or str(home / "ledger.db"), ids, key)
    e1, e2, e3, _ = ids
    closed = dict(zip((e1, e2, e3), CLOSED, strict=True))
    heard = calls_of(calls)
    ends = [c["context"] for c in heard if c["event"] == "session:end"]
    assert Counter(c["session_id"] for c in ends) == Counter(closed.keys())  # once per close
    for context in ends:
        assert context["session_key"] == key
        assert (context["platform"], context["user_id"]) == ("telegram", "u1")
        assert context["reason"] == closed[context["session_id"]]
        assert context["delivery_id"]
    assert len({c["context"]["delivery_id"] for c in heard}) == len(heard)  # no call twice
    assert not (home.parent / "hermes-own.jsonl").exists()  # Hermes's hooks/ are Hermes's
    assert pending_records(home) == []


def check_the_events(target: str, ids: list[str], key: str = KEY) -> None:
    """What the ledger at ``target`` (a file or a URI) must hold of the day on ``key``:
    each close once (cause → flush outcome → end), the starts, the transcript."""
    e1, e2, e3, e4 = ids
    closed = dict(zip((e1, e2, e3), CLOSED, strict=True))
    causes = {e1: "session_expired", e2: "session_expired", e3: "session_reset"}
    with open_log(target) as ledger:
        events = list(ledger.read_stream(key))
        assert ledger.verify().ok
    assert {r.meta["actor"] for r in events} == {"hermes-plugin"}
    ended = Counter(r.session_id for r in events if r.type == "session_ended")
    assert ended == Counter(closed.keys())  # exactly one end per closed session, none for e4
    for session, reason in closed.items():
        kinds = ("session_expired", "session_reset", "memory_flush_skipped", "session_ended")
        close = [r for r in events if r.session_id == session and r.type in kinds]
        assert [r.type for r in close] == [
            causes[session],
            "memory_flush_skipped",
            "session_ended",
        ], session
        assert close[1].event.reason == FLUSH_NOT_REPORTED  # not reported, not "no flush"
        assert close[2].event.reason == reason
    starts = [(r.session_id, r.event.reason) for r in events if r.type == "session_started"]
    assert starts == [(e1, "first"), (e2, "auto_reset"), (e3, "auto_reset"), (e4, "manual_reset")]
    transcript = [(r.session_id, r.event.role, r.event.content) for r in events
                  if r.type == "message_appended"]  # fmt: skip
    assert transcript == [
        (e1, "user", "hello"), (e1, "assistant", "ok"),
        (e2, "user", "back again"), (e2, "assistant", "ok"),
        (e3, "user", "much later"), (e3, "assistant", "ok"),
        (e4, "user", "fresh start"),  # the interrupted turn: on_session_end brought it in
    ]  # fmt: skip


def hermes_own_hook(home: Path) -> None:
    private_hook(home / "hooks", "own", home.parent / "hermes-own.jsonl")


# -- the headline: a gateway day with the real Hermes ---------------------------------------


def test_a_hermes_gateway_day_is_recorded_and_each_close_heard_once(
    home: Path, backend: Backend
) -> None:
    # On PostgreSQL the home's config.yaml names the ledger (ledger.db: URI): the
    # gateway's worker and every `hermes ledger …` below use it.
    target = None
    if backend.name == "postgresql":
        target = backend.target
        (home / "config.yaml").write_text(CONFIG + f"  db: {target}\n")
    calls = home.parent / "calls.jsonl"
    private_hook(home / "ledger-hooks", "audit", calls)
    hermes_own_hook(home)
    proc = day(home, "live", calls)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["worker"] is True  # the gateway process runs the worker
    assert result["last_pass"] == {"applied": 0, "delivered": 0}
    check_the_day(home, result["ids"], calls, target=target)
    if target is not None:
        assert not (home / "ledger.db").exists()  # nothing went to a SQLite file
        status = hermes(home, "ledger", "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert (shown["events"], shown["plugin"]["waiting"]) == (backend.count(), 0)

    # nothing is added twice: not by sync, not by a later import of the home
    synced = hermes(home, "ledger", "sync", "--json")
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert (report["records"], report["events"], report["hooks"]["delivered"]) == (0, 0, 0)
    backfill = hermes(home, "ledger", "backfill", "--json")
    assert backfill.returncode == 0, backfill.stderr
    assert json.loads(backfill.stdout)["events"] == 0
    verify = hermes(home, "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    check_the_day(home, result["ids"], calls, target=target)
    assert "hermes ledger backfill" not in err, err  # the ledger has the whole history


@contextmanager
def append_lock(uri: str) -> Iterator[None]:
    """Another session holding a PostgreSQL ledger's append lock (``LOCK TABLE events
    IN EXCLUSIVE MODE``, what every append takes) until the block ends."""
    with psycopg.connect(uri) as conn:
        conn.execute("LOCK TABLE hermes_ledger.events IN EXCLUSIVE MODE")
        yield
        conn.rollback()


def test_sigkill_before_any_drain_then_hermes_ledger_sync_loses_and_doubles_nothing(
    home: Path, backend: Backend
) -> None:
    calls, failing = home.parent / "calls.jsonl", home.parent / "hook-fails"
    private_hook(home / "ledger-hooks", "audit", calls, fail_while=failing)
    hermes_own_hook(home)
    target = None
    if backend.name == "postgresql":
        target = backend.target
        (home / "config.yaml").write_text(CONFIG + f"  db: {target}\n")
        with backend.open(projections=True):  # the ledger and its projections exist
            pass
    ledger = target or str(home / "ledger.db")
    open_log(ledger).close()
    # the gateway's day while its worker cannot write the ledger (another process
    # holds the write lock: SQLite's, or PostgreSQL's append lock, where the worker
    # waits); every callback has returned when the ids are printed; then SIGKILL,
    # before any drain
    if target is None:
        release = home.parent / "release"
        locker = hold_write_lock(home / "ledger.db", release)
        proc = day(home, "killed", calls)
        ids = json.loads(line_of(proc))["ids"]
        kill9(proc)
        release.touch()
        locker.communicate(timeout=TIMEOUT)
    else:
        with append_lock(target):
            proc = day(home, "killed", calls)
            ids = json.loads(line_of(proc))["ids"]
            kill9(proc)
    assert len(pending_records(home)) > 20
    with open_log(ledger) as log:
        assert log.head() == 0

    # `hermes ledger sync`: everything recorded; the hook fails (and is retried)
    failing.touch()
    first = hermes(home, "ledger", "sync", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["skipped"] == [] and report["records"] == report["applied"]
    assert sorted(c["reason"] for c in report["closes"]) == [
        "auto_reset", "idle_expiry", "manual_reset"
    ]  # fmt: skip
    assert report["hooks"]["delivered"] == 0 and report["hooks"]["failed"] == 1
    failed = calls_of(calls, "failed")
    assert len(failed) == 1 and calls_of(calls) == []

    # the hook works again: redelivered after its backoff with the same delivery_id
    failing.unlink()
    time.sleep(2.5)  # the first retry's backoff (2 s)
    second = hermes(home, "ledger", "sync")
    assert second.returncode == 0, second.stderr
    assert "Nothing waiting in" in second.stdout and "Ledger hooks: " in second.stdout
    heard = calls_of(calls)
    assert heard[0]["context"]["delivery_id"] == failed[0]["context"]["delivery_id"]
    assert heard[0]["context"]["event_id"] == failed[0]["context"]["event_id"]

    again = hermes(home, "ledger", "sync", "--json")
    assert json.loads(again.stdout)["hooks"]["delivered"] == 0
    verify = hermes(home, "ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    check_the_day(home, ids, calls, target=target)


# -- the backfill suggestion -------------------------------------------------------------------

NOW = datetime.now().astimezone()
OLD = NOW - timedelta(days=3)


@pytest.fixture
def fixture_home(home: Path) -> HermesFixture:
    (home / "config.yaml").write_text(CONFIG.replace("plugin_interval: 0.05", "redact_tools: []"))
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


@pytest.fixture
def suggestions(caplog: pytest.LogCaptureFixture) -> Any:
    worker_module._history_checked.clear()
    caplog.set_level(logging.INFO, logger="hermes_plugins.ledger")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "hermes_plugins.ledger" and "backfill" in r.getMessage()]  # fmt: skip

    yield said
    worker_module._history_checked.clear()


def test_a_ledger_without_the_homes_history_gets_one_backfill_suggestion(
    fixture_home: HermesFixture, suggestions: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fixture_home.home
    monkeypatch.setenv("HERMES_HOME", str(home))
    chat(fixture_home, sid(OLD, "01d00001"), OLD, "1")
    fixture_home.end_session(sid(OLD, "01d00001"), "idle", at=OLD.timestamp() + 600)
    chat(fixture_home, sid(OLD + timedelta(hours=1), "01d00002"), OLD + timedelta(hours=1), "2")
    new = sid(NOW, "ae000001")
    chat(fixture_home, new, NOW - timedelta(seconds=30), "3")

    worker = SpoolWorker(home, deliver_hooks=False)
    spool_activity(home, new, "3")
    assert worker.run_pass().ok
    assert len(said := suggestions()) == 1
    assert "2 session(s) from before the plugin" in said[0]
    assert "run `hermes ledger backfill`" in said[0]
    # not once per pass, nor per worker of the same home in this process
    spool_activity(home, new, "3")
    assert worker.run_pass().ok
    other = SpoolWorker(home, deliver_hooks=False)
    spool_activity(home, new, "3")
    assert other.run_pass().ok
    assert len(suggestions()) == 1
    worker._close_gateway()
    other._close_gateway()

    # `status` shows it too (the plugin is enabled in this home)
    status = cli("status")
    assert status.exit_code == 0, status.output
    text = " ".join(status.output.split())
    assert "backfill: 2 session(s) from before the plugin" in text
    assert "spool: 0 record(s) waiting" in text and "plugin: enabled" in text
    data = json.loads(cli("status", "--json").output)
    assert data["plugin"]["backfill"]["sessions"] == 2 and data["plugin"]["waiting"] == 0

    # after the backfill the gap is gone
    with Ledger.open(home / "ledger.db") as ledger:
        import_hermes_home(ledger, home)
        gap = history_gap(ledger, home)
    assert gap is not None and gap.sessions == 0
    assert "backfill" not in cli("status").output


def test_no_suggestion_for_a_ledger_that_has_the_history(
    fixture_home: HermesFixture, suggestions: Any
) -> None:
    home = fixture_home.home
    old = sid(OLD, "01d00003")
    chat(fixture_home, old, OLD, "1")
    fixture_home.end_session(old, "idle", at=OLD.timestamp() + 600)
    with Ledger.open(home / "ledger.db") as ledger:
        import_hermes_home(ledger, home)  # backfilled before the plugin ran
    new = sid(NOW, "ae000002")
    chat(fixture_home, new, NOW - timedelta(seconds=30), "3")
    worker = SpoolWorker(home, deliver_hooks=False)
    spool_activity(home, new, "3")
    assert worker.run_pass().ok
    worker._close_gateway()
    assert suggestions() == []


def test_standalone_status_is_unchanged_without_the_plugin(
    fixture_home: HermesFixture, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fixture_home.home
    monkeypatch.setenv("HERMES_HOME", str(home))
    (home / "config.yaml").write_text("plugins:\n  enabled: []\n")
    Ledger.open(home / "ledger.db").close()
    result: Result = cli("status")
    assert result.exit_code == 0
    assert "plugin" not in result.output and "spool" not in result.output
    assert "plugin" not in json.loads(cli("status", "--json").output)


# -- hermes-ledger sync ---------------------------------------------------------------------


def test_sync_reports_applied_and_skipped_records_and_clear_errors(
    fixture_home: HermesFixture, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fixture_home.home
    monkeypatch.setenv("HERMES_HOME", str(home))
    assert "Nothing waiting in" in cli("sync").output  # no spool, no ledger: nothing made
    assert not (home / "ledger.db").exists()

    new = sid(NOW, "ae000003")
    chat(fixture_home, new, NOW - timedelta(seconds=30), "3")
    spool_activity(home, new, "3")
    spool_activity(home, "20990101_000000_deadbeef", "4")  # not in state.db
    result = cli("sync")
    assert result.exit_code == 0, result.output
    assert "Recorded 2 spooled record(s)" in result.output
    assert "1 applied, 1 skipped" in result.output
    assert "skipped a activity record: session 20990101_000000_deadbeef is not in" in result.output
    data = json.loads(cli("sync", "--json").output)
    assert (data["records"], data["applied"], data["events"]) == (0, 0, 0)
    assert sync_home(home).records == 0

    os.chmod(spool_dir(home), 0o777)
    failed = cli("sync")
    assert failed.exit_code == 1
    assert "Error: cannot drain" in failed.output and "writable by other users" in failed.output
    assert "Try: make" in failed.output
    os.chmod(spool_dir(home), 0o700)

    monkeypatch.setenv("HERMES_HOME", str(home / "missing"))
    missing = cli("sync")
    assert missing.exit_code == 1 and "Error: there is no Hermes home at" in missing.output
