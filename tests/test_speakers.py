"""Who spoke: message_appended names its sender (user_id, user_name), the messages
projection and transcripts show it, and ``export --user ID`` exports one person's
messages in any session and every event of the sessions they started, in every format."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import ManualClock
from hermes_fixture import T0, HermesFixture, origin, sid

from hermes_ledger import projections
from hermes_ledger.gateway import GatewayConfig, SessionSource
from hermes_ledger.gateway.hermes.importing import import_hermes_home
from hermes_ledger.gateway.hermes.live import LiveRecorder
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionStarted
from hermes_ledger.ledger.query import EventFilter, select_events

SHARED = GatewayConfig(group_sessions_per_user=False)  # one session for the whole group
ADA = SessionSource(platform="discord", chat_id="g1", chat_type="group", user_id="u1",
                    user_name="ada")  # fmt: skip
BOB = SessionSource(platform="discord", chat_id="g1", chat_type="group", user_id="u2",
                    user_name="bob")  # fmt: skip
ADA_DM = SessionSource(platform="discord", chat_id="d1", chat_type="dm", user_id="u1",
                       user_name="ada")  # fmt: skip
BOB_DM = SessionSource(platform="discord", chat_id="d2", chat_type="dm", user_id="u2",
                       user_name="bob")  # fmt: skip


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def speakers(led: Ledger, session_id: str) -> list[tuple[str, str | None, str | None, str]]:
    out = []
    for rec in led.read_all():
        event = rec.event
        if isinstance(event, MessageAppended) and event.session_id == session_id:
            out.append((event.role, event.user_id, event.user_name, event.content or ""))
    return out


@pytest.fixture
def group_db(tmp_path: Path, clock: ManualClock) -> Iterator[tuple[Path, dict[str, str]]]:
    """A group session ada opened and bob joined, and a DM each."""
    db = tmp_path / "ledger.db"
    with Ledger.open(db, clock=clock) as led:
        store = SessionStore(led, SHARED, clock)
        group = store.get_or_create_session(ADA).session_id
        assert store.get_or_create_session(BOB).session_id == group  # shared by both
        store.append_to_transcript(group, user("hi all"), source=ADA)
        store.append_to_transcript(group, user("hey ada"), source=BOB)
        store.append_to_transcript(group, {"role": "assistant", "content": "hello both"})
        store.append_to_transcript(group, user("bye"), source=BOB)
        ada_dm = store.get_or_create_session(ADA_DM).session_id
        store.append_to_transcript(ada_dm, user("just me"))  # no source: the DM's user
        bob_dm = store.get_or_create_session(BOB_DM).session_id
        store.append_to_transcript(bob_dm, user("bob alone"), source=BOB_DM)
    yield db, {"group": group, "ada_dm": ada_dm, "bob_dm": bob_dm}


# -- producers -------------------------------------------------------------------------


def test_the_store_names_each_messages_sender(
    group_db: tuple[Path, dict[str, str]], clock: ManualClock
) -> None:
    db, ids = group_db
    with Ledger.open(db, clock=clock) as led:
        assert speakers(led, ids["group"]) == [
            ("user", "u1", "ada", "hi all"),
            ("user", "u2", "bob", "hey ada"),
            ("assistant", None, None, "hello both"),
            ("user", "u2", "bob", "bye"),
        ]
        assert speakers(led, ids["ada_dm"]) == [("user", "u1", "ada", "just me")]
        store = SessionStore(led, SHARED, clock)
        # A shared session without a source: who spoke is not known (not the opener).
        store.append_to_transcript(ids["group"], user("who am i"))
        # The agent's turns name nobody, whatever source is given.
        store.append_to_transcript(
            ids["group"], {"role": "assistant", "content": "a mystery"}, source=ADA
        )
        assert speakers(led, ids["group"])[-2:] == [
            ("user", None, None, "who am i"),
            ("assistant", None, None, "a mystery"),
        ]
        # Per-user group sessions (the default) have one person: the session's user.
        per_user = SessionStore(led, GatewayConfig(), clock)
        own = per_user.get_or_create_session(BOB).session_id
        per_user.append_to_transcript(own, user("my own group session"))
        assert speakers(led, own) == [("user", "u2", "bob", "my own group session")]


def test_the_messages_projection_and_transcripts_show_who_spoke(
    group_db: tuple[Path, dict[str, str]], clock: ManualClock, cli: Callable[..., Result]
) -> None:
    db, ids = group_db
    with Ledger.open(db, clock=clock) as led:
        projections.attach(led)
        rows = led.query(
            "SELECT user_id, user_name, content FROM messages WHERE session_id = ?"
            " ORDER BY position",
            (ids["group"],),
        )
        assert rows == [
            ("u1", "ada", "hi all"),
            ("u2", "bob", "hey ada"),
            (None, None, "hello both"),
            ("u2", "bob", "bye"),
        ]
        assert projections.verify(led).ok  # live rows == rebuilt rows, the new columns too
    result = cli("transcript", ids["group"], "--db", str(db))
    assert result.exit_code == 0, result.output
    assert [line.split(None, 1)[1] for line in result.output.splitlines()] == [
        "user      ada: hi all",
        "user      bob: hey ada",
        "assistant hello both",
        "user      bob: bye",
    ]
    result = cli("transcript", ids["group"], "--db", str(db), "--json")
    assert [(m.get("user_id"), m.get("user_name")) for m in json.loads(result.output)] == [
        ("u1", "ada"), ("u2", "bob"), (None, None), ("u2", "bob")]  # fmt: skip
    # One person in the transcript: nothing to tell apart, the lines stay as they were.
    result = cli("transcript", ids["ada_dm"], "--db", str(db))
    assert result.output.split(None, 1)[1] == "user      just me\n"


# -- export --user ---------------------------------------------------------------------


def _expected(db: Path, clock: ManualClock, who: str) -> list[int]:
    """Positions of every event of the sessions ``who`` started and of ``who``'s
    messages in other sessions, read from the events themselves."""
    with Ledger.open(db, clock=clock) as led:
        records = list(led.read_all())
        started = {
            r.session_id
            for r in records
            if isinstance(r.event, SessionStarted) and r.event.source.user_id == who
        }
        return [
            r.position
            for r in records
            if r.session_id in started
            or (isinstance(r.event, MessageAppended) and r.event.user_id == who)
        ]


def test_export_user_gives_exactly_their_messages_and_sessions(
    group_db: tuple[Path, dict[str, str]],
    clock: ManualClock,
    cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    db, ids = group_db
    ada, bob = _expected(db, clock, "u1"), _expected(db, clock, "u2")
    assert len(ada) == 7 and len(bob) == 4
    assert set(ada) & set(bob) == set(bob[:2])  # bob's messages in the session ada opened

    result = cli("export", "--db", str(db), "--user", "u1")
    assert result.exit_code == 0, result.output
    *lines, last = [json.loads(line) for line in result.output.splitlines()]
    manifest = last["manifest"]
    assert [line["position"] for line in lines] == ada
    assert [(line["type"], line["data"].get("content")) for line in lines] == [
        ("session_started", None),
        ("message_appended", "hi all"),
        ("message_appended", "hey ada"),  # her session: everyone in it
        ("message_appended", "hello both"),
        ("message_appended", "bye"),
        ("session_started", None),
        ("message_appended", "just me"),
    ]
    assert manifest["count"] == 7 and manifest["filters"] == {"user": "u1"}

    out = tmp_path / "bob.csv"
    result = cli("export", "--db", str(db), "--user", "u2", "-o", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [int(r["position"]) for r in rows] == bob
    contents = [json.loads(r["data"]).get("content") for r in rows]
    assert contents == ["hey ada", "bye", None, "bob alone"]  # joined ada's session: no start

    out = tmp_path / "ada.sqlite"
    result = cli("export", "--db", str(db), "--user", "u1", "-o", str(out))
    assert result.exit_code == 0, result.output
    with sqlite3.connect(out) as conn:
        assert [p for (p,) in conn.execute("SELECT position FROM events ORDER BY position")] == ada
        assert conn.execute("SELECT user_id, user_name, content FROM messages").fetchall() == [
            ("u1", "ada", "hi all"),
            ("u2", "bob", "hey ada"),
            (None, None, "hello both"),
            ("u2", "bob", "bye"),
            ("u1", "ada", "just me"),
        ]

    # With the other filters: all conditions hold.
    result = cli("export", "--db", str(db), "--user", "u2", "--session-id", ids["group"])
    assert [json.loads(x)["position"] for x in result.output.splitlines()[:-1]] == bob[:2]
    result = cli("export", "--db", str(db), "--user", "nobody")
    assert result.exit_code == 0 and json.loads(result.output)["manifest"]["count"] == 0


def test_export_user_refuses_an_empty_id_and_writes_nothing(
    group_db: tuple[Path, dict[str, str]], cli: Callable[..., Result], tmp_path: Path
) -> None:
    db, _ = group_db
    out = tmp_path / "x.jsonl"
    result = cli("export", "--db", str(db), "--user", " ", "-o", str(out))
    assert result.exit_code == 2
    assert result.output.startswith("Error: the user id is empty\nTry: ")
    assert not out.exists()
    with pytest.raises(Exception, match="empty"):
        EventFilter(user="")


def test_the_user_filter_in_the_library(
    group_db: tuple[Path, dict[str, str]], clock: ManualClock
) -> None:
    db, ids = group_db
    with Ledger.open(db, clock=clock) as led:
        got = [r.position for r in select_events(led, EventFilter(user="u2"))]
        assert got == _expected(db, clock, "u2")
        only = EventFilter(user="u1", types=("session_started",))
        assert [r.session_id for r in select_events(led, only)] == [ids["group"], ids["ada_dm"]]


# -- the Hermes import and the live recorder ---------------------------------------------

GROUP_KEY = "agent:main:discord:group:g1"
OPENER = origin("discord", "g1", chat_type="group", user_id="u1", user_name="ada")
JOINER = origin("discord", "g1", chat_type="group", user_id="u2", user_name="bob")
M = timedelta(minutes=1)


def at(delta: timedelta) -> float:
    return (T0 + delta).timestamp()


def _hermes_group(h: HermesFixture, session_id: str) -> None:
    h.create_session(session_id, "discord", started_at=at(0 * M), session_key=GROUP_KEY,
                     origin=OPENER)  # fmt: skip
    h.append_message(session_id, "user", "[ada] hi", at=at(M), platform_message_id="m1")
    h.append_message(session_id, "user", "[bob] hey", at=at(2 * M), platform_message_id="m2")
    h.append_message(session_id, "assistant", "hello both", at=at(3 * M))
    h.append_message(session_id, "user", "[bob] again", at=at(4 * M), platform_message_id="m3")
    h.route(GROUP_KEY, session_id, origin=OPENER, at=at(4 * M))


def _dispatch(source: dict[str, Any], message_id: str, when: timedelta) -> dict[str, Any]:
    stamp = (T0 + when).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"kind": "dispatch", "at": stamp, "session_key": GROUP_KEY, "session_id": None,
            "source": {**source, "message_id": message_id}, "message_id": message_id}  # fmt: skip


def test_hermes_import_and_live_capture_name_who_spoke(tmp_path: Path, clock: ManualClock) -> None:
    s1 = sid(T0, "feed0001")
    with HermesFixture(tmp_path / "hermes") as h:
        _hermes_group(h, s1)
        stamp = (T0 + 5 * M).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        activity = {"kind": "activity", "at": stamp, "session_id": s1,
                    "session_key": GROUP_KEY, "platform": "discord"}  # fmt: skip
        # Live: m1 and m2 were dispatched (their senders known), m3's dispatch was not seen.
        records = [_dispatch(OPENER, "m1", M), _dispatch(JOINER, "m2", 2 * M), activity]
        with Ledger.open(tmp_path / "live.db", clock=clock) as live:
            report = LiveRecorder(live, h.home, config=SHARED).apply(records)
            assert report.skipped == [] and report.warnings == []
            assert speakers(live, s1) == [
                ("user", "u1", "ada", "[ada] hi"),
                ("user", "u2", "bob", "[bob] hey"),
                ("assistant", None, None, "hello both"),
                ("user", "u1", "ada", "[bob] again"),  # unmatched: the session's user
            ]
            head = live.head()
            again = import_hermes_home(live, h.home)  # same ids: nothing written twice
            assert (again.events, live.head()) == (0, head)
            live_events = [r.event for r in live.read_all() if r.type == "message_appended"]
        # The import has no sender per message: every user message is the session's user.
        with Ledger.open(tmp_path / "import.db", clock=clock) as imported:
            import_hermes_home(imported, h.home)
            assert [s[:3] for s in speakers(imported, s1)] == [
                ("user", "u1", "ada"),
                ("user", "u1", "ada"),
                ("assistant", None, None),
                ("user", "u1", "ada"),
            ]
            got = [r.event for r in imported.read_all() if r.type == "message_appended"]
    assert [e.event_id for e in got] == [e.event_id for e in live_events]
    # Where both know the same sender, they wrote the very same event.
    assert [got[i] == live_events[i] for i in range(4)] == [True, False, True, True]


def test_a_dm_imported_and_captured_live_is_the_same_events(
    tmp_path: Path, clock: ManualClock
) -> None:
    key = "agent:main:telegram:dm:1001"
    ada = origin("telegram", "1001", user_id="1001", user_name="ada")
    s1 = sid(T0, "feed0002")
    with HermesFixture(tmp_path / "hermes") as h:
        h.create_session(s1, "telegram", started_at=at(0 * M), session_key=key, origin=ada)
        h.append_message(s1, "user", "weather?", at=at(M), platform_message_id="7")
        h.append_message(s1, "assistant", "Sunny.", at=at(2 * M))
        h.route(key, s1, origin=ada, at=at(2 * M))
        stamp = (T0 + 3 * M).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        records = [
            {"kind": "dispatch", "at": stamp, "session_key": key, "session_id": None,
             "source": {**ada, "is_bot": False}, "message_id": "7"},
            {"kind": "activity", "at": stamp, "session_id": s1, "session_key": key,
             "platform": "telegram"},
        ]  # fmt: skip
        with Ledger.open(tmp_path / "live.db", clock=clock) as live:
            LiveRecorder(live, h.home).apply(records)
            captured = [r.event for r in live.read_all() if r.type == "message_appended"]
        with Ledger.open(tmp_path / "import.db", clock=clock) as imported:
            import_hermes_home(imported, h.home)
            got = [r.event for r in imported.read_all() if r.type == "message_appended"]
    assert got == captured
    assert [(e.user_id, e.user_name) for e in got] == [("1001", "ada"), (None, None)]
