"""A Hypothesis state machine over many session keys.

Sessions start, talk, record usage, get reset or expire, flush (ok or failed),
end and start again, sometimes in one append (an auto-reset), sometimes through
a process without projections attached, with rebuilds in between. After every
step the live tables must match a model of the gateway and the invariants of
docs/design.md; at the end the live tables must equal a rebuild and a verify, and
state_at must give back the live tables as they were at sampled positions.

Both run on both backends (``backend``, tests/backends.py): the SQLite projections
and those on PostgreSQL (projections/postgres), through the projection functions
both have; the checks in SQL read the same tables on either. A fresh ledger per
example (``backend.wipe``); PostgreSQL runs fewer examples (each costs more).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from backends import Backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hermes_ledger.ledger import EventLog
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
from hermes_ledger.projections import State

KEYS = [f"agent:main:telegram:dm:{n}" for n in range(4)] + [
    "agent:main:discord:group:42:7",
    "agent:main:slack:channel:C1",
]
WORDS = ["hello", "world", "flush", "memory", "café", "déjà", "vu", "tool", "search", "42"]
text = st.lists(st.sampled_from(WORDS), max_size=4).map(" ".join)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=250)
        return self.now


MAP_MIRRORS_HISTORY = """
SELECT m.session_key FROM session_map AS m JOIN session_history AS h USING (session_id)
WHERE m.status IS DISTINCT FROM CASE WHEN h.ended_at IS NOT NULL THEN 'closed'
        WHEN h.close_requested_at IS NOT NULL THEN 'closing' ELSE 'open' END
    OR (m.message_count, m.input_tokens, m.output_tokens, m.cache_read_tokens,
        m.cache_write_tokens, m.cost_nano_usd)
    IS DISTINCT FROM (h.message_count, h.input_tokens, h.output_tokens, h.cache_read_tokens,
        h.cache_write_tokens, h.cost_nano_usd)
"""
"""Keys whose status, counts or token totals are not those of their current session
(SQLite and PostgreSQL SQL alike)."""

EXAMPLES = {"sqlite": 40, "postgresql": 10}
"""Examples per Hypothesis test and backend (a PostgreSQL example costs more)."""


def read(log: EventLog, sql: str) -> list[Any]:
    """The rows of ``sql`` over the log's own connection (apsw or psycopg: both take
    ``execute(sql)`` and iterate; the PostgreSQL one has the ledger's search_path)."""
    return [tuple(row) for row in log.connection.execute(sql)]  # type: ignore[attr-defined]


def chunks(backend: Backend, size: int) -> dict[str, int]:
    """``chunk_size=size`` for the SQLite projection functions (which replay in
    chunks); the PostgreSQL ones take no such option."""
    return {"chunk_size": size} if backend.name == "sqlite" else {}


