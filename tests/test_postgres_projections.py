"""The projections on PostgreSQL (hermes_ledger.projections.postgres), against a real
server (a fresh database per test, tests/pg_support.py): the same events appended to
a SQLite ledger with projections and to a PostgresLog with projections give the
same session_map, session_history and messages rows; live == rebuild; state_at;
search; a projector failure rolls the append back."""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import ManualClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_support import as_user, fresh_database, login_role
from psycopg import pq

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.events import (
    EventModel,
    MemoryFlushed,
    MemoryFlushFailed,
    MemoryFlushSkipped,
    MessageAppended,
    SessionEnded,
    SessionExpired,
    SessionReset,
    SessionStarted,
    Source,
    UsageRecorded,
)
from hermes_ledger.ledger.postgres import WRITER_ROLE, PostgresLog
from hermes_ledger.projections import postgres as pgp
from hermes_ledger.projections.postgres import projector

KEY = "agent:main:telegram:dm:99"
OTHER = "agent:main:discord:group:42:7"
SOURCE = Source(platform="telegram", chat_id="99", user_id="u1", user_name="Ann")
GROUP = Source(platform="discord", chat_type="group", chat_id="42", chat_name="Dév", user_id="7")


class Both:
    """A SQLite ledger with projections and a PostgresLog with projections, fed the
    same appends at the same clock times."""

    def __init__(self, led: Ledger, log: PostgresLog, clock: ManualClock) -> None:
        self.led, self.log, self.clock = led, log, clock

    def append(self, key: str, events: Sequence[EventModel], **meta: Any) -> None:
        self.led.append(key, list(events), meta=meta or None)
        self.log.append(key, list(events), meta=meta or None)
        self.clock.advance(seconds=1)

    def assert_same(self) -> projections.State:
        sqlite, pg = projections.live_state(self.led), pgp.live_state(self.log)
        assert pg.session_history == sqlite.session_history
        assert pg.session_map == sqlite.session_map
        assert pg.transcripts == sqlite.transcripts
        assert pg == sqlite
        return pg


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def log(pg_dsn: str, clock: ManualClock) -> Iterator[PostgresLog]:
    with PostgresLog.open(pg_dsn, clock=clock) as opened:
        pgp.attach(opened)
        yield opened


@pytest.fixture
def both(tmp_path: Path, log: PostgresLog, clock: ManualClock) -> Iterator[Both]:
    with Ledger.open(tmp_path / "ledger.db", clock=clock) as led:
        projections.attach(led)
        yield Both(led, log, clock)


def conversation(both: Both) -> None:
    """Two keys; a reset with a flush, an expiry with a failed then skipped flush;
    tool calls, a synthetic flush turn, usage with cost, occurred_at with an offset."""
    both.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    both.append(
        KEY,
        [
            MessageAppended(
                session_id="s1",
                role="user",
                content="hello brave world",
                user_id="u1",
                user_name="Ann",
                platform_message_id="m1",
            )
        ],
    )
    both.append(
        KEY,
        [
            MessageAppended(
                session_id="s1",
                role="assistant",
                content=None,
                output_tokens=12,
                tool_calls=[{"id": "c1", "function": {"name": "search", "arguments": "{}"}}],
            ),
            MessageAppended(
                session_id="s1",
                role="tool",
                content="found 3 résultats",
                tool_name="search",
                tool_call_id="c1",
            ),
            UsageRecorded(session_id="s1", input_tokens=100, output_tokens=20, cost_usd=0.1),
            UsageRecorded(
                session_id="s1",
                input_tokens=50,
                cache_read_tokens=7,
                cache_write_tokens=3,
                cost_usd=0.2,
                model="m",
            ),
        ],
    )
    both.append(OTHER, [SessionStarted(session_id="g1", source=GROUP, reason="first")])
    both.append(
        OTHER,
        [
            MessageAppended(
                session_id="g1",
                role="user",
                content="group hello",
                occurred_at="2026-11-22T10:00:00.5+02:00",
            )
        ],
    )
    both.append(
        KEY, [MessageAppended(session_id="s1", role="user", content="remember me", synthetic=True)]
    )
    both.append(
        KEY,
        [
            SessionReset(session_id="s1", trigger="/new"),
            MemoryFlushed(session_id="s1", provider="honcho", detail="3 facts"),
            SessionEnded(session_id="s1", reason="manual_reset"),
        ],
        actor="telegram:u1",
    )
    both.append(
        KEY,
        [
            SessionStarted(
                session_id="s2", source=SOURCE, reason="manual_reset", previous_session_id="s1"
            )
        ],
    )
    both.append(KEY, [MessageAppended(session_id="s2", role="user", content="fresh start 東京")])
    both.append(
        OTHER,
        [
            SessionExpired(
                session_id="g1",
                reason="idle",
                deadline="2026-11-22T11:00:00+01:00",
                evaluated_at="2026-11-22T10:01:00Z",
                policy={"idle_minutes": 60},
            ),
            MemoryFlushFailed(session_id="g1", provider="honcho", error="timeout"),
            MemoryFlushSkipped(session_id="g1", reason="nothing to flush"),
        ],
    )
    both.append(OTHER, [SessionEnded(session_id="g1", reason="idle_expiry")])


