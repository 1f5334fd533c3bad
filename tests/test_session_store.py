"""SessionStore: Hermes-shaped sessions written as events and read from projections."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import ManualClock, next_line

from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.sessions.closing import FlushContext
from hermes_ledger.gateway.sessions.store import (
    SessionClosedError,
    SessionStore,
    UnknownSessionError,
)
from hermes_ledger.ledger import EventValidationError, Ledger, LedgerError

DM = SessionSource(platform="telegram", chat_id="99", chat_type="dm", user_id="7", user_name="ada")
GROUP = SessionSource(
    platform="discord", chat_id="g1", chat_type="group", chat_name="ops", user_id="u2"
)
IDLE_30 = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))


def types_of(led: Ledger, session_id: str) -> list[str]:
    rows = led.query(
        "SELECT type FROM events WHERE session_id = ? ORDER BY position", (session_id,)
    )
    return [r[0] for r in rows]


@pytest.fixture
def store(led: Ledger, clock: ManualClock) -> SessionStore:
    return SessionStore(led, IDLE_30, clock)


def test_a_new_source_gets_a_session(store: SessionStore, clock: ManualClock) -> None:
    entry = store.get_or_create_session(DM)
    assert entry.session_key == "agent:main:telegram:dm:99"
    assert re.fullmatch(r"20261122_090000_[0-9a-f]{8}", entry.session_id)
    assert entry.created_at == clock.now and entry.updated_at == clock.now
    assert entry.origin == DM and entry.platform == "telegram" and entry.chat_type == "dm"
    assert entry.display_name == "ada"
    assert not entry.was_auto_reset and entry.auto_reset_reason is None
    again = store.get_or_create_session(DM)
    assert again.session_id == entry.session_id
    other = store.get_or_create_session(GROUP)
    assert other.session_key == "agent:main:discord:group:g1:u2"
    assert other.session_id != entry.session_id


def test_transcripts_keep_order_and_tool_fields(store: SessionStore, led: Ledger) -> None:
    sid = store.get_or_create_session(DM).session_id
    call = [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]
    store.append_to_transcript(sid, {"role": "user", "content": "find it"})
    store.append_to_transcript(sid, {"role": "assistant", "content": None, "tool_calls": call})
    store.append_to_transcript(
        sid, {"role": "tool", "content": "found", "tool_name": "search", "tool_call_id": "c1"}
    )
    store.append_to_transcript(sid, {"role": "user", "content": "flush!", "synthetic": True})
    transcript = store.load_transcript(sid)
    assert [(m["role"], m["content"]) for m in transcript] == [
        ("user", "find it"),
        ("assistant", None),
        ("tool", "found"),
    ]
    assert transcript[1]["tool_calls"] == call
    assert transcript[2]["tool_name"] == "search" and transcript[2]["tool_call_id"] == "c1"
    assert types_of(led, sid).count("message_appended") == 4  # the synthetic turn is logged


def test_bad_messages_are_refused_and_nothing_is_written(store: SessionStore, led: Ledger) -> None:
    sid = store.get_or_create_session(DM).session_id
    head = led.head()
    with pytest.raises(EventValidationError, match="role"):
        store.append_to_transcript(sid, {"role": "robot", "content": "beep"})
    with pytest.raises(LedgerError, match="fields the ledger does not keep: colour"):
        store.append_to_transcript(sid, {"role": "user", "content": "x", "colour": "red"})
    with pytest.raises(UnknownSessionError, match="no session with id 'nope'"):
        store.append_to_transcript("nope", {"role": "user", "content": "x"})
    assert led.head() == head


def test_usage_adds_up(store: SessionStore) -> None:
    entry = store.get_or_create_session(DM)
    store.update_session(entry.session_key, input_tokens=100, output_tokens=20, cost_usd=0.25)
    after = store.update_session(
        entry.session_key, input_tokens=50, output_tokens=5, cache_read_tokens=7, cost_usd=0.5
    )
    assert (after.input_tokens, after.output_tokens, after.cache_read_tokens) == (150, 25, 7)
    assert after.total_tokens == 175 and after.estimated_cost_usd == pytest.approx(0.75)


def test_a_late_message_closes_the_idle_session_and_starts_a_new_one(
    store: SessionStore, led: Ledger, clock: ManualClock
) -> None:
    old = store.get_or_create_session(DM)
    store.append_to_transcript(old.session_id, {"role": "user", "content": "hi"})
    clock.advance(minutes=29)
    assert store.get_or_create_session(DM).session_id == old.session_id  # not yet
    store.append_to_transcript(old.session_id, {"role": "user", "content": "still here"})
    clock.advance(minutes=31)
    new = store.get_or_create_session(DM)
    assert new.session_id != old.session_id and new.session_key == old.session_key
    assert new.was_auto_reset and new.auto_reset_reason == "idle"
    assert types_of(led, old.session_id)[-3:] == [
        "session_expired",
        "memory_flush_skipped",
        "session_ended",
    ]
    expired = led.query(
        "SELECT json_extract(data, '$.deadline'), json_extract(data, '$.reason') FROM events"
        " WHERE type = 'session_expired'"
    )
    assert expired == [("2026-11-22T09:59:00Z", "idle")]  # last activity 09:29 + 30 min
    ended = led.query(
        "SELECT json_extract(data, '$.reason') FROM events WHERE type = 'session_ended'"
    )
    assert ended == [("auto_reset",)]
    with pytest.raises(SessionClosedError, match="has ended"):
        store.append_to_transcript(old.session_id, {"role": "user", "content": "too late"})


def test_manual_reset_rotates_only_the_session_id(store: SessionStore, led: Ledger) -> None:
    old = store.get_or_create_session(GROUP)
    new = store.reset_session(old.session_key, trigger="/reset")
    assert new.session_key == old.session_key and new.session_id != old.session_id
    assert not new.was_auto_reset
    assert types_of(led, old.session_id)[1:] == [
        "session_reset",
        "memory_flush_skipped",
        "session_ended",
    ]
    trigger = led.query(
        "SELECT json_extract(data, '$.trigger') FROM events WHERE type = 'session_reset'"
    )
    assert trigger == [("/reset",)]
    forced = store.get_or_create_session(GROUP, force_new=True)
    assert forced.session_id != new.session_id
    with pytest.raises(UnknownSessionError):
        store.reset_session("agent:main:nowhere:dm:1")


def test_mode_none_never_expires(led: Ledger, clock: ManualClock) -> None:
    store = SessionStore(led, clock=clock)  # defaults: reset mode none, like Hermes
    first = store.get_or_create_session(DM)
    clock.advance(days=400)
    assert store.get_or_create_session(DM).session_id == first.session_id


def test_listing_and_lookup(store: SessionStore, clock: ManualClock) -> None:
    a = store.get_or_create_session(DM)
    clock.advance(minutes=10)
    b = store.get_or_create_session(GROUP)
    assert [e.session_id for e in store.list_sessions()] == [b.session_id, a.session_id]
    assert [e.session_id for e in store.list_sessions(active_minutes=5)] == [b.session_id]
    found = store.lookup_by_session_id(a.session_id)
    assert found is not None and found.session_key == a.session_key
    assert store.lookup_by_session_id("missing") is None


def test_api_callers_bring_their_own_key_and_ids(store: SessionStore, led: Ledger) -> None:
    key = "agent:main:api_server:dm:customer-42"
    first = store.open_api_session(key)
    assert store.open_api_session(key).session_id == first.session_id
    assert store.open_api_session(key, first.session_id).session_id == first.session_id
    switched = store.open_api_session(key, "conv-2")
    assert switched.session_id == "conv-2" and switched.session_key == key
    assert led.query(
        "SELECT json_extract(data, '$.reason') FROM events WHERE type = 'session_ended'"
    ) == [("resume_switch",)]
    with pytest.raises(SessionClosedError, match="already belongs"):
        store.open_api_session(key, first.session_id)
    rotated = store.reset_session(key)  # /new rotates only the id
    assert rotated.session_key == key and rotated.session_id != "conv-2"
    with pytest.raises(LedgerError, match="looks like a path"):
        store.open_api_session(key, "../../etc/passwd")


class RecordingFlusher:
    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.calls: list[tuple[FlushContext, list[dict[str, Any]]]] = []
        self.fail = fail
        self.delay = delay

    def __call__(self, context: FlushContext, transcript: Sequence[dict[str, Any]]) -> str:
        self.calls.append((context, list(transcript)))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("memory provider is down")
        return f"saved {len(transcript)} messages"


def test_the_flusher_gets_the_transcript_before_the_close(led: Ledger, clock: ManualClock) -> None:
    flusher = RecordingFlusher()
    store = SessionStore(led, IDLE_30, clock, flusher=flusher)
    entry = store.get_or_create_session(DM)
    store.append_to_transcript(entry.session_id, {"role": "user", "content": "remember me"})
    store.append_to_transcript(
        entry.session_id, {"role": "user", "content": "x", "synthetic": True}
    )
    store.reset_session(entry.session_key)
    [(context, transcript)] = flusher.calls
    assert (context.session_id, context.session_key, context.reason) == (
        entry.session_id,
        entry.session_key,
        "manual_reset",
    )
    assert (context.platform, context.user_id) == ("telegram", "7")
    assert [m["content"] for m in transcript] == ["remember me"]
    outcome = led.query(
        "SELECT json_extract(data, '$.detail') FROM event_bodies WHERE type = 'memory_flushed'"
    )
    assert outcome == [("saved 1 messages",)]


def test_a_failing_or_hung_flusher_is_recorded_and_the_close_proceeds(
    led: Ledger, clock: ManualClock
) -> None:
    store = SessionStore(led, IDLE_30, clock, flusher=RecordingFlusher(fail=True))
    entry = store.get_or_create_session(DM)
    store.reset_session(entry.session_key)
    slow = SessionStore(led, IDLE_30, clock, flusher=RecordingFlusher(delay=2), flush_timeout=0.1)
    other = slow.get_or_create_session(GROUP)
    slow.reset_session(other.session_key)
    errors = led.query(
        "SELECT session_id, json_extract(data, '$.error') FROM event_bodies"
        " WHERE type = 'memory_flush_failed' ORDER BY position"
    )
    assert errors == [
        (entry.session_id, "RuntimeError: memory provider is down"),
        (other.session_id, "timed out after 0.1s"),
    ]
    assert set(types_of(led, other.session_id)) >= {"session_ended"}


def test_threads_on_distinct_keys_never_write_into_each_other(
    led: Ledger, clock: ManualClock
) -> None:
    store = SessionStore(led, IDLE_30, clock)
    errors: list[BaseException] = []

    def chat(n: int) -> None:
        try:
            source = SessionSource(
                platform="slack", chat_id=f"c{n}", chat_type="group", user_id="u"
            )
            for i in range(10):
                entry = store.get_or_create_session(source)
                store.append_to_transcript(
                    entry.session_id, {"role": "user", "content": f"{n}:{i}"}
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for n in range(32):
        key = f"agent:main:slack:group:c{n}:u"
        entry = store.get_session(key)
        assert entry is not None
        contents = [m["content"] for m in store.load_transcript(entry.session_id)]
        assert contents == [f"{n}:{i}" for i in range(10)]
        streams = led.query(
            "SELECT DISTINCT stream FROM events WHERE session_id = ?", (entry.session_id,)
        )
        assert streams == [(key,)]


RACER = """
import sys, time
from datetime import datetime, UTC
from pathlib import Path
from hermes_ledger.ledger import Ledger
from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.sessions.store import SessionStore
db, go = sys.argv[1], Path(sys.argv[2])
later = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
with Ledger.open(db) as led:
    config = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
    store = SessionStore(led, config, lambda: later)
    source = SessionSource(platform="telegram", chat_id="99", chat_type="dm")
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    print(store.get_or_create_session(source).session_id)
"""


def test_two_processes_racing_on_an_expired_key_start_one_session(
    db_path: Path, tmp_path: Path, clock: ManualClock
) -> None:
    with Ledger.open(db_path, clock=clock) as led:
        old = SessionStore(led, IDLE_30, clock).get_or_create_session(DM)
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(db_path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for racer in racers:  # wait until each one is at the barrier
            assert next_line(racer) == "ready\n"
    finally:
        go.touch()  # (releasing the others too if one failed)
    results = [r.communicate(timeout=60) for r in racers]
    assert all(r.returncode == 0 for r in racers), results
    ids = {out.strip() for out, _ in results}
    assert len(ids) == 1 and old.session_id not in ids
    with Ledger.open(db_path) as led:
        counts = led.query("SELECT type, count(*) FROM events GROUP BY type ORDER BY type")
        assert counts == [
            ("memory_flush_skipped", 1),
            ("session_ended", 1),
            ("session_expired", 1),
            ("session_started", 2),
        ]


def test_the_projections_the_store_reads_equal_a_replay(
    store: SessionStore, led: Ledger, clock: ManualClock
) -> None:
    from hermes_ledger import projections

    for n in range(5):
        src = SessionSource(platform="slack", chat_id=f"c{n}", chat_type="channel", user_id="u")
        entry = store.get_or_create_session(src)
        store.append_to_transcript(entry.session_id, {"role": "user", "content": f"m{n}"})
        store.update_session(entry.session_key, input_tokens=n, output_tokens=1)
        clock.advance(minutes=20)
    store.get_or_create_session(
        SessionSource(platform="slack", chat_id="c0", chat_type="channel", user_id="u")
    )
    store.reset_session("agent:main:slack:channel:c1:u")
    report = projections.verify(led)
    assert report.ok, report
