"""Projections: inline maintenance, rebuild, verify, state_at, catch-up and versions.

The tests that take ``log`` (projections attached) or ``backend`` run on both
backends (tests/backends.py): the SQLite projections and projections/postgres,
through the functions both have (``p``: ``backend.projections``) and the tables'
SQL; those that take ``led`` are about the SQLite projections' own machinery
(FTS5, chunked replays, leases, sqlite_schema, read-only files)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from backends import Backend, Projections

from hermes_ledger import projections
from hermes_ledger.ledger import EventLog, Ledger
from hermes_ledger.ledger.chain import row_hash
from hermes_ledger.ledger.events import (
    MemoryFlushed,
    MemoryFlushFailed,
    MessageAppended,
    SessionEnded,
    SessionExpired,
    SessionReset,
    SessionStarted,
    Source,
    UsageRecorded,
)
from hermes_ledger.projections import definitions

KEY = "agent:main:telegram:dm:99"
OTHER = "agent:main:discord:group:42:7"
SOURCE = Source(platform="telegram", chat_id="99", user_id="u1", user_name="Ann")
GROUP = Source(platform="discord", chat_type="group", chat_id="42", chat_name="Dev", user_id="7")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def led(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.db", clock=clock) as ledger:
        projections.attach(ledger)
        yield ledger


@pytest.fixture
def log(backend: Backend) -> Iterator[EventLog]:
    """A log of either backend with its projections attached (on the ``clock`` above)."""
    with backend.open(projections=True) as opened:
        yield opened


@pytest.fixture
def p(backend: Backend) -> Projections:
    return backend.projections


def rows(led: EventLog, sql: str, *args: object) -> list[tuple[object, ...]]:
    """The rows of ``sql`` (``?`` placeholders) over the log's own connection."""
    if isinstance(led, Ledger):
        return list(led.connection.execute(sql, args))
    cur = led.connection.execute(sql.replace("?", "%s"), args)  # type: ignore[attr-defined]
    return [tuple(row) for row in cur.fetchall()] if cur.description else []


def one(led: EventLog, sql: str, *args: object) -> object:
    return rows(led, sql, *args)[0][0]


def close(led: EventLog, key: str, session_id: str, *, flush_ok: bool = True) -> None:
    flush = (
        MemoryFlushed(session_id=session_id, provider="honcho", detail="3 facts")
        if flush_ok
        else MemoryFlushFailed(session_id=session_id, provider="honcho", error="timeout")
    )
    led.append(
        key,
        [
            SessionReset(session_id=session_id, trigger="/new"),
            flush,
            SessionEnded(session_id=session_id, reason="manual_reset"),
        ],
    )


def conversation(led: EventLog, clock: Clock) -> None:
    """Two keys; the first resets once (s1 -> s2); a synthetic flush turn; usage."""
    led.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    clock.tick(seconds=5)
    led.append(KEY, [MessageAppended(session_id="s1", role="user", content="hello brave world")])
    clock.tick(seconds=5)
    led.append(
        KEY,
        [
            MessageAppended(
                session_id="s1",
                role="assistant",
                content=None,
                tool_calls=[{"id": "c1", "function": {"name": "search", "arguments": "{}"}}],
                output_tokens=12,
            ),
            MessageAppended(
                session_id="s1",
                role="tool",
                content="found 3 results",
                tool_name="search",
                tool_call_id="c1",
            ),
            UsageRecorded(session_id="s1", input_tokens=100, output_tokens=20, cost_usd=0.1),
            UsageRecorded(session_id="s1", input_tokens=50, cache_read_tokens=7, cost_usd=0.2),
        ],
    )
    led.append(OTHER, [SessionStarted(session_id="g1", source=GROUP)])
    led.append(OTHER, [MessageAppended(session_id="g1", role="user", content="group hello")])
    clock.tick(minutes=1)
    led.append(
        KEY,
        [MessageAppended(session_id="s1", role="user", content="remember me", synthetic=True)],
    )
    close(led, KEY, "s1")
    clock.tick(minutes=1)
    led.append(
        KEY,
        [
            SessionStarted(
                session_id="s2", source=SOURCE, reason="manual_reset", previous_session_id="s1"
            )
        ],
    )
    led.append(KEY, [MessageAppended(session_id="s2", role="user", content="fresh start")])


