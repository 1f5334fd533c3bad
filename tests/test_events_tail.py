"""`hermes-ledger events --tail N` and the note when --limit cut the listing (issue 12),
on a SQLite file and on a PostgreSQL database (tests/backends.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import pytest
from backends import Backend
from click.testing import Result

from hermes_ledger.ledger import Ledger, LedgerError, Recorded
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
from hermes_ledger.ledger.postgres import PostgresLog, reading
from hermes_ledger.ledger.query import EventFilter, list_events

K1 = "agent:main:telegram:dm:1"
K2 = "agent:main:discord:dm:2"
NOTE = "{} not shown; raise --limit or use --tail\n"


@pytest.fixture
def filled(backend: Backend) -> str:
    """Positions 1-3 on K1 (s1), 4-5 on K2 (s2), 6-7 on K1 again, in a ledger of
    either backend: its ``--db`` target."""
    clock = backend.clock
    telegram, discord = Source(platform="telegram"), Source(platform="discord")
    with backend.open() as led:
        led.append(K1, [SessionStarted(session_id="s1", source=telegram)])
        for text in ("a", "b"):
            clock.advance(minutes=1)
            led.append(K1, [MessageAppended(session_id="s1", role="user", content=text)])
        clock.advance(minutes=1)
        led.append(K2, [SessionStarted(session_id="s2", source=discord)])
        led.append(K2, [MessageAppended(session_id="s2", role="user", content="c")])
        for text in ("d", "e"):
            clock.advance(minutes=1)
            led.append(K1, [MessageAppended(session_id="s1", role="user", content=text)])
    return backend.target


@contextmanager
def listing(target: str) -> Iterator[Callable[..., Iterator[Recorded]]]:
    """``list_events`` of either backend, bound to the ledger at ``target``."""
    if target.startswith("postgresql://"):
        with PostgresLog.open(target) as log:
            yield partial(reading.list_events, log)
        return
    with Ledger.open(target, readonly=True) as led:
        yield partial(list_events, led)


def positions(result: Result) -> list[int]:
    return [int(line.split()[0]) for line in result.stdout.splitlines()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tail", "3"], [5, 6, 7]),
        (["--tail", "1"], [7]),
        (["--tail", "0"], []),
        (["--tail", "50"], [1, 2, 3, 4, 5, 6, 7]),
        (["--tail", "2", "--session-key", K2], [4, 5]),
        (["--tail", "3", "--session-id", "s1"], [3, 6, 7]),
        (["--tail", "2", "--type", "session_started"], [1, 4]),
        (["--tail", "2", "--to", "4"], [3, 4]),
        (["--tail", "2", "--from", "6"], [6, 7]),
        (["--tail", "2", "--session-key", "nobody"], []),
    ],
)
def test_tail_prints_the_newest_matching_events_oldest_first(
    filled: str, cli: Callable[..., Result], args: list[str], expected: list[int]
) -> None:
    result = cli("events", "--db", str(filled), *args)
    assert (result.exit_code, result.stderr) == (0, "")
    assert positions(result) == expected


def test_tail_with_json_prints_the_same_events(filled: str, cli: Callable[..., Result]) -> None:
    result = cli("events", "--db", str(filled), "--tail", "2", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    assert [json.loads(line)["position"] for line in result.stdout.splitlines()] == [6, 7]


def test_tail_then_follow_prints_new_events(filled: str, cli: Callable[..., Result]) -> None:
    # --follow-timeout ends the follow at once: nothing new arrives in the meantime.
    result = cli("events", "--db", str(filled), "--tail", "1", "-f", "--follow-timeout", "0")
    assert (result.exit_code, positions(result)) == (0, [7])


def test_limit_and_tail_together_is_a_usage_error(filled: str, cli: Callable[..., Result]) -> None:
    result = cli("events", "--db", str(filled), "--tail", "2", "--limit", "2")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Error: give --limit (the oldest N) or --tail (the newest N), not both" in result.stderr
    assert cli("events", "--db", str(filled), "--tail", "-1").exit_code == 2


@pytest.mark.parametrize(
    ("args", "shown", "note"),
    [
        (["--limit", "2"], [1, 2], NOTE.format("5 more events")),
        (["--limit", "6"], [1, 2, 3, 4, 5, 6], NOTE.format("1 more event")),
        (["--limit", "0"], [], NOTE.format("7 more events")),
        (["--limit", "2", "--session-id", "s1"], [1, 2], NOTE.format("3 more events")),
        (["--limit", "2", "--to", "3"], [1, 2], NOTE.format("1 more event")),
        (["--limit", "7"], [1, 2, 3, 4, 5, 6, 7], ""),
        (["--limit", "2", "--session-key", K2], [4, 5], ""),
        (["--limit", "5", "--session-key", K2], [4, 5], ""),
    ],
)  # fmt: skip
def test_a_note_on_stderr_says_how_many_events_limit_left_out(
    filled: str, cli: Callable[..., Result], args: list[str], shown: list[int], note: str
) -> None:
    result = cli("events", "--db", str(filled), *args)
    assert result.exit_code == 0
    assert (positions(result), result.stderr) == (shown, note)


def test_the_note_leaves_json_on_stdout_clean(filled: str, cli: Callable[..., Result]) -> None:
    result = cli("events", "--db", str(filled), "--limit", "3", "--json")
    assert result.exit_code == 0
    assert [json.loads(line)["position"] for line in result.stdout.splitlines()] == [1, 2, 3]
    assert result.stderr == NOTE.format("4 more events")


def test_list_events_tail_and_on_more_in_python(filled: str) -> None:
    with listing(filled) as list_them:
        assert [r.position for r in list_them(EventFilter(session_id="s1"), tail=2)] == [6, 7]
        cut: list[int] = []
        listed = list_them(EventFilter(), limit=4, on_more=cut.append)
        assert [r.position for r in listed] == [1, 2, 3, 4]
        assert cut == [3]
        with pytest.raises(LedgerError, match="not both"):
            list(list_them(limit=1, tail=1))
