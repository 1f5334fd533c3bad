"""`hermes-ledger events` (listing, filters, --follow) and `schema`; the command list.

The tests that take ``filled`` run on a SQLite file and on a PostgreSQL database
(tests/backends.py); --follow on PostgreSQL sees what another connection or
process appends."""

from __future__ import annotations

import itertools
import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backends import Backend, pg_uri
from click.testing import Result
from helpers import ManualClock, installed_script
from pg_support import fresh_database

from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.events import (
    EVENT_TYPES,
    MessageAppended,
    SessionEnded,
    SessionStarted,
    Source,
    json_schema,
)
from hermes_ledger.ledger.postgres import PostgresLog, reading
from hermes_ledger.ledger.query import (
    EventFilter,
    follow_events,
    list_events,
    parse_time,
    select_events,
)

K1 = "agent:main:telegram:dm:99"
K2 = "agent:main:discord:dm:7"


def started(sid: str, event_id: str) -> SessionStarted:
    return SessionStarted(event_id=event_id, session_id=sid, source=Source(platform="telegram"))


def msg(text: str, sid: str = "s1", event_id: str | None = None) -> MessageAppended:
    if event_id is None:
        return MessageAppended(session_id=sid, role="user", content=text)
    return MessageAppended(event_id=event_id, session_id=sid, role="user", content=text)


@pytest.fixture
def filled(backend: Backend) -> str:
    """Four events in a ledger of either backend: its ``--db`` target."""
    clock = backend.clock
    with backend.open() as led:
        led.append(K1, [started("s1", "e1"), msg("hi", event_id="e2")])
        clock.advance(minutes=30)
        led.append(K2, [started("s2", "e3")])
        clock.advance(minutes=30)
        led.append(K1, [SessionEnded(event_id="e4", session_id="s1", reason="manual_reset")])
    return backend.target


LISTING = [
    "       1  2026-11-22T09:00:00.000000Z  session_started       agent:main:telegram:dm:99 v1  s1",
    "       2  2026-11-22T09:00:00.000000Z  message_appended      agent:main:telegram:dm:99 v2  s1",
    "       3  2026-11-22T09:30:00.000000Z  session_started       agent:main:discord:dm:7 v1  s2",
    "       4  2026-11-22T10:00:00.000000Z  session_ended         agent:main:telegram:dm:99 v3  s1",
]


# -- listing ---------------------------------------------------------------------