# -- the same rows as SQLite ---------------------------------------------------------


def test_the_same_events_give_the_same_rows_as_sqlite(both: Both) -> None:
    conversation(both)
    state = both.assert_same()
    assert state.session_map[KEY]["session_id"] == "s2"
    assert state.session_map[KEY]["status"] == "open"
    assert state.session_map[OTHER]["status"] == "closed"
    history = state.session_history
    assert history["s1"]["message_count"] == 3  # the synthetic turn is no message
    assert history["s1"]["cost_nano_usd"] == 300_000_000
    assert (history["s1"]["close_cause"], history["s1"]["close_actor"]) == ("reset", "telegram:u1")
    assert (history["g1"]["flush_status"], history["g1"]["flush_attempts"]) == ("skipped", 1)
    assert history["g1"]["close_deadline"] == "2026-11-22T10:00:00.000000Z"
    assert [m["content"] for m in state.transcripts["s1"]] == [
        "hello brave world",
        None,
        "found 3 résultats",
    ]
    assert state.transcripts["g1"][0]["ts"] == "2026-11-22T08:00:00.500000Z"


def test_status_goes_open_closing_closed_as_on_sqlite(both: Both) -> None:
    both.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    assert both.assert_same().session_map[KEY]["status"] == "open"
    both.append(KEY, [SessionReset(session_id="s1", trigger="api")])
    assert both.assert_same().session_map[KEY]["status"] == "closing"
    both.append(KEY, [SessionEnded(session_id="s1", reason="manual_reset")])
    assert both.assert_same().session_map[KEY]["status"] == "closed"


def test_a_projector_failure_rolls_the_append_back(log: PostgresLog) -> None:
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])

    def boom(conn: psycopg.Connection[Any], records: Sequence[Any]) -> None:
        raise RuntimeError("boom")

    log.add_inline_projector(boom)
    with pytest.raises(RuntimeError, match="boom"):
        log.append(KEY, [MessageAppended(session_id="s1", role="user", content="lost")])
    assert log.head() == 1
    state = pgp.live_state(log)
    assert state.transcripts == {} and state.session_history["s1"]["message_count"] == 0
    assert pgp.verify(log).ok


# -- rebuild, verify, state_at ---------------------------------------------------------


def test_rebuild_reproduces_the_live_tables(both: Both) -> None:
    conversation(both)
    before = pgp.live_state(both.log)
    report = pgp.rebuild(both.log)
    assert report.position == both.log.head() == report.events
    assert pgp.live_state(both.log) == before
    assert pgp.verify(both.log).ok
    both.append(KEY, [MessageAppended(session_id="s2", role="user", content="after rebuild")])
    both.assert_same()  # the swapped-in tables are the live ones (indexes, grants, projector)
    pgp.rebuild(both.log)  # a second rebuild reuses the fresh names
    both.assert_same()


