"""Durable hook delivery from the log: exactly once in a crash-free run, retries with
backoff, dead letters, order per session key, timeouts, two dispatcher processes,
and a dispatcher killed mid-call (invariant 6).

Hooks are real directories whose handler appends one JSON line per call to a file
(tests/hook_workers.py); time is a hand-ticked clock, so no test waits for a backoff.

The tests that take ``backend`` (tests/backends.py) run unchanged on a SQLite file
and on PostgreSQL (``PostgresDeliveryQueue`` under the same ``HookDispatcher``).
The SQLite-only ones are about the ledger file's own queue: its trigger, and
claims that expire in the ledger's clock (on PostgreSQL a lease is in the
database's clock: tests/test_postgres_scheduler.py).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import apsw
import pytest
from backends import Backend
from helpers import ManualClock
from hook_workers import read_calls, recording_handler, write_hook

from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistry
from hermes_ledger.gateway.hooks.delivery import HookDeliveryError, delivery_id_for
from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import EventLog, Ledger
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.events import SessionEnded, SessionReset, SessionStarted, Source

WORKER = Path(__file__).with_name("hook_workers.py")
TIMEOUT = 60.0


def source(chat_id: str, user_id: str = "u1", platform: str = "telegram") -> SessionSource:
    return SessionSource(platform=platform, chat_id=chat_id, chat_type="dm", user_id=user_id)


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hooks"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def log(backend: Backend) -> Iterator[EventLog]:
    """The log under test: a SQLite file or a fresh PostgreSQL database."""
    with backend.open() as opened:
        yield opened


@pytest.fixture
def store(log: EventLog, clock: ManualClock) -> SessionStore:
    return SessionStore(log, clock=clock)  # type: ignore[arg-type]


def expected_calls(led: EventLog, hook: str, types: set[str]) -> list[tuple[str, str, str]]:
    """(delivery_id, hook event, session_id) of every log event a hook must get, in order."""
    names = {"session_started": "session:start", "session_reset": "session:reset"}
    names["session_ended"] = "session:end"
    return [
        (delivery_id_for(hook, r.event_id), names[r.type], str(r.session_id))
        for r in led.read_all(types=types)
    ]


def got(calls: Path) -> list[tuple[str, str, str]]:
    return [
        (c["context"]["delivery_id"], c["event"], c["context"]["session_id"])
        for c in read_calls(calls)
    ]


# -- exactly once, in order, with the context Hermes hooks expect -------------------------


def test_every_subscribed_hook_gets_each_event_exactly_once(
    log: EventLog, store: SessionStore, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    ends, every = tmp_path / "ends.jsonl", tmp_path / "every.jsonl"
    write_hook(hooks_dir, "ends", recording_handler(ends), events=["session:end"])
    write_hook(hooks_dir, "every", recording_handler(every), events=["session:*"])
    write_hook(hooks_dir, "agent", recording_handler(tmp_path / "no.jsonl"), events=["agent:*"])
    dispatcher = HookDispatcher(log, HookRegistry.discover(hooks_dir), clock=clock)
    for round_ in range(3):
        for chat in range(4):
            entry = store.get_or_create_session(source(f"c{chat}", user_id=f"u{chat}"))
            store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi"})
            if (round_ + chat) % 2:
                store.reset_session(entry.session_key)
        clock.advance(minutes=1)
        dispatcher.deliver()
        dispatcher.deliver()  # a second pass finds nothing new
    assert dispatcher.deliver().outcomes == ()
    assert got(ends) == expected_calls(log, "ends", {"session_ended"})
    assert len(got(ends)) == 6
    everything = {"session_started", "session_reset", "session_ended"}
    assert got(every) == expected_calls(log, "every", everything)
    assert not (tmp_path / "no.jsonl").exists()
    assert [(s.hook, s.checkpoint, s.pending, s.dead) for s in dispatcher.status()] == [
        ("ends", log.head(), 0, 0),
        ("every", log.head(), 0, 0),
    ]
    # Every session:end carries the Hermes context.
    first_end = read_calls(ends)[0]["context"]
    (ended,) = [r for r in log.read_all(types={"session_ended"}, limit=1)]
    assert first_end == {
        "delivery_id": delivery_id_for("ends", ended.event_id),
        "platform": "telegram",
        "user_id": "u1",
        "session_key": "agent:main:telegram:dm:c1",
        "session_id": ended.session_id,
        "reason": "manual_reset",
        "event_type": "session:end",
        "event_id": ended.event_id,
        "event_position": ended.position,
        "occurred_at": "2026-11-22T09:00:00.000000Z",
    }


def test_contexts_of_start_reset_and_a_session_without_a_recorded_start(
    log: EventLog, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.jsonl"
    write_hook(hooks_dir, "all", recording_handler(calls), events=["session:*"])
    dispatcher = HookDispatcher(log, HookRegistry.discover(hooks_dir), clock=clock)
    origin = Source(platform="discord", chat_id="7", user_id="u7")
    log.append("k1", [SessionStarted(session_id="s1", source=origin, reason="first")])
    log.append("k1", [SessionReset(session_id="s1", trigger="/reset")])
    log.append("k2", [SessionEnded(session_id="orphan", reason="shutdown")])  # imported
    dispatcher.deliver()
    contexts = [(c["event"], c["context"]) for c in read_calls(calls)]
    assert [(e, c["platform"], c["user_id"], c["reason"]) for e, c in contexts] == [
        ("session:start", "discord", "u7", "first"),
        ("session:reset", "discord", "u7", "/reset"),
        ("session:end", None, None, "shutdown"),
    ]
    assert contexts[0][1]["previous_session_id"] is None
    assert contexts[2][1]["occurred_at"] == "2026-11-22T09:00:00.000000Z"  # recorded_at


def test_a_new_hook_starts_at_the_head_unless_asked_for_the_whole_log(
    log: EventLog, store: SessionStore, hooks_dir: Path, tmp_path: Path, clock: ManualClock
) -> None:
    early, late = tmp_path / "early.jsonl", tmp_path / "late.jsonl"
    store.get_or_create_session(source("old"))
    write_hook(hooks_dir, "early", recording_handler(early), events=["session:start"])
    write_hook(hooks_dir, "late", recording_handler(late), events=["session:start"])
    registry = HookRegistry.discover(hooks_dir)
    HookDispatcher(log, [registry.hooks[0]], clock=clock, new_hooks_from="beginning")
    dispatcher = HookDispatcher(log, registry, clock=clock)
    store.get_or_create_session(source("new"))
    dispatcher.deliver()
    assert [c["context"]["session_key"][-3:] for c in read_calls(early)] == ["old", "new"]
    assert [c["context"]["session_key"][-3:] for c in read_calls(late)] == ["new"]


# -- failures: backoff, dead letters, other hooks unaffected ------------------------------


def test_a_failing_hook_is_retried_with_backoff_then_dead_lettered_and_requeued(
    log: EventLog,
    store: SessionStore,
    clock: ManualClock,
    hooks_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ok, flaky, steady = tmp_path / "ok", tmp_path / "flaky.jsonl", tmp_path / "steady.jsonl"
    write_hook(hooks_dir, "flaky", recording_handler(flaky, fail_unless=ok), events=["session:end"])
    write_hook(hooks_dir, "steady", recording_handler(steady), events=["session:*"])
    dispatcher = HookDispatcher(
        log, HookRegistry.discover(hooks_dir), clock=clock, max_attempts=3, backoff_base=10
    )
    entry = store.get_or_create_session(source("a"))
    store.reset_session(entry.session_key)
    (end,) = log.read_all(types={"session_ended"})
    did = delivery_id_for("flaky", end.event_id)

    with caplog.at_level(logging.WARNING, logger="hermes_ledger.gateway.hooks"):
        report = dispatcher.deliver()
    assert [(o.hook, o.status, o.attempt) for o in report.outcomes if o.hook == "flaky"] == [
        ("flaky", "retry", 1)
    ]
    (failure,) = [o for o in report.outcomes if o.hook == "flaky"]
    assert failure.delivery_id == did
    assert failure.error == f"RuntimeError: the marker {ok} is missing"
    assert failure.next_attempt_at == clock.now + timedelta(seconds=10)
    assert report.delivered == 4 and len(got(steady)) == 4  # start, reset, end, start
    assert report.to_dict()["failed"] == 1
    assert report.to_dict()["outcomes"][0]["status"] in ("done", "retry")
    assert any("hook flaky failed on session:end" in r.getMessage() for r in caplog.records)

    assert dispatcher.deliver().outcomes == ()  # backing off: not due yet
    clock.advance(seconds=10)
    (second,) = dispatcher.deliver().outcomes
    assert (second.status, second.attempt) == ("retry", 2)
    assert second.next_attempt_at == clock.now + timedelta(seconds=20)
    store.get_or_create_session(source("b"))  # meanwhile the other hook keeps receiving
    clock.advance(seconds=19)
    (other,) = dispatcher.deliver().outcomes
    assert (other.hook, other.event_type, other.status) == ("steady", "session:start", "done")
    clock.advance(seconds=1)
    (third,) = dispatcher.deliver().outcomes
    assert (third.status, third.attempt, third.next_attempt_at) == ("dead", 3, None)
    clock.advance(hours=1)
    assert dispatcher.deliver().outcomes == ()

    (dead,) = dispatcher.dead_letters()
    assert (dead.delivery_id, dead.hook, dead.event_type, dead.status, dead.attempts) == (
        did, "flaky", "session:end", "dead", 3,
    )  # fmt: skip
    assert dead.last_error == f"RuntimeError: the marker {ok} is missing"
    assert dead.context["delivery_id"] == did

    ok.touch()
    assert dispatcher.retry([did]) == [did]
    assert dispatcher.dead_letters() == []
    (redelivered,) = dispatcher.deliver().outcomes
    assert (redelivered.delivery_id, redelivered.status, redelivered.attempt) == (did, "done", 1)
    assert got(flaky) == [(did, "session:end", entry.session_id)]


def test_retry_refuses_what_is_not_a_dead_letter_and_writes_nothing(
    log: EventLog, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    write_hook(hooks_dir, "h", recording_handler(tmp_path / "c.jsonl"), events=["session:*"])
    dispatcher = HookDispatcher(log, HookRegistry.discover(hooks_dir), clock=clock)
    log.append("k", [SessionStarted(session_id="s1", source=Source(platform="local"))])
    (outcome,) = dispatcher.deliver().outcomes
    with pytest.raises(HookDeliveryError) as info:
        dispatcher.retry(["nope", outcome.delivery_id])
    assert str(info.value) == (
        f"not dead letters: nope (no such delivery), {outcome.delivery_id} (done, not dead)"
    )
    assert dispatcher.retry() == []


def test_a_failed_event_holds_back_the_same_hooks_later_events(
    log: EventLog, store: SessionStore, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    """For one key a hook sees the old session's end before the new session's start,
    even when the end needed retries."""
    ok, calls = tmp_path / "ok", tmp_path / "calls.jsonl"
    handler = recording_handler(calls, fail_unless=ok)
    write_hook(hooks_dir, "order", handler, events=["session:start", "session:end"])
    dispatcher = HookDispatcher(log, HookRegistry.discover(hooks_dir), clock=clock)
    ok.touch()
    first = store.get_or_create_session(source("a"))
    dispatcher.deliver()
    ok.unlink()
    second = store.reset_session(first.session_key)  # end(first), then start(second)
    report = dispatcher.deliver()
    assert [(o.event_type, o.status) for o in report.outcomes] == [("session:end", "retry")]
    ok.touch()
    clock.advance(seconds=2)
    report = dispatcher.deliver()
    assert [(o.event_type, o.status) for o in report.outcomes] == [
        ("session:end", "done"),
        ("session:start", "done"),
    ]
    assert [(e, sid) for _, e, sid in got(calls)] == [
        ("session:start", first.session_id),
        ("session:end", first.session_id),
        ("session:start", second.session_id),
    ]


def test_a_call_that_outlives_its_timeout_fails_and_others_still_run(
    log: EventLog, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    write_hook(hooks_dir, "slow", recording_handler(tmp_path / "slow.jsonl", sleep=1.0))
    write_hook(hooks_dir, "quick", recording_handler(tmp_path / "quick.jsonl"))
    dispatcher = HookDispatcher(
        log, HookRegistry.discover(hooks_dir), clock=clock, call_timeout=0.1
    )
    log.append("k", [SessionStarted(session_id="s1", source=Source(platform="local"))])
    started = time.monotonic()
    report = dispatcher.deliver()
    assert time.monotonic() - started < 0.9
    assert {(o.hook, o.status, o.error) for o in report.outcomes} == {
        ("quick", "done", None),
        ("slow", "retry", "timed out after 0.1s"),
    }


def test_the_log_is_the_only_source_of_deliveries(led: Ledger, clock: ManualClock) -> None:
    """The schema refuses a delivery that does not name a session event of the log."""
    HookDispatcher(led, HookRegistry(), clock=clock)  # creates the tables
    led.append("k", [SessionStarted(session_id="s1", source=Source(platform="local"))])
    (start,) = led.read_all()
    insert = (
        "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id, hook_event,"
        " session_key, session_id, context, status, next_attempt_at, created_at)"
        " VALUES (?, 'h', ?, ?, ?, 'k', 's1', '{}', 'pending', 'x', 'x')"
    )
    with pytest.raises(apsw.ConstraintError, match="must name a session event of the log"):
        led.write(
            lambda c: c.execute(insert, ("d1", start.position, start.event_id, "session:end"))
        )
    with pytest.raises(apsw.ConstraintError, match="must name a session event of the log"):
        led.write(lambda c: c.execute(insert, ("d2", 99, "no-such-event", "session:start")))
    led.write(lambda c: c.execute(insert, ("d3", start.position, start.event_id, "session:start")))


def test_the_dispatcher_warns_about_skipped_hooks_and_runs_the_others(
    log: EventLog,
    clock: ManualClock,
    hooks_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = tmp_path / "calls.jsonl"
    write_hook(hooks_dir, "good", recording_handler(calls), events=["session:start"])
    write_hook(hooks_dir, "open", recording_handler(calls), events=["session:start"])
    (hooks_dir / "open" / "handler.py").chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="hermes_ledger.gateway.hooks"):
        dispatcher = HookDispatcher(log, HookRegistry.discover(hooks_dir), clock=clock)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"hook skipped: {hooks_dir / 'open' / 'handler.py'}: refused:")
    log.append("k", [SessionStarted(session_id="s1", source=Source(platform="local"))])
    (outcome,) = dispatcher.deliver().outcomes
    assert (outcome.hook, outcome.status) == ("good", "done")


# -- processes: two dispatchers, and a dispatcher killed mid-call ---------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker timed out; stderr:\n{err}")
    assert proc.returncode == 0 and err == "", f"worker exited {proc.returncode}:\n{err}"
    return out


def wait_until(condition: Any, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"worker exited {proc.returncode} early:\n{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the worker")
        time.sleep(0.005)


def test_two_dispatcher_processes_never_call_a_hook_twice_for_one_event(
    backend: Backend, store: SessionStore, log: EventLog, hooks_dir: Path, tmp_path: Path
) -> None:
    calls = tmp_path / "calls.jsonl"
    for name in ("a", "b", "c"):
        write_hook(hooks_dir, name, recording_handler(calls, sleep=0.002), events=["session:*"])
    for chat in range(20):
        entry = store.get_or_create_session(source(f"c{chat}"))
        store.reset_session(entry.session_key)
    go = tmp_path / "go"
    readies = [tmp_path / "ready1", tmp_path / "ready2"]
    procs = [
        spawn("dispatch", "--db", backend.target, "--hooks", str(hooks_dir),
              "--ready", str(ready), "--go", str(go))
        for ready in readies
    ]  # fmt: skip
    try:
        wait_until(lambda: all(r.exists() for r in readies), procs[0])
        go.touch()
        outputs = [json.loads(finish(p)) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    lines = read_calls(calls)
    pids = Counter(line["pid"] for line in lines)
    assert sum(o["calls"] for o in outputs) == len(lines) == 3 * 80
    assert set(pids) == {p.pid for p in procs}, "both processes delivered"
    everything = {"session_started", "session_reset", "session_ended"}
    for name in ("a", "b", "c"):
        expected = expected_calls(log, name, everything)
        mine = [c for c in lines if c["context"]["delivery_id"] in {d for d, _, _ in expected}]
        calls_of = [(c["context"]["delivery_id"], c["event"], c["context"]["session_id"])
                    for c in mine]  # fmt: skip
        assert sorted(calls_of) == sorted(expected), f"hook {name}: once each"
        # In log order for each session key (different keys may run side by side).
        for key in {c["context"]["session_key"] for c in mine}:
            positions = [c["context"]["event_position"] for c in mine
                         if c["context"]["session_key"] == key]  # fmt: skip
            assert positions == sorted(positions), f"hook {name}: {key} in log order"


def test_a_dispatcher_killed_mid_call_redelivers_with_the_same_id_after_restart(
    db_path: Path, led: Ledger, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    store = SessionStore(led, clock=clock)
    calls, block = tmp_path / "calls.jsonl", tmp_path / "block"
    handler = recording_handler(calls, block_while=block)
    write_hook(hooks_dir, "end", handler, events=["session:end"])
    ended = store.get_or_create_session(source("ends"))
    store.reset_session(ended.session_key)
    still_open = store.get_or_create_session(source("stays-open"))
    block.touch()
    proc = spawn("dispatch", "--db", str(db_path), "--hooks", str(hooks_dir),
                 "--clock", format_utc(clock.now))  # fmt: skip
    try:
        wait_until(lambda: read_calls(calls, "started"), proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    (started,) = read_calls(calls, "started")
    did = started["context"]["delivery_id"]
    (end_event,) = led.read_all(types={"session_ended"})
    assert did == delivery_id_for("end", end_event.event_id)
    assert read_calls(calls) == []  # the call never finished

    block.unlink()
    dispatcher = HookDispatcher(led, HookRegistry.discover(hooks_dir), clock=clock)
    assert dispatcher.deliver().outcomes == ()  # the dead dispatcher's claim still holds
    clock.advance(seconds=89)  # the claim holds for the call timeout (30 s) + 60 s
    assert dispatcher.deliver().outcomes == ()
    clock.advance(seconds=1)
    (again,) = dispatcher.deliver().outcomes
    assert (again.delivery_id, again.status, again.attempt) == (did, "done", 2)
    assert [c["context"]["delivery_id"] for c in read_calls(calls, "started")] == [did, did]
    assert got(calls) == [(did, "session:end", ended.session_id)]
    # Never a delivery for a session that did not end.
    rows = led.query("SELECT session_id, hook_event, status FROM hook_deliveries")
    assert rows == [(ended.session_id, "session:end", "done")]
    assert still_open.session_id not in json.dumps(read_calls(calls, "started"))


def test_an_expired_claim_with_no_attempts_left_is_dead_lettered(
    log: EventLog, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    """A handler that kills its dispatcher every time ends up a dead letter, not a
    crash loop."""
    write_hook(hooks_dir, "h", recording_handler(tmp_path / "c.jsonl"), events=["session:end"])
    registry = HookRegistry.discover(hooks_dir)
    crashed = HookDispatcher(log, registry, clock=clock, max_attempts=1, worker_id="gone")
    log.append("k", [SessionEnded(session_id="s1", reason="shutdown")])
    crashed._queue.enqueue({"h": {"session_ended"}})
    # A claim held for no time (expired at once, in either backend's clock)...
    claim, _ = crashed._queue.claim("h", "gone", hold=timedelta(0), retry=crashed.retry_policy)
    assert claim is not None  # ...and the process dies here, before calling the handler
    clock.advance(seconds=1)
    survivor = HookDispatcher(log, registry, clock=clock, max_attempts=1)
    (outcome,) = survivor.deliver().outcomes
    assert (outcome.delivery_id, outcome.status) == (claim.delivery_id, "dead")
    assert outcome.error is not None and "the claim of gone expired at" in outcome.error
    assert [d.delivery_id for d in survivor.dead_letters()] == [claim.delivery_id]


# -- the command line -----------------------------------------------------------------------


def test_cli_lists_hooks_problems_and_dead_letters_then_requeues(
    cli: Any, log: EventLog, backend: Backend, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    write_hook(hooks_dir, "audit", recording_handler(tmp_path / "a.jsonl"), events=["session:end"])
    failing = recording_handler(tmp_path / "f.jsonl", fail_unless=tmp_path / "ok")
    write_hook(hooks_dir, "flaky", failing, events=["session:end", "session:start"])
    write_hook(hooks_dir, "zz-broken", "import no_such_module_for_hooks\n")
    dispatcher = HookDispatcher(log, HookRegistry.discover(hooks_dir), clock=clock, max_attempts=1)
    log.append("k", [SessionEnded(session_id="s1", reason="shutdown")])
    dispatcher.deliver()
    (dead,) = dispatcher.dead_letters()
    args = ("--db", backend.target, "--hooks-dir", str(hooks_dir))
    result = cli("hooks", *args)
    assert result.exit_code == 0, result.output
    broken = hooks_dir / "zz-broken" / "handler.py"
    assert result.output == (
        f"Hooks in {hooks_dir}:\n"
        "  audit  session:end  (checkpoint 1, 1 delivered, 0 pending, 0 dead)\n"
        "         test hook audit\n"
        "  flaky  session:end, session:start  (checkpoint 1, 0 delivered, 0 pending, 1 dead)\n"
        "         test hook flaky\n"
        "Skipped:\n"
        f"  {broken}: import failed: ModuleNotFoundError: No module named "
        "'no_such_module_for_hooks'\n"
        "Dead letters (re-queue with `hermes-ledger hooks retry [DELIVERY_ID...]`):\n"
        f"  {dead.delivery_id}  flaky  session:end  position 1  session s1  1 attempts  "
        f"RuntimeError: the marker {tmp_path / 'ok'} is missing\n"
    )
    listed = json.loads(cli("hooks", *args, "--json").output)
    assert [h["name"] for h in listed["hooks"]] == ["audit", "flaky"]
    assert listed["hooks"][1]["state"] == {
        "hook": "flaky", "checkpoint": 1, "pending": 0, "claimed": 0, "done": 0, "dead": 1,
    }  # fmt: skip
    assert listed["problems"] == [{"path": str(broken), "message": result.output.split(
        f"{broken}: ")[1].split("\n")[0]}]  # fmt: skip
    assert [d["delivery_id"] for d in listed["dead_letters"]] == [dead.delivery_id]

    refused = cli("hooks", "retry", "--db", backend.target, "nope")
    assert (refused.exit_code, refused.output) == (
        1,
        "Error: not dead letters: nope (no such delivery)\n"
        "Try: list dead letters with `hermes-ledger hooks`\n",
    )
    result = cli("hooks", "retry", "--db", backend.target, dead.delivery_id)
    assert (result.exit_code, result.output) == (
        0, f"Re-queued 1 dead letter:\n  {dead.delivery_id}\n",
    )  # fmt: skip
    assert dispatcher.dead_letters() == []
    result = cli("hooks", "--db", backend.target, "retry", "--json")
    assert (result.exit_code, json.loads(result.output)) == (0, {"requeued": []})


def test_cli_without_hooks_or_ledger(cli: Any, tmp_path: Path) -> None:
    result = cli("hooks", "--db", str(tmp_path / "none.db"))
    assert (result.exit_code, result.output) == (
        0,
        f"No hooks in {tmp_path / 'home' / 'hooks'}.\nNo dead letters.\n",
    )
    assert not (tmp_path / "none.db").exists()
    result = cli("hooks", "retry", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: there is no ledger at {tmp_path / 'none.db'}\n")


def test_cli_runs_as_the_installed_script(backend: Backend, log: EventLog, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    write_hook(hooks, "audit", recording_handler(tmp_path / "a.jsonl"), events=["session:end"])
    run = "from hermes_ledger.gateway.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", run, "hooks", "--db", backend.target,
         "--hooks-dir", str(hooks)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == (
        f"Hooks in {hooks}:\n  audit  session:end  (not started yet)\n"
        "         test hook audit\nNo dead letters.\n"
    )


# -- a hook present before a close gets that close (issue 11, item 11) -------------------


def _home(tmp_path: Path) -> Path:
    """A Hermes home with an idle policy (30 minutes) and an empty hooks directory."""
    home = tmp_path / "home"
    (home / "hooks").mkdir(parents=True, mode=0o700)
    (home / "config.yaml").write_text("session_reset:\n  mode: idle\n  idle_minutes: 30\n")
    return home


def _ends(calls: Path) -> list[tuple[str, str]]:
    return [
        (c["context"]["session_id"], c["context"]["reason"])
        for c in read_calls(calls)
        if c["event"] == "session:end"
    ]


def test_a_close_on_the_message_path_before_any_runner_pass_reaches_a_hook_installed_before_it(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    """The gateway process was started before the hook was installed; its store
    closes a session on the message path (an auto-reset, then a /new) before any
    runner pass. The runner that then runs (here a fresh one, as `hermes-ledger
    tick` would be) delivers both closes: the store registered the hook before it
    appended them, without running its code."""
    from hermes_ledger.gateway.bootstrap import open_gateway

    home = _home(tmp_path)
    calls, imported = tmp_path / "calls.jsonl", tmp_path / "imported"
    with open_gateway(backend.target, home=home, clock=clock) as gateway:
        first = gateway.store.get_or_create_session(source("1"))
        write_hook(
            home / "hooks",
            "audit",
            f"open({str(imported)!r}, 'a').close()\n" + recording_handler(calls),
            events=["session:end"],
        )
        clock.advance(minutes=45)
        second = gateway.store.get_or_create_session(source("1"))  # the auto-reset
        assert second.session_id != first.session_id
        gateway.store.reset_session(second.session_key)  # /new
        assert not imported.exists(), "registering a hook must not run it"
    with open_gateway(backend.target, home=home, clock=clock) as runner_side:
        report = runner_side.runner.once()
    assert report.delivered == 2
    assert _ends(calls) == [
        (first.session_id, "auto_reset"),
        (second.session_id, "manual_reset"),
    ]


def test_a_close_made_by_the_runners_tick_reaches_a_hook_installed_while_it_runs(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    """The runner was started before the hook was installed: its next pass
    registers the hook before it ticks, so the idle close that tick makes is the
    hook's, delivered in that same pass (the runner loads the changed hooks
    directory again); a runner started later does not deliver it twice."""
    from hermes_ledger.gateway.bootstrap import open_gateway

    home = _home(tmp_path)
    calls = tmp_path / "calls.jsonl"
    with open_gateway(backend.target, home=home, clock=clock) as gateway:
        entry = gateway.store.get_or_create_session(source("2"))
        assert gateway.runner.once().delivered == 0
        write_hook(home / "hooks", "audit", recording_handler(calls), events=["session:end"])
        clock.advance(minutes=31)
        report = gateway.runner.once()
        assert [c.session_id for c in report.tick.closed] == [entry.session_id]
        assert report.delivered == 1
    with open_gateway(backend.target, home=home, clock=clock) as later:
        assert later.runner.once().delivered == 0
    assert _ends(calls) == [(entry.session_id, "idle_expiry")]


def test_a_hook_present_when_the_gateway_opens_gets_the_stores_close_before_the_first_pass(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    from hermes_ledger.gateway.bootstrap import open_gateway

    home = _home(tmp_path)
    calls = tmp_path / "calls.jsonl"
    write_hook(home / "hooks", "audit", recording_handler(calls), events=["session:end"])
    with open_gateway(backend.target, home=home, clock=clock) as gateway:
        entry = gateway.store.get_or_create_session(source("3"))
        gateway.store.reset_session(entry.session_key)
        assert gateway.runner.once().delivered == 1
    assert _ends(calls) == [(entry.session_id, "manual_reset")]
