"""The scheduler's due sessions and hook deliveries on PostgreSQL, safe across hosts
(gateway.scheduler.postgres, gateway.hooks.postgres_delivery), against a real server
(a fresh database per test, tests/pg_support.py) and real runner processes
(tests/pg_scheduler_worker.py, each its own connection, as if on its own host)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import next_line
from pg_support import fresh_database

from hermes_ledger.gateway import GatewayConfig, ResetPolicy
from hermes_ledger.gateway.hooks.delivery import delivery_id_for
from hermes_ledger.gateway.hooks.postgres_delivery import PostgresDeliveryQueue, attach_outbox
from hermes_ledger.gateway.scheduler.postgres import PostgresScheduler, claim_due
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger.events import MessageAppended, SessionEnded, SessionStarted, Source
from hermes_ledger.ledger.postgres import PostgresLog

WORKER = Path(__file__).with_name("pg_scheduler_worker.py")
HOOK = "recorder"
CONFIG = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
RETRY = RetryPolicy(3, timedelta(0))
LONG_AGO = datetime.now(UTC) - timedelta(hours=2)


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as name:
        yield name


def key(n: int) -> str:
    return f"agent:main:telegram:dm:{n}"


def seed(log: PostgresLog, count: int, *, at: datetime = LONG_AGO) -> dict[str, str]:
    """``count`` sessions whose last activity was at ``at``: key -> session id."""
    sessions = {}
    for n in range(count):
        sid = f"s{n:04d}"
        source = Source(platform="telegram", chat_id=str(n), user_id=f"u{n}")
        started = SessionStarted(session_id=sid, source=source, occurred_at=at)
        said = MessageAppended(session_id=sid, role="user", content=f"hi {n}", occurred_at=at)
        log.append(key(n), [started, said])
        sessions[key(n)] = sid
    return sessions


def opened(dsn: str) -> tuple[PostgresLog, PostgresScheduler, PostgresDeliveryQueue]:
    log = PostgresLog.open(dsn)
    scheduler = PostgresScheduler(log, CONFIG, lease=timedelta(minutes=5), batch=10)
    attach_outbox(log)
    return log, scheduler, PostgresDeliveryQueue(log, hold=timedelta(minutes=5))


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = hermes_ledger")
        return conn.execute(sql).fetchall()


# -- in one process --------------------------------------------------------------------


def test_deadline_rows_follow_the_log_and_the_close_releases_them(dsn: str) -> None:
    log, scheduler, _queue = opened(dsn)
    with log:
        sessions = seed(log, 3)
        deadlines = rows(dsn, "SELECT session_key, session_id, deadline, reason, claimed_by"
                              " FROM session_deadlines ORDER BY session_key")  # fmt: skip
        assert [(r[0], r[1], r[3], r[4]) for r in deadlines] == [
            (k, s, "idle", None) for k, s in sorted(sessions.items())
        ]
        assert {r[2] for r in deadlines} == {LONG_AGO + timedelta(minutes=30)}
        report = scheduler.tick()
        assert sorted(c.session_id for c in report.closed) == sorted(sessions.values())
        assert {c.reason for c in report.closed} == {"idle_expiry"}
        assert rows(dsn, "SELECT count(*) FROM session_deadlines") == [(0,)]
        types = rows(dsn, "SELECT type FROM events WHERE session_id = 's0000' ORDER BY position")
        assert [t for (t,) in types] == [
            "session_started", "message_appended", "session_expired",
            "memory_flush_skipped", "session_ended",
        ]  # fmt: skip
        assert scheduler.tick().closed == []  # nothing left, nothing closed twice


def test_the_due_query_skips_rows_another_runner_holds_and_retakes_expired_leases(
    dsn: str,
) -> None:
    log, _scheduler, _queue = opened(dsn)
    now = datetime.now(UTC)
    with log, psycopg.connect(dsn) as other:
        seed(log, 4)
        other.execute("SET search_path = hermes_ledger")
        # Another runner is in the middle of claiming the earliest two rows.
        other.execute("SELECT * FROM session_deadlines ORDER BY session_key LIMIT 2 FOR UPDATE")
        mine = claim_due(log.connection, "a", now, 10, timedelta(minutes=5))
        assert sorted(r[0] for r in mine) == [key(2), key(3)]  # skipped, not waited for
        other.rollback()
        # Leased rows are not claimed again; a lease that expired is.
        taken = claim_due(log.connection, "b", now, 10, timedelta(0))
        assert sorted(r[0] for r in taken) == [key(0), key(1)]
        taken = claim_due(log.connection, "c", now, 10, timedelta(minutes=5))
        assert sorted(r[0] for r in taken) == [key(0), key(1)]  # b's zero leases expired
        assert claim_due(log.connection, "d", now, 10, timedelta(minutes=5)) == []
        owners = rows(dsn, "SELECT claimed_by FROM session_deadlines ORDER BY session_key")
        assert [o for (o,) in owners] == ["c", "c", "a", "a"]


def test_a_crashed_closers_lease_expires_and_another_runner_finishes_the_close(
    dsn: str,
) -> None:
    log, scheduler, _queue = opened(dsn)
    with log:
        sessions = seed(log, 1)
        # A runner claimed the session, recorded the cause, and died (no flush, no end).
        claim_due(log.connection, "dead-runner", datetime.now(UTC), 10, timedelta(0))
        state = log.stream_version(key(0))
        from hermes_ledger.ledger.events import SessionExpired

        cause = SessionExpired(session_id=sessions[key(0)], reason="idle",
                               deadline=LONG_AGO + timedelta(minutes=30),
                               evaluated_at=datetime.now(UTC), policy={})  # fmt: skip
        log.append(key(0), [cause], state)
        assert rows(dsn, "SELECT reason, claimed_by FROM session_deadlines") == [
            ("finish", "dead-runner")
        ]
        report = scheduler.tick()
        assert [c.session_id for c in report.closed] == [sessions[key(0)]]
        ended = rows(dsn, "SELECT count(*) FROM events WHERE type = 'session_ended'")
        assert ended == [(1,)]


def test_finalize_skips_a_session_another_runner_holds_and_takes_an_expired_lease(
    dsn: str,
) -> None:
    log, scheduler, _queue = opened(dsn)
    with log:
        sessions = seed(log, 3)
        claim_due(log.connection, "other-runner", datetime.now(UTC), 1, timedelta(minutes=5))
        claim_due(log.connection, "dead-runner", datetime.now(UTC), 1, timedelta(0))
        report = scheduler.finalize()
        assert sorted(c.session_id for c in report.closed) == [sessions[key(1)], sessions[key(2)]]
        assert report.skipped == 1  # key 0: other-runner's lease holds
        assert rows(dsn, "SELECT session_key, claimed_by FROM session_deadlines") == [
            (key(0), "other-runner")
        ]
        ended = rows(dsn, "SELECT session_id FROM events WHERE type = 'session_ended'")
        assert sorted(e for (e,) in ended) == [sessions[key(1)], sessions[key(2)]]


def test_two_finalizers_and_a_ticker_at_once_close_each_session_once(dsn: str) -> None:
    with PostgresLog.open(dsn) as log:
        PostgresScheduler(log, CONFIG)  # the deadline projector, for the seed's appends
        sessions = seed(log, 60)
    barrier = threading.Barrier(3)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def work(kind: str) -> None:
        try:
            log, scheduler, _queue = opened(dsn)
            with log:
                barrier.wait(timeout=30)
                reports.append(scheduler.finalize() if kind == "finalize" else scheduler.tick())
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in ("finalize", "finalize", "tick")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    closed = [c.session_id for r in reports for c in r.closed]
    assert sorted(closed) == sorted(sessions.values())  # each by one of them
    ended = rows(dsn, "SELECT session_id FROM events WHERE type = 'session_ended'")
    assert sorted(e for (e,) in ended) == sorted(sessions.values())
    assert rows(dsn, "SELECT count(*) FROM session_deadlines") == [(0,)]


def test_deliveries_carry_sqlites_delivery_id_and_only_name_events_of_the_log(dsn: str) -> None:
    log, scheduler, queue = opened(dsn)
    with log:
        queue.subscribe(HOOK, ["session:end"])
        sessions = seed(log, 2)
        assert rows(dsn, "SELECT count(*) FROM hook_deliveries") == [(0,)]  # no end yet
        scheduler.tick()
        ends = dict(rows(dsn, "SELECT session_id, event_id FROM events"
                              " WHERE type = 'session_ended'"))  # fmt: skip
        queued = rows(dsn, "SELECT delivery_id, session_id, status FROM hook_deliveries")
        assert sorted(queued) == sorted(
            (delivery_id_for(HOOK, ends[sid]), sid, "pending") for sid in sessions.values()
        )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            rows(dsn, "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id,"
                      " hook_event, session_key, session_id, context, status) VALUES"
                      " ('x', 'recorder', 1, 'nope', 'session:end', 'k', 's0000', '{}',"
                      " 'pending')")  # fmt: skip
        seen: list[tuple[str, str]] = []
        outcomes = queue.deliver(HOOK, lambda e, c: seen.append((e, c["delivery_id"])), "w",
                                 retry=RETRY)  # fmt: skip
        assert sorted(d for _, d in seen) == sorted(r[0] for r in queued)
        assert {o.status for o in outcomes} == {"done"}
        assert queue.deliver(HOOK, lambda e, c: seen.append((e, c["delivery_id"])), "w",
                             retry=RETRY) == []  # fmt: skip
        assert len(seen) == 2


def test_an_expired_delivery_claim_is_delivered_again_under_its_id_then_dead_lettered(
    dsn: str,
) -> None:
    log, scheduler, _queue = opened(dsn)
    with log:
        short = PostgresDeliveryQueue(log, hold=timedelta(0))  # every claim expires at once
        short.subscribe(HOOK, ["session:end"])
        seed(log, 1)
        scheduler.tick()
        first, _ = short.claim(HOOK, "w1", retry=RETRY)  # w1 "dies" during the call
        second, _ = short.claim(HOOK, "w2", retry=RETRY)
        assert first is not None and second is not None
        assert second.delivery_id == first.delivery_id and second.attempt == 2
        assert short.finish(first, None, None) is False  # w1's lease is gone
        third, _ = short.claim(HOOK, "w3", retry=RETRY)
        assert third is not None and third.attempt == 3
        none, given_up = short.claim(HOOK, "w4", retry=RETRY)
        assert none is None and [o.status for o in given_up] == ["dead"]
        assert rows(dsn, "SELECT status, attempts FROM hook_deliveries") == [("dead", 3)]


def test_a_failed_call_backs_off_and_a_key_is_delivered_in_log_order(dsn: str) -> None:
    log, _scheduler, queue = opened(dsn)
    with log:
        queue.subscribe(HOOK, ["session:start", "session:end"])
        seed(log, 1)
        ended = SessionEnded(session_id="s0000", reason="manual_reset")
        log.append(key(0), [ended])
        calls: list[str] = []

        def flaky(event: str, context: object) -> None:
            calls.append(event)
            if len(calls) == 1:
                raise ConnectionError("down")

        backoff = RetryPolicy(3, timedelta(hours=1))
        outcomes = queue.deliver(HOOK, flaky, "w", retry=backoff)
        # The start failed and waits an hour; the key's end waits behind it.
        assert [o.status for o in outcomes] == ["retry"] and calls == ["session:start"]
        assert queue.deliver(HOOK, flaky, "w", retry=backoff) == []


# -- four runner processes, as if on four hosts -----------------------------------------


def start_runner(
    dsn: str, record: Path, stop: Path, lease: float, pause: float
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), dsn, str(record), str(stop), str(lease), str(pause)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert next_line(proc) == "ready\n"
    return proc


def finished(dsn: str, count: int) -> bool:
    ((ended, owed, done),) = rows(
        dsn,
        "SELECT (SELECT count(*) FROM events WHERE type = 'session_ended'),"
        " (SELECT count(*) FROM hook_deliveries WHERE status IN ('pending', 'claimed')),"
        " (SELECT count(*) FROM hook_deliveries WHERE status = 'done')",
    )
    return ended == count and owed == 0 and done == count


def recorded(record: Path) -> list[tuple[str, str]]:
    lines = [line.split() for line in record.read_text().splitlines()]
    assert all(len(parts) == 4 and parts[2] == "session:end" for parts in lines)
    return [(parts[0], parts[1]) for parts in lines]


def run_runners(
    dsn: str, tmp_path: Path, *, kills: bool
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    with PostgresLog.open(dsn) as log:
        PostgresScheduler(log, CONFIG)  # creates the projections, attaches the deadlines
        attach_outbox(log)
        PostgresDeliveryQueue(log).subscribe(HOOK, ["session:end"])
        sessions = seed(log, 200)
    record, stop = tmp_path / "deliveries.log", tmp_path / "stop"
    record.touch()
    lease, pause = (1.0, 0.02) if kills else (60.0, 0.0)
    runners = [start_runner(dsn, record, stop, lease, pause) for _ in range(4)]
    rng = random.Random(14)
    killed = 0
    try:
        deadline = time.monotonic() + 240
        while not finished(dsn, len(sessions)):
            assert time.monotonic() < deadline, "the runners did not finish"
            time.sleep(rng.uniform(0.05, 0.3))
            if kills and killed < 12:
                n = rng.randrange(len(runners))
                runners[n].kill()  # kill -9
                runners[n].communicate()
                killed += 1
                runners[n] = start_runner(dsn, record, stop, lease, pause)
    finally:
        stop.touch()
        outputs = [p.communicate(timeout=60) for p in runners]
    assert all(p.returncode == 0 for p in runners), outputs
    return sessions, recorded(record)


def check_the_closes(dsn: str, sessions: dict[str, str]) -> dict[str, str]:
    ends = rows(dsn, "SELECT session_id, event_id FROM events WHERE type = 'session_ended'")
    assert sorted(sid for sid, _ in ends) == sorted(sessions.values())  # each closed once
    causes = rows(dsn, "SELECT session_id FROM events WHERE type = 'session_expired'")
    assert sorted(sid for (sid,) in causes) == sorted(sessions.values())
    assert rows(dsn, "SELECT count(*) FROM session_deadlines") == [(0,)]
    return {sid: delivery_id_for(HOOK, event_id) for sid, event_id in ends}


def test_four_runners_close_every_session_once_and_deliver_every_end_once(
    dsn: str, tmp_path: Path
) -> None:
    sessions, calls = run_runners(dsn, tmp_path, kills=False)
    expected = check_the_closes(dsn, sessions)
    assert sorted(calls) == sorted((did, sid) for sid, did in expected.items())  # no duplicates


def test_runners_killed_at_random_deliver_every_end_at_least_once_under_one_id(
    dsn: str, tmp_path: Path
) -> None:
    sessions, calls = run_runners(dsn, tmp_path, kills=True)
    expected = check_the_closes(dsn, sessions)
    assert {sid for _, sid in calls} == set(sessions.values())  # every end, none that did not end
    assert all(expected[sid] == did for did, sid in calls)  # always under its one delivery_id
