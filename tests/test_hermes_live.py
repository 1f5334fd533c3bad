"""The Hermes plugin's recorder: spooled hook records → ledger events, with the batch
import's ids, closes from the callbacks' signals, and the import cooperating.

Every test that takes ``led`` runs on both backends (a SQLite file and a fresh
PostgreSQL database: tests/backends.py); ``led`` is only an ``EventLog`` here, so
what the tests read goes through the interface (``read_all``, ``read_stream``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from backends import Backend
from helpers import ManualClock
from hermes_fixture import T0, HermesFixture, origin, sid

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.hermes import reading
from hermes_ledger.gateway.hermes.importing import import_hermes_home
from hermes_ledger.gateway.hermes.live import (
    FLUSH_NOT_REPORTED,
    PLUGIN_ACTOR,
    RESET_TRIGGER,
    LiveRecorder,
)
from hermes_ledger.gateway.hermes.mapping import REDACTED, import_key
from hermes_ledger.gateway.hermes.reading import HermesImportError
from hermes_ledger.gateway.sessions.policy import ResetPolicy
from hermes_ledger.ledger import EventLog, Ledger, LedgerBusyError
from hermes_ledger.ledger.clock import format_utc

TG = "agent:main:telegram:dm:1001"
ADA = origin("telegram", "1001", user_id="1001", user_name="ada")
IDLE = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=60))
M = timedelta(minutes=1)


def at(delta: timedelta = timedelta(0)) -> float:
    return (T0 + delta).timestamp()


def stamp(delta: timedelta = timedelta(0)) -> str:
    return format_utc(T0 + delta)


def activity(session_id: str, when: timedelta, key: str | None = TG, **kw: Any) -> dict[str, Any]:
    return {"kind": "activity", "at": stamp(when), "session_id": session_id,
            "session_key": key, "platform": "telegram", "hook": "post_llm_call", **kw}  # fmt: skip


def finalize(session_id: str, reason: str, when: timedelta, **kw: Any) -> dict[str, Any]:
    return {"kind": "finalize", "at": stamp(when), "session_id": session_id,
            "platform": "telegram", "reason": reason, **kw}  # fmt: skip


def types(led: EventLog, key: str) -> list[tuple[str, str | None]]:
    return [(r.type, r.session_id) for r in led.read_stream(key)]


def ends(led: EventLog) -> dict[str, str]:
    return {r.session_id: r.event.reason for r in led.read_all(types=["session_ended"])}  # type: ignore[misc, union-attr]


def closes(led: EventLog, session_id: str) -> list[str]:
    """The close events of one session, in log order (cause, outcome, end)."""
    content = ("session_started", "message_appended", "usage_recorded")
    return [r.type for r in led.read_all() if r.session_id == session_id and r.type not in content]


@pytest.fixture
def hermes(tmp_path: Path) -> Iterator[HermesFixture]:
    with HermesFixture(tmp_path / "hermes") as h:
        yield h


@pytest.fixture
def led(backend: Backend) -> Iterator[EventLog]:
    """The ledger under test, on each backend in turn (overrides conftest's SQLite one)."""
    with backend.open() as log:
        yield log


@pytest.fixture
def verify(backend: Backend) -> Any:
    """``backend``'s projections verify (live projections equal a replay)."""
    return backend.projections.verify


def chat(h: HermesFixture, session_id: str, start: timedelta, *, key: str = TG) -> None:
    """A session on ``key`` with a user turn, a tool round and an answer, and usage."""
    h.create_session(session_id, "telegram", started_at=at(start), session_key=key, origin=ADA)
    h.append_message(session_id, "user", "weather?", at=at(start + M), platform_message_id="7")
    call = {"id": f"c-{session_id}", "type": "function",
            "function": {"name": "web_search", "arguments": '{"q": "Lisbon"}'}}  # fmt: skip
    h.append_message(session_id, "assistant", None, at=at(start + 2 * M), tool_calls=[call])
    h.append_message(session_id, "tool", "sunny", at=at(start + 3 * M), tool_name="web_search",
                     tool_call_id=call["id"])  # fmt: skip
    h.append_message(session_id, "assistant", "Sunny.", at=at(start + 4 * M), token_count=3)
    h.set_usage(session_id, input_tokens=100, output_tokens=20, estimated_cost_usd=0.01)
    h.route(key, session_id, origin=ADA, at=at(start + 4 * M))


# -- messages, usage and starts ------------------------------------------------------------


def test_a_session_is_recorded_once_with_the_import_ids(
    hermes: HermesFixture, led: EventLog, verify: Any
) -> None:
    s1 = sid(T0, "aaaa0001")
    chat(hermes, s1, timedelta(0))
    recorder = LiveRecorder(led, hermes.home, config=IDLE)
    source = {**ADA, "is_bot": False, "message_id": "7"}  # Hermes' to_dict has more keys
    dispatch = {"kind": "dispatch", "at": stamp(), "session_key": TG, "session_id": None,
                "source": source, "message_id": "7"}  # fmt: skip
    records = [dispatch, activity(s1, M), activity(s1, 2 * M, hook="post_tool_call")]
    report = recorder.apply(records)
    assert (report.events, report.applied, report.skipped, report.closes) == (6, 3, [], [])
    assert [t for t, _ in types(led, TG)] == [
        "session_started", *["message_appended"] * 4, "usage_recorded"]  # fmt: skip
    assert {r.meta["actor"] for r in led.read_all()} == {PLUGIN_ACTOR}
    started = next(led.read_stream(TG)).event
    assert (started.reason, started.source.user_name) == ("first", "ada")

    again = recorder.apply(records)
    assert (again.events, again.applied, again.skipped) == (0, 3, [])
    head = led.head()
    imported = import_hermes_home(led, hermes.home)
    assert (imported.events, imported.warnings, led.head()) == (0, [], head)

    # Hermes gains a turn: only it is recorded, and the import finds nothing new.
    hermes.append_message(s1, "user", "thanks", at=at(10 * M))
    hermes.set_usage(s1, input_tokens=150, output_tokens=30, estimated_cost_usd=0.015)
    report = recorder.apply([activity(s1, 11 * M)])
    assert report.events == 2
    usage = [r.event for r in led.read_stream(TG) if r.type == "usage_recorded"]
    assert [(u.input_tokens, u.output_tokens) for u in usage] == [(100, 20), (50, 10)]
    assert import_hermes_home(led, hermes.home).events == 0
    assert verify(led).ok


def test_a_key_the_import_wrote_first_is_carried_on(hermes: HermesFixture, led: EventLog) -> None:
    s1 = sid(T0, "aaaa0001")
    chat(hermes, s1, timedelta(0))
    assert import_hermes_home(led, hermes.home).events == 6
    hermes.append_message(s1, "user", "more", at=at(20 * M))
    report = LiveRecorder(led, hermes.home, config=IDLE).apply([activity(s1, 21 * M)])
    assert (report.events, report.skipped) == (1, [])
    s2 = sid(T0 + timedelta(hours=3), "aaaa0002")
    hermes.create_session(s2, "telegram", started_at=at(timedelta(hours=3)), session_key=TG,
                          origin=ADA)  # fmt: skip
    hermes.end_session(s1, "idle", at=at(timedelta(hours=3)))
    report = LiveRecorder(led, hermes.home, config=IDLE).apply([activity(s2, timedelta(hours=3))])
    assert [c.reason for c in report.closes] == ["auto_reset"]
    again = import_hermes_home(led, hermes.home)
    assert (again.events, again.warnings) == (0, [])
    assert {r.meta["actor"] for r in led.read_all()} == {PLUGIN_ACTOR, "hermes-import"}


# -- closes ------------------------------------------------------------------------------


def test_expiry_auto_reset_and_new_each_close_once(
    hermes: HermesFixture, led: EventLog, verify: Any
) -> None:
    s1, s2, s3, s4 = (sid(T0 + n * timedelta(hours=2), f"bbbb000{n}") for n in range(4))
    recorder = LiveRecorder(led, hermes.home, config=IDLE)
    chat(hermes, s1, timedelta(0))
    records = [activity(s1, 5 * M), finalize(s1, "session_expired", 70 * M)]
    # the next message gets a new id (Hermes rotates lazily): no second close
    chat(hermes, s2, 2 * timedelta(hours=1))
    records.append(activity(s2, timedelta(hours=2, minutes=5)))
    # an auto-reset without the watcher: Hermes rotates and calls no hook
    chat(hermes, s3, 4 * timedelta(hours=1))
    hermes.end_session(s2, "idle", at=at(timedelta(hours=4)))
    records.append(activity(s3, timedelta(hours=4, minutes=5)))
    # /new: finalize(new_session) then reset, both naming old and new
    hermes.create_session(s4, "telegram", started_at=at(timedelta(hours=6)), session_key=TG,
                          origin=ADA)  # fmt: skip
    hermes.end_session(s3, "session_reset", at=at(timedelta(hours=6)))
    six = timedelta(hours=6)
    records += [
        finalize(s3, "new_session", six, old_session_id=s3, new_session_id=s4),
        {"kind": "reset", "at": stamp(six), "session_id": s4, "old_session_id": s3,
         "new_session_id": s4, "platform": "telegram"},
    ]  # fmt: skip
    report = recorder.apply(records)
    assert report.skipped == []
    assert [(c.session_id, c.cause, c.reason) for c in report.closes] == [
        (s1, "session_expired", "idle_expiry"),
        (s2, "session_expired", "auto_reset"),
        (s3, "session_reset", "manual_reset"),
    ]
    assert ends(led) == {s1: "idle_expiry", s2: "auto_reset", s3: "manual_reset"}
    for s, cause in ((s1, "session_expired"), (s2, "session_expired"), (s3, "session_reset")):
        assert closes(led, s) == [cause, "memory_flush_skipped", "session_ended"]
    starts = {r.session_id: r.event for r in led.read_all() if r.type == "session_started"}
    assert [(starts[s].reason, starts[s].previous_session_id) for s in (s1, s2, s3, s4)] == [
        ("first", None), ("auto_reset", s1), ("auto_reset", s2), ("manual_reset", s3)]  # fmt: skip
    flush = [r.event for r in led.read_all() if r.type == "memory_flush_skipped"]
    assert {f.reason for f in flush} == {FLUSH_NOT_REPORTED}
    reset = next(r.event for r in led.read_all() if r.type == "session_reset")
    assert reset.trigger == RESET_TRIGGER
    expired = next(r.event for r in led.read_all() if r.type == "session_expired")
    assert (expired.reason, expired.deadline) == ("idle", T0 + 64 * M)
    assert {r.meta["actor"] for r in led.read_all()} == {PLUGIN_ACTOR}

    head = led.head()
    assert recorder.apply(records).events == 0
    assert import_hermes_home(led, hermes.home).events == 0
    assert led.head() == head
    assert verify(led).ok


def test_an_auto_reset_the_policy_does_not_explain_says_what_hermes_said(
    hermes: HermesFixture, led: EventLog
) -> None:
    s1, s2 = sid(T0, "cccc0001"), sid(T0 + 10 * M, "cccc0002")
    chat(hermes, s1, timedelta(0))
    hermes.create_session(s2, "telegram", started_at=at(10 * M), session_key=TG, origin=ADA)
    hermes.end_session(s1, "suspended", at=at(10 * M))
    recorder = LiveRecorder(led, hermes.home, config=IDLE)
    report = recorder.apply([activity(s1, 5 * M), activity(s2, 11 * M)])
    assert [(c.cause, c.reason) for c in report.closes] == [("session_reset", "auto_reset")]
    reset = next(r.event for r in led.read_all() if r.type == "session_reset")
    assert reset.trigger == "hermes:suspended"


def test_shutdown_and_other_finalizes(hermes: HermesFixture, led: EventLog) -> None:
    s1 = sid(T0, "dddd0001")
    chat(hermes, s1, timedelta(0))
    cli = "cli-1"
    hermes.create_session(cli, "cli", started_at=at(M))
    hermes.append_message(cli, "user", "hi from the terminal", at=at(2 * M))
    hermes.end_session(s1, "shutdown", at=at(10 * M))  # Hermes ended it: a close
    recorder = LiveRecorder(led, hermes.home, config=IDLE)
    report = recorder.apply([
        finalize(s1, "shutdown", 10 * M, platform="gateway"),
        finalize(cli, "session_boundary", 11 * M, platform="cli"),
    ])  # fmt: skip
    assert report.skipped == []
    assert ends(led) == {s1: "shutdown", cli: "manual_reset"}
    triggers = [r.event.trigger for r in led.read_all() if r.type == "session_reset"]
    assert triggers == ["shutdown", "hermes:session_boundary"]
    cli_key = import_key("cli", cli)
    assert [t for t, _ in types(led, cli_key)][:2] == ["session_started", "message_appended"]


def test_a_shutdown_that_leaves_the_session_open_in_hermes_is_not_a_close(
    hermes: HermesFixture, led: EventLog
) -> None:
    # Hermes keeps a session id across a gateway restart (resume_pending) and does not
    # end it in state.db: the ledger records no close, and what the session gains after
    # the restart is recorded under the same id.
    s1 = sid(T0, "dede0001")
    chat(hermes, s1, timedelta(0))
    recorder = LiveRecorder(led, hermes.home, config=IDLE)
    report = recorder.apply(
        [activity(s1, 5 * M), finalize(s1, "shutdown", 6 * M, platform="gateway")]
    )
    assert [(k.kind, k.reason) for k in report.skipped] == [
        ("finalize", f"session {s1} stays open in state.db across the shutdown")
    ]
    assert report.closes == [] and ends(led) == {}
    hermes.append_message(s1, "user", "after the restart", at=at(7 * M))
    report = recorder.apply([activity(s1, 8 * M)])
    assert (report.events, report.skipped, report.warnings) == (1, [], [])


def test_a_finalize_hermes_did_not_make_is_skipped(hermes: HermesFixture, led: EventLog) -> None:
    s1 = sid(T0, "eeee0001")
    chat(hermes, s1, timedelta(0))
    recorder = LiveRecorder(led, hermes.home, config=IDLE)
    report = recorder.apply([
        finalize("20261101_090000_deadbeef", "session_expired", 70 * M),
        {"kind": "finalize", "at": stamp(70 * M), "session_id": None, "reason": "shutdown"},
        activity(s1, 5 * M),
    ])  # fmt: skip
    assert [(s.index, s.kind) for s in report.skipped] == [(0, "finalize"), (1, "finalize")]
    assert "20261101_090000_deadbeef is in neither" in report.skipped[0].reason
    assert report.closes == [] and ends(led) == {}
    assert report.applied == 1


def test_bad_records_are_skipped_with_reasons(hermes: HermesFixture, led: EventLog) -> None:
    s1 = sid(T0, "ffff0001")
    chat(hermes, s1, timedelta(0))
    report = LiveRecorder(led, hermes.home, config=IDLE).apply([
        "not a dict",  # type: ignore[list-item]
        {"kind": "teleport", "at": stamp()},
        {"kind": "activity", "at": "yesterday", "session_id": s1},
        {"kind": "activity", "at": stamp(), "session_id": None},
        {"kind": "activity", "at": stamp(), "session_id": "bad\x00id"},
        activity("20261101_000000_00000000", M),
        {"kind": "dispatch", "at": stamp(), "session_key": TG, "source": {"platform": "!"}},
        activity(s1, M, extra_field="ignored"),
    ])  # fmt: skip
    reasons = [s.reason for s in report.skipped]
    assert len(reasons) == 7 and report.applied == 1
    assert "must be a JSON object" in reasons[0]
    assert "unknown record kind 'teleport'" in reasons[1]
    assert "'at' is not an ISO-8601 time" in reasons[2]
    assert "is not in" in reasons[5] and "state.db" in reasons[5]
    assert reasons[6].startswith("dispatch: ")
    assert report.events == 6


# -- redaction ---------------------------------------------------------------------------


def test_redacted_tools(hermes: HermesFixture, tmp_path: Path, clock: ManualClock) -> None:
    s1 = sid(T0, "abab0001")
    hermes.create_session(s1, "telegram", started_at=at(), session_key=TG, origin=ADA)
    calls = [
        {"id": "c1", "type": "function",
         "function": {"name": "read_file", "arguments": '{"path": "/etc/secret"}'}},
        {"name": "web_search", "arguments": '{"q": "x"}'},
        {"name": "read_dir", "arguments": '{"path": "/home"}'},
    ]  # fmt: skip
    hermes.append_message(s1, "assistant", None, at=at(M), tool_calls=calls)
    hermes.append_message(s1, "tool", "TOP SECRET", at=at(2 * M), tool_name="read_file",
                          tool_call_id="c1")  # fmt: skip
    hermes.append_message(s1, "tool", "results", at=at(3 * M), tool_name="web_search")
    hermes.append_message(s1, "tool", "unnamed", at=at(4 * M))
    patterns = ["read_*"]

    def messages(led: Ledger) -> list[Any]:
        return [r.event for r in led.read_stream(TG) if r.type == "message_appended"]

    with Ledger.open(tmp_path / "live.db", clock=clock) as live:
        LiveRecorder(live, hermes.home, config=IDLE, redact_tools=patterns).apply(
            [activity(s1, 5 * M)]
        )
        got = messages(live)
        assert import_hermes_home(live, hermes.home, redact_tools=patterns).events == 0
    args = [c.get("function", c)["arguments"] for c in got[0].tool_calls]
    assert args == [REDACTED, '{"q": "x"}', REDACTED]
    assert [m.content for m in got[1:]] == [REDACTED, "results", REDACTED]
    with Ledger.open(tmp_path / "import.db", clock=clock) as imported:
        import_hermes_home(imported, hermes.home, redact_tools=patterns)
        assert messages(imported) == got  # the same events, the same code path


# -- idempotency, subagents, state.db access ----------------------------------------------


def test_reapplying_any_prefix_writes_each_event_once(
    hermes: HermesFixture, tmp_path: Path, clock: ManualClock, backend: Backend
) -> None:
    s1, s2 = sid(T0, "acac0001"), sid(T0 + timedelta(hours=3), "acac0002")
    chat(hermes, s1, timedelta(0))
    chat(hermes, s2, timedelta(hours=3))
    hermes.end_session(s1, "idle", at=at(timedelta(hours=3)))
    hermes.end_session(s2, "shutdown", at=at(240 * M))
    records = [activity(s1, 5 * M), activity(s1, 6 * M), finalize(s1, "session_expired", 70 * M),
               activity(s2, 185 * M), finalize(s2, "shutdown", 240 * M)]  # fmt: skip

    def log(led: EventLog) -> list[tuple[str, str, str | None]]:
        return [(r.stream, r.type, r.session_id) for r in led.read_all()]

    with Ledger.open(tmp_path / "once.db", clock=clock) as once:
        LiveRecorder(once, hermes.home, config=IDLE).apply(records)
        expected = log(once)
    with backend.open() as crashy:  # on PostgreSQL too: the same log as SQLite's
        recorder = LiveRecorder(crashy, hermes.home, config=IDLE)
        for end in range(1, len(records) + 1):  # the drainer died before acknowledging
            for start in range(end):
                recorder.apply(records[start:end])
        fresh = LiveRecorder(crashy, hermes.home, config=IDLE)  # a restarted process
        assert fresh.apply(records).events == 0
        assert log(crashy) == expected
    assert len([t for _, t, _ in expected if t == "session_ended"]) == 2


def test_a_subagent_session_runs_beside_its_parent(hermes: HermesFixture, led: EventLog) -> None:
    parent, child = sid(T0, "adad0001"), sid(T0 + 2 * M, "adad0002")
    chat(hermes, parent, timedelta(0))
    hermes.create_session(child, "telegram", started_at=at(2 * M), parent_session_id=parent)
    hermes.append_message(child, "user", "subtask", at=at(3 * M))
    report = LiveRecorder(led, hermes.home, config=IDLE).apply([
        activity(parent, 2 * M),
        {"kind": "subagent", "at": stamp(2 * M), "parent_session_id": parent,
         "child_session_id": child},
        activity(child, 3 * M, platform="subagent"),  # the parent's key leaks into its hooks
    ])  # fmt: skip
    assert (report.skipped, report.closes) == ([], [])
    own = import_key("telegram", child)
    assert [t for t, _ in types(led, own)] == ["session_started", "message_appended"]
    assert ends(led) == {}
    assert import_hermes_home(led, hermes.home).events == 0


def test_apply_reads_state_db_in_place(
    hermes: HermesFixture, led: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    s1 = sid(T0, "aeae0001")
    chat(hermes, s1, timedelta(0))

    def no_copy(*args: Any) -> Any:
        raise AssertionError("apply took a snapshot copy of state.db")

    monkeypatch.setattr(reading, "_snapshot", no_copy)
    assert LiveRecorder(led, hermes.home, config=IDLE).apply([activity(s1, M)]).events == 6


# Hermes's own SessionDB holds state.db open (WAL) in this process, as the gateway
# does; the recorder then reads the same file in place. It prints the POSIX locks
# the process holds on state.db-shm before and after, and whether the -shm file
# kept its size: a reader on a second SQLite library (apsw's bundled copy) takes
# itself for the file's only user, truncates the -shm Hermes has mapped (SIGBUS in
# the gateway) and, on close, drops the locks Hermes holds.
IN_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from hermes_state import SessionDB
    from hermes_ledger.gateway.hermes.reading import open_hermes_home

    home = Path(sys.argv[1])
    db = SessionDB(home / "state.db")
    db.create_session("s-1", "telegram")
    db.append_message("s-1", "user", "hello")
    shm = home / "state.db-shm"

    def locks():
        inode, pid = os.stat(shm).st_ino, str(os.getpid())
        with open("/proc/locks") as f:
            rows = [line.split() for line in f]
        return sorted(" ".join(r[5:]) for r in rows
                      if r[4] == pid and r[5].endswith(":" + str(inode)))

    before, size = locks(), os.stat(shm).st_size
    with open_hermes_home(home, snapshot=False) as hermes:
        read = [row[2] for row in hermes.messages("s-1")]
    db.append_message("s-1", "assistant", "hi")
    print(json.dumps({"before": before, "after": locks(), "read": read,
                      "size": [size, os.stat(shm).st_size]}))
    """
)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_reading_state_db_inside_hermes_keeps_hermes_locks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-c", IN_PROCESS, str(home)],
        cwd=home,
        env={"HERMES_HOME": str(home), "HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["read"] == ["hello"]
    assert seen["before"], "Hermes's connection holds a lock on state.db-shm"
    assert seen["after"] == seen["before"]
    assert seen["size"][0] == seen["size"][1]


def test_the_policy_comes_from_the_homes_config_yaml(hermes: HermesFixture, led: EventLog) -> None:
    (hermes.home / "config.yaml").write_text("session_reset:\n  mode: idle\n  idle_minutes: 30\n")
    s1, s2 = sid(T0, "afaf0001"), sid(T0 + timedelta(hours=2), "afaf0002")
    chat(hermes, s1, timedelta(0))
    chat(hermes, s2, timedelta(hours=2))
    recorder = LiveRecorder(led, hermes.home)
    recorder.apply([activity(s1, 5 * M), activity(s2, timedelta(hours=2, minutes=1))])
    expired = next(r.event for r in led.read_all() if r.type == "session_expired")
    assert (expired.deadline, expired.policy["idle_minutes"]) == (T0 + 34 * M, 30)


def test_what_the_ledger_or_state_db_cannot_do_is_raised(
    hermes: HermesFixture, db_path: Path, tmp_path: Path, clock: ManualClock
) -> None:
    s1 = sid(T0, "baba0001")
    chat(hermes, s1, timedelta(0))
    with Ledger.open(db_path, clock=clock) as led, Ledger.open(db_path, busy_timeout=0.2) as busy:
        recorder = LiveRecorder(busy, hermes.home, config=IDLE)
        led.connection.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(LedgerBusyError):
                recorder.apply([activity(s1, M)])
        finally:
            led.connection.execute("ROLLBACK")
        assert recorder.apply([activity(s1, M)]).events == 6  # the drainer's retry
        gone = LiveRecorder(led, tmp_path / "no-home", config=IDLE)
        with pytest.raises(HermesImportError):
            gone.apply([activity(s1, M)])
        assert gone.apply([{"kind": "teleport", "at": stamp()}]).skipped  # state.db not needed


# -- the real Hermes ---------------------------------------------------------------------

HERMES_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from datetime import datetime
    from pathlib import Path

    home = Path(sys.argv[1])
    clock = [time.time() - 86400]          # a virtual clock Hermes reads everywhere
    time.time = lambda: clock[0]
    import gateway.session as gs
    gs._now = lambda: datetime.fromtimestamp(clock[0])
    from gateway.config import GatewayConfig, Platform, SessionResetPolicy
    from gateway.session import SessionSource, SessionStore

    def iso():
        return datetime.utcfromtimestamp(clock[0]).isoformat(timespec="microseconds") + "Z"

    def advance(minutes):
        clock[0] += minutes * 60

    records = []
    cfg = GatewayConfig(default_reset_policy=SessionResetPolicy(mode="idle", idle_minutes=60),
                        sessions_dir=home / "sessions")
    store = SessionStore(cfg.sessions_dir, cfg)
    src = SessionSource(platform=Platform.TELEGRAM, chat_id="99", chat_type="dm",
                        user_id="99", user_name="ada")
    key = store._generate_session_key(src)

    def turn(text):   # what one gateway message does, and the records its hooks spool
        records.append({"kind": "dispatch", "at": iso(), "session_key": key,
                        "session_id": store.peek_session_id(key), "source": src.to_dict(),
                        "message_id": "m"})
        entry = store.get_or_create_session(src)
        advance(1)
        store.append_to_transcript(entry.session_id, {"role": "user", "content": text})
        advance(1)
        store.append_to_transcript(entry.session_id, {"role": "assistant", "content": "ok"})
        store.update_session(key, last_prompt_tokens=10)
        records.append({"kind": "activity", "at": iso(), "session_id": entry.session_id,
                        "session_key": key, "platform": "telegram", "hook": "post_llm_call"})
        return entry

    e1 = turn("hello")
    advance(90)                           # the expiry watcher's pass
    assert store._is_session_expired(e1)
    records.append({"kind": "finalize", "at": iso(), "session_id": e1.session_id,
                    "platform": "telegram", "reason": "session_expired"})
    store.set_expiry_finalized(e1)
    advance(5)
    e2 = turn("back again")               # rotated lazily: a new id, no hook
    advance(120)
    e3 = turn("much later")               # an auto-reset the watcher never saw
    advance(1)
    e4 = store.reset_session(key)         # /new
    for kind, sid in (("finalize", e3.session_id), ("reset", e4.session_id)):
        records.append({"kind": kind, "at": iso(), "session_id": sid, "platform": "telegram",
                        "reason": "new_session", "old_session_id": e3.session_id,
                        "new_session_id": e4.session_id})
    turn("fresh start")
    ids = [e.session_id for e in (e1, e2, e3, e4)]
    assert len(set(ids)) == 4, ids
    print(json.dumps({"ids": ids, "records": records}))
    """
)


@pytest.fixture(scope="module")
def real_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[Any]]:
    """A home the installed Hermes 0.19 wrote (its real SessionStore), and the records
    the plugin's callbacks would have spooled meanwhile."""
    path = tmp_path_factory.mktemp("real-hermes")
    (path / "config.yaml").write_text("session_reset:\n  mode: idle\n  idle_minutes: 60\n")
    done = subprocess.run(
        [sys.executable, "-I", "-c", HERMES_SCRIPT, str(path)],
        cwd=path,
        env={"HERMES_HOME": str(path), "HOME": str(path), "PATH": "/usr/bin:/bin", "TZ": "UTC"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    return path, out["ids"], out["records"]


def test_a_real_hermes_gateway_day(
    real_home: tuple[Path, list[str], list[Any]], led: EventLog, verify: Any
) -> None:
    path, (e1, e2, e3, e4), records = real_home
    recorder = LiveRecorder(led, path)  # the policy from the home's config.yaml
    report = recorder.apply(records)
    assert report.skipped == [] and report.warnings == []
    assert [(c.session_id, c.reason) for c in report.closes] == [
        (e1, "idle_expiry"), (e2, "auto_reset"), (e3, "manual_reset")]  # fmt: skip
    key = "agent:main:telegram:dm:99"
    assert ends(led) == {e1: "idle_expiry", e2: "auto_reset", e3: "manual_reset"}
    for s, cause in ((e1, "session_expired"), (e2, "session_expired"), (e3, "session_reset")):
        assert closes(led, s) == [cause, "memory_flush_skipped", "session_ended"]
    starts = [(r.session_id, r.event.reason) for r in led.read_stream(key)
              if r.type == "session_started"]  # fmt: skip
    assert starts == [(e1, "first"), (e2, "auto_reset"), (e3, "auto_reset"), (e4, "manual_reset")]
    transcript = [(r.session_id, r.event.content) for r in led.read_stream(key)
                  if r.type == "message_appended"]  # fmt: skip
    assert transcript == [
        (e1, "hello"), (e1, "ok"), (e2, "back again"), (e2, "ok"),
        (e3, "much later"), (e3, "ok"), (e4, "fresh start"), (e4, "ok"),
    ]  # fmt: skip

    head = led.head()
    assert recorder.apply(records).events == 0
    again = import_hermes_home(led, path)
    assert (again.events, again.warnings) == (0, [])
    assert led.head() == head
    assert verify(led).ok