# -- what the live tables hold ----------------------------------------------------


def test_session_map_follows_the_current_session(
    log: EventLog, p: Projections, clock: Clock
) -> None:
    conversation(log, clock)
    state = p.live_state(log)
    row = state.session_map[KEY]
    assert row["session_id"] == "s2"
    assert row["status"] == "open"
    assert row["start_reason"] == "manual_reset"
    assert (row["platform"], row["chat_type"], row["chat_id"], row["user_id"]) == (
        "telegram",
        "dm",
        "99",
        "u1",
    )
    assert row["display_name"] == "Ann"
    assert json.loads(row["origin"])["user_name"] == "Ann"
    assert row["created_at"] == "2026-11-22T09:00:00.000000Z"
    assert row["updated_at"] == "2026-11-22T09:02:10.000000Z"
    assert row["message_count"] == 1  # of the current session s2
    assert state.session_map[OTHER]["display_name"] == "Dev"


def test_status_goes_open_closing_closed(log: EventLog, p: Projections) -> None:
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    status = "SELECT status FROM session_map WHERE session_key = ?"
    assert one(log, status, KEY) == "open"
    log.append(KEY, [SessionExpired(
        session_id="s1", reason="idle",
        deadline=datetime(2026, 11, 22, 9, 30, tzinfo=UTC),
        evaluated_at=datetime(2026, 11, 22, 9, 31, tzinfo=UTC),
    )])  # fmt: skip
    assert one(log, status, KEY) == "closing"
    log.append(KEY, [MemoryFlushFailed(session_id="s1", provider="honcho", error="timeout")])
    assert one(log, status, KEY) == "closing"
    log.append(KEY, [SessionEnded(session_id="s1", reason="idle_expiry")])
    assert one(log, status, KEY) == "closed"
    history = p.live_state(log).session_history["s1"]
    assert history["close_cause"] == "expired"
    assert history["close_detail"] == "idle"
    assert history["close_deadline"] == "2026-11-22T09:30:00.000000Z"
    assert (history["flush_status"], history["flush_attempts"]) == ("failed", 1)
    assert history["flush_detail"] == "timeout"
    assert (history["end_reason"], history["ended_at"] is not None) == ("idle_expiry", True)


def test_session_history_counts_messages_and_usage(
    log: EventLog, p: Projections, clock: Clock
) -> None:
    conversation(log, clock)
    s1 = p.live_state(log).session_history["s1"]
    assert s1["session_key"] == KEY
    assert s1["message_count"] == 3  # the synthetic flush turn is not counted
    assert (s1["input_tokens"], s1["output_tokens"], s1["cache_read_tokens"]) == (150, 20, 7)
    assert s1["cost_nano_usd"] == 300_000_000  # exact, not 0.30000000000000004
    assert s1["first_message_at"] == "2026-11-22T09:00:05.000000Z"
    assert s1["last_message_at"] == "2026-11-22T09:00:10.000000Z"
    assert (s1["close_cause"], s1["close_detail"], s1["flush_status"]) == ("reset", "/new", "ok")
    assert s1["end_reason"] == "manual_reset"
    s2 = p.live_state(log).session_history["s2"]
    assert (s2["previous_session_id"], s2["start_reason"]) == ("s1", "manual_reset")