def test_events_lists_one_line_per_event(filled: str, cli: Callable[..., Result]) -> None:
    result = cli("events", "--db", str(filled))
    assert (result.exit_code, result.output) == (0, "\n".join(LISTING) + "\n")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--session-key", K2], [3]),
        (["--session-id", "s1"], [1, 2, 4]),
        (["--type", "session_started", "--type", "session_ended"], [1, 3, 4]),
        (["--since", "2026-11-22T09:30:00Z"], [3, 4]),
        (["--since", "2026-11-22T10:30+01:00"], [3, 4]),
        (["--until", "2026-11-22T09:30"], [1, 2]),
        (["--from", "2", "--to", "3"], [2, 3]),
        (["--limit", "2"], [1, 2]),
        (["--session-id", "s1", "--limit", "2", "--from", "2"], [2, 4]),
        (["--limit", "0"], []),
        (["--session-key", "nobody"], []),
    ],
)
def test_events_filters(
    filled: str, cli: Callable[..., Result], args: list[str], expected: list[int]
) -> None:
    result = cli("events", "--db", str(filled), *args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "".join(LISTING[p - 1] + "\n" for p in expected)


def test_events_json_prints_every_column_one_object_per_line(
    filled: str, cli: Callable[..., Result]
) -> None:
    result = cli("events", "--db", str(filled), "--json", "--session-key", K2)
    assert result.exit_code == 0
    (line,) = result.output.splitlines()
    obj = json.loads(line)
    assert list(obj) == [
        "position", "event_id", "stream", "version", "type", "session_id", "data", "meta",
        "recorded_at", "hash",
    ]  # fmt: skip
    assert (obj["position"], obj["event_id"], obj["data"]["source"]["platform"]) == (
        3, "e3", "telegram",
    )  # fmt: skip
    assert obj["meta"] == {"schema_version": 1} and len(obj["hash"]) == 64


def test_events_errors_say_what_to_do(
    filled: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    # Bad input is a usage error (exit 2), with the same Error:/Try: lines.
    result = cli("events", "--db", str(filled), "--type", "message")
    assert result.exit_code == 2
    assert result.output.startswith("Error: unknown event type 'message'\nTry: use one of: ")
    result = cli("events", "--db", str(filled), "--type", "nope")
    assert result.exit_code == 2 and result.output.startswith("Error: unknown event type 'nope'")
    result = cli("events", "--db", str(filled), "--until", "soon")
    assert result.exit_code == 2 and result.output.startswith("Error: cannot read 'soon' as a time")
    result = cli("events", "--db", str(filled), "--since", "yesterdayish")
    assert result.exit_code == 2
    assert result.output.startswith("Error: cannot read 'yesterdayish' as a time\nTry: give ")
    result = cli("events", "--db", str(filled), "--limit", "-1")
    assert result.exit_code == 2
    missing = tmp_path / "none.db"
    result = cli("events", "--db", str(missing))
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {missing} does not exist\nTry: create it with `hermes-ledger init`\n",
    )


def test_parse_time_reads_iso_and_durations_ago() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_time("2026-11-22", now=lambda: now) == "2026-11-22T00:00:00.000000Z"
    assert parse_time("2026-11-22T09:30:15.5+02:00") == "2026-11-22T07:30:15.500000Z"
    assert parse_time("90m", now=lambda: now) == "2026-11-22T10:30:00.000000Z"
    assert parse_time(" 2d ", now=lambda: now) == "2026-11-20T12:00:00.000000Z"
    assert parse_time("1w", now=lambda: now) == "2026-11-15T12:00:00.000000Z"
    with pytest.raises(LedgerError, match="cannot read '2 days' as a time"):
        parse_time("2 days")
    with pytest.raises(LedgerError, match="cannot read '99999999w' as a time"):
        parse_time("99999999w")


def test_select_events_pages_through_a_long_log(led: Ledger) -> None:
    led.append(K1, [msg(str(i)) for i in range(2500)])
    led.append(K2, [msg("other", sid="s2")])
    got = list(select_events(led, EventFilter(session_key=K1, from_position=10)))
    assert [r.position for r in got] == list(range(10, 2501))
    assert [r.position for r in select_events(led, limit=1001)][-1] == 1001
    with pytest.raises(LedgerError, match="limit must be >= 0"):
        select_events(led, limit=-1)


# -- following -------------------------------------------------------------------


def test_follow_yields_matching_events_as_they_are_appended(led: Ledger, db_path: Path) -> None:
    led.append(K1, [started("s1", "a")])
    script = iter(
        [
            lambda: led.append(K2, [started("s2", "b")]),  # another key: not shown
            lambda: led.append(K1, [msg("one"), msg("two")]),
            lambda: None,  # a quiet poll
            lambda: led.append(K1, [msg("three")]),
        ]
    )
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        next(script)()  # each wait of the follower, the world moves on

    with Ledger.open(db_path, readonly=True) as reader:
        follower = follow_events(
            reader, EventFilter(session_key=K1), after=1, poll_interval=0.25, sleep=sleep
        )
        got = list(itertools.islice(follower, 3))
    assert [r.position for r in got] == [3, 4, 5]
    assert [r.data["content"] for r in got] == ["one", "two", "three"]
    assert waits == [0.25] * 4


def test_list_then_follow_misses_and_repeats_nothing(led: Ledger, db_path: Path) -> None:
    led.append(K1, [started("s1", "a"), msg("old")])
    appended = iter([lambda: led.append(K1, [msg("new")])])

    def sleep(seconds: float) -> None:
        next(appended, lambda: None)()

    with Ledger.open(db_path, readonly=True) as reader:
        events = list_events(reader, follow=True, timeout=5.0, sleep=sleep)
        first = next(events)
        led.append(K1, [msg("while listing")])  # after the head was taken: followed, once
        rest = list(itertools.islice(events, 3))
    assert [r.position for r in [first, *rest]] == [1, 2, 3, 4]
    assert rest[-1].data["content"] == "new"


def test_follow_stops_at_to_or_at_the_timeout(led: Ledger, db_path: Path) -> None:
    led.append(K1, [started("s1", "a")])
    feed = iter([lambda: led.append(K1, [msg("x"), msg("y")])])

    def sleep(seconds: float) -> None:
        next(feed, lambda: None)()

    with Ledger.open(db_path, readonly=True) as reader:
        got = list(follow_events(reader, EventFilter(to_position=2), after=1, sleep=sleep))
        assert [r.position for r in got] == [2]
        assert list(follow_events(reader, after=3, timeout=0)) == []


def test_cli_follow_with_a_timeout_prints_then_exits(
    filled: str, cli: Callable[..., Result]
) -> None:
    result = cli(
        "events", "--db", str(filled), "--follow", "--follow-timeout", "0", "--session-key", K2
    )
    assert (result.exit_code, result.output) == (0, LISTING[2] + "\n")


def test_follow_in_a_real_process_until_ctrl_c(filled: str) -> None:
    proc = subprocess.Popen(
        [installed_script(), "events", "--db", str(filled), "--follow",
         "--poll-interval", "0.05", "--session-id", "s3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr

    def pump() -> None:
        for text in stdout:
            lines.put(text)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        with Ledger.open(filled) as led:
            led.append("agent:main:cli:dm", [started("s3", "n1"), msg("hello", sid="s3")])
            led.append(K1, [msg("not this one")])
        first = lines.get(timeout=30)
        second = lines.get(timeout=30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        stdout.close()
        errors = stderr.read()
        stderr.close()
    assert errors == ""
    assert first.split()[0] == "5" and first.split()[2] == "session_started"
    assert second.split()[0] == "6" and second.split()[2] == "message_appended"
    assert lines.empty()


# -- schema and the command list -------------------------------------------------------


def test_schema_prints_the_json_schema_of_every_event(cli: Callable[..., Result]) -> None:
    result = cli("schema")
    assert result.exit_code == 0
    assert result.output == json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
    schema = json.loads(result.output)
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert cli("schema", "--db", "/nowhere/x.db").output == result.output


def test_help_lists_the_log_commands_one_line_each(cli: Callable[..., Result]) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    commands = {
        line.split()[0]: line.split(None, 1)[1]
        for line in result.output.split("Commands:\n", 1)[1].splitlines()
    }
    assert {name: commands[name] for name in ("events", "export", "import", "schema", "sql")} == {
        "events": "List events, oldest first; --follow for new ones.",
        "export": "Export events as JSONL, CSV, SQLite or readable Markdown.",
        "import": "Restore a JSONL export, or import a Hermes home.",
        "schema": "Print the JSON Schema of the events.",
        "sql": "Run a read-only SQL query on the ledger.",
    }
    for name in ("events", "export", "import", "schema", "sql"):
        help_text = cli(name, "--help")
        assert help_text.exit_code == 0 and "--db" in help_text.output, name


def test_hermes_ledger_script_runs_the_same_commands(
    filled: str, cli: Callable[..., Result]
) -> None:
    direct = cli("events", "--db", str(filled), "--to", "1")
    assert (direct.exit_code, direct.output) == (0, LISTING[0] + "\n")


# -- following a PostgreSQL ledger -------------------------------------------------------


@pytest.fixture
def pg_logs(clock: ManualClock) -> Iterator[tuple[PostgresLog, PostgresLog]]:
    """Two connections to one fresh PostgreSQL ledger: a writer and a reader."""
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        with PostgresLog.open(uri, clock=clock) as writer, PostgresLog.open(uri) as reader:
            yield writer, reader


def test_postgres_follow_sees_what_another_connection_appends(
    pg_logs: tuple[PostgresLog, PostgresLog],
) -> None:
    writer, reader = pg_logs
    writer.append(K1, [started("s1", "a")])
    script = iter(
        [
            lambda: writer.append(K2, [started("s2", "b")]),  # another key: not shown
            lambda: writer.append(K1, [msg("one"), msg("two")]),
            lambda: None,  # a quiet poll
            lambda: writer.append(K1, [msg("three")]),
        ]
    )
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        next(script)()

    follower = reading.follow_events(
        reader, EventFilter(session_key=K1), after=1, poll_interval=0.25, sleep=sleep
    )
    got = list(itertools.islice(follower, 3))
    assert [r.position for r in got] == [3, 4, 5]
    assert [r.data["content"] for r in got] == ["one", "two", "three"]
    assert waits == [0.25] * 4
    stopped = reading.follow_events(reader, EventFilter(to_position=2), after=1, sleep=sleep)
    assert [r.position for r in stopped] == [2]
    assert list(reading.follow_events(reader, after=5, timeout=0)) == []


def test_postgres_list_then_follow_misses_and_repeats_nothing(
    pg_logs: tuple[PostgresLog, PostgresLog],
) -> None:
    writer, reader = pg_logs
    writer.append(K1, [started("s1", "a"), msg("old")])
    appended = iter([lambda: writer.append(K1, [msg("new")])])

    def sleep(seconds: float) -> None:
        next(appended, lambda: None)()

    events = reading.list_events(reader, follow=True, timeout=5.0, sleep=sleep)
    first = next(events)
    writer.append(K1, [msg("while listing")])  # after the head was taken: followed, once
    rest = list(itertools.islice(events, 3))
    assert [r.position for r in [first, *rest]] == [1, 2, 3, 4]
    assert rest[-1].data["content"] == "new"


def test_postgres_follow_in_a_process_sees_another_process_append(tmp_path: Path) -> None:
    """``events --follow`` in one process prints, in order and once each, the 40
    events a writer process appends meanwhile (one transaction each)."""
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        with PostgresLog.open(uri) as log:
            log.append(K1, [started("s1", "a")])
        follower = subprocess.Popen(
            [installed_script(), "events", "--db", uri, "--follow", "--poll-interval", "0.05",
             "--session-key", "w", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        writer = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "pg_support.py"), uri, "w", "40"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert follower.stdout is not None and writer.stdin and writer.stdout
        try:
            assert writer.stdout.readline() == "ready\n"
            writer.stdin.write("go\n")
            writer.stdin.flush()
            seen = [json.loads(follower.stdout.readline()) for _ in range(40)]
            assert writer.stdout.readline() == "done\n"
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout=30) == 0
        finally:
            for proc in (follower, writer):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
    assert [doc["position"] for doc in seen] == list(range(2, 42))
    assert [doc["data"]["content"] for doc in seen] == [f"m{i}" for i in range(40)]
