"""A Hypothesis state machine with appends and erasures interleaved.

Sessions start on a few keys (opened by a few users), users talk in them (also in
each other's group sessions), flush and end; now and then a user, a key or a
session is erased, or the projections are rebuilt. Every message carries a word
of its own, so the test knows which words must be gone. After every step: the
chain verifies, and no erased word is in the transcripts or the full-text index;
at the end the live projections equal a replay of the log.

It runs on both backends (``backend``, tests/backends.py), a fresh ledger per
example (``backend.wipe``); the full-text check reads SQLite's ``messages_fts`` or
PostgreSQL's ``search_messages``. PostgreSQL runs fewer examples.
"""

from __future__ import annotations

import json
from typing import Any

from backends import Backend
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hermes_ledger.ledger import EventLog
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import (
    MemoryFlushed,
    MessageAppended,
    SessionEnded,
    SessionStarted,
    Source,
)

KEYS = ["agent:main:telegram:dm:1", "agent:main:telegram:dm:2", "agent:main:slack:group:3"]
USERS = ["u1", "u2", "u3"]
EXAMPLES = {"sqlite": 25, "postgresql": 8}


def read(log: EventLog, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of ``sql`` over the log's own connection (apsw or psycopg; ``?`` or
    ``%s`` placeholders, as the backend's driver takes them)."""
    return [tuple(row) for row in log.connection.execute(sql, args)]  # type: ignore[attr-defined]


def text_of(value: Any) -> str:
    """A column as text: ``tool_calls`` is JSON text on SQLite, JSON on PostgreSQL."""
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


def full_text_hits(backend: Backend, log: EventLog, word: str) -> int:
    """How many messages the full-text index finds ``word`` in."""
    if backend.name == "sqlite":
        sql = "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?"
        return int(read(log, sql, (word,))[0][0])
    from hermes_ledger.projections.postgres import search_messages

    return len(search_messages(log, word, plain=True))  # type: ignore[arg-type]


class ErasureMachine(RuleBasedStateMachine):
    def __init__(self, backend: Backend) -> None:
        super().__init__()
        backend.wipe()  # a new ledger per example
        self.backend, self.p = backend, backend.projections
        self.led = backend.open(projections=True)
        self.n = 0
        self.open: dict[str, tuple[str, str]] = {}  # key -> (session id, opener)
        # word -> (key, session id, opener, speaker): who a message belongs to
        self.words: dict[str, tuple[str, str, str, str]] = {}
        self.erased: set[str] = set()

    def teardown(self) -> None:
        try:
            report = self.p.verify(self.led)
            assert report.ok, str(report)
        finally:
            self.led.close()

    def _word(self) -> str:
        self.n += 1
        return f"w{self.n}zq"

    @rule(key=st.sampled_from(KEYS), user=st.sampled_from(USERS))
    def start(self, key: str, user: str) -> None:
        if key in self.open:
            return
        sid = f"s{self.n}-{len(self.words)}"
        self._word()
        self.led.append(key, [SessionStarted(session_id=sid, source=Source(
            platform="telegram", user_id=user, user_name=f"name {user}",
            chat_name=f"chat {sid}"))])  # fmt: skip
        self.open[key] = (sid, user)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), speaker=st.sampled_from([*USERS, None]), tool=st.booleans())
    def talk(self, data: st.DataObject, speaker: str | None, tool: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.open)))
        sid, opener = self.open[key]
        word = self._word()
        role = "user" if speaker else "assistant"
        calls = [{"name": "f", "args": {"q": word}}] if tool and not speaker else None
        self.led.append(
            key,
            [
                MessageAppended(
                    session_id=sid,
                    role=role,
                    user_id=speaker,
                    content=f"say {word}",
                    tool_calls=calls,
                )
            ],
        )
        self.words[word] = (key, sid, opener, speaker or "")

    @precondition(lambda self: self.open)
    @rule(data=st.data(), flush=st.booleans())
    def end(self, data: st.DataObject, flush: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.open)))
        sid, _opener = self.open.pop(key)
        events: list[MemoryFlushed | SessionEnded] = []
        if flush:
            events.append(MemoryFlushed(session_id=sid, provider="m", detail=f"{sid} summary"))
        events.append(SessionEnded(session_id=sid, reason="idle_expiry"))
        self.led.append(key, events)

    @rule(kind=st.sampled_from(["user", "session_key", "session_id"]), data=st.data())
    def erase(self, kind: str, data: st.DataObject) -> None:
        if kind == "user":
            value = data.draw(st.sampled_from(USERS))
        elif kind == "session_key":
            value = data.draw(st.sampled_from(KEYS))
        else:
            known = sorted({w[1] for w in self.words.values()})
            if not known:
                return
            value = data.draw(st.sampled_from(known))
        self.backend.clock.advance(seconds=1)  # an erasure's id is its scope and its time
        self.led.erase(ErasureScope(kind, value), requested_by="machine", dry_run=False)  # type: ignore[arg-type]
        for word, (key, sid, opener, speaker) in self.words.items():
            if (
                (kind == "user" and value in (opener, speaker))
                or (kind == "session_key" and key == value)
                or (kind == "session_id" and sid == value)
            ):
                self.erased.add(word)

    @rule()
    def rebuild(self) -> None:
        self.p.rebuild(self.led)

    @invariant()
    def erased_words_are_gone_and_the_chain_verifies(self) -> None:
        assert self.led.verify().ok
        text = " ".join(c or "" for (c,) in read(self.led, "SELECT content FROM messages"))
        calls = " ".join(text_of(c) for (c,) in read(self.led, "SELECT tool_calls FROM messages"))
        for word in self.words:
            if word in self.erased:
                assert word not in text and word not in calls
                assert full_text_hits(self.backend, self.led, word) == 0
            else:
                assert word in text
        kept = [w for w in self.words if w not in self.erased]
        if kept:  # the full-text check bites: the newest kept word is found
            assert full_text_hits(self.backend, self.led, kept[-1]) >= 1


def test_erasure_machine(backend: Backend) -> None:
    run_state_machine_as_test(
        lambda: ErasureMachine(backend),
        settings=settings(
            max_examples=EXAMPLES[backend.name],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
