"""``hermes-ledger sessions`` filters: the library's SessionFilter and the command line."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import apsw
import pytest
from backends import Backend
from click.testing import Result
from helpers import ManualClock
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_support import admin_connection

from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.sessions.globbing import glob_regex
from hermes_ledger.gateway.sessions.listing import SessionFilter, list_sessions
from hermes_ledger.ledger import EventLog, Ledger
from hermes_ledger.ledger.errors import InvalidInputError
from hermes_ledger.ledger.events import (
    MemoryFlushed,
    MessageAppended,
    SessionEnded,
    SessionExpired,
    SessionReset,
    SessionStarted,
    Source,
)

ADA = "agent:main:telegram:dm:1"
BOB = "agent:main:discord:group:2"
TEAM = "agent:main:telegram:group:3"
CY = "agent:main:slack:dm:4"
STAR = "agent:main:api:dm:*"


def _start(sid: str, platform: str, chat_type: str, user_id: str, name: str) -> SessionStarted:
    source = Source(platform=platform, chat_type=chat_type, chat_id=sid, user_id=user_id,
                    user_name=name)  # fmt: skip
    return SessionStarted(session_id=sid, source=source)


def _close(sid: str, reason: str) -> list[object]:
    return [SessionReset(session_id=sid, trigger="/new"),
            MemoryFlushed(session_id=sid, provider="honcho"),
            SessionEnded(session_id=sid, reason=reason)]  # fmt: skip


def _fill(led: EventLog, clock: ManualClock) -> None:
    """Five keys, one event batch an hour from 09:00 on 2026-11-22 (the updated_at of
    each key): Ada open (09:00), Bob closed by a manual reset (10:00), the team
    closing (11:00), Cy closed by idle expiry (12:00), a key with a * open (13:00)."""
    led.append(ADA, [_start("s1", "telegram", "dm", "u1", "Ada"),
                     MessageAppended(session_id="s1", role="user", content="hi")])  # fmt: skip
    clock.advance(hours=1)
    bob = _start("s2", "discord", "group", "u2", "Bob")
    led.append(BOB, [bob, *_close("s2", "manual_reset")])
    clock.advance(hours=1)
    led.append(TEAM, [_start("s3", "telegram", "group", "u3", "Team"),
                      SessionReset(session_id="s3", trigger="/reset")])  # fmt: skip
    clock.advance(hours=1)
    expired = SessionExpired(session_id="s4", reason="idle", deadline=clock.now,
                             evaluated_at=clock.now)  # fmt: skip
    led.append(CY, [_start("s4", "slack", "dm", "u4", "Cy"), expired,
                    MemoryFlushed(session_id="s4", provider="honcho"),
                    SessionEnded(session_id="s4", reason="idle_expiry")])  # fmt: skip
    clock.advance(hours=1)
    led.append(STAR, [_start("s5", "api_server", "dm", "u5", "Star")])


@pytest.fixture
def ledger_db(tmp_path: Path, clock: ManualClock) -> Path:
    """``_fill``'s ledger in a SQLite file."""
    db = tmp_path / "ledger.db"
    with Ledger.open(db, clock=clock) as led:
        _fill(led, clock)
    return db


@pytest.fixture
def any_db(backend: Backend) -> str:
    """``_fill``'s ledger on each backend (with its projections on PostgreSQL, which
    the session reads need there): its ``--db``."""
    with backend.open(projections=backend.name == "postgresql") as log:
        _fill(log, backend.clock)
    return backend.target


def _keys(cli: Callable[..., Result], db: Path, *args: str) -> list[str]:
    result = cli("sessions", "--db", str(db), "--json", *args)
    assert result.exit_code == 0, result.output
    return [row["session_key"] for row in json.loads(result.output)]


def test_without_filters_open_keys_newest_first(any_db: str, cli: Callable[..., Result]) -> None:
    assert _keys(cli, any_db) == [STAR, ADA]
    assert _keys(cli, any_db, "--all") == [STAR, CY, TEAM, BOB, ADA]