def test_messages_keep_tool_fields_and_skip_synthetic_turns(
    log: EventLog, p: Projections, clock: Clock
) -> None:
    conversation(log, clock)
    transcript = p.live_state(log).transcripts["s1"]
    assert [(m["role"], m["content"]) for m in transcript] == [
        ("user", "hello brave world"),
        ("assistant", None),
        ("tool", "found 3 results"),
    ]
    assert json.loads(transcript[1]["tool_calls"])[0]["function"]["name"] == "search"
    assert transcript[1]["output_tokens"] == 12
    assert (transcript[2]["tool_name"], transcript[2]["tool_call_id"]) == ("search", "c1")
    assert [m["position"] for m in transcript] == sorted(m["position"] for m in transcript)


def search(log: EventLog, word: str) -> list[tuple[object, ...]]:
    """(session_id, content) of the messages the full-text index finds ``word`` in:
    SQLite's messages_fts, PostgreSQL's search_messages."""
    if isinstance(log, Ledger):
        sql = (
            "SELECT m.session_id, m.content FROM messages_fts JOIN messages AS m"
            " ON m.position = messages_fts.rowid WHERE messages_fts MATCH ?"
        )
        return rows(log, sql, word)
    from hermes_ledger.projections.postgres import search_messages

    found = search_messages(log, word)  # type: ignore[arg-type]
    content = "SELECT content FROM messages WHERE position = ?"
    return [(hit.session_id, one(log, content, hit.position)) for hit in found]


def test_full_text_search_reads_your_writes(log: EventLog) -> None:
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    log.append(KEY, [MessageAppended(session_id="s1", role="user", content="Café déjà vu")])
    assert search(log, "cafe") == [("s1", "Café déjà vu")]
    assert search(log, "deja") == [("s1", "Café déjà vu")]
    log.append(KEY, [MessageAppended(session_id="s1", role="user", content="x", synthetic=True)])
    assert search(log, "x") == []


def test_occurred_at_is_the_business_time_in_utc(log: EventLog, p: Projections) -> None:
    plus_two = timezone(timedelta(hours=2))
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    log.append(KEY, [MessageAppended(
        session_id="s1", role="user", content="late",
        occurred_at=datetime(2026, 11, 21, 23, 59, 59, 123456, tzinfo=plus_two),
    )])  # fmt: skip
    log.append(KEY, [MessageAppended(
        session_id="s1", role="user", content="round",
        occurred_at=datetime(2026, 11, 21, 12, 0, tzinfo=UTC),
    )])  # fmt: skip
    assert [m["ts"] for m in p.live_state(log).transcripts["s1"]] == [
        "2026-11-21T21:59:59.123456Z",
        "2026-11-21T12:00:00.000000Z",
    ]
    history = p.live_state(log).session_history["s1"]
    assert history["first_message_at"] == "2026-11-21T12:00:00.000000Z"
    assert history["last_message_at"] == "2026-11-21T21:59:59.123456Z"
    assert p.verify(log).ok


def test_each_append_advances_both_checkpoints(log: EventLog, p: Projections, clock: Clock) -> None:
    conversation(log, clock)
    checkpoints = dict(rows(log, "SELECT name, position FROM projection_checkpoints"))
    assert checkpoints == {"sessions": log.head(), "transcripts": log.head()}


BOOM = {
    "sqlite": [
        "CREATE TRIGGER boom BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'boom'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'boom'; END$$",
        "CREATE TRIGGER boom BEFORE INSERT ON messages EXECUTE FUNCTION boom()",
    ],
}
"""A trigger that fails every insert into ``messages``."""


def test_a_failing_projection_rolls_the_append_back(log: EventLog, backend: Backend) -> None:
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    for statement in BOOM[backend.name]:
        backend.raw(statement)
    with pytest.raises(Exception, match="boom"):
        log.append(KEY, [MessageAppended(session_id="s1", role="user", content="hi")])
    assert log.head() == 1
    assert one(log, "SELECT position FROM projection_checkpoints WHERE name = 'sessions'") == 1


# -- rebuild ------------------------------------------------------------------------


