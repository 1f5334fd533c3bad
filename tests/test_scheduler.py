"""The scheduler: every due session closed exactly once, with cause → flush → end.

The scenarios run on both backends (the ``backend`` fixture, tests/backends.py):
``scheduler_for`` gives SQLite's ``Scheduler`` or ``PostgresScheduler``, and what a
test checks it reads through the ``EventLog`` interface or ``backend.raw``. The
last tests are about SQLite's own deadline table, query plan and processes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from backends import Backend
from helpers import ManualClock, next_line

from hermes_ledger import projections
from hermes_ledger.gateway import GatewayConfig, Platform, ResetPolicy, SessionSource
from hermes_ledger.gateway.scheduler.runner import scheduler_for
from hermes_ledger.gateway.scheduler.ticks import Scheduler
from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.sessions.closing import FlushContext
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import EventLog, Ledger
from hermes_ledger.ledger.events import MemoryFlushFailed, SessionEnded, SessionExpired

IDLE_30 = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
DAILY_4_UTC = GatewayConfig(
    default_reset_policy=ResetPolicy(mode="daily", at_hour=4, timezone="UTC")
)


def source(n: int, platform: str = "telegram") -> SessionSource:
    return SessionSource(platform=platform, chat_id=str(n), chat_type="dm", user_id=f"u{n}")


def ends(led: EventLog) -> list[tuple[str, str]]:
    """(session id, reason) of every session_ended, in log order."""
    found = []
    for rec in led.read_all(types=["session_ended"]):
        assert isinstance(rec.event, SessionEnded) and rec.session_id is not None
        found.append((rec.session_id, rec.event.reason))
    return found


def close_sequence(led: EventLog, session_id: str) -> list[str]:
    skipped = ("session_started", "message_appended", "usage_recorded")
    return [r.type for r in led.read_all() if r.session_id == session_id and r.type not in skipped]


@pytest.fixture
def log(backend: Backend) -> Iterator[EventLog]:
    """The log under test: a SQLite file or a fresh PostgreSQL database."""
    with backend.open() as opened:
        yield opened


class Flusher:
    def __init__(self, failures: int = 0) -> None:
        self.calls: list[str] = []
        self.failures = failures

    def __call__(self, context: FlushContext, transcript: Sequence[dict[str, Any]]) -> str:
        self.calls.append(context.session_id)
        if len(self.calls) <= self.failures:
            raise ConnectionError(f"attempt {len(self.calls)} failed")
        return f"{len(transcript)} messages"


def test_idle_sessions_close_once_with_the_full_sequence(
    log: EventLog, backend: Backend, clock: ManualClock
) -> None:
    store = SessionStore(log, IDLE_30, clock)
    a = store.get_or_create_session(source(1))
    store.append_to_transcript(a.session_id, {"role": "user", "content": "hi"})
    clock.advance(minutes=10)
    b = store.get_or_create_session(source(2))
    flusher = Flusher()
    scheduler = scheduler_for(log, IDLE_30, flusher=flusher, clock=clock)
    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)  # a's last activity; b's is 09:10
    assert scheduler.tick(at + timedelta(minutes=29)).closed == []
    report = scheduler.tick(at + timedelta(minutes=31))  # a due, b not yet
    assert [(c.session_id, c.reason) for c in report.closed] == [(a.session_id, "idle_expiry")]
    assert report.closed[0].deadline == "2026-11-22T09:30:00.000000Z"
    assert close_sequence(log, a.session_id) == [
        "session_expired",
        "memory_flushed",
        "session_ended",
    ]
    expired = next(r.event for r in log.read_stream(a.session_key) if r.type == "session_expired")
    assert isinstance(expired, SessionExpired)
    assert expired.deadline == datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    assert expired.evaluated_at == datetime(2026, 11, 22, 9, 31, tzinfo=UTC)
    assert expired.policy["mode"] == "idle" and expired.policy["idle_minutes"] == 30
    assert flusher.calls == [a.session_id]
    assert scheduler.tick(clock.now + timedelta(hours=5)).closed[0].session_id == b.session_id
    assert scheduler.tick(clock.now + timedelta(days=5)).closed == []
    assert sorted(ends(log)) == sorted(
        [(a.session_id, "idle_expiry"), (b.session_id, "idle_expiry")]
    )
    assert flusher.calls == [a.session_id, b.session_id]
    assert backend.projections.verify(log).ok


def test_catch_up_closes_each_session_once_at_the_deadline_it_missed(
    log: EventLog, clock: ManualClock
) -> None:
    store = SessionStore(log, DAILY_4_UTC, clock)
    early = store.get_or_create_session(source(1))  # 09:00, next boundary tomorrow 04:00
    clock.advance(hours=20)  # 05:00 the next day: after that boundary
    late = store.get_or_create_session(source(2))
    scheduler = scheduler_for(log, DAILY_4_UTC, clock=clock)
    report = scheduler.tick(datetime(2026, 11, 26, 12, tzinfo=UTC))  # three days of downtime
    closed = {c.session_id: c for c in report.closed}
    assert set(closed) == {early.session_id, late.session_id}
    assert closed[early.session_id].deadline == "2026-11-23T04:00:00.000000Z"
    assert closed[late.session_id].deadline == "2026-11-24T04:00:00.000000Z"
    assert {r for _, r in ends(log)} == {"daily_reset"}
    assert scheduler.tick(datetime(2026, 11, 27, 12, tzinfo=UTC)).closed == []


def test_activity_after_a_boundary_keeps_the_session_open(
    log: EventLog, clock: ManualClock
) -> None:
    store = SessionStore(log, DAILY_4_UTC, clock)
    scheduler = scheduler_for(log, DAILY_4_UTC, clock=clock)
    clock.now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    entry = store.get_or_create_session(source(1))
    clock.now = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)  # after today's 04:00 boundary
    store.append_to_transcript(entry.session_id, {"role": "user", "content": "morning"})
    assert scheduler.tick(datetime(2026, 11, 22, 23, 0, tzinfo=UTC)).closed == []
    report = scheduler.tick(datetime(2026, 11, 23, 4, 1, tzinfo=UTC))
    assert [(c.session_id, c.deadline) for c in report.closed] == [
        (entry.session_id, "2026-11-23T04:00:00.000000Z")
    ]


def test_policies_per_platform_and_cron(log: EventLog, clock: ManualClock) -> None:
    config = GatewayConfig(
        default_reset_policy=ResetPolicy(mode="none"),
        reset_by_platform={
            Platform.DISCORD: ResetPolicy(mode="cron", schedule="*/15 * * * *", timezone="UTC")
        },
    )
    store = SessionStore(log, config, clock)
    tg = store.get_or_create_session(source(1))
    dc = store.get_or_create_session(source(2, "discord"))
    report = scheduler_for(log, config, clock=clock).tick(clock.now + timedelta(minutes=16))
    assert [(c.session_id, c.reason, c.deadline) for c in report.closed] == [
        (dc.session_id, "cron_reset", "2026-11-22T09:15:00.000000Z")
    ]
    assert tg.session_id not in {sid for sid, _ in ends(log)}


def test_a_failed_flush_is_retried_then_the_session_closes(
    log: EventLog, backend: Backend, clock: ManualClock
) -> None:
    store = SessionStore(log, IDLE_30, clock)
    entry = store.get_or_create_session(source(1))
    flusher = Flusher(failures=5)
    scheduler = scheduler_for(
        log, IDLE_30, flusher=flusher, clock=clock, max_flush_attempts=3,
        flush_retry_delay=timedelta(minutes=5),
    )  # fmt: skip
    t = clock.now + timedelta(minutes=31)
    first = scheduler.tick(t)
    assert first.closed == [] and first.flush_failures == 1 and first.waiting_for_retry == 1
    assert backend.raw("SELECT status FROM session_map") == [("closing",)]
    assert scheduler.tick(t + timedelta(minutes=2)).flush_failures == 0  # not yet
    assert scheduler.tick(t + timedelta(minutes=5)).flush_failures == 1
    final = scheduler.tick(t + timedelta(minutes=10))
    assert [c.session_id for c in final.closed] == [entry.session_id]
    assert close_sequence(log, entry.session_id) == [
        "session_expired",
        "memory_flush_failed",
        "memory_flush_failed",
        "memory_flush_failed",
        "session_ended",
    ]
    failed = [r.event for r in log.read_all(types=["memory_flush_failed"])]
    assert [e.attempt for e in failed if isinstance(e, MemoryFlushFailed)] == [1, 2, 3]
    assert len(flusher.calls) == 3


def test_a_flush_that_succeeded_never_runs_again(log: EventLog, clock: ManualClock) -> None:
    store = SessionStore(log, IDLE_30, clock)
    entry = store.get_or_create_session(source(1))
    flusher = Flusher(failures=1)
    scheduler = scheduler_for(
        log, IDLE_30, flusher=flusher, clock=clock, flush_retry_delay=timedelta(minutes=1)
    )
    t = clock.now + timedelta(minutes=31)
    scheduler.tick(t)
    assert [c.session_id for c in scheduler.tick(t + timedelta(minutes=1)).closed] == [
        entry.session_id
    ]
    for minutes in (2, 60, 600):
        scheduler.tick(t + timedelta(minutes=minutes))
    assert flusher.calls == [entry.session_id, entry.session_id]
    assert close_sequence(log, entry.session_id)[-2:] == ["memory_flushed", "session_ended"]


def test_a_message_during_a_flush_retry_finishes_the_close_first(
    log: EventLog, clock: ManualClock
) -> None:
    store = SessionStore(log, IDLE_30, clock)
    old = store.get_or_create_session(source(1))
    scheduler = scheduler_for(log, IDLE_30, flusher=Flusher(failures=1), clock=clock)
    clock.advance(minutes=31)
    scheduler.tick()  # cause recorded, flush failed, waiting to retry
    new = store.get_or_create_session(source(1))
    assert new.session_id != old.session_id and new.was_auto_reset
    seq = [r.type for r in log.read_stream(old.session_key)]
    assert seq == [
        "session_started",
        "session_expired",
        "memory_flush_failed",
        "memory_flush_skipped",  # the store has no flusher configured
        "session_ended",
        "session_started",
    ]
    assert scheduler.tick(clock.now + timedelta(minutes=5)).closed == []
    assert ends(log) == [(old.session_id, "idle_expiry")]


def test_a_close_left_half_done_by_a_crash_is_finished(log: EventLog, clock: ManualClock) -> None:
    store = SessionStore(log, IDLE_30, clock)
    entry = store.get_or_create_session(source(1))
    # what a scheduler killed right after recording the cause leaves behind:
    log.append(
        entry.session_key,
        [
            SessionExpired(
                session_id=entry.session_id,
                reason="idle",
                deadline=clock.now + timedelta(minutes=30),
                evaluated_at=clock.now + timedelta(minutes=31),
            )
        ],
    )
    report = scheduler_for(log, IDLE_30, clock=clock).tick(clock.now + timedelta(minutes=40))
    assert [(c.session_id, c.reason) for c in report.closed] == [(entry.session_id, "idle_expiry")]
    assert close_sequence(log, entry.session_id) == [
        "session_expired",
        "memory_flush_skipped",
        "session_ended",
    ]


def test_finalize_on_shutdown_closes_every_open_session(
    log: EventLog, backend: Backend, clock: ManualClock
) -> None:
    never = GatewayConfig(default_reset_policy=ResetPolicy(mode="none"))  # no deadline at all
    for config in (GatewayConfig(), never):
        store = SessionStore(log, config, clock)
        ids = [store.get_or_create_session(source(n)).session_id for n in range(3)]
        report = scheduler_for(log, config, clock=clock).finalize()
        assert sorted(c.session_id for c in report.closed) == sorted(ids)
        assert {c.reason for c in report.closed} == {"shutdown"}
        assert close_sequence(log, ids[0]) == [
            "session_reset", "memory_flush_skipped", "session_ended",
        ]  # fmt: skip
        assert scheduler_for(log, config, clock=clock).finalize().closed == []  # none left
        assert scheduler_for(log, config, clock=clock).tick(clock.advance(days=3)).closed == []
    assert {r for _, r in ends(log)} == {"shutdown"} and len(ends(log)) == 6
    assert backend.projections.verify(log).ok


def test_deadlines_are_derived_from_the_log_and_the_config(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, IDLE_30, clock)
    for n in range(5):
        store.get_or_create_session(source(n))
        clock.advance(minutes=1)
    scheduler = Scheduler(led, IDLE_30, clock=clock)
    scheduler.refresh()
    before = led.query("SELECT session_key, deadline FROM session_deadlines ORDER BY 1")
    assert len(before) == 5 and before[0][1] == "2026-11-22T09:30:00.000000Z"
    # session_map stays purely log-derived; the listing joins the scheduler's table
    columns = {r[1] for r in led.query("SELECT * FROM pragma_table_info('session_map')")}
    assert "next_deadline" not in columns
    listed = sorted((r["session_key"], r["next_deadline"]) for r in reports.sessions(led))
    assert listed == [tuple(r) for r in before]
    assert projections.verify(led).ok
    led.write(lambda conn: conn.execute("DELETE FROM session_deadlines"))
    led.write(lambda conn: conn.execute("DELETE FROM scheduler_state"))
    projections.rebuild(led)
    scheduler.refresh()
    assert led.query("SELECT session_key, deadline FROM session_deadlines ORDER BY 1") == before
    longer = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=90))
    assert Scheduler(led, longer, clock=clock).refresh() == 5  # a new config re-derives all
    first = led.query("SELECT deadline FROM session_deadlines ORDER BY 1 LIMIT 1")
    assert first == [("2026-11-22T10:30:00.000000Z",)]


def test_the_due_query_uses_the_deadline_index(led: Ledger) -> None:
    Scheduler(led, IDLE_30)
    plan = led.query(
        "EXPLAIN QUERY PLAN SELECT session_key, session_id, deadline, reason"
        " FROM session_deadlines WHERE deadline <= ?1"
        " AND (claimed_until IS NULL OR claimed_until <= ?1) ORDER BY deadline LIMIT ?2",
        ("2026-01-01", 10),
    )
    assert any("session_deadlines_due" in str(row) for row in plan), plan


TICKER = """
import sys
from datetime import datetime, UTC
from pathlib import Path
from hermes_ledger.ledger import Ledger
from hermes_ledger.gateway import GatewayConfig, ResetPolicy
from hermes_ledger.gateway.scheduler.runner import scheduler_for
from hermes_ledger.gateway.scheduler.ticks import Scheduler
db, log, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
def flusher(context, transcript):
    with log.open("a") as f:
        f.write(context.session_id + "\\n")
with Ledger.open(db) as led:
    config = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
    scheduler = Scheduler(led, config, flusher=flusher, batch=10)
    print("ready", flush=True)
    while not go.exists():
        pass
    for _ in range(5):
        scheduler.tick(datetime(2026, 11, 23, tzinfo=UTC))
"""


def test_two_scheduler_processes_never_close_or_flush_a_session_twice(
    db_path: Path, tmp_path: Path, clock: ManualClock
) -> None:
    with Ledger.open(db_path, clock=clock) as led:
        store = SessionStore(led, IDLE_30, clock)
        ids = [store.get_or_create_session(source(n)).session_id for n in range(60)]
    log, go = tmp_path / "flushes.log", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TICKER, str(db_path), str(log), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:  # wait until each one is at the barrier
            assert next_line(proc) == "ready\n"
    finally:
        go.touch()  # (releasing the others too if one failed)
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    with Ledger.open(db_path) as led:
        assert sorted(sid for sid, _ in ends(led)) == sorted(ids)
        flushed = log.read_text().split()
        assert sorted(flushed) == sorted(ids)  # each close flushed exactly once
        recorded = led.query("SELECT count(*) FROM events WHERE type = 'memory_flushed'")
        assert recorded == [(60,)]
