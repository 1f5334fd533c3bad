"""The log's contract: append, idempotency, expected versions, immutability, the chain."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw
import pytest

from hermes_ledger.ledger import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    ConcurrencyError,
    EventValidationError,
    IdempotencyError,
    Ledger,
    LedgerError,
    NoLedgerError,
    SessionAlreadyEndedError,
)
from hermes_ledger.ledger.events import (
    MessageAppended,
    SessionEnded,
    SessionStarted,
    Source,
)

KEY = "agent:main:telegram:dm:99"


def started(sid: str = "s1") -> SessionStarted:
    return SessionStarted(session_id=sid, source=Source(platform="telegram", chat_id="99"))


def msg(text: str, sid: str = "s1") -> MessageAppended:
    return MessageAppended(session_id=sid, role="user", content=text)


def count(led: Ledger) -> int:
    return led.connection.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[no-any-return]


def test_append_assigns_positions_and_versions(led: Ledger) -> None:
    first = led.append(KEY, [started(), msg("a")], expected_version=NO_STREAM)
    second = led.append("other", [started("s2")])
    third = led.append(KEY, [msg("b")], expected_version=2)
    assert first.positions == (1, 2) and first.version == 2 and not first.duplicate
    assert second.positions == (3,) and second.version == 1
    assert third.positions == (4,) and third.version == 3
    assert [r.version for r in led.read_stream(KEY)] == [1, 2, 3]
    assert [r.position for r in led.read_all()] == [1, 2, 3, 4]
    assert led.head() == 4
    assert led.stream_version(KEY) == 3 and led.stream_version("nope") == 0


def test_read_back_equals_what_was_appended(led: Ledger, clock) -> None:
    events = [started(), msg("hello"), SessionEnded(session_id="s1", reason="manual_reset")]
    led.append(KEY, events, meta={"actor": "test", "correlation_id": "c-1"})
    recs = list(led.read_stream(KEY))
    assert [r.event for r in recs] == events
    assert [r.event_id for r in recs] == [e.event_id for e in events]
    assert recs[0].session_id == "s1" and recs[0].stream == KEY
    assert recs[0].meta == {"schema_version": 1, "actor": "test", "correlation_id": "c-1"}
    assert recs[0].recorded_at == clock.now
    assert recs[0].recorded_at_text == "2026-11-22T09:00:00.000000Z"
    assert "type" not in recs[1].data and recs[1].data["content"] == "hello"


def test_expected_version_markers(led: Ledger) -> None:
    with pytest.raises(ConcurrencyError, match="expected at stream exists, but it has no events"):
        led.append(KEY, [msg("x")], expected_version=STREAM_EXISTS)
    led.append(KEY, [started()], expected_version=NO_STREAM)
    with pytest.raises(ConcurrencyError) as info:
        led.append(KEY, [started("s9")], expected_version=NO_STREAM)
    assert info.value.actual == 1 and info.value.stream == KEY
    led.append(KEY, [msg("y")], expected_version=STREAM_EXISTS)
    with pytest.raises(ConcurrencyError, match="expected at version 1, but it is at version 2"):
        led.append(KEY, [msg("z")], expected_version=1)
    led.append(KEY, [msg("z")], expected_version=ANY)
    assert count(led) == 3


@pytest.mark.parametrize("bad", [-1, 1.0, "1", None, True])
def test_expected_version_must_be_marker_or_int(led: Ledger, bad: object) -> None:
    with pytest.raises(TypeError, match="expected_version must be"):
        led.append(KEY, [started()], expected_version=bad)  # type: ignore[arg-type]


def test_stale_version_writes_nothing(led: Ledger) -> None:
    led.append(KEY, [started(), msg("a")])
    with pytest.raises(ConcurrencyError):
        led.append(KEY, [msg("b"), msg("c")], expected_version=1)
    assert count(led) == 2 and led.verify().ok


def test_threads_racing_on_one_expected_version_exactly_one_wins(db_path: Path) -> None:
    with Ledger.open(db_path) as led:
        led.append(KEY, [started()])
    wins: list[int] = []
    losses: list[int] = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> None:
        with Ledger.open(db_path) as mine:  # a connection each, like separate processes
            barrier.wait()
            try:
                mine.append(KEY, [msg(f"from {n}")], expected_version=1)
                wins.append(n)
            except ConcurrencyError:
                losses.append(n)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    with Ledger.open(db_path) as led:
        assert led.stream_version(KEY) == 2 and led.verify().ok


def test_one_ledger_shared_by_threads(led: Ledger) -> None:
    def writer(n: int) -> None:
        for i in range(50):
            led.append(f"stream-{n}", [msg(f"{n}-{i}", sid=f"s{n}")])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count(led) == 400 and led.verify().ok
    for n in range(8):
        assert [r.event.content for r in led.read_stream(f"stream-{n}")] == [  # type: ignore[attr-defined]
            f"{n}-{i}" for i in range(50)
        ]


def test_repeated_event_id_returns_first_result_and_writes_nothing(db_path: Path) -> None:
    events = [started(), msg("a"), msg("b")]
    with Ledger.open(db_path) as led:
        first = led.append(KEY, events, expected_version=NO_STREAM)
        led.append(KEY, [msg("later")])
        again = led.append(KEY, events, expected_version=NO_STREAM)  # stale version, same ids
        assert again == type(first)(first.positions, first.version, duplicate=True)
        assert led.append(KEY, events).duplicate
    with Ledger.open(db_path) as led:  # durable: also after reopening
        assert led.append(KEY, events, expected_version=ANY).positions == (1, 2, 3)
        assert count(led) == 4


def test_repeated_event_id_with_other_content_is_refused(led: Ledger) -> None:
    event = msg("original")
    led.append(KEY, [event])
    forged = MessageAppended(event_id=event.event_id, session_id="s1", role="user", content="edit")
    with pytest.raises(IdempotencyError, match="different content"):
        led.append(KEY, [forged])
    with pytest.raises(IdempotencyError, match="different content"):
        led.append("another-stream", [event])
    with pytest.raises(IdempotencyError, match="not a retry"):
        led.append(KEY, [event, msg("new")])
    with pytest.raises(IdempotencyError, match="twice in one append"):
        led.append(KEY, [event, event])
    assert count(led) == 1


def test_a_batch_is_all_or_nothing(led: Ledger) -> None:
    led.append(KEY, [started(), SessionEnded(session_id="s1", reason="manual_reset")])
    batch = [msg("a"), msg("b"), SessionEnded(session_id="s1", reason="idle_expiry")]
    with pytest.raises(SessionAlreadyEndedError, match="'s1' has already ended"):
        led.append(KEY, batch)
    assert count(led) == 2 and led.head() == 2
    # the positions stay gap-free after a failed append
    assert led.append(KEY, [msg("c")]).positions == (3,)


def test_one_session_ended_per_session_even_within_a_batch(led: Ledger) -> None:
    twice = [SessionEnded(session_id="s1", reason="a"), SessionEnded(session_id="s1", reason="b")]
    with pytest.raises(SessionAlreadyEndedError):
        led.append(KEY, twice)
    led.append(KEY, [SessionEnded(session_id="s1", reason="a")])
    with pytest.raises(SessionAlreadyEndedError):
        led.append("elsewhere", [SessionEnded(session_id="s1", reason="b")])
    assert count(led) == 1


def test_raw_update_and_delete_are_refused(led: Ledger) -> None:
    led.append(KEY, [started(), msg("a")])
    conn = led.connection
    with pytest.raises(apsw.ConstraintError, match="append-only: events cannot be updated"):
        conn.execute("UPDATE events SET data = '{}' WHERE position = 1")
    with pytest.raises(apsw.ConstraintError, match="append-only: events cannot be deleted"):
        conn.execute("DELETE FROM events")
    assert count(led) == 2 and led.verify().ok


def test_verify_names_the_tampered_row(led: Ledger) -> None:
    for i in range(10):
        led.append(f"k{i % 3}", [msg(f"m{i}", sid=f"s{i % 3}")])
    conn = led.connection
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute(
        "UPDATE events SET data = json_set(data, '$.content', 'forged') WHERE position = 7"
    )
    report = led.verify()
    assert not report.ok
    assert report.first_bad_position == 7 and report.checked == 6
    assert "hash does not match" in (report.problem or "")
    assert "FAILED at position 7" in str(report)


def test_verify_names_a_gap_and_a_recomputed_hash(led: Ledger) -> None:
    for i in range(5):
        led.append("k", [msg(f"m{i}")])
    conn = led.connection
    conn.execute("DROP TRIGGER events_refuse_delete")
    conn.execute("DELETE FROM events WHERE position = 3")
    report = led.verify()
    assert (report.ok, report.first_bad_position) == (False, 4)
    assert "gap" in (report.problem or "")


def test_verify_on_an_intact_log(led: Ledger) -> None:
    assert led.verify().ok and led.verify().checked == 0
    for i in range(1200):  # more than one page
        led.append(f"k{i % 7}", [msg(str(i))])
    seen: list[tuple[int, int]] = []
    report = led.verify(progress=lambda done, total: seen.append((done, total)))
    assert report.ok and report.checked == 1200 and report.head == 1200
    assert seen[-1] == (1200, 1200)


def test_read_all_filters_and_limits(led: Ledger) -> None:
    for i in range(1500):
        led.append(f"k{i % 5}", [started(f"s{i}") if i % 2 else msg(str(i), sid=f"s{i}")])
    assert [r.position for r in led.read_all(after=1400)] == list(range(1401, 1501))
    assert len(list(led.read_all(limit=700))) == 700
    assert [r.position for r in led.read_all(after=10, limit=3)] == [11, 12, 13]
    starts = list(led.read_all(types=["session_started"]))
    assert len(starts) == 750 and {r.type for r in starts} == {"session_started"}
    assert len(list(led.read_all(types=["session_started"], limit=600))) == 600
    assert list(led.read_all(types=[])) == []
    assert [r.version for r in led.read_stream("k0", after_version=298)] == [299, 300]


def test_read_all_is_a_stream_not_a_list(led: Ledger) -> None:
    led.append("k", [msg(str(i)) for i in range(2000)])
    it = led.read_all()
    first = next(it)
    led.append("k", [msg("appended while reading")])  # no lock held between pages
    rest = list(it)
    assert first.position == 1 and rest[-1].position == 2001


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "no_such_thing", "session_id": "s"}, "unknown event type 'no_such_thing'"),
        ({"session_id": "s"}, "'type' is missing"),
        (
            {"type": "message_appended", "role": "user", "content": "x"},
            "session_id: Field required",
        ),
        (
            {"type": "message_appended", "session_id": "s", "role": "robot", "content": "x"},
            "role: Input should be",
        ),
        (
            {"type": "usage_recorded", "session_id": "s", "input_tokens": "many"},
            "input_tokens: Input should be a valid integer",
        ),
        ({"type": "session_ended", "session_id": "s", "reason": "x", "bogus": 1}, "bogus: Extra"),
        ("not an event", "append takes event models or dicts, not str"),
    ],
)
def test_malformed_events_are_refused_and_nothing_is_written(
    led: Ledger, event: object, message: str
) -> None:
    led.append(KEY, [started()])
    with pytest.raises(EventValidationError, match=message):
        led.append(KEY, [msg("fine"), event])  # type: ignore[list-item]
    assert count(led) == 1


@pytest.mark.parametrize(
    ("stream", "message"),
    [("", "non-empty"), ("a\nb", "control characters"), ("x" * 2000, "longer than")],
)
def test_bad_stream_names_are_refused(led: Ledger, stream: str, message: str) -> None:
    with pytest.raises(EventValidationError, match=message):
        led.append(stream, [started()])
    assert count(led) == 0


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("agent:main:café:☕", False),
        ("a\x7fb", True),
        ("tab\there", True),
        ("c1\x9bok", False),  # C1 controls are the gateway's refusal, not the ledger's
        ("nel\x85", True),  # ... but NEL, like U+2028/U+2029, breaks a line
        ("ls\u2028", True),
        ("ps\u2029", True),
        ("lone\udc80", True),
    ],
)
def test_control_characters_in_names_are_the_ledger_rule(
    led: Ledger, text: str, refused: bool
) -> None:
    if refused:
        with pytest.raises(EventValidationError, match="control characters"):
            led.append(text, [started()])
    else:
        assert led.append(text, [started()]).positions == (1,)


def test_open_existing_refuses_a_missing_ledger_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    with pytest.raises(NoLedgerError) as info:
        Ledger.open_existing(missing)
    assert str(info.value) == f"there is no ledger at {missing}"
    assert info.value.hint == (
        "create one with `hermes-ledger init`, or pass --db / HERMES_LEDGER_DB"
    )
    assert not missing.exists()
    with Ledger.open(missing):
        pass
    with Ledger.open_existing(missing, readonly=True) as led:
        assert led.head() == 0


def test_invalid_json_and_meta_are_refused(led: Ledger) -> None:
    with pytest.raises(EventValidationError, match="not JSON-serialisable"):
        led.append(KEY, [started()], meta={"when": object()})
    with pytest.raises(EventValidationError, match="schema_version"):
        led.append(KEY, [started()], meta={"schema_version": 9})
    with pytest.raises(EventValidationError, match="at least one event"):
        led.append(KEY, [])
    # the schema itself refuses invalid JSON, whoever writes the row
    with pytest.raises(apsw.ConstraintError, match="CHECK constraint failed"):
        led.connection.execute(
            "INSERT INTO events (event_id, stream, version, type, data, meta, recorded_at, hash)"
            " VALUES ('e', 's', 1, 't', '{not json', '{}', '2026-01-01T00:00:00Z', ?)",
            ("0" * 64,),
        )
    assert count(led) == 0


def test_closed_ledger_says_so(db_path: Path) -> None:
    led = Ledger.open(db_path)
    led.close()
    led.close()  # twice is fine
    with pytest.raises(LedgerError, match="closed"):
        led.append(KEY, [started()])


def test_readonly_ledger_refuses_writes(db_path: Path) -> None:
    with Ledger.open(db_path) as led:
        led.append(KEY, [started()])
    with Ledger.open(db_path, readonly=True) as ro:
        assert [r.type for r in ro.read_all()] == ["session_started"]
        with pytest.raises(LedgerError, match="read-only"):
            ro.append(KEY, [msg("x")])


def test_two_connections_see_each_others_appends(db_path: Path) -> None:
    """The append path caches the head and stream versions; another writer must
    invalidate that cache, or positions and versions would collide."""
    with Ledger.open(db_path) as a, Ledger.open(db_path) as b:
        a.append(KEY, [started()], expected_version=NO_STREAM)
        a.append(KEY, [msg("a1")], expected_version=1)
        b.append(KEY, [msg("b1")], expected_version=2)
        with pytest.raises(ConcurrencyError, match="it is at version 3"):
            a.append(KEY, [msg("stale")], expected_version=2)
        assert a.append(KEY, [msg("a2")], expected_version=3).positions == (4,)
        b.append("other", [msg("b2", sid="s2")])
        assert a.append(KEY, [msg("a3")]).positions == (6,)
        with pytest.raises(SessionAlreadyEndedError):
            a.append(
                KEY,
                [msg("x"), SessionEnded(session_id="s1", reason="r")] * 1
                + [SessionEnded(session_id="s1", reason="again")],
            )
        assert b.append(KEY, [msg("b3")]).positions == (7,)
        assert a.verify().ok and [r.version for r in a.read_stream(KEY)] == list(range(1, 7))


def test_query_runs_one_read_statement_with_bindings(led: Ledger) -> None:
    led.append(KEY, [started(), msg("a")])
    rows = led.query("SELECT type FROM events WHERE stream = ? ORDER BY position", (KEY,))
    assert rows == [("session_started",), ("message_appended",)]
    assert led.query("SELECT count(*) FROM events WHERE stream = :s", {"s": "none"}) == [(0,)]
    with pytest.raises(LedgerError, match="no such table"):
        led.query("SELECT * FROM nowhere")
