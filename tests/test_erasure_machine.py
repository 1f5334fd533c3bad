"""A Hypothesis state machine with appends and erasures interleaved.

Sessions start on a few keys (opened by a few users), users talk in them (also in
each other's group sessions), flush and end; now and then a user, a key or a
session is erased, or the projections are rebuilt. Every message carries a word
of its own, so the test knows which words must be gone. After every step: the
chain verifies, and no erased word is in the transcripts or the full-text index;
at the end the live projections equal a replay of the log.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hermes_ledger import projections
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


class ErasureMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.led = projections.open_ledger(self.dir / "ledger.db")
        self.n = 0
        self.open: dict[str, tuple[str, str]] = {}  # key -> (session id, opener)
        # word -> (key, session id, opener, speaker): who a message belongs to
        self.words: dict[str, tuple[str, str, str, str]] = {}
        self.erased: set[str] = set()

    def teardown(self) -> None:
        try:
            if hasattr(self, "led"):
                report = projections.verify(self.led)
                assert report.ok, str(report)
                self.led.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

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
        projections.rebuild(self.led)

    @invariant()
    def erased_words_are_gone_and_the_chain_verifies(self) -> None:
        assert self.led.verify().ok
        text = " ".join(c or "" for (c,) in self.led.query("SELECT content FROM messages"))
        calls = " ".join(c or "" for (c,) in self.led.query("SELECT tool_calls FROM messages"))
        for word in self.words:
            if word in self.erased:
                assert word not in text and word not in calls
                hits = self.led.query(
                    "SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (word,)
                )
                assert hits == [(0,)]
            else:
                assert word in text


TestErasureMachine = ErasureMachine.TestCase
TestErasureMachine.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