def test_verify_reports_a_changed_row(both: Both) -> None:
    conversation(both)
    report = pgp.verify(both.log)
    assert report.ok, str(report)
    assert report.rows == {"session_history": 2 + 1, "session_map": 2, "messages": 5}
    both.log.connection.execute("UPDATE messages SET content = 'tampered' WHERE position = 2")
    report = pgp.verify(both.log)
    assert not report.ok
    [diff] = report.differences
    assert (diff.table, diff.key, diff.column, diff.live, diff.rebuilt) == (
        "messages",
        2,
        "content",
        "tampered",
        "hello brave world",
    )


def test_state_at_positions_matches_the_live_tables_then(both: Both) -> None:
    snapshots = {}
    both.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    snapshots[both.log.head()] = pgp.live_state(both.log)
    both.append(KEY, [MessageAppended(session_id="s1", role="user", content="one")])
    snapshots[both.log.head()] = pgp.live_state(both.log)
    conversation(both)
    for position, then in snapshots.items():
        assert pgp.state_at(both.log, position=position) == then
        assert projections.state_at(both.led, position=position) == then
    assert pgp.state_at(both.log) == pgp.live_state(both.log)
    assert pgp.state_at(both.log, position=0).session_map == {}


# -- search ----------------------------------------------------------------------------


def test_search_finds_words_phrases_and_folds_diacritics(both: Both) -> None:
    conversation(both)
    log = both.log
    hits = pgp.search_messages(log, "brave")
    assert [(h.position, h.session_key, h.session_id, h.role) for h in hits] == [
        (2, KEY, "s1", "user")
    ]
    assert hits[0].platform == "telegram" and hits[0].user_name == "Ann"
    assert hits[0].marked() == "hello [brave] world"
    assert [h.session_id for h in pgp.search_messages(log, "hello")] == ["g1", "s1"]
    assert [h.session_id for h in pgp.search_messages(log, "hello", session_key=OTHER)] == ["g1"]
    assert pgp.search_messages(log, '"brave world"')[0].position == 2
    assert pgp.search_messages(log, '"world brave"') == []
    assert [h.position for h in pgp.search_messages(log, "resultats")] == [4]  # résultats
    assert pgp.search_messages(log, "remember") == []  # the synthetic turn is no message
    assert pgp.search_messages(log, "hello -group", plain=False)[0].session_id == "s1"
    with pytest.raises(LedgerError, match="empty"):
        pgp.search_messages(log, "  ")


# -- SQLite and PostgreSQL agree on generated histories ----------------------------------