def test_platform_chat_type_and_user(any_db: str, cli: Callable[..., Result]) -> None:
    assert _keys(cli, any_db, "--platform", "telegram", "--all") == [TEAM, ADA]
    assert _keys(cli, any_db, "--platform", "telegram") == [ADA]
    assert _keys(cli, any_db, "--chat-type", "group", "--all") == [TEAM, BOB]
    telegram_groups = ("--platform", "telegram", "--chat-type", "group", "--all")
    assert _keys(cli, any_db, *telegram_groups) == [TEAM]
    assert _keys(cli, any_db, "--user", "u2", "--all") == [BOB]  # the user id
    assert _keys(cli, any_db, "--user", "bob", "--all") == [BOB]  # the name, any case
    assert _keys(cli, any_db, "--user", "U2", "--all") == []  # ids are exact
    assert _keys(cli, any_db, "--platform", "matrix", "--all") == []


def test_status_and_end_reason_imply_all(any_db: str, cli: Callable[..., Result]) -> None:
    assert _keys(cli, any_db, "--status", "closed") == [CY, BOB]
    assert _keys(cli, any_db, "--status", "closing") == [TEAM]
    assert _keys(cli, any_db, "--status", "open", "--status", "closing") == [STAR, TEAM, ADA]
    assert _keys(cli, any_db, "--end-reason", "idle_expiry") == [CY]
    result = cli("sessions", "--db", str(any_db), "--json", "--end-reason", "manual_reset")
    (row,) = json.loads(result.output)
    assert (row["session_key"], row["status"], row["end_reason"], row["user_name"]) == (
        BOB, "closed", "manual_reset", "Bob",
    )  # fmt: skip


def test_key_is_a_glob_bound_as_a_value(any_db: str, cli: Callable[..., Result]) -> None:
    assert _keys(cli, any_db, "--all", "--key", "agent:main:telegram:*") == [TEAM, ADA]
    assert _keys(cli, any_db, "--all", "--key", "*:dm:?") == [STAR, CY, ADA]
    assert _keys(cli, any_db, "--all", "--key", "*:[34]") == [CY, TEAM]
    assert _keys(cli, any_db, "--all", "--key", ADA) == [ADA]  # no wildcard: that key
    assert _keys(cli, any_db, "--all", "--key", "agent:main:api:dm:[*]") == [STAR]
    assert _keys(cli, any_db, "--all", "--key", "AGENT:*") == []  # case-sensitive
    assert _keys(cli, any_db, "--all", "--key", "' OR 1=1 --") == []


def test_since_until_compare_last_activity(any_db: str, cli: Callable[..., Result]) -> None:
    since = ("--since", "2026-11-22T11:00Z")
    assert _keys(cli, any_db, "--all", *since) == [STAR, CY, TEAM]  # inclusive
    assert _keys(cli, any_db, "--all", *since, "--until", "2026-11-22T13:00Z") == [CY, TEAM]
    assert _keys(cli, any_db, "--all", "--until", "2026-11-22T10:00:00+00:00") == [ADA]
    assert _keys(cli, any_db, "--all", "--since", "2026-11-22T12:00+01:00") == [STAR, CY, TEAM]


