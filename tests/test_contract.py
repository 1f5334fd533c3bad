"""The log's contract (``ledger.backend.EventLog``), run unchanged against both
backends: a SQLite file and a fresh PostgreSQL database (tests/pg_support.py says
which server, and when the PostgreSQL cases skip or fail for want of one).

Each test takes ``log`` (an open ``EventLog``) and, when it needs more than the
interface (another connection, a raw count, a superuser's tampering), ``backend``:
the shared per-backend helper (tests/backends.py). SQLite-only behaviour (the file, WAL,
read-only opens, ``query``) stays in tests/test_ledger.py; PostgreSQL-only
behaviour (roles, privileges, migrations) in tests/test_postgres_log.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import Backend
from helpers import ManualClock
from worker_support import wait_for

from hermes_ledger.ledger import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    ConcurrencyError,
    EventLog,
    EventValidationError,
    IdempotencyError,
    Ledger,
    LedgerError,
    SessionAlreadyEndedError,
    open_log,
)
from hermes_ledger.ledger.events import MessageAppended, SessionEnded, SessionStarted, Source
from hermes_ledger.ledger.postgres import PostgresLog

KEY = "agent:main:telegram:dm:99"
WORKER = Path(__file__).with_name("log_worker.py")


@pytest.fixture
def log(backend: Backend) -> Iterator[EventLog]:
    with backend.open() as opened:
        yield opened


def started(sid: str = "s1") -> SessionStarted:
    return SessionStarted(session_id=sid, source=Source(platform="telegram", chat_id="99"))


def msg(text: str, sid: str = "s1") -> MessageAppended:
    return MessageAppended(session_id=sid, role="user", content=text)


# -- opening --------------------------------------------------------------------


def test_open_gives_the_backend_the_target_names(backend: Backend) -> None:
    kind = Ledger if backend.name == "sqlite" else PostgresLog
    for opened in (open_log(backend.target), Ledger.open(backend.target)):
        with opened:
            assert type(opened) is kind and isinstance(opened, EventLog)
    with Ledger.open_existing(backend.target) as again:
        assert type(again) is kind


# -- appending -------------------------------------------------------------------


def test_append_assigns_positions_and_versions(log: EventLog) -> None:
    first = log.append(KEY, [started(), msg("a")], expected_version=NO_STREAM)
    second = log.append("other", [started("s2")])
    third = log.append(KEY, [msg("b")], expected_version=2)
    assert first.positions == (1, 2) and first.version == 2 and not first.duplicate
    assert second.positions == (3,) and second.version == 1
    assert third.positions == (4,) and third.version == 3
    assert [r.version for r in log.read_stream(KEY)] == [1, 2, 3]
    assert [r.position for r in log.read_all()] == [1, 2, 3, 4]
    assert log.head() == 4
    assert log.stream_version(KEY) == 3 and log.stream_version("nope") == 0


def test_read_back_equals_what_was_appended(log: EventLog, clock: ManualClock) -> None:
    events = [started(), msg("hello"), SessionEnded(session_id="s1", reason="manual_reset")]
    log.append(KEY, events, meta={"actor": "test", "correlation_id": "c-1"})
    recs = list(log.read_stream(KEY))
    assert [r.event for r in recs] == events
    assert [r.event_id for r in recs] == [e.event_id for e in events]
    assert recs[0].session_id == "s1" and recs[0].stream == KEY
    assert recs[0].meta == {"schema_version": 1, "actor": "test", "correlation_id": "c-1"}
    assert recs[0].recorded_at == clock.now
    assert recs[0].recorded_at_text == "2026-11-22T09:00:00.000000Z"
    assert "type" not in recs[1].data and recs[1].data["content"] == "hello"


def test_expected_version_markers(log: EventLog, backend: Backend) -> None:
    with pytest.raises(ConcurrencyError, match="expected at stream exists, but it has no events"):
        log.append(KEY, [msg("x")], expected_version=STREAM_EXISTS)
    log.append(KEY, [started()], expected_version=NO_STREAM)
    with pytest.raises(ConcurrencyError) as info:
        log.append(KEY, [started("s9")], expected_version=NO_STREAM)
    assert info.value.actual == 1 and info.value.stream == KEY
    log.append(KEY, [msg("y")], expected_version=STREAM_EXISTS)
    with pytest.raises(ConcurrencyError, match="expected at version 1, but it is at version 2"):
        log.append(KEY, [msg("z")], expected_version=1)
    log.append(KEY, [msg("z")], expected_version=ANY)
    assert backend.count() == 3


@pytest.mark.parametrize("bad", [-1, 1.0, "1", None, True])
def test_expected_version_must_be_marker_or_int(log: EventLog, bad: object) -> None:
    with pytest.raises(TypeError, match="expected_version must be"):
        log.append(KEY, [started()], expected_version=bad)  # type: ignore[arg-type]
    assert log.head() == 0


def test_stale_version_writes_nothing(log: EventLog, backend: Backend) -> None:
    log.append(KEY, [started(), msg("a")])
    with pytest.raises(ConcurrencyError):
        log.append(KEY, [msg("b"), msg("c")], expected_version=1)
    assert backend.count() == 2 and log.verify().ok


def test_threads_racing_on_one_expected_version_exactly_one_wins(
    log: EventLog, backend: Backend
) -> None:
    log.append(KEY, [started()])
    wins: list[int] = []
    losses: list[int] = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> None:
        with backend.open() as mine:  # a connection each, like separate processes
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
    assert log.stream_version(KEY) == 2 and log.verify().ok


def test_one_log_shared_by_threads(log: EventLog, backend: Backend) -> None:
    def writer(n: int) -> None:
        for i in range(50):
            log.append(f"stream-{n}", [msg(f"{n}-{i}", sid=f"s{n}")])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.count() == 400 and log.verify().ok
    for n in range(8):
        assert [r.event.content for r in log.read_stream(f"stream-{n}")] == [  # type: ignore[attr-defined]
            f"{n}-{i}" for i in range(50)
        ]


def test_two_connections_see_each_others_appends(backend: Backend) -> None:
    """SQLite's append path caches the head and stream versions; another writer
    must invalidate that cache, or positions and versions would collide."""
    with backend.open() as a, backend.open() as b:
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
                [
                    msg("x"),
                    SessionEnded(session_id="s1", reason="r"),
                    SessionEnded(session_id="s1", reason="again"),
                ],
            )
        assert b.append(KEY, [msg("b3")]).positions == (7,)
        assert a.verify().ok and [r.version for r in a.read_stream(KEY)] == list(range(1, 7))


# -- idempotency -------------------------------------------------------------------


def test_repeated_event_id_returns_first_result_and_writes_nothing(backend: Backend) -> None:
    events = [started(), msg("a"), msg("b")]
    with backend.open() as log:
        first = log.append(KEY, events, expected_version=NO_STREAM)
        log.append(KEY, [msg("later")])
        again = log.append(KEY, events, expected_version=NO_STREAM)  # stale version, same ids
        assert again == type(first)(first.positions, first.version, duplicate=True)
        assert log.append(KEY, events).duplicate
    with backend.open() as log:  # durable: also after reopening
        assert log.append(KEY, events, expected_version=ANY).positions == (1, 2, 3)
        assert backend.count() == 4


def test_repeated_event_id_with_other_content_is_refused(log: EventLog, backend: Backend) -> None:
    event = msg("original")
    log.append(KEY, [event])
    forged = MessageAppended(event_id=event.event_id, session_id="s1", role="user", content="edit")
    with pytest.raises(IdempotencyError, match="different content"):
        log.append(KEY, [forged])
    with pytest.raises(IdempotencyError, match="different content"):
        log.append("another-stream", [event])
    with pytest.raises(IdempotencyError, match="not a retry"):
        log.append(KEY, [event, msg("new")])
    with pytest.raises(IdempotencyError, match="twice in one append"):
        log.append(KEY, [event, event])
    assert backend.count() == 1


# -- sessions and batches ----------------------------------------------------------


def test_a_batch_is_all_or_nothing(log: EventLog, backend: Backend) -> None:
    log.append(KEY, [started(), SessionEnded(session_id="s1", reason="manual_reset")])
    batch = [msg("a"), msg("b"), SessionEnded(session_id="s1", reason="idle_expiry")]
    with pytest.raises(SessionAlreadyEndedError, match="'s1' has already ended"):
        log.append(KEY, batch)
    assert backend.count() == 2 and log.head() == 2
    # the positions stay gap-free after a failed append
    assert log.append(KEY, [msg("c")]).positions == (3,)


def test_one_session_ended_per_session_even_within_a_batch(log: EventLog, backend: Backend) -> None:
    twice = [SessionEnded(session_id="s1", reason="a"), SessionEnded(session_id="s1", reason="b")]
    with pytest.raises(SessionAlreadyEndedError):
        log.append(KEY, twice)
    log.append(KEY, [SessionEnded(session_id="s1", reason="a")])
    with pytest.raises(SessionAlreadyEndedError):
        log.append("elsewhere", [SessionEnded(session_id="s1", reason="b")])
    assert backend.count() == 1


# -- the chain ----------------------------------------------------------------------


def test_verify_on_an_intact_log(log: EventLog) -> None:
    assert log.verify().ok and log.verify().checked == 0
    for i in range(1200):  # more than one page
        log.append(f"k{i % 7}", [msg(str(i))])
    seen: list[tuple[int, int]] = []
    report = log.verify(progress=lambda done, total: seen.append((done, total)))
    assert report.ok and report.checked == 1200 and report.head == 1200
    assert seen[-1] == (1200, 1200)


def test_verify_names_the_tampered_row(log: EventLog, backend: Backend) -> None:
    for i in range(10):
        log.append(f"k{i % 3}", [msg(f"m{i}", sid=f"s{i % 3}")])
    backend.tamper(
        "UPDATE events SET data = replace(data, '\"user\"', '\"assistant\"') WHERE position = 7"
    )
    report = log.verify()
    assert not report.ok
    assert report.first_bad_position == 7 and report.checked == 6
    assert "hash does not match" in (report.problem or "")
    assert "FAILED at position 7" in str(report)
    trusted = next(log.read_all(after=6, limit=1)).hash  # the tampered row, as an anchor
    assert log.verify(after=(7, trusted)).ok  # the rows after it still chain


def test_verify_names_a_gap(log: EventLog, backend: Backend) -> None:
    for i in range(5):
        log.append("k", [msg(f"m{i}")])
    backend.tamper("DELETE FROM events WHERE position = 3")
    report = log.verify()
    assert (report.ok, report.first_bad_position) == (False, 4)
    assert "gap" in (report.problem or "")


# -- reading ------------------------------------------------------------------------


def test_read_all_filters_and_limits(log: EventLog) -> None:
    for i in range(1500):
        log.append(f"k{i % 5}", [started(f"s{i}") if i % 2 else msg(str(i), sid=f"s{i}")])
    assert [r.position for r in log.read_all(after=1400)] == list(range(1401, 1501))
    assert len(list(log.read_all(limit=700))) == 700
    assert [r.position for r in log.read_all(after=10, limit=3)] == [11, 12, 13]
    starts = list(log.read_all(types=["session_started"]))
    assert len(starts) == 750 and {r.type for r in starts} == {"session_started"}
    assert len(list(log.read_all(types=["session_started"], limit=600))) == 600
    assert list(log.read_all(types=[])) == []
    assert [r.version for r in log.read_stream("k0", after_version=298)] == [299, 300]


def test_read_all_is_a_stream_not_a_list(log: EventLog) -> None:
    log.append("k", [msg(str(i)) for i in range(2000)])
    it = log.read_all()
    first = next(it)
    log.append("k", [msg("appended while reading")])  # no lock held between pages
    rest = list(it)
    assert first.position == 1 and rest[-1].position == 2001


# -- what an append refuses ------------------------------------------------------------


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
    log: EventLog, backend: Backend, event: object, message: str
) -> None:
    log.append(KEY, [started()])
    with pytest.raises(EventValidationError, match=message):
        log.append(KEY, [msg("fine"), event])  # type: ignore[list-item]
    assert backend.count() == 1


@pytest.mark.parametrize(
    ("stream", "message"),
    [("", "non-empty"), ("a\nb", "control characters"), ("x" * 2000, "longer than")],
)
def test_bad_stream_names_are_refused(
    log: EventLog, backend: Backend, stream: str, message: str
) -> None:
    with pytest.raises(EventValidationError, match=message):
        log.append(stream, [started()])
    assert backend.count() == 0


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
    log: EventLog, text: str, refused: bool
) -> None:
    if refused:
        with pytest.raises(EventValidationError, match="control characters"):
            log.append(text, [started()])
    else:
        assert log.append(text, [started()]).positions == (1,)


def test_invalid_meta_is_refused(log: EventLog, backend: Backend) -> None:
    with pytest.raises(EventValidationError, match="not JSON-serialisable"):
        log.append(KEY, [started()], meta={"when": object()})
    with pytest.raises(EventValidationError, match="schema_version"):
        log.append(KEY, [started()], meta={"schema_version": 9})
    with pytest.raises(EventValidationError, match="at least one event"):
        log.append(KEY, [])
    assert backend.count() == 0


def test_closed_log_says_so(backend: Backend) -> None:
    log = backend.open()
    log.close()
    log.close()  # twice is fine
    with pytest.raises(LedgerError, match="closed"):
        log.append(KEY, [started()])
    with pytest.raises(LedgerError, match="closed"):
        log.head()


# -- many writer processes --------------------------------------------------------------


def test_writer_processes_on_shared_streams_lose_and_duplicate_nothing(
    log: EventLog, backend: Backend, tmp_path: Path
) -> None:
    """Four processes append at once, round robin over the same three streams: every
    event is in the log exactly once, at the position its writer was told, with
    positions 1..n and each stream's versions 1..n, and the chain verifies."""
    writers, per_writer = 4, 60
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), backend.target, f"w{n}", str(per_writer), str(sync)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    try:
        wait_for([sync / f"ready-w{n}" for n in range(writers)])
        (sync / "go").touch()
        told: dict[str, int] = {}
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0 and err == "", err
            told.update(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    records = list(log.read_all())
    assert [r.position for r in records] == list(range(1, writers * per_writer + 1))
    assert {r.event_id: r.position for r in records} == told  # none lost, none twice
    for stream in ("shared-0", "shared-1", "shared-2"):
        versions = [r.version for r in log.read_stream(stream)]
        assert versions == list(range(1, len(versions) + 1)) and versions
    assert log.verify().ok


# -- the PostgreSQL backend without psycopg ----------------------------------------------


def test_a_dsn_without_psycopg_says_what_to_install(tmp_path: Path) -> None:
    """psycopg is not importable (as without the ``postgres`` extra): opening a DSN is
    a LedgerError with the install hint; a SQLite path still opens."""
    script = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from hermes_ledger.ledger import LedgerError, Ledger, open_log\n"
        "for opener in (open_log, Ledger.open):\n"
        "    try:\n"
        "        opener('postgresql://db.example/ledger')\n"
        "    except LedgerError as exc:\n"
        "        print(exc, '|', exc.hint)\n"
        f"with open_log({str(tmp_path / 'l.db')!r}) as log:\n"
        "    print(type(log).__name__, log.head())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    line = (
        "a PostgreSQL ledger needs psycopg, which is not installed"
        " | pip install 'hermes-ledger[postgres]'"
    )
    assert done.stdout.splitlines() == [line, line, "Ledger 0"]


def test_sqlite_only_options_with_a_dsn_are_refused() -> None:
    with pytest.raises(LedgerError, match="options of a SQLite ledger"):
        Ledger.open("postgresql://127.0.0.1:1/x", readonly=True)
    with pytest.raises(LedgerError, match="synchronous: not an option of a PostgreSQL ledger"):
        open_log("postgres://127.0.0.1:1/x", synchronous="FULL")