WORDS = ["hello", "world", "café", "déjà", "vu", "tool", "東京", "42"]
KEYS = [f"agent:main:telegram:dm:{n}" for n in range(3)] + ["agent:main:discord:group:42:7"]


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, list[EventModel]]]:
    """Appends over a few keys: starts (sometimes an auto-reset in one append),
    messages (tool calls, synthetic turns), usage, resets, expiries, flushes, ends."""
    current: dict[str, tuple[str, str]] = {}  # key -> (session id, status)
    out: list[tuple[str, list[EventModel]]] = []
    counter = 0
    for _ in range(draw(st.integers(1, 25))):
        key = draw(st.sampled_from(KEYS))
        sid, status = current.get(key, ("", "none"))
        text = " ".join(draw(st.lists(st.sampled_from(WORDS), max_size=3))) or None
        if status in ("none", "closed"):
            counter += 1
            new = f"s{counter}"
            reason = draw(st.sampled_from(["first", "manual_reset", "auto_reset"]))
            previous = sid or None
            out.append(
                (
                    key,
                    [
                        SessionStarted(
                            session_id=new,
                            source=SOURCE,
                            reason=reason,
                            previous_session_id=previous,
                        )
                    ],
                )
            )
            current[key] = (new, "open")
            continue
        kind = draw(st.sampled_from(["say", "tool", "usage", "close", "end", "flush"]))
        events: list[EventModel]
        if kind == "say":
            events = [
                MessageAppended(
                    session_id=sid,
                    role=draw(st.sampled_from(["user", "assistant"])),
                    content=text,
                    synthetic=draw(st.booleans()),
                    input_tokens=draw(st.integers(0, 9)),
                )
            ]
        elif kind == "tool":
            events = [
                MessageAppended(
                    session_id=sid,
                    role="assistant",
                    content=None,
                    tool_calls=[{"id": "c", "function": {"name": "t", "arguments": text or ""}}],
                ),
                MessageAppended(
                    session_id=sid, role="tool", content=text, tool_name="t", tool_call_id="c"
                ),
            ]
        elif kind == "usage":
            events = [
                UsageRecorded(
                    session_id=sid,
                    input_tokens=draw(st.integers(0, 500)),
                    output_tokens=draw(st.integers(0, 50)),
                    cost_usd=draw(st.floats(0, 2, allow_nan=False)),
                )
            ]
        elif kind == "close":
            events = [
                draw(
                    st.sampled_from(
                        [
                            SessionReset(session_id=sid, trigger="/new"),
                            SessionExpired(
                                session_id=sid,
                                reason="idle",
                                deadline="2026-11-22T09:30:00Z",
                                evaluated_at="2026-11-22T09:31:00Z",
                            ),
                        ]
                    )
                )
            ]
            current[key] = (sid, "closing")
        elif kind == "flush":
            events = [
                draw(
                    st.sampled_from(
                        [
                            MemoryFlushed(session_id=sid, provider="p", detail="ok"),
                            MemoryFlushFailed(session_id=sid, provider="p", error="e"),
                            MemoryFlushSkipped(session_id=sid, reason="empty"),
                        ]
                    )
                )
            ]
        else:
            events = [SessionEnded(session_id=sid, reason="idle_expiry")]
            current[key] = (sid, "closed")
        out.append((key, events))
    return out


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(history=histories())
def test_sqlite_and_postgres_projections_agree(
    tmp_path_factory: pytest.TempPathFactory, history: list[tuple[str, list[EventModel]]]
) -> None:
    clock = ManualClock()
    path = tmp_path_factory.mktemp("agree") / "ledger.db"
    with (
        fresh_database() as dsn,
        PostgresLog.open(dsn, clock=clock) as log,
        Ledger.open(path, clock=clock) as led,
    ):
        projections.attach(led)
        pgp.attach(log)
        both = Both(led, log, clock)
        for key, events in history:
            both.append(key, events)
        state = both.assert_same()
        assert pgp.state_at(log) == state
        assert pgp.verify(log).ok


def test_the_writer_role_appends_with_projections_attached(
    pg_dsn: str, log: PostgresLog, clock: ManualClock
) -> None:
    log.append(KEY, [SessionStarted(session_id="s1", source=SOURCE)])
    with login_role(WRITER_ROLE) as user, PostgresLog.open(as_user(pg_dsn, user)) as writer:
        log.append(KEY, [MessageAppended(session_id="s1", role="user", content="behind")])
        pgp.attach(writer)  # catches up (as the writer), then projects its appends
        writer.append(KEY, [MessageAppended(session_id="s1", role="user", content="writer")])
        with pytest.raises(projections.ProjectionError, match="cannot create") as refused:
            pgp.rebuild(writer)
        assert "database owner" in str(refused.value.hint)
    state = pgp.live_state(log)
    assert [m["content"] for m in state.transcripts["s1"]] == ["behind", "writer"]
    assert pgp.verify(log).ok


# -- a batch writes the rows of its events one by one ------------------------------------

TEXTS = ['say "hi"', "back\\slash", "two\nlines", "café déjà vu", "東京 🚀", "", None]


def _when(rng: random.Random) -> str | None:
    """An occurred_at for three events in ten (fractions, offsets), else None."""
    if rng.random() >= 0.3:
        return None
    hour, minute, micros = rng.randrange(8, 12), rng.randrange(60), rng.randrange(10**6)
    return f"2026-11-22T{hour:02}:{minute:02}:00.{micros:06}+0{rng.randrange(3)}:00"