def test_table_output_and_no_match(any_db: str, cli: Callable[..., Result]) -> None:
    result = cli("sessions", "--db", str(any_db), "--platform", "telegram", "--chat-type", "dm")
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "session_key               session_id  status  updated_at                   message_count",
        "------------------------  ----------  ------  ---------------------------  -------------",
        "agent:main:telegram:dm:1  s1          open    2026-11-22T09:00:00.000000Z              1",
        "(1 row)",
    ]
    result = cli("sessions", "--db", str(any_db), "--platform", "matrix")
    assert (result.exit_code, result.output) == (0, "No sessions match.\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "gone"], "Invalid value for '--status'"),
        (["--since", "last tuesday"], "Try: give --since an ISO-8601 time"),
        (["--until", "2026-13-40"], "Error: cannot read '2026-13-40' as a time"),
        (["--platform", ""], "Invalid value for '--platform': the value is empty"),
        (["--user", "  "], "Invalid value for '--user': the value is empty"),
        (["--key", ""], "Invalid value for '--key': the value is empty"),
        (["--end-reason", ""], "Invalid value for '--end-reason': the value is empty"),
        (["--chat-type", ""], "Invalid value for '--chat-type': the value is empty"),
    ],
)
def test_bad_values_are_usage_errors(
    ledger_db: Path, cli: Callable[..., Result], args: list[str], message: str
) -> None:
    before = ledger_db.read_bytes()
    result = cli("sessions", "--db", str(ledger_db), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    assert ledger_db.read_bytes() == before


def test_library_filter(ledger_db: Path) -> None:
    with reports.open_existing(ledger_db) as led:
        rows = list_sessions(led, SessionFilter(platform="telegram", all_=True), limit=1)
        assert [r["session_key"] for r in rows] == [TEAM]  # the limit
        assert reports.sessions(led, which=SessionFilter(user="ada")) == list_sessions(
            led, SessionFilter(user="ADA")
        )
        assert [r["session_id"] for r in reports.sessions(led, all_=True)] == [
            "s5", "s4", "s3", "s2", "s1",
        ]  # fmt: skip
    with pytest.raises(InvalidInputError, match="unknown session status 'done'"):
        SessionFilter(statuses=("done",))
    with pytest.raises(InvalidInputError, match="the platform filter is empty"):
        SessionFilter(platform="")


DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"


def doc_query(name: str) -> str:
    """The ``-- filter: name`` query of docs/sql.md's filtering section."""
    found = re.search(rf"```sql\n-- filter: {name}\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"docs/sql.md has no query {name!r}"
    return found.group(1)


def test_the_documented_filter_query_lists_what_the_library_lists(ledger_db: Path) -> None:
    since = "2026-11-22T09:00:00.000000Z"
    with reports.open_existing(ledger_db) as led:
        documented = led.query(
            doc_query("sessions_on_a_platform_since"), {"platform": "telegram", "since": since}
        )
        ours = list_sessions(led, SessionFilter(platform="telegram", since=since, all_=True))
    fields = ("session_key", "session_id", "status", "user_name", "end_reason", "updated_at")
    assert documented == [tuple(row[f] for f in fields) for row in ours]
    assert [row[0] for row in documented] == [TEAM, ADA]


# -- --key on PostgreSQL: SQLite's GLOB as a regex ------------------------------------

GLOB_ALPHABET = "ab:*?[]^-\\.$()|+{}é😀%_"


@settings(max_examples=400, deadline=None)
@given(
    patterns=st.lists(st.text(GLOB_ALPHABET, max_size=7), min_size=1, max_size=4),
    keys=st.lists(st.text(GLOB_ALPHABET, max_size=6), min_size=1, max_size=6),
)
def test_glob_regex_matches_what_sqlite_globs(patterns: list[str], keys: list[str]) -> None:
    """Every pattern matches on PostgreSQL (``~ glob_regex``) exactly the texts SQLite's
    GLOB matches: sets, ranges, inverted and unclosed sets, regex characters."""
    lite = apsw.Connection(":memory:")
    with admin_connection() as pg:
        for pattern in patterns:
            regex = glob_regex(pattern)
            for key in keys:
                want = bool(lite.execute("SELECT ? GLOB ?", (key, pattern)).fetchone()[0])
                row = (
                    None if regex is None else pg.execute("SELECT %s ~ %s", (key, regex)).fetchone()
                )
                got = False if row is None else bool(row[0])
                assert got == want, (pattern, key, regex)