def test_rebuild_reproduces_the_live_tables(
    log: EventLog, p: Projections, backend: Backend, clock: Clock
) -> None:
    conversation(log, clock)
    before = p.live_state(log)
    seen: list[tuple[int, int]] = []
    chunked = {"chunk_size": 3, "progress": lambda d, t: seen.append((d, t))}
    report = p.rebuild(log, **(chunked if backend.name == "sqlite" else {}))
    assert p.live_state(log) == before
    assert report.position == log.head() == report.events
    if backend.name == "sqlite":  # the SQLite rebuild goes in chunks, and says so
        assert seen[0] == (0, log.head()) and seen[-1] == (log.head(), log.head())
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert p.verify(log).ok


def test_rebuild_swaps_in_fresh_tables_with_indexes_and_views(led: Ledger, clock: Clock) -> None:
    conversation(led, clock)
    led.connection.execute("UPDATE session_history SET message_count = 99")
    projections.rebuild(led, chunk_size=2)
    assert one(led, "SELECT message_count FROM session_history WHERE session_id = 's1'") == 3
    names = {name for (name,) in rows(led, "SELECT name FROM sqlite_schema")}
    assert {"messages_by_session", "session_map_by_session_id", "session_closes"} <= names
    assert not {n for n in names if "__next" in n}
    assert rows(led, "SELECT * FROM projection_rebuild") == []
    # appends after a swap keep the swapped-in tables current
    led.append(KEY, [MessageAppended(session_id="s2", role="user", content="after the swap")])
    assert projections.verify(led).ok


def test_a_ledger_of_sessions_v1_loses_next_deadline_on_attach(
    tmp_path: Path, clock: Clock
) -> None:
    """Sessions v1 had session_map.next_deadline, written by the scheduler; v2 is
    purely derived from the log: attaching rebuilds the old tables without it."""
    path = tmp_path / "ledger.db"
    with Ledger.open(path, clock=clock) as led:
        projections.attach(led)
        conversation(led, clock)
        before = projections.live_state(led)
        conn = led.connection
        conn.execute("ALTER TABLE session_map ADD COLUMN next_deadline TEXT")
        conn.execute("CREATE INDEX session_map_by_next_deadline ON session_map (next_deadline)")
        conn.execute("UPDATE session_map SET next_deadline = '2026-11-23T04:00:00.000000Z'")
        conn.execute("UPDATE projection_checkpoints SET version = 1 WHERE name = 'sessions'")
    with Ledger.open(path, clock=clock) as led:
        assert projections.attach(led).rebuilt == ("sessions",)
        columns = {r[1] for r in rows(led, "SELECT * FROM pragma_table_info('session_map')")}
        assert "next_deadline" not in columns
        assert one(led, "SELECT count(*) FROM sqlite_schema WHERE name LIKE '%next_deadline'") == 0
        assert projections.live_state(led) == before
        assert projections.verify(led).ok


def test_rebuild_of_an_empty_ledger(backend: Backend, p: Projections) -> None:
    with backend.open() as led:
        report = p.rebuild(led)
        assert (report.position, report.events) == (0, 0)
        assert p.verify(led).ok


def test_a_second_rebuild_supersedes_the_first(led: Ledger, clock: Clock) -> None:
    conversation(led, clock)
    before = projections.live_state(led)
    started = []

    def progress(done: int, total: int) -> None:
        if done and not started:
            started.append(done)
            projections.rebuild(led, chunk_size=100)  # starts (and finishes) meanwhile

    with pytest.raises(projections.RebuildSuperseded):
        projections.rebuild(led, chunk_size=2, progress=progress)
    assert projections.live_state(led) == before
    assert projections.verify(led).ok


# -- verify -------------------------------------------------------------------------