def _session_event(rng: random.Random, kind: str, sid: str, n: int) -> list[EventModel]:
    text = rng.choice(TEXTS)
    if kind == "say":
        return [
            MessageAppended(
                session_id=sid,
                role=rng.choice(["user", "assistant"]),
                content=text,
                synthetic=rng.random() < 0.15,
                input_tokens=rng.randrange(9),
                user_id="u1",
                platform_message_id=f"m{n}",
                occurred_at=_when(rng),
            )
        ]
    if kind == "tool":
        call = {"id": f"c{n}", "function": {"name": "t", "arguments": text or ""}}
        return [
            MessageAppended(
                session_id=sid,
                role="assistant",
                content=None,
                output_tokens=rng.randrange(99),
                tool_calls=[call],
            ),
            MessageAppended(
                session_id=sid, role="tool", content=text, tool_name="t", tool_call_id=f"c{n}"
            ),
        ]
    if kind == "usage":
        return [
            UsageRecorded(
                session_id=sid,
                input_tokens=rng.randrange(500),
                output_tokens=rng.randrange(50),
                cache_read_tokens=rng.randrange(9),
                cost_usd=rng.random(),
                occurred_at=_when(rng),
            )
        ]
    if kind == "reset":
        return [SessionReset(session_id=sid, trigger="/new", occurred_at=_when(rng))]
    if kind == "expire":
        return [
            SessionExpired(
                session_id=sid,
                reason="idle",
                deadline="2026-11-22T09:30:00.25+01:00",
                evaluated_at="2026-11-22T09:31:00Z",
            )
        ]
    if kind == "flush":
        return [
            rng.choice(
                [
                    MemoryFlushed(session_id=sid, provider="p", detail=text),
                    MemoryFlushFailed(session_id=sid, provider="p", error="e"),
                    MemoryFlushSkipped(session_id=sid, reason="empty"),
                ]
            )
        ]
    assert kind == "end"
    return [SessionEnded(session_id=sid, reason="idle_expiry", occurred_at=_when(rng))]


def mixed_events(
    rng: random.Random, keys: Sequence[str], count: int
) -> list[tuple[str, EventModel]]:
    """``count`` events over ``keys``, each key's sessions in a valid order: starts
    (first, resets, auto-resets, a resume), messages (some synthetic, some with an occurred_at
    offset), tool calls and results, usage with cost, resets and expiries (a second
    one of a closing session too), flushes, ends."""
    current: dict[str, tuple[str, str]] = {}  # key -> (session id, open | closing | closed)
    kinds = ["say", "tool", "usage", "reset", "expire", "flush", "end", "again"]
    out: list[tuple[str, EventModel]] = []
    while len(out) < count:
        key = rng.choice(keys)
        sid, status = current.get(key, ("", "none"))
        if status in ("none", "closed"):
            new = f"{key.rsplit(':', 1)[-1]}-s{len(out)}"
            reason = "first" if status == "none" else rng.choice(["manual_reset", "auto_reset"])
            start = SessionStarted(
                session_id=new,
                source=GROUP if "group" in key else SOURCE,
                reason=reason,
                previous_session_id=sid or None,
            )
            out.append((key, start))
            current[key] = (new, "open")
            continue
        kind = rng.choices(kinds, weights=[10, 3, 3, 1, 1, 1, 1, 1])[0]
        if kind == "again":  # a resumed session: its history row keeps the first start
            source = Source(platform="telegram", chat_id="99", user_name=f"again {len(out)}")
            out.append((key, SessionStarted(session_id=sid, source=source, reason="resume")))
            continue
        out.extend((key, e) for e in _session_event(rng, kind, sid, len(out)))
        if kind in ("reset", "expire", "end"):
            current[key] = (sid, "closed" if kind == "end" else "closing")
    return out[:count]


