"""The Hermes plugin's capture side: hook callbacks → durable spool → worker → ledger.

Hermes-side code runs in subprocesses (``plugin_workers.py``, started with
``sys.executable -I``, ``HERMES_HOME`` set to a fresh home and ``cwd=tmp_path``):
Hermes caches its home at import, and ``-I`` keeps the repository's ``gateway/``
folder from shadowing Hermes's ``gateway`` package. The callbacks are reached
through Hermes's real ``PluginManager.invoke_hook`` with the keyword arguments
of its call sites. The ledger side is real too (files, flocks, SQLite locks,
processes killed with SIGKILL); only the recorder is a stand-in
(``plugin_workers.StandIn``) handed to the worker through its ``apply_factory``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import hold_write_lock
from hook_workers import read_calls, recording_handler, write_hook
from plugin_workers import TABLE, StandIn

from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.plugin.spool import (
    SpoolError,
    SpoolWriter,
    drain,
    pending_records,
    spool_dir,
)
from hermes_ledger.ledger import Ledger

WORKER = Path(__file__).with_name("plugin_workers.py")
TIMEOUT = 120.0


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


def hermes_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERMES_", "PYTHON"))}
    env["HERMES_HOME"] = str(home)
    return env


def spawn(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-I", str(WORKER), *args],
        cwd=home.parent,
        env=hermes_env(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def line_of(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(TIMEOUT)
        assert proc.stderr is not None
        pytest.fail(f"worker exited {proc.returncode} early:\n{proc.stderr.read()}")
    return line.strip()


def finish(proc: subprocess.Popen[str], stdin: str = "") -> tuple[str, str]:
    out, err = proc.communicate(stdin, timeout=TIMEOUT)
    assert proc.returncode == 0, err
    return out, err


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)  # reaps it and closes the pipes
    assert proc.returncode == -signal.SIGKILL


def run(home: Path, *args: str) -> dict[str, Any]:
    out, _err = finish(spawn(home, *args))
    return json.loads(out.strip().splitlines()[-1])


def applied(db: Path) -> list[str]:
    """The idents the stand-in recorded, in order (empty before its first batch)."""
    if not db.exists():
        return []
    with Ledger.open(db) as ledger:
        tables = ledger.query("SELECT name FROM sqlite_master WHERE name = ?", (TABLE,))
        if not tables:
            return []
        return [row[0] for row in ledger.query(f"SELECT ident FROM {TABLE} ORDER BY seq")]


def spool_files(home: Path) -> list[str]:
    return sorted(p.name for p in spool_dir(home).glob("*.jsonl"))


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- (1) the callbacks, through Hermes's PluginManager ---------------------------------


def test_callbacks_via_invoke_hook_write_the_contract_records_and_survive_garbage(
    home: Path,
) -> None:
    out = run(home, "hooks")
    sid, new, key = out["session_id"], out["new_session_id"], out["session_key"]
    assert out["returned"] == [] and out["raised"] == []  # None returned, nothing raised
    assert not any(name.startswith("hermes-ledger-worker") for name in out["threads"])

    records = pending_records(home)
    for record in records:
        assert record["at"].endswith("Z") and record["at"][:2] == "20"
        record.pop("at")
    source = {"platform": "telegram", "chat_id": "123", "chat_name": None,
              "chat_type": "dm", "user_id": "u1", "user_name": "al", "thread_id": None,
              "chat_topic": None}  # fmt: skip
    hooks = ["on_session_start", "pre_llm_call", "post_api_request", "post_tool_call",
             "post_llm_call", "on_session_end"]  # fmt: skip
    expected: list[dict[str, Any]] = [
        # before the key's first session, then with it; the internal event is skipped
        {"kind": "dispatch", "session_key": key, "session_id": None, "source": source,
         "message_id": "m0"},
        {"kind": "dispatch", "session_key": key, "session_id": sid, "source": source,
         "message_id": "m1"},
        # in a gateway turn (context variables set), then outside one (the CLI)
        *({"kind": "activity", "session_id": sid, "session_key": key, "platform": "telegram",
           "hook": hook} for hook in hooks),
        *({"kind": "activity", "session_id": "cli-session", "session_key": None,
           "platform": None if hook == "post_tool_call" else "telegram", "hook": hook}
          for hook in hooks),
        {"kind": "finalize", "session_id": sid, "platform": "telegram",
         "reason": "session_expired", "old_session_id": None, "new_session_id": None},
        {"kind": "finalize", "session_id": sid, "platform": "telegram", "reason": "new_session",
         "old_session_id": sid, "new_session_id": new},
        {"kind": "reset", "session_id": new, "old_session_id": sid, "new_session_id": new,
         "platform": "telegram"},
        # (the shutdown finalize without a session id names nothing: not spooled)
        {"kind": "subagent", "parent_session_id": new, "child_session_id": "child-1"},
    ]  # fmt: skip
    assert records[: len(expected)] == expected
    garbage = records[len(expected) :]
    # garbage is either dropped or reduced to text ids / None, and capture goes on
    assert garbage[-1] == {
        "kind": "subagent", "parent_session_id": "p-after", "child_session_id": "child-after"
    }  # fmt: skip
    for record in garbage:
        assert all(v is None or isinstance(v, str) for k, v in record.items() if k != "source")
    # no user content reaches the spool
    text = "".join(p.read_text() for p in spool_dir(home).glob("*.jsonl"))
    assert "secret" not in text and "hello" not in text and '"hi"' not in text


def test_spool_files_and_directory_are_private(home: Path) -> None:
    writer = SpoolWriter(home)
    assert writer.append({"kind": "activity", "at": "x", "session_id": "s"})
    folder = spool_dir(home)
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in folder.glob("*.jsonl"):
        assert path.stat().st_mode & 0o777 == 0o600
    writer.close()


def test_unsafe_spool_directories_are_refused(tmp_path: Path, caplog: Any) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    linked = tmp_path / "linked"
    linked.mkdir(mode=0o700)
    (linked / "ledger-spool").symlink_to(target)
    writer = SpoolWriter(linked)
    for _ in range(3):
        assert writer.append({"kind": "activity", "at": "x", "session_id": "s"}) is False
    assert writer.backlog == 3 and list(target.iterdir()) == []
    warnings = [r for r in caplog.records if "cannot write the spool" in r.getMessage()]
    assert len(warnings) == 1  # once per incident, not once per call
    with pytest.raises(SpoolError, match="not a directory"):
        drain(linked, lambda records: None)

    shared = tmp_path / "shared"
    (shared / "ledger-spool").mkdir(parents=True)
    os.chmod(shared / "ledger-spool", 0o777)
    with pytest.raises(SpoolError, match="writable by other users"):
        drain(shared, lambda records: None)

    # fixed: the backlog is written, in order, before the next record
    (linked / "ledger-spool").unlink()
    assert writer.append({"kind": "activity", "at": "y", "session_id": "s4"})
    assert writer.backlog == 0
    assert [r["at"] for r in pending_records(linked)] == ["x", "x", "x", "y"]
    writer.close()


# -- (2) durability: kill -9 ---------------------------------------------------------------


def test_records_survive_sigkill_of_the_capturing_process(home: Path) -> None:
    proc = spawn(home, "spool-until-killed")
    last = -1
    while last < 300:
        last = int(line_of(proc))
    kill9(proc)

    got: list[dict[str, Any]] = []
    report = drain(home, got.extend)
    ids = [r["message_id"] for r in got]
    # every call that returned is there, once, in order (and at most the calls
    # whose output was still in the pipe beyond them)
    assert ids == [f"m{i}" for i in range(len(ids))]
    assert len(ids) > last
    assert report.deleted == 1 and spool_files(home) == []  # its writer is dead
    assert drain(home, got.extend).applied == 0 and len(got) == len(ids)


def test_a_torn_last_line_waits_until_complete_or_abandoned(home: Path) -> None:
    writer = SpoolWriter(home)
    for i in range(3):
        writer.append({"kind": "activity", "at": f"t{i}", "session_id": f"s{i}"})
    path = spool_dir(home) / str(writer.current_file)

    def raw(data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, data)
        os.close(fd)

    got: list[dict[str, Any]] = []
    raw(b'{"kind":"activity","at":"t3",')  # a write in progress
    assert drain(home, got.extend).applied == 3
    raw(b'"session_id":"s3"}\n')
    assert drain(home, got.extend).applied == 1
    raw(b"not json\n")
    raw(b'{"kind":"activity"')  # then the writer goes away mid-line
    writer.close()
    report = drain(home, got.extend)
    assert (report.applied, report.bad_lines, report.torn_dropped, report.deleted) == (0, 1, 1, 1)
    assert [r["session_id"] for r in got] == ["s0", "s1", "s2", "s3"]
    assert list(spool_dir(home).iterdir()) == [spool_dir(home) / "drain.lock"]


def test_a_failing_apply_leaves_the_batch_spooled(home: Path) -> None:
    writer = SpoolWriter(home)
    for i in range(5):
        writer.append({"kind": "activity", "at": f"t{i}", "session_id": f"s{i}"})

    def broken(records: Any) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        drain(home, broken)
    got: list[dict[str, Any]] = []
    assert drain(home, got.extend, batch=2).batches == 3
    assert [r["session_id"] for r in got] == [f"s{i}" for i in range(5)]
    writer.close()


# -- (3) a write-locked ledger --------------------------------------------------------------


def test_a_locked_ledger_keeps_records_spooled_until_it_is_released(home: Path) -> None:
    db = home / "ledger.db"
    Ledger.open(db).close()  # an existing, migrated ledger
    release = home.parent / "release"
    locker = hold_write_lock(db, release)
    options = {"interval": 0.05, "busy_timeout": 0.5, "lock_timeout": 1.0, "max_retry_delay": 0.2}
    proc = spawn(home, "spool-with-worker", "a", "200", "", json.dumps(options))
    assert line_of(proc) == "ready"
    report = json.loads(line_of(proc))
    # every callback returned while the ledger was locked, and quickly
    assert locker.poll() is None
    assert report["worker"] is True and report["spooled"] == 200
    assert report["slowest"] < 1.0, report
    assert len(pending_records(home)) == 200
    assert applied(db) == []
    # the worker has met the lock (its one log line for the incident), and keeps trying
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "recording the spool in the ledger failed: LedgerBusyError" in first, first
    assert "the records stay in" in first
    assert len(pending_records(home)) == 200 and locker.poll() is None

    release.touch()
    finish(locker)
    wait_until(lambda: len(applied(db)) >= 200, "the worker to drain after the lock went")
    _out, rest = finish(proc, "exit\n")
    assert sorted(applied(db)) == sorted(f"a{i}" for i in range(200))  # each once
    assert pending_records(home) == [] and spool_files(home) == []
    assert "failed" not in rest, rest  # logged once, not once per retry
    assert rest.count("recording the spool in the ledger works again") == 1, rest


# -- (4) two processes, one home -------------------------------------------------------------


def test_two_processes_spooling_and_draining_one_home_apply_each_record_once(
    home: Path,
) -> None:
    go = home.parent / "go"
    options = json.dumps({"interval": 0.005, "lock_timeout": 10.0})
    procs = [spawn(home, "spool-with-worker", p, "300", str(go), options) for p in "ab"]
    for proc in procs:
        assert line_of(proc) == "ready"
    go.touch()
    for proc in procs:
        assert json.loads(line_of(proc))["spooled"] == 300
    for proc in procs:
        finish(proc, "exit\n")
    with Ledger.open(home / "ledger.db") as ledger:
        drain(home, StandIn(ledger).apply)  # whatever neither had drained at exit
    counts = Counter(applied(home / "ledger.db"))
    assert set(counts) == {f"{p}{i}" for p in "ab" for i in range(300)}
    assert set(counts.values()) == {1}
    assert spool_files(home) == []


# -- (5) the worker: where it runs, and hook delivery ------------------------------------------


def test_no_worker_outside_a_gateway(home: Path) -> None:
    out = run(home, "plain", str(home.parent / "calls"))
    assert out["registered_threads"] == [] and out["threads"] == []
    assert {"pre_gateway_dispatch", "on_session_finalize", "post_tool_call"} <= set(out["hooks"])
    assert "ledger" in out["cli_commands"]  # register() also registered `hermes ledger`
    assert not (home / "ledger.db").exists()
    kinds = [r["kind"] for r in pending_records(home)]
    assert kinds == ["activity"] * 6 + ["finalize"]  # spooled, for a gateway to drain


def test_gateway_worker_resumes_the_spool_and_delivers_ledger_hooks_once(home: Path) -> None:
    ours, hermes_own = home.parent / "ours.jsonl", home.parent / "hermes.jsonl"
    write_hook(home / "ledger-hooks", "audit", recording_handler(ours), events=["session:end"])
    write_hook(home / "hooks", "own", recording_handler(hermes_own), events=["session:*"])

    # a gateway process captures a close and dies before any drain
    proc = spawn(home, "gateway", "capture", str(ours))
    session_id = json.loads(line_of(proc))["session_id"]
    kill9(proc)
    assert len(pending_records(home)) == 2

    # the next gateway starts its worker when the plugin registers, drains, delivers
    out = run(home, "gateway", "serve", str(ours))
    workers = [n for n in out["after_register"] if n.startswith("hermes-ledger-worker")]
    assert len(workers) == 1 and not any(n.startswith("hermes-ledger") for n in out["before"])
    assert out["last_pass"] == {"applied": 0, "delivered": 0, "error": "None"}
    # and one more start delivers nothing again
    again = run(home, "gateway", "again", str(ours))
    assert again["last_pass"] == {"applied": 0, "delivered": 0, "error": "None"}

    calls = read_calls(ours)
    assert [(c["event"], c["context"]["session_id"]) for c in calls] == [
        ("session:end", session_id)
    ]
    assert not hermes_own.exists()  # Hermes's own hooks dir is Hermes's to deliver
    assert pending_records(home) == [] and spool_files(home) == []


# -- end to end: the real recorder ----------------------------------------------------------


def test_end_to_end_a_gateway_with_the_plugin_records_sessions_and_delivers_hooks(
    home: Path,
) -> None:
    (home / "config.yaml").write_text("ledger:\n  plugin_interval: 0.05\n")
    calls = home.parent / "calls.jsonl"
    write_hook(home / "ledger-hooks", "audit", recording_handler(calls), events=["session:*"])
    out = run(home, "live", str(calls))
    first, second, key = out["first"], out["second"], out["key"]
    assert sum(n.startswith("hermes-ledger-worker") for n in out["threads"]) == 1

    assert [(c["event"], c["context"]["session_id"]) for c in read_calls(calls)] == [
        ("session:start", first), ("session:reset", first), ("session:end", first),
        ("session:start", second),
    ]  # fmt: skip
    end = next(c["context"] for c in read_calls(calls) if c["event"] == "session:end")
    assert (end["reason"], end["session_key"], end["platform"]) == ("manual_reset", key, "telegram")
    with Ledger.open(home / "ledger.db") as ledger:
        events = list(ledger.read_stream(key))
        assert ledger.verify().ok
    assert [(r.session_id, r.type) for r in events if r.type != "message_appended"] == [
        (first, "session_started"), (first, "session_reset"),
        (first, "memory_flush_skipped"), (first, "session_ended"),
        (second, "session_started"),
    ]  # fmt: skip
    assert [(r.session_id, r.event.content) for r in events if r.type == "message_appended"] == [
        (first, "hello"), (first, "ok"), (second, "fresh start"), (second, "ok"),
    ]  # fmt: skip
    assert {r.meta["actor"] for r in events} == {"hermes-plugin"}
    assert pending_records(home) == [] and spool_files(home) == []


# -- settings ----------------------------------------------------------------------------------


def test_ledger_section_plugin_settings(home: Path) -> None:
    assert RunnerSettings().plugin_interval == 1.0 and RunnerSettings().redact_tools == ()
    (home / "config.yaml").write_text(
        "ledger:\n  plugin_interval: 0.5\n  redact_tools: [terminal, browser]\n"
    )
    settings = RunnerSettings.load(home)
    assert settings.plugin_interval == 0.5
    assert settings.redact_tools == ("terminal", "browser")