def test_verify_reports_every_difference_precisely(
    log: EventLog, p: Projections, backend: Backend, clock: Clock
) -> None:
    conversation(log, clock)
    rows(log, "UPDATE session_history SET message_count = 7 WHERE session_id = 's1'")
    rows(log, "UPDATE session_map SET status = 'closed' WHERE session_key = ?", KEY)
    rows(log, "DELETE FROM messages WHERE content = 'group hello'")
    if backend.name == "sqlite":  # the FTS5 index is checked too (PostgreSQL's is a column)
        rows(log, "INSERT INTO messages_fts (rowid, content) VALUES (999, 'phantom')")
    report = p.verify(log)
    assert not report.ok
    found = {(d.table, d.kind, d.key, d.column, repr(d.live), repr(d.rebuilt))
             for d in report.differences}  # fmt: skip
    assert ("session_history", "changed", "s1", "message_count", "7", "3") in found
    assert ("session_map", "changed", KEY, "status", "'closed'", "'open'") in found
    phantom = {"documents": 1, "occurrences": 1}
    if backend.name == "sqlite":
        assert ("messages_fts", "extra", "phantom", None, repr(phantom), "None") in found
    missing = [d for d in report.differences if d.kind == "missing" and d.table == "messages"]
    assert len(missing) == 1 and missing[0].rebuilt["content"] == "group hello"
    text = str(report)
    assert "session_history['s1'].message_count: live 7, rebuilt 3" in text
    assert "messages[" in text and "missing from the live table" in text


def test_verify_says_when_projections_are_not_attached(backend: Backend, p: Projections) -> None:
    with backend.open() as led:
        led.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
        report = p.verify(led)
        assert not report.ok
        assert {d.kind for d in report.differences} == {"projection"}
        assert "not attached" in str(report)


# -- state as of --------------------------------------------------------------------


def test_state_at_positions_matches_the_live_tables_then(
    log: EventLog, p: Projections, clock: Clock
) -> None:
    conversation(log, clock)
    snapshots = {}
    for n in range(3):
        log.append(KEY, [MessageAppended(session_id="s2", role="user", content=f"m{n}")])
        snapshots[log.head()] = p.live_state(log)
    for position, then in snapshots.items():
        assert p.state_at(log, position=position) == then
    assert p.state_at(log) == p.live_state(log)
    assert p.state_at(log, position=10**9).position == log.head()
    empty = p.state_at(log, position=0)
    assert (empty.session_map, empty.session_history, empty.transcripts) == ({}, {}, {})


def test_state_at_a_time_stops_at_the_first_event_recorded_later(
    log: EventLog, p: Projections, clock: Clock
) -> None:
    conversation(log, clock)  # ends at 09:02:10
    before_reset = p.state_at(log, time=datetime(2026, 11, 22, 9, 1, tzinfo=UTC))
    assert before_reset.session_map[KEY]["session_id"] == "s1"
    assert before_reset.session_map[KEY]["status"] == "open"
    assert "s2" not in before_reset.session_history
    at_end = p.state_at(log, time="2026-11-22T09:02:10.000000Z")
    assert at_end == p.live_state(log)
    assert p.state_at(log, time=datetime(2000, 1, 1, tzinfo=UTC)).position == 0
    with pytest.raises(ValueError, match="aware"):
        p.state_at(log, time=datetime(2026, 11, 22, 9, 0))
    with pytest.raises(ValueError, match="not both"):
        p.state_at(log, position=1, time=datetime(2026, 11, 22, tzinfo=UTC))


def test_state_at_and_verify_work_on_a_read_only_ledger(
    led: Ledger, clock: Clock, tmp_path: Path
) -> None:
    conversation(led, clock)
    live = projections.live_state(led)
    with Ledger.open(tmp_path / "ledger.db", readonly=True) as ro:
        assert projections.state_at(ro) == live
        assert projections.verify(ro).ok
        with pytest.raises(projections.ProjectionError, match="read-only"):
            projections.attach(ro)


# -- catching up, versions, several processes ----------------------------------------