def test_a_1000_event_batch_of_several_keys_gives_the_rows_of_one_by_one(
    tmp_path: Path, pg_dsn: str, clock: ManualClock
) -> None:
    """One by one (SQLite, and PostgreSQL with projections) against one batch: a log
    appended by a process without projections, then caught up by the next projected
    append (every event in one apply, four keys mixed), then rebuilt (again one)."""
    events = mixed_events(random.Random(14), [*KEYS[:3], OTHER], 1000)
    assert len({type(e) for _, e in events}) == 9  # every kind of session event
    with (
        fresh_database() as batched_dsn,
        PostgresLog.open(pg_dsn, clock=clock) as one,
        PostgresLog.open(batched_dsn, clock=clock) as batched,
        PostgresLog.open(batched_dsn, clock=clock) as bare,
        Ledger.open(tmp_path / "ledger.db", clock=clock) as led,
    ):
        projections.attach(led)
        pgp.attach(one)
        pgp.attach(batched)  # empty tables, checkpoints at 0
        for n, (key, event) in enumerate(events, start=1):
            led.append(key, [event])
            one.append(key, [event])
            (batched if n == len(events) else bare).append(key, [event])
            clock.advance(seconds=1)
        assert len(events) == projector.BATCH  # the catch-up was one batch
        sqlite = projections.live_state(led)
        by_one, caught_up = pgp.live_state(one), pgp.live_state(batched)
        assert caught_up.session_history == by_one.session_history == sqlite.session_history
        assert caught_up.session_map == by_one.session_map == sqlite.session_map
        assert caught_up.transcripts == by_one.transcripts == sqlite.transcripts
        assert len(sqlite.session_map) == 4 and len(sqlite.session_history) > 20
        pgp.rebuild(batched)
        assert pgp.live_state(batched) == sqlite
        assert pgp.verify(batched).ok


def test_one_append_of_1000_events_gives_the_rows_of_one_by_one(
    tmp_path: Path, pg_dsn: str, clock: ManualClock
) -> None:
    """The append path: 1,000 events of one key (sessions started, reset, expired and
    ended within the call) in one PostgresLog.append, against the same events one by
    one on SQLite and on PostgreSQL (the clock stands still: the same recorded_at)."""
    events = [e for _, e in mixed_events(random.Random(7), [KEY], 1000)]
    with (
        fresh_database() as batched_dsn,
        PostgresLog.open(pg_dsn, clock=clock) as one,
        PostgresLog.open(batched_dsn, clock=clock) as batched,
        Ledger.open(tmp_path / "ledger.db", clock=clock) as led,
    ):
        projections.attach(led)
        pgp.attach(one)
        pgp.attach(batched)
        batched.append(KEY, events)
        for event in events:
            led.append(KEY, [event])
            one.append(KEY, [event])
        sqlite = projections.live_state(led)
        assert len(sqlite.session_history) > 20
        assert pgp.live_state(batched) == pgp.live_state(one) == sqlite


def _statements_sent(log: PostgresLog, tmp_path: Path, key: str, events: list[EventModel]) -> int:
    """Statements ``log.append(key, events)`` sends to the server (Bind and Query
    messages in libpq's protocol trace of its connection)."""
    trace = tmp_path / f"trace-{secrets.token_hex(4)}.txt"
    pgconn = log.connection.pgconn
    with trace.open("w") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            log.append(key, events)
        finally:
            pgconn.untrace()
    lines = [line.split("\t") for line in trace.read_text().splitlines()]
    return sum(1 for f in lines if f[0] == "F" and f[2].split(" ")[0] in ("Bind", "Query"))


def test_a_batch_sends_each_projection_statement_once(
    tmp_path: Path, pg_dsn: str, log: PostgresLog, clock: ManualClock
) -> None:
    """1,000 messages of one session in one append: the projections add a handful of
    statements (checkpoints, the history row, the key's row, its state, one COPY of
    the messages, the checkpoints' advance), not four per event."""
    start = [SessionStarted(session_id="s1", source=SOURCE)]
    said = [MessageAppended(session_id="s1", role="user", content=f"hi {n}") for n in range(1000)]
    with fresh_database() as bare_dsn, PostgresLog.open(bare_dsn, clock=clock) as bare:
        bare.append(KEY, start)
        log.append(KEY, start)
        without = _statements_sent(bare, tmp_path, KEY, said)
        with_projections = _statements_sent(log, tmp_path, KEY, said)
    assert 3 <= without <= 6  # the log's own: BEGIN, the state read, a COPY per table, COMMIT
    assert with_projections - without <= 8
    assert pgp.live_state(log).session_map[KEY]["message_count"] == 1000
