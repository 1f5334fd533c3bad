"""sessions / history / transcript / replay / verify through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from backends import Backend, pg_uri
from click.testing import Result
from helpers import ManualClock
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_support import fresh_database

from hermes_ledger import projections as sqlite_projections
from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import (
    MessageAppended,
    SessionEnded,
    SessionReset,
    SessionStarted,
    Source,
)
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.projections import postgres as pg_projections

IDLE_30 = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
ADA = SessionSource(platform="telegram", chat_id="99", chat_type="dm", user_name="ada")


@pytest.fixture
def history_db(backend: Backend, clock: ManualClock) -> tuple[str, list[str]]:
    """Two sessions on one key (the first auto-reset after 31 idle minutes), on each
    backend (with the projections on PostgreSQL, where the session reads need them)."""
    db = backend.target
    ids: list[str] = []
    with backend.open(projections=backend.name == "postgresql") as led:
        store = SessionStore(led, IDLE_30, clock, session_ids=lambda now: f"s{len(ids) + 1}")
        first = store.get_or_create_session(ADA)
        ids.append(first.session_id)
        store.append_to_transcript(first.session_id, {"role": "user", "content": "hello"})
        call = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
        store.append_to_transcript(
            first.session_id, {"role": "assistant", "content": None, "tool_calls": call}
        )
        store.append_to_transcript(
            first.session_id,
            {"role": "tool", "content": "42", "tool_name": "lookup", "tool_call_id": "c1"},
        )
        clock.advance(minutes=31)
        second = store.get_or_create_session(ADA)
        ids.append(second.session_id)
    return db, ids


def test_sessions_lists_open_sessions(
    history_db: tuple[str, list[str]], cli: Callable[..., Result]
) -> None:
    db, _ = history_db
    result = cli("sessions", "--db", str(db))
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "session_key                session_id  status  updated_at                   message_count",
        "-------------------------  ----------  ------  ---------------------------  -------------",
        "agent:main:telegram:dm:99  s2          open    2026-11-22T09:31:00.000000Z              0",
        "(1 row)",
    ]
    result = cli("sessions", "--db", str(db), "--json", "--all")
    rows = json.loads(result.output)
    assert [(r["session_id"], r["status"]) for r in rows] == [("s2", "open")]


def test_history_shows_every_session_of_a_key(
    history_db: tuple[str, list[str]], cli: Callable[..., Result]
) -> None:
    db, _ = history_db
    result = cli("history", "agent:main:telegram:dm:99", "--db", str(db), "--json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [(r["session_id"], r["end_reason"], r["message_count"]) for r in rows] == [
        ("s1", "auto_reset", 3),
        ("s2", None, 0),
    ]
    result = cli("history", "agent:main:nowhere", "--db", str(db))
    assert result.exit_code == 1
    assert result.output.startswith("Error: no sessions with key 'agent:main:nowhere'\nTry: ")


def test_transcript_prints_messages_in_order(
    history_db: tuple[str, list[str]], cli: Callable[..., Result]
) -> None:
    db, _ = history_db
    result = cli("transcript", "s1", "--db", str(db))
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "2026-11-22T09:00:00.000000Z  user      hello",
        "2026-11-22T09:00:00.000000Z  assistant [calls lookup]",
        "2026-11-22T09:00:00.000000Z  tool      [lookup] 42",
    ]
    result = cli("transcript", "s1", "--db", str(db), "--tz", "Europe/Lisbon")
    assert result.output.splitlines()[0] == "2026-11-22T09:00:00.000000+00:00  user      hello"
    result = cli("transcript", "s1", "--db", str(db), "--tz", "Asia/Tokyo")
    assert result.output.splitlines()[0] == "2026-11-22T18:00:00.000000+09:00  user      hello"
    result = cli("transcript", "nope", "--db", str(db))
    assert result.exit_code == 1 and "Error: no session with id 'nope'" in result.output


def test_replay_rebuilds_and_shows_the_past(
    history_db: tuple[str, list[str]], clock: ManualClock, cli: Callable[..., Result]
) -> None:
    db, _ = history_db
    result = cli("replay", "--db", str(db), "--json")
    assert result.exit_code == 0 and json.loads(result.output)["events"] == 8
    result = cli("replay", "--db", str(db), "--to", "4")
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == "Session map as of position 4 (position 4):"
    assert "agent:main:telegram:dm:99  s1          open" in result.output
    result = cli("replay", "--db", str(db), "--at", "2099-01-01T00:00:00Z", "--json")
    state = json.loads(result.output)
    assert state["position"] == 8 and state["session_map"][0]["session_id"] == "s2"
    result = cli("replay", "--db", str(db), "--at", "soon")
    assert result.exit_code == 2
    assert result.output.startswith("Error: cannot read 'soon' as a time\nTry: give --at ")
    result = cli("replay", "--db", str(db), "--at", "2026-01-01", "--to", "3")
    assert result.exit_code == 2


def test_verify_passes_then_names_the_tampered_row(
    history_db: tuple[str, list[str]], backend: Backend, cli: Callable[..., Result]
) -> None:
    db, _ = history_db
    result = cli("verify", "--db", str(db))
    assert result.exit_code == 0
    assert (
        result.output.splitlines()[0]
        == "hash chain: ok: 8 events, hash chain intact up to position 8"
    )
    assert result.output.splitlines()[1].startswith("projections: ok")
    backend.tamper("UPDATE events SET stream = stream || ':forged' WHERE position = 2")
    result = cli("verify", "--db", str(db), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["first_bad_position"] == 2 and not report["chain_ok"]


def test_read_commands_on_a_missing_ledger_say_what_to_do(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    for command in (["sessions"], ["history", "k"], ["transcript", "s"], ["verify"], ["replay"]):
        result = cli(*command, "--db", str(tmp_path / "none.db"))
        assert result.exit_code == 1, command
        assert result.output.startswith(
            f"Error: there is no ledger at {tmp_path / 'none.db'}\nTry: "
        )
    assert not (tmp_path / "none.db").exists()


def test_replay_at_reads_business_or_recorded_time(
    backend: Backend, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    """An import recorded today of what happened days ago: --at replays what had
    happened by then (in log order), --recorded what the log held by then; the same
    on both backends."""
    tg = Source(platform="telegram", chat_id="1", user_id="u1")
    dc = Source(platform="discord", chat_id="2", user_id="u2")
    days_ago = clock.now - timedelta(days=2)
    with backend.open(projections=backend.name == "postgresql") as log:
        log.append(
            "k1", [SessionStarted(session_id="s1", source=tg, occurred_at=days_ago)]
        )  # position 1, happened on the 20th
        log.append("k1", [MessageAppended(session_id="s1", role="user", content="hi",
                                          occurred_at=days_ago + timedelta(days=1))])  # fmt: skip
        clock.advance(hours=1)
        log.append(
            "k2",
            [SessionStarted(session_id="s2", source=dc, occurred_at=days_ago - timedelta(days=1))],
        )  # position 3, recorded an hour later, happened on the 19th

    def state(*args: str) -> tuple[int, list[tuple[str, int]]]:
        result = cli("replay", "--db", backend.target, "--json", *args)
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        return doc["position"], [(r["session_id"], r["message_count"]) for r in doc["session_map"]]

    assert state("--at", "2026-11-19T12:00Z") == (3, [("s2", 0)])
    assert state("--at", "2026-11-20T12:00Z") == (3, [("s1", 0), ("s2", 0)])
    assert state("--at", "2026-11-21T12:00Z") == (3, [("s1", 1), ("s2", 0)])
    assert state("--at", "2026-11-01") == (0, [])
    assert state("--at", "2026-11-22T09:30Z", "--recorded") == (2, [("s1", 1)])
    assert state("--at", "2026-11-22T08:00Z", "--recorded") == (0, [])
    assert state("--at", "2099-01-01", "--recorded") == (3, [("s1", 1), ("s2", 0)])
    result = cli("replay", "--db", backend.target, "--at", "2026-11-20T12:00Z")
    assert result.output.splitlines()[0] == (
        "Session map as of business time 2026-11-20T12:00:00.000000Z (position 3):"
    )


@pytest.fixture(scope="module")
def shuffled_times(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The same 60 events in a SQLite file and a PostgreSQL database: three keys, a
    close, and business times out of log order (an import of older traffic between
    live events)."""
    from random import Random

    rng = Random(14)
    events: list[tuple[str, Any]] = []
    base = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    for k in range(3):
        source = Source(platform="telegram", chat_id=str(k), user_id=f"u{k}")
        start = SessionStarted(session_id=f"s{k}", source=source,
                               occurred_at=base + timedelta(minutes=k))  # fmt: skip
        events.append((f"k{k}", start))
    for i in range(55):
        k = rng.randrange(3)
        when = base + timedelta(minutes=rng.randrange(5, 600))
        message = MessageAppended(session_id=f"s{k}", role="user", content=f"m{i}",
                                  occurred_at=when if rng.random() < 0.7 else None)  # fmt: skip
        events.append((f"k{k}", message))
    events += [("k1", SessionReset(session_id="s1", trigger="/new")),
               ("k1", SessionEnded(session_id="s1", reason="manual_reset"))]  # fmt: skip
    path = tmp_path_factory.mktemp("times") / "ledger.db"
    clock = ManualClock()
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        with Ledger.open(path, clock=clock) as led, PostgresLog.open(uri, clock=clock) as log:
            for stream, event in events:
                led.append(stream, [event])
                log.append(stream, [event])
                clock.advance(seconds=30)
        yield path, uri


@settings(max_examples=25, deadline=None)
@given(
    minutes=st.integers(min_value=-60, max_value=3 * 24 * 60 + 120),
    recorded=st.booleans(),
)
def test_state_at_a_time_is_the_same_on_both_backends(
    shuffled_times: tuple[Path, str], minutes: int, recorded: bool
) -> None:
    path, uri = shuffled_times
    at = datetime(2026, 11, 20, 8, 0, tzinfo=UTC) + timedelta(minutes=minutes)
    with Ledger.open(path, readonly=True) as led:
        expected = sqlite_projections.state_at(led, time=at, recorded=recorded)
    with PostgresLog.open(uri) as log:
        found = pg_projections.state_at(log, time=at, recorded=recorded)
    assert found == expected