def test_a_lagging_projection_catches_up_when_attached(backend: Backend, p: Projections) -> None:
    with backend.open(projections=True) as led:
        led.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    with backend.open() as bare:  # an old process: no projections
        for n in range(5):
            bare.append(KEY, [MessageAppended(session_id="s1", role="user", content=f"m{n}")])
    with backend.open() as led:
        report = p.attach(led, **({"chunk_size": 2} if backend.name == "sqlite" else {}))
        assert report.caught_up == {"sessions": 5, "transcripts": 5}
        assert report.rebuilt == ()
        assert one(led, "SELECT count(*) FROM messages") == 5
        assert p.verify(led).ok


def test_an_append_behind_the_checkpoint_is_caught_up_inline(
    backend: Backend, p: Projections
) -> None:
    with backend.open() as led, backend.open() as bare:
        p.attach(led)
        led.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
        bare.append(KEY, [MessageAppended(session_id="s1", role="user", content="unprojected")])
        led.append(KEY, [MessageAppended(session_id="s1", role="user", content="projected")])
        assert [r[0] for r in rows(led, "SELECT content FROM messages ORDER BY position")] == [
            "unprojected",
            "projected",
        ]
        assert p.verify(led).ok


DROP_TRANSCRIPTS = {
    "sqlite": ["DROP TABLE messages_fts", "DROP TABLE messages"],
    "postgresql": ["DROP TABLE messages"],  # its search index is a column of it
}


def test_a_projection_added_in_a_newer_version_is_built_on_attach(
    backend: Backend, p: Projections, clock: Clock
) -> None:
    with backend.open(projections=True) as led:
        conversation(led, clock)
    for statement in DROP_TRANSCRIPTS[backend.name]:
        backend.raw(statement)
    backend.raw("DELETE FROM projection_checkpoints WHERE name = 'transcripts'")
    with backend.open() as led:
        report = p.attach(led)
        assert report.rebuilt == ("transcripts",)
        assert len(p.live_state(led).transcripts["s1"]) == 3
        assert p.verify(led).ok


def test_an_older_schema_version_is_rebuilt_and_a_newer_one_left_alone(
    backend: Backend, p: Projections, clock: Clock
) -> None:
    with backend.open(projections=True) as led:
        conversation(led, clock)
    bumped = dataclasses.replace(definitions.SESSIONS, version=definitions.SESSIONS.version + 1)
    newer = (bumped, definitions.TRANSCRIPTS)
    with backend.open() as led:
        report = p.attach(led, projections=newer)
        assert report.rebuilt == ("sessions",)
        assert one(led, "SELECT version FROM projection_checkpoints WHERE name = 'sessions'") == (
            bumped.version
        )
        assert p.verify(led, projections=newer).ok
    with backend.open() as led:  # the code's version: the tables are newer
        report = p.attach(led)
        assert report.skipped == ("sessions",)
        head = led.head()
        led.append(KEY, [MessageAppended(session_id="s2", role="user", content="old code")])
        checkpoints = dict(rows(led, "SELECT name, position FROM projection_checkpoints"))
        assert checkpoints == {"sessions": head, "transcripts": head + 1}


def test_attach_is_idempotent(log: EventLog, p: Projections) -> None:
    assert p.attach(log).already_attached
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    log.append(KEY, [MessageAppended(session_id="s1", role="user", content="once")])
    assert one(log, "SELECT message_count FROM session_history") == 1


def test_open_ledger_attaches(tmp_path: Path) -> None:
    with projections.open_ledger(tmp_path / "l.db") as led:
        led.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
        assert one(led, "SELECT session_id FROM session_map") == "s1"


INSERT_EVENT = {
    "sqlite": "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
    "postgresql": "INSERT INTO events (position, event_id, stream, version, type, session_id,"
    " data, meta, recorded_at, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
}
"""A row written raw, past ``append`` (its hash computed by the test)."""


