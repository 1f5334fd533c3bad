"""The session store's main scenarios (``gateway.sessions.store.SessionStore``), run
unchanged on both backends: a SQLite ``Ledger`` and a ``PostgresLog`` on a fresh
database (tests/pg_support.py says which server, and when the PostgreSQL cases skip
or fail for want of one). What a test checks in the log it reads through the
``EventLog`` interface (``read_all``), so nothing here is backend-specific but the
``backend`` fixture (tests/backends.py).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from backends import Backend
from helpers import ManualClock, next_line

from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.sessions.store import (
    SessionClosedError,
    SessionStore,
    UnknownSessionError,
)
from hermes_ledger.ledger import EventLog
from hermes_ledger.ledger.records import Recorded

DM = SessionSource(platform="telegram", chat_id="99", chat_type="dm", user_id="7", user_name="ada")
KEY = "agent:main:telegram:dm:99"
IDLE_30 = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))


def store_on(backend: Backend, log: EventLog) -> SessionStore:
    """A session store over ``log`` (opened by ``backend``), on the test clock."""
    return SessionStore(log, IDLE_30, backend.clock)


@pytest.fixture
def log(backend: Backend) -> Iterator[EventLog]:
    with backend.open() as opened:
        yield opened


@pytest.fixture
def store(backend: Backend, log: EventLog) -> SessionStore:
    return store_on(backend, log)


def events_of(log: EventLog, session_id: str) -> list[Recorded]:
    return [r for r in log.read_all() if r.session_id == session_id]


def types_of(log: EventLog, session_id: str) -> list[str]:
    return [r.type for r in events_of(log, session_id)]


def test_a_first_message_starts_a_session_and_is_read_back(
    store: SessionStore, log: EventLog, clock: ManualClock
) -> None:
    entry = store.get_or_create_session(DM)
    assert entry.session_key == KEY and entry.origin == DM and entry.created_at == clock.now
    assert not entry.was_auto_reset and entry.display_name == "ada"
    position = store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi"})
    store.append_to_transcript(entry.session_id, {"role": "assistant", "content": "hello"})
    assert store.get_or_create_session(DM).session_id == entry.session_id
    assert [(m["role"], m["content"]) for m in store.load_transcript(entry.session_id)] == [
        ("user", "hi"),
        ("assistant", "hello"),
    ]
    said = [r for r in log.read_all() if r.position == position]
    assert [(r.type, r.stream, r.session_id) for r in said] == [
        ("message_appended", KEY, entry.session_id)
    ]
    assert types_of(log, entry.session_id) == ["session_started", *["message_appended"] * 2]
    assert store.lookup_by_session_id(entry.session_id) == store.get_session(KEY)
    assert [e.session_id for e in store.list_sessions()] == [entry.session_id]
    updated = store.update_session(KEY, input_tokens=10, output_tokens=5, cost_usd=0.25)
    assert (updated.input_tokens, updated.total_tokens, updated.estimated_cost_usd) == (
        10,
        15,
        0.25,
    )
    with pytest.raises(UnknownSessionError):
        store.append_to_transcript("no-such-session", {"role": "user", "content": "x"})


def test_a_late_message_closes_the_idle_session_and_starts_a_new_one(
    store: SessionStore, log: EventLog, clock: ManualClock
) -> None:
    old = store.get_or_create_session(DM)
    store.append_to_transcript(old.session_id, {"role": "user", "content": "hi"})
    clock.advance(minutes=29)
    assert store.get_or_create_session(DM).session_id == old.session_id  # not yet
    clock.advance(minutes=31)
    new = store.get_or_create_session(DM)
    assert new.session_id != old.session_id and new.session_key == KEY
    assert new.was_auto_reset and new.auto_reset_reason == "idle"
    assert types_of(log, old.session_id)[-3:] == [
        "session_expired",
        "memory_flush_skipped",
        "session_ended",
    ]
    (ended,) = [r for r in events_of(log, old.session_id) if r.type == "session_ended"]
    assert ended.data["reason"] == "auto_reset"
    (started,) = [r for r in events_of(log, new.session_id) if r.type == "session_started"]
    assert started.position == ended.position + 1  # the same append
    assert started.data["previous_session_id"] == old.session_id
    with pytest.raises(SessionClosedError, match="has ended"):
        store.append_to_transcript(old.session_id, {"role": "user", "content": "too late"})
    assert [e.session_id for e in store.list_sessions()] == [new.session_id]


def test_new_rotates_the_session_id_and_ends_the_old_one_as_a_manual_reset(
    store: SessionStore, log: EventLog
) -> None:
    old = store.get_or_create_session(DM)
    new = store.reset_session(KEY, trigger="/new")
    assert new.session_key == KEY and new.session_id != old.session_id
    assert not new.was_auto_reset and new.origin == DM
    assert types_of(log, old.session_id) == [
        "session_started",
        "session_reset",
        "memory_flush_skipped",
        "session_ended",
    ]
    (ended,) = [r for r in events_of(log, old.session_id) if r.type == "session_ended"]
    assert ended.data["reason"] == "manual_reset"
    forced = store.get_or_create_session(DM, force_new=True)
    assert forced.session_id not in (old.session_id, new.session_id)
    with pytest.raises(UnknownSessionError):
        store.reset_session("agent:main:telegram:dm:unknown")


def test_threads_racing_on_an_expired_key_start_one_session(
    backend: Backend, store: SessionStore, log: EventLog, clock: ManualClock
) -> None:
    old = store.get_or_create_session(DM)
    clock.advance(hours=1)
    logs = [backend.open() for _ in range(4)]  # each thread its own connection
    barrier = threading.Barrier(len(logs))
    got: list[str] = []

    def race(own: EventLog) -> None:
        racer = store_on(backend, own)
        barrier.wait()
        got.append(racer.get_or_create_session(DM).session_id)

    threads = [threading.Thread(target=race, args=(own,)) for own in logs]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for own in logs:
            own.close()
    assert len(got) == 4 and len(set(got)) == 1 and old.session_id not in got
    assert sorted(r.type for r in log.read_all()) == [
        "memory_flush_skipped",
        "session_ended",
        "session_expired",
        "session_started",
        "session_started",
    ]


RACER = """
import sys, time
from datetime import datetime
from pathlib import Path
from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import open_log

target, go, now = sys.argv[1], Path(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
config = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
with open_log(target, clock=lambda: now) as log:
    store = SessionStore(log, config, lambda: now)
    source = SessionSource(platform="telegram", chat_id="99", chat_type="dm", user_id="7")
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    print(store.get_or_create_session(source).session_id)
"""


def test_processes_racing_on_an_expired_key_start_one_session(
    backend: Backend, store: SessionStore, log: EventLog, clock: ManualClock, tmp_path: Path
) -> None:
    old = store.get_or_create_session(DM)
    later: datetime = clock.advance(hours=1)
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, backend.target, str(go), later.isoformat()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for racer in racers:
            assert next_line(racer) == "ready\n"
    finally:
        go.touch()
    results = [r.communicate(timeout=60) for r in racers]
    assert all(r.returncode == 0 for r in racers), results
    ids = {out.strip() for out, _ in results}
    assert len(ids) == 1 and old.session_id not in ids
    ended = [r for r in log.read_all() if r.type == "session_ended"]
    assert [r.session_id for r in ended] == [old.session_id]
    assert store.get_session(KEY) is not None
    assert store.get_session(KEY).session_id in ids  # type: ignore[union-attr]
