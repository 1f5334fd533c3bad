"""The scheduler: every due session closed exactly once, with cause → flush → end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import ManualClock, next_line

from hermes_ledger import projections
from hermes_ledger.gateway import GatewayConfig, Platform, ResetPolicy, SessionSource
from hermes_ledger.gateway.scheduler.ticks import Scheduler
from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.sessions.closing import FlushContext
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import SessionExpired

IDLE_30 = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
DAILY_4_UTC = GatewayConfig(
    default_reset_policy=ResetPolicy(mode="daily", at_hour=4, timezone="UTC")
)


def source(n: int, platform: str = "telegram") -> SessionSource:
    return SessionSource(platform=platform, chat_id=str(n), chat_type="dm", user_id=f"u{n}")


def ends(led: Ledger) -> list[tuple[str, str]]:
    rows = led.query(
        "SELECT session_id, json_extract(data, '$.reason') FROM events"
        " WHERE type = 'session_ended' ORDER BY position"
    )
    return [(r[0], r[1]) for r in rows]


def close_sequence(led: Ledger, session_id: str) -> list[str]:
    rows = led.query(
        "SELECT type FROM events WHERE session_id = ? AND type NOT IN"
        " ('session_started', 'message_appended', 'usage_recorded') ORDER BY position",
        (session_id,),
    )
    return [r[0] for r in rows]


class Flusher:
    def __init__(self, failures: int = 0) -> None:
        self.calls: list[str] = []
        self.failures = failures

    def __call__(self, context: FlushContext, transcript: Sequence[dict[str, Any]]) -> str:
        self.calls.append(context.session_id)
        if len(self.calls) <= self.failures:
            raise ConnectionError(f"attempt {len(self.calls)} failed")
        return f"{len(transcript)} messages"


def test_idle_sessions_close_once_with_the_full_sequence(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, IDLE_30, clock)
    a = store.get_or_create_session(source(1))
    store.append_to_transcript(a.session_id, {"role": "user", "content": "hi"})
    clock.advance(minutes=10)
    b = store.get_or_create_session(source(2))
    flusher = Flusher()
    scheduler = Scheduler(led, IDLE_30, flusher=flusher, clock=clock)
    at = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)  # a's last activity; b's is 09:10
    assert scheduler.tick(at + timedelta(minutes=29)).closed == []
    report = scheduler.tick(at + timedelta(minutes=31))  # a due, b not yet
    assert [(c.session_id, c.reason) for c in report.closed] == [(a.session_id, "idle_expiry")]
    assert report.closed[0].deadline == "2026-11-22T09:30:00.000000Z"
    assert close_sequence(led, a.session_id) == [
        "session_expired",
        "memory_flushed",
        "session_ended",
    ]
    expired = next(r.event for r in led.read_stream(a.session_key) if r.type == "session_expired")
    assert isinstance(expired, SessionExpired)
    assert expired.deadline == datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    assert expired.evaluated_at == datetime(2026, 11, 22, 9, 31, tzinfo=UTC)
    assert expired.policy["mode"] == "idle" and expired.policy["idle_minutes"] == 30
    assert flusher.calls == [a.session_id]
    assert scheduler.tick(clock.now + timedelta(hours=5)).closed[0].session_id == b.session_id
    assert scheduler.tick(clock.now + timedelta(days=5)).closed == []
    assert sorted(ends(led)) == sorted(
        [(a.session_id, "idle_expiry"), (b.session_id, "idle_expiry")]
    )
    assert flusher.calls == [a.session_id, b.session_id]
    assert projections.verify(led).ok


def test_catch_up_closes_each_session_once_at_the_deadline_it_missed(
    led: Ledger, clock: ManualClock
) -> None:
    store = SessionStore(led, DAILY_4_UTC, clock)
    early = store.get_or_create_session(source(1))  # 09:00, next boundary tomorrow 04:00
    clock.advance(hours=20)  # 05:00 the next day: after that boundary
    late = store.get_or_create_session(source(2))
    scheduler = Scheduler(led, DAILY_4_UTC, clock=clock)
    report = scheduler.tick(datetime(2026, 11, 26, 12, tzinfo=UTC))  # three days of downtime
    closed = {c.session_id: c for c in report.closed}
    assert set(closed) == {early.session_id, late.session_id}
    assert closed[early.session_id].deadline == "2026-11-23T04:00:00.000000Z"
    assert closed[late.session_id].deadline == "2026-11-24T04:00:00.000000Z"
    assert {r for _, r in ends(led)} == {"daily_reset"}
    assert scheduler.tick(datetime(2026, 11, 27, 12, tzinfo=UTC)).closed == []


def test_activity_after_a_boundary_keeps_the_session_open(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, DAILY_4_UTC, clock)
    scheduler = Scheduler(led, DAILY_4_UTC, clock=clock)
    clock.now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    entry = store.get_or_create_session(source(1))
    clock.now = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)  # after today's 04:00 boundary
    store.append_to_transcript(entry.session_id, {"role": "user", "content": "morning"})
    assert scheduler.tick(datetime(2026, 11, 22, 23, 0, tzinfo=UTC)).closed == []
    report = scheduler.tick(datetime(2026, 11, 23, 4, 1, tzinfo=UTC))
    assert [(c.session_id, c.deadline) for c in report.closed] == [
        (entry.session_id, "2026-11-23T04:00:00.000000Z")
    ]


def test_policies_per_platform_and_cron(led: Ledger, clock: ManualClock) -> None:
    config = GatewayConfig(
        default_reset_policy=ResetPolicy(mode="none"),
        reset_by_platform={
            Platform.DISCORD: ResetPolicy(mode="cron", schedule="*/15 * * * *", timezone="UTC")
        },
    )
    store = SessionStore(led, config, clock)
    tg = store.get_or_create_session(source(1))
    dc = store.get_or_create_session(source(2, "discord"))
    report = Scheduler(led, config, clock=clock).tick(clock.now + timedelta(minutes=16))
    assert [(c.session_id, c.reason, c.deadline) for c in report.closed] == [
        (dc.session_id, "cron_reset", "2026-11-22T09:15:00.000000Z")
    ]
    assert tg.session_id not in {sid for sid, _ in ends(led)}


def test_a_failed_flush_is_retried_then_the_session_closes(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, IDLE_30, clock)
    entry = store.get_or_create_session(source(1))
    flusher = Flusher(failures=5)
    scheduler = Scheduler(
        led, IDLE_30, flusher=flusher, clock=clock, max_flush_attempts=3,
        flush_retry_delay=timedelta(minutes=5),
    )  # fmt: skip
    t = clock.now + timedelta(minutes=31)
    first = scheduler.tick(t)
    assert first.closed == [] and first.flush_failures == 1 and first.waiting_for_retry == 1
    status = led.query("SELECT status FROM session_map")
    assert status == [("closing",)]
    assert scheduler.tick(t + timedelta(minutes=2)).flush_failures == 0  # not yet
    assert scheduler.tick(t + timedelta(minutes=5)).flush_failures == 1
    final = scheduler.tick(t + timedelta(minutes=10))
    assert [c.session_id for c in final.closed] == [entry.session_id]
    assert close_sequence(led, entry.session_id) == [
        "session_expired",
        "memory_flush_failed",
        "memory_flush_failed",
        "memory_flush_failed",
        "session_ended",
    ]
    attempts = led.query(
        "SELECT json_extract(data, '$.attempt') FROM events WHERE type = 'memory_flush_failed'"
    )
    assert attempts == [(1,), (2,), (3,)]
    assert len(flusher.calls) == 3


def test_a_flush_that_succeeded_never_runs_again(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, IDLE_30, clock)
    entry = store.get_or_create_session(source(1))
    flusher = Flusher(failures=1)
    scheduler = Scheduler(
        led, IDLE_30, flusher=flusher, clock=clock, flush_retry_delay=timedelta(minutes=1)
    )
    t = clock.now + timedelta(minutes=31)
    scheduler.tick(t)
    assert [c.session_id for c in scheduler.tick(t + timedelta(minutes=1)).closed] == [
        entry.session_id
    ]
    for minutes in (2, 60, 600):
        scheduler.tick(t + timedelta(minutes=minutes))
    assert flusher.calls == [entry.session_id, entry.session_id]
    assert close_sequence(led, entry.session_id)[-2:] == ["memory_flushed", "session_ended"]


def test_a_message_during_a_flush_retry_finishes_the_close_first(
    led: Ledger, clock: ManualClock
) -> None:
    store = SessionStore(led, IDLE_30, clock)
    old = store.get_or_create_session(source(1))
    scheduler = Scheduler(led, IDLE_30, flusher=Flusher(failures=1), clock=clock)
    clock.advance(minutes=31)
    scheduler.tick()  # cause recorded, flush failed, waiting to retry
    new = store.get_or_create_session(source(1))
    assert new.session_id != old.session_id and new.was_auto_reset
    seq = led.query(
        "SELECT type, session_id FROM events WHERE stream = ? ORDER BY position",
        (old.session_key,),
    )
    assert [t for t, _ in seq] == [
        "session_started",
        "session_expired",
        "memory_flush_failed",
        "memory_flush_skipped",  # the store has no flusher configured
        "session_ended",
        "session_started",
    ]
    assert scheduler.tick(clock.now + timedelta(minutes=5)).closed == []
    assert ends(led) == [(old.session_id, "idle_expiry")]


def test_a_close_left_half_done_by_a_crash_is_finished(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, IDLE_30, clock)
    entry = store.get_or_create_session(source(1))
    # what a scheduler killed right after recording the cause leaves behind:
    led.append(
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
    report = Scheduler(led, IDLE_30, clock=clock).tick(clock.now + timedelta(minutes=40))
    assert [(c.session_id, c.reason) for c in report.closed] == [(entry.session_id, "idle_expiry")]
    assert close_sequence(led, entry.session_id) == [
        "session_expired",
        "memory_flush_skipped",
        "session_ended",
    ]


def test_finalize_on_shutdown_closes_every_open_session(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, GatewayConfig(), clock)
    ids = [store.get_or_create_session(source(n)).session_id for n in range(3)]
    report = Scheduler(led, GatewayConfig(), clock=clock).finalize()
    assert sorted(c.session_id for c in report.closed) == sorted(ids)
    assert {r for _, r in ends(led)} == {"shutdown"}
    assert close_sequence(led, ids[0]) == ["session_reset", "memory_flush_skipped", "session_ended"]


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