def test_old_event_shapes_are_upcast(log: EventLog, p: Projections, backend: Backend) -> None:
    """A usage_recorded stored in schema v1 (prompt/completion tokens) counts as v2."""
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])

    def insert_v1(conn: object) -> None:
        position, previous = log.head_row()
        data = json.dumps({"occurred_at": None, "session_id": "s1", "prompt_tokens": 11,
                           "completion_tokens": 4, "cache_read_tokens": 0,
                           "cache_write_tokens": 0, "cost_usd": None, "model": None})  # fmt: skip
        values = (position + 1, "legacy-1", KEY, 2, "usage_recorded", "s1", data,
                  '{"schema_version":1}', "2026-11-22T09:00:01.000000Z")  # fmt: skip
        conn.execute(  # type: ignore[attr-defined]
            INSERT_EVENT[backend.name], (*values, row_hash(str(previous), *values))
        )

    if isinstance(log, Ledger):
        log.write(insert_v1)  # written raw: the next projected append catches it up
    else:
        insert_v1(log.connection)  # type: ignore[attr-defined]
    log.append(KEY, [UsageRecorded(session_id="s1", input_tokens=1, output_tokens=1)])
    history = p.live_state(log).session_history["s1"]
    assert (history["input_tokens"], history["output_tokens"]) == (12, 5)
    assert p.verify(log).ok
    p.rebuild(log)
    assert p.live_state(log).session_history["s1"]["input_tokens"] == 12


def test_attach_waits_for_a_rebuild_another_process_took_over(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, clock=clock) as bare:  # written before projections existed
        conversation(bare, clock)
    with Ledger.open(path, clock=clock) as led, Ledger.open(path, clock=clock) as other:
        took_over: list[int] = []

        def progress(done: int, total: int) -> None:
            if done and not took_over:  # between two chunks, another process rebuilds
                took_over.append(projections.rebuild(other, chunk_size=100).position)

        report = projections.attach(led, chunk_size=2, progress=progress)
        assert took_over and report.rebuilt == ("sessions", "transcripts")
        assert projections.verify(led).ok
        assert rows(led, "SELECT * FROM projection_rebuild") == []


def test_attach_takes_over_a_rebuild_that_stalled(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, clock=clock) as bare:
        conversation(bare, clock)
    with Ledger.open(path, clock=clock) as led, Ledger.open(path, clock=clock) as other:
        stalled: list[bool] = []

        def progress(done: int, total: int) -> None:
            if done and not stalled:  # a rebuild takes the lease over, then dies
                stalled.append(True)
                other.write(lambda c: c.execute("UPDATE projection_rebuild SET token = 'dead'"))

        projections.attach(led, chunk_size=2, progress=progress, stall_timeout=0.2)
        assert stalled
        assert projections.verify(led).ok
        assert rows(led, "SELECT * FROM projection_rebuild") == []


def test_a_projection_taken_over_by_newer_code_is_left_alone_by_appends(
    log: EventLog, p: Projections, backend: Backend
) -> None:
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    log.connection.execute("UPDATE projection_checkpoints SET version = 99 WHERE name = 'sessions'")
    log.append(KEY, [MessageAppended(session_id="s1", role="user", content="hi")])
    checkpoints = dict(rows(log, "SELECT name, position FROM projection_checkpoints"))
    assert checkpoints == {"sessions": 1, "transcripts": 2}
    assert one(log, "SELECT message_count FROM session_history") == 0
    report = p.verify(log)
    assert [d.table for d in report.differences] == ["sessions"]
    built = definitions.SESSIONS.version
    said = {"sqlite": f"schema version 99, this code builds version {built}",
            "postgresql": f"version 99, the code's is {built}"}  # fmt: skip
    assert said[backend.name] in str(report)


def test_verify_reports_missing_tables(led: Ledger) -> None:
    led.connection.execute("DROP TABLE messages_fts")
    report = projections.verify(led)
    assert not report.ok
    assert "tables missing: messages_fts" in str(report)


def test_live_state_needs_live_projections(backend: Backend, p: Projections) -> None:
    with backend.open() as led:
        with pytest.raises(projections.ProjectionError, match="no live projections"):
            p.live_state(led)
        assert p.state_at(led).session_map == {}