@dataclass
class SessionModel:
    key: str
    messages: list[tuple[str, str | None]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    cost_nano: int = 0
    cause: str | None = None
    flushes: list[str] = field(default_factory=list)
    end_reason: str | None = None

    @property
    def status(self) -> str:
        if self.end_reason is not None:
            return "closed"
        return "closing" if self.cause is not None else "open"


def source_for(key: str) -> Source:
    if ":group:" in key:
        return Source(platform="discord", chat_type="group", chat_id="42", user_id="7")
    if ":channel:" in key:
        return Source(platform="slack", chat_type="channel", chat_id="C1", chat_name="general")
    return Source(platform="telegram", chat_id=key.rsplit(":", 1)[1], user_id="u1")


class ProjectionMachine(RuleBasedStateMachine):
    def __init__(self, backend: Backend) -> None:
        super().__init__()
        backend.wipe()  # a new ledger per example
        self.backend = Backend(backend.name, backend.target, Clock())  # type: ignore[arg-type]
        self.p = self.backend.projections
        self.clock = self.backend.clock
        self.led = self.backend.open()
        self.p.attach(self.led, **chunks(self.backend, 5))
        self.bare: EventLog | None = None  # a second process without projections
        self.current: dict[str, str] = {}  # key -> its current session id
        self.sessions: dict[str, SessionModel] = {}
        self.snapshots: dict[int, State] = {}
        self.counter = 0

    # -- helpers ------------------------------------------------------------------

    def append(self, key: str, events: list[EventModel], *, bare: bool = False) -> None:
        if bare:
            if self.bare is None:
                self.bare = self.backend.open()
            self.bare.append(key, events)
        else:
            self.led.append(key, events)

    def keys_in(self, *statuses: str) -> list[str]:
        """The keys whose current session is in one of ``statuses`` ("none": no session)."""
        return [
            k for k in KEYS if (self.model(k).status if k in self.current else "none") in statuses
        ]

    def keys_to_end(self) -> list[str]:
        """The keys whose current session is closing and has a flush outcome."""
        return [k for k in self.keys_in("closing") if self.model(k).flushes]

    def draw_key(self, data: st.DataObject, candidates: list[str]) -> str:
        """One of ``candidates``: the rule's precondition makes sure there is one."""
        return data.draw(st.sampled_from(candidates), label="key")

    def model(self, key: str) -> SessionModel:
        return self.sessions[self.current[key]]

    def new_session(self, key: str) -> tuple[SessionStarted, SessionModel]:
        self.counter += 1
        sid = f"s{self.counter}"
        previous = self.current.get(key)
        event = SessionStarted(
            session_id=sid,
            source=source_for(key),
            reason="first" if previous is None else "manual_reset",
            previous_session_id=previous,
        )
        return event, SessionModel(key)

    # -- rules ----------------------------------------------------------------------

    @precondition(lambda self: self.keys_in("none", "closed"))
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        key = self.draw_key(data, self.keys_in("none", "closed"))
        event, model = self.new_session(key)
        self.append(key, [event])
        self.current[key] = event.session_id
        self.sessions[event.session_id] = model

    @precondition(lambda self: self.keys_in("open", "closing"))
    @rule(
        data=st.data(),
        role=st.sampled_from(["user", "assistant", "tool", "system"]),
        content=st.none() | text,
        synthetic=st.booleans(),
        tool_call=st.booleans(),
        late_by=st.none() | st.integers(0, 7200),
        bare=st.booleans(),
    )
    def message(
        self,
        data: st.DataObject,
        role: str,
        content: str | None,
        synthetic: bool,
        tool_call: bool,
        late_by: int | None,
        bare: bool,
    ) -> None:
        key = self.draw_key(data, self.keys_in("open", "closing"))
        s = self.model(key)
        occurred = None
        if late_by is not None:  # a platform timestamp, in some zone, possibly earlier
            zone = timezone(timedelta(hours=late_by % 5 - 2))
            occurred = (self.clock.now - timedelta(seconds=late_by)).astimezone(zone)
        event = MessageAppended(
            session_id=self.current[key],
            role=role,  # type: ignore[arg-type]
            content=content,
            tool_calls=[{"id": "c1", "function": {"name": "search"}}] if tool_call else None,
            tool_name="search" if role == "tool" else None,
            output_tokens=len(content or ""),
            synthetic=synthetic,
            occurred_at=occurred,
        )
        self.append(key, [event], bare=bare)
        if not synthetic:
            s.messages.append((role, content))

    @precondition(lambda self: self.keys_in("open"))
    @rule(data=st.data(), tokens=st.lists(st.integers(0, 5000), min_size=4, max_size=4),
          cost_nano=st.none() | st.integers(0, 10**8))  # fmt: skip
    def usage(self, data: st.DataObject, tokens: list[int], cost_nano: int | None) -> None:
        key = self.draw_key(data, self.keys_in("open"))
        s = self.model(key)
        i, o, cr, cw = tokens
        cost = None if cost_nano is None else cost_nano / 1e9
        self.append(key, [UsageRecorded(
            session_id=self.current[key], input_tokens=i, output_tokens=o,
            cache_read_tokens=cr, cache_write_tokens=cw, cost_usd=cost,
        )])  # fmt: skip
        s.tokens = [a + b for a, b in zip(s.tokens, tokens, strict=True)]
        s.cost_nano += round(cost * 1e9) if cost is not None else 0

    @precondition(lambda self: self.keys_in("open"))
    @rule(data=st.data(), trigger=st.sampled_from(["/new", "/reset", "api"]))
    def reset(self, data: st.DataObject, trigger: str) -> None:
        key = self.draw_key(data, self.keys_in("open"))
        s = self.model(key)
        self.append(key, [SessionReset(session_id=self.current[key], trigger=trigger)])
        s.cause = "reset"

    @precondition(lambda self: self.keys_in("open"))
    @rule(data=st.data(), reason=st.sampled_from(["idle", "daily", "cron"]))
    def expire(self, data: st.DataObject, reason: str) -> None:
        key = self.draw_key(data, self.keys_in("open"))
        s = self.model(key)
        self.append(key, [SessionExpired(
            session_id=self.current[key], reason=reason,  # type: ignore[arg-type]
            deadline=self.clock.now - timedelta(minutes=1), evaluated_at=self.clock.now,
        )])  # fmt: skip
        s.cause = "expired"

    @precondition(lambda self: self.keys_in("closing"))
    @rule(data=st.data(), ok=st.booleans())
    def flush(self, data: st.DataObject, ok: bool) -> None:
        key = self.draw_key(data, self.keys_in("closing"))
        s = self.model(key)
        sid, attempt = self.current[key], len(s.flushes) + 1
        event: EventModel = (
            MemoryFlushed(session_id=sid, provider="honcho", attempt=attempt)
            if ok
            else MemoryFlushFailed(session_id=sid, provider="honcho", attempt=attempt, error="x")
        )
        self.append(key, [event])
        s.flushes.append("ok" if ok else "failed")

    @precondition(lambda self: self.keys_to_end())
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        key = self.draw_key(data, self.keys_to_end())
        s = self.model(key)
        reason = "manual_reset" if s.cause == "reset" else "idle_expiry"
        self.append(key, [SessionEnded(session_id=self.current[key], reason=reason)])
        s.end_reason = reason

    @precondition(lambda self: self.keys_in("open"))
    @rule(data=st.data(), ok=st.booleans())
    def auto_reset(self, data: st.DataObject, ok: bool) -> None:
        """What the gateway does for a message past the deadline: one append that
        closes the old session and starts the next one."""
        key = self.draw_key(data, self.keys_in("open"))
        s = self.model(key)
        old = self.current[key]
        flush: EventModel = (
            MemoryFlushed(session_id=old, provider="honcho")
            if ok
            else MemoryFlushFailed(session_id=old, provider="honcho", error="timeout")
        )
        start, model = self.new_session(key)
        self.append(key, [
            SessionExpired(session_id=old, reason="idle", deadline=self.clock.now,
                           evaluated_at=self.clock.now),
            flush,
            SessionEnded(session_id=old, reason="auto_reset"),
            start,
        ])  # fmt: skip
        s.cause, s.flushes, s.end_reason = (
            "expired",
            [*s.flushes, "ok" if ok else "failed"],
            ("auto_reset"),
        )
        self.current[key] = start.session_id
        self.sessions[start.session_id] = model

    @rule(chunk=st.integers(1, 50))
    def rebuild(self, chunk: int) -> None:
        replayed = self.p.state_at(self.led, **chunks(self.backend, chunk))  # incl. unprojected
        self.p.rebuild(self.led, **chunks(self.backend, chunk))
        assert self.p.live_state(self.led) == replayed

    # The live tables lag behind an unprojected append until the next projected one.
    @precondition(lambda self: self.bare is None or self.led.head() == self.checkpoint())
    @rule()
    def snapshot(self) -> None:
        self.snapshots[self.led.head()] = self.p.live_state(self.led)

    def checkpoint(self) -> int:
        return int(read(self.led, "SELECT min(position) FROM projection_checkpoints")[0][0])

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def live_tables_match_the_model(self) -> None:
        if self.checkpoint() != self.led.head():
            return  # an unprojected append is pending; the next projected one catches up
        query = "SELECT session_key, session_id, status FROM session_map"
        mapped = {k: (sid, status) for k, sid, status in read(self.led, query)}
        expected = {k: (sid, self.sessions[sid].status) for k, sid in self.current.items()}
        assert mapped == expected
        counts = dict(read(self.led, "SELECT session_id, message_count FROM session_history"))
        assert counts == {sid: len(s.messages) for sid, s in self.sessions.items()}

    @invariant()
    def the_map_mirrors_the_current_sessions(self) -> None:
        if self.checkpoint() == self.led.head():
            assert read(self.led, MAP_MIRRORS_HISTORY) == []

    @invariant()
    def at_most_one_open_session_per_key(self) -> None:
        rows = read(self.led,
            "SELECT session_key, count(*) FROM session_history"
            " WHERE ended_at IS NULL AND close_requested_at IS NULL GROUP BY session_key"
            " HAVING count(*) > 1"
        )  # fmt: skip
        assert rows == []

    # -- the end of a run -----------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.bare is not None:  # let one projected append pick up unprojected ones
                self.led.append("agent:main:cli:dm:local", [SessionStarted(
                    session_id="last", source=Source(platform="local"))])  # fmt: skip
                self.current["agent:main:cli:dm:local"] = "last"
                self.sessions["last"] = SessionModel("agent:main:cli:dm:local")
            self.check_final_state()
        finally:
            self.led.close()
            if self.bare is not None:
                self.bare.close()

    def check_final_state(self) -> None:
        report = self.p.verify(self.led, **chunks(self.backend, 3))
        assert report.ok, str(report)
        live = self.p.live_state(self.led)
        assert live.position == self.led.head()
        for sid, s in self.sessions.items():
            row = live.session_history[sid]
            assert row["session_key"] == s.key
            assert [row["input_tokens"], row["output_tokens"], row["cache_read_tokens"],
                    row["cache_write_tokens"]] == s.tokens  # fmt: skip
            assert row["cost_nano_usd"] == s.cost_nano
            assert row["close_cause"] == s.cause
            assert row["flush_status"] == (s.flushes[-1] if s.flushes else None)
            assert row["flush_attempts"] == len(s.flushes)
            assert row["end_reason"] == s.end_reason
            transcript = [(m["role"], m["content"]) for m in live.transcripts.get(sid, [])]
            assert transcript == s.messages
            # invariant 9: every message of a session is under that session's key
            assert {m["session_key"] for m in live.transcripts.get(sid, [])} <= {s.key}
        # invariant 5: a closed session was closed by a cause and a flush outcome
        for row in live.session_history.values():
            if row["ended_at"] is not None:
                assert row["close_requested_at"] is not None
                assert row["flush_status"] is not None
        for position, then in self.snapshots.items():
            at = self.p.state_at(self.led, position=position, **chunks(self.backend, 4))
            assert at == then
        self.p.rebuild(self.led, **chunks(self.backend, 7))
        assert self.p.live_state(self.led) == live


def test_projection_machine(backend: Backend) -> None:
    run_state_machine_as_test(
        lambda: ProjectionMachine(backend),
        settings=settings(
            max_examples=EXAMPLES[backend.name],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- any log at all ---------------------------------------------------------------------

EVENT_KINDS = ["start", "message", "synthetic", "usage", "reset", "expire", "flushed",
               "flush_failed", "flush_skipped", "end"]  # fmt: skip


def arbitrary_event(kind: str, sid: str, n: int, now: datetime) -> EventModel:
    """An event of ``kind`` for session ``sid``, whatever state that session is in."""
    when = None if n % 3 else (now - timedelta(minutes=n)).astimezone(timezone(timedelta(hours=1)))
    if kind == "start":
        return SessionStarted(session_id=sid, source=source_for(KEYS[n % len(KEYS)]),
                              reason="resume" if n % 2 else "first", occurred_at=when)  # fmt: skip
    if kind in ("message", "synthetic"):
        return MessageAppended(session_id=sid, role="user", content=f"m{n} {WORDS[n % 10]}",
                               synthetic=kind == "synthetic", occurred_at=when)  # fmt: skip
    if kind == "usage":
        return UsageRecorded(session_id=sid, input_tokens=n, cost_usd=n / 7 if n % 2 else None)
    if kind == "reset":
        return SessionReset(session_id=sid, trigger="/new", occurred_at=when)
    if kind == "expire":
        return SessionExpired(session_id=sid, reason="idle", deadline=now, evaluated_at=now)
    if kind == "flushed":
        return MemoryFlushed(session_id=sid, provider="p", attempt=n % 3 + 1)
    if kind == "flush_failed":
        return MemoryFlushFailed(session_id=sid, provider="p", error=f"e{n}")
    if kind == "flush_skipped":
        return MemoryFlushSkipped(session_id=sid)
    return SessionEnded(session_id=sid, reason="shutdown")


ops = st.lists(
    st.tuples(
        st.integers(0, len(KEYS) - 1),  # key
        st.integers(0, 4),  # session (shared across keys: breaks invariant 9 on purpose)
        st.lists(st.sampled_from(EVENT_KINDS), min_size=1, max_size=4),  # one append
        st.booleans(),  # through a process without projections
        st.booleans(),  # take a snapshot after it
    ),
    max_size=25,
)


ANY_LOG_EXAMPLES = {"sqlite": 60, "postgresql": 12}


def test_any_log_live_equals_replay(backend: Backend) -> None:
    """Whatever the log holds, the live tables (single-event rules, one append at a
    time, with catch-ups) equal a replay (range rules, any chunking)."""

    @settings(max_examples=ANY_LOG_EXAMPLES[backend.name], deadline=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(ops=ops, chunk=st.integers(1, 9))
    def check(ops: list[tuple[int, int, list[str], bool, bool]], chunk: int) -> None:
        any_log_live_equals_replay(backend, ops, chunk)

    check()


def any_log_live_equals_replay(
    backend: Backend, ops: list[tuple[int, int, list[str], bool, bool]], chunk: int
) -> None:
    backend.wipe()  # a new ledger per example
    on = Backend(backend.name, backend.target, Clock())  # type: ignore[arg-type]
    p, clock = on.projections, on.clock
    led = on.open()
    bare = on.open()
    try:
        p.attach(led, **chunks(on, chunk))
        snapshots = {}
        ended: set[str] = set()
        for n, (key, session, kinds, unprojected, snapshot) in enumerate(ops):
            sid = f"s{session}"
            events = []
            for kind in kinds:
                if kind == "end":
                    if sid in ended:
                        continue  # the log allows one end per session
                    ended.add(sid)
                events.append(arbitrary_event(kind, sid, n, clock.now))
            if not events:
                continue
            (bare if unprojected else led).append(KEYS[key], events)
            if snapshot and not unprojected:
                snapshots[led.head()] = p.live_state(led)
        led.append(KEYS[0], [MessageAppended(session_id="s0", role="user", content="last")])
        report = p.verify(led, **chunks(on, chunk))
        assert report.ok, str(report)
        assert read(led, MAP_MIRRORS_HISTORY) == []
        live = p.live_state(led)
        assert live == p.state_at(led, **chunks(on, chunk + 3))
        for position, then in snapshots.items():
            assert p.state_at(led, position=position, **chunks(on, chunk)) == then
        p.rebuild(led, **chunks(on, chunk))
        assert p.live_state(led) == live
    finally:
        led.close()
        bare.close()
