"""``hermes-ledger search TEXT``: full-text search over transcripts, library and CLI."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backends import pg_uri
from click.testing import Result
from helpers import ManualClock, installed_script
from pg_support import fresh_database

from hermes_ledger.gateway.sessions import reports
from hermes_ledger.gateway.sessions.search import (
    SearchFilter,
    SearchSyntaxError,
    search_messages,
)
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source

ADA = "agent:main:telegram:dm:1"
BOB = "agent:main:discord:group:2"


def _say(sid: str, role: str, text: str) -> MessageAppended:
    return MessageAppended(session_id=sid, role=role, content=text)  # type: ignore[arg-type]


@pytest.fixture
def ledger_db(tmp_path: Path, clock: ManualClock) -> Path:
    """Two keys; a message every minute from 09:00 on 2026-11-22 (positions 2-4 on
    Ada's key, 6-7 on Bob's)."""
    db = tmp_path / "ledger.db"
    ada = Source(platform="telegram", chat_id="1", user_id="u1", user_name="Ada")
    bob = Source(platform="discord", chat_type="group", chat_id="2", user_id="u2",
                 user_name="Bob")  # fmt: skip
    with Ledger.open(db, clock=clock) as led:
        led.append(ADA, [SessionStarted(session_id="s1", source=ada)])
        for role, text in (("user", "the deploy failed on the café server"),
                           ("assistant", "I will retry the deploy now"),
                           ("user", "thanks, the e-mail arrived")):  # fmt: skip
            clock.advance(minutes=1)
            led.append(ADA, [_say("s1", role, text)])
        clock.advance(minutes=1)
        led.append(BOB, [SessionStarted(session_id="s2", source=bob)])
        for role, text in (("user", "deploy please"), ("assistant", "deployed\nall good")):
            clock.advance(minutes=1)
            led.append(BOB, [_say("s2", role, text)])
    return db


@pytest.fixture(params=["sqlite", "postgresql"])
def on(
    request: pytest.FixtureRequest, cli: Callable[..., Result]
) -> Iterator[Callable[[Path], str]]:
    """Where a test's ledger is searched: the SQLite file it built, or a fresh
    PostgreSQL database the file was migrated into (projections rebuilt there)."""
    if request.param == "sqlite":
        yield str
        return
    with fresh_database() as keywords:
        dsn = pg_uri(keywords)

        def migrated(db: Path) -> str:
            for args in (("migrate", "--from", str(db), "--to", dsn), ("replay", "--db", dsn)):
                result = cli(*args)
                assert result.exit_code == 0, result.output
            return dsn

        yield migrated


def _search(cli: Callable[..., Result], db: Path | str, *args: str) -> list[dict[str, object]]:
    result = cli("search", "--db", str(db), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_plain_output_newest_first_with_brackets(
    ledger_db: Path, cli: Callable[..., Result]
) -> None:
    result = cli("search", "--db", str(ledger_db), "deploy")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "2026-11-22T09:05:00.000000Z  agent:main:discord:group:2  s2  user      [deploy] please",
        "2026-11-22T09:02:00.000000Z  agent:main:telegram:dm:1    s1  assistant I will retry"
        " the [deploy] now",
        "2026-11-22T09:01:00.000000Z  agent:main:telegram:dm:1    s1  user      the [deploy]"
        " failed on the café server",
    ]
    result = cli("search", "--db", str(ledger_db), "nowhere")
    assert (result.exit_code, result.output) == (0, "No messages match.\n")


def test_json_fields(ledger_db: Path, cli: Callable[..., Result]) -> None:
    (hit,) = _search(cli, ledger_db, "cafe")  # diacritics folded
    assert hit == {
        "position": 2,
        "session_key": ADA,
        "session_id": "s1",
        "role": "user",
        "ts": "2026-11-22T09:01:00.000000Z",
        "platform": "telegram",
        "user_id": "u1",
        "user_name": "Ada",
        "snippet": "the deploy failed on the café server",
        "highlighted": "the deploy failed on the [café] server",
    }
    late = ("--since", "2026-11-22T09:06Z")
    (hit,) = _search(cli, ledger_db, "deploy*", "--session-key", BOB, *late)
    assert hit["snippet"] == "deployed\nall good"  # JSON keeps the text; lines escape newlines


def test_fts5_syntax_passes_through(ledger_db: Path, cli: Callable[..., Result]) -> None:
    positions = lambda *args: [h["position"] for h in _search(cli, ledger_db, *args)]  # noqa: E731
    assert positions('"retry the deploy"') == [3]
    assert positions("deploy NOT failed") == [6, 3]
    assert positions("deploy*") == [7, 6, 3, 2]
    assert positions('"e-mail"') == [4]
    assert positions("NEAR(deploy server, 5)") == [2]
    assert positions("deploy OR thanks", "--limit", "2") == [6, 4]


def test_json_and_lines_are_the_same_on_both_backends(
    ledger_db: Path, cli: Callable[..., Result], on: Callable[[Path], str]
) -> None:
    db = on(ledger_db)
    (hit,) = _search(cli, db, "server")
    assert set(hit) == {"position", "session_key", "session_id", "role", "ts", "platform",
                        "user_id", "user_name", "snippet", "highlighted"}  # fmt: skip
    # The excerpts are each engine's own (FTS5's snippet, ts_headline); the marks are not.
    assert "café server" in hit["snippet"] and "café [server]" in hit["highlighted"]
    (line,) = cli("search", "server", "--db", db).output.splitlines()
    assert line.startswith(f"2026-11-22T09:01:00.000000Z  {ADA}  s1  user      ")
    assert line.endswith("café [server]") and "\x02" not in line


def test_filters(ledger_db: Path, cli: Callable[..., Result], on: Callable[[Path], str]) -> None:
    db = on(ledger_db)
    positions = lambda *args: [h["position"] for h in _search(cli, db, *args)]  # noqa: E731
    assert positions("deploy", "--session-key", ADA) == [3, 2]
    assert positions("deploy", "--platform", "discord") == [6]
    assert positions("deploy", "--user", "ada") == [3, 2]  # the session's user, by name
    assert positions("deploy", "--user", "u2") == [6]
    assert positions("deploy", "--since", "2026-11-22T09:02Z") == [6, 3]
    assert positions("deploy", "--until", "2026-11-22T09:02Z") == [2]
    assert positions("deploy", "--platform", "slack") == []


def test_user_is_who_spoke_in_a_shared_group(
    tmp_path: Path, cli: Callable[..., Result], on: Callable[[Path], str]
) -> None:
    db, key = tmp_path / "group.db", "agent:main:slack:group:9"
    room = Source(platform="slack", chat_type="group", chat_id="9", user_id="u1",
                  user_name="Ada")  # fmt: skip
    with Ledger.open(db) as led:
        led.append(key, [SessionStarted(session_id="g1", source=room)])
        for user_id, name, text in (("u1", "Ada", "lunch at noon"), ("u2", "Bob", "lunch later")):
            led.append(key, [MessageAppended(session_id="g1", role="user", content=text,
                                             user_id=user_id, user_name=name)])  # fmt: skip
        led.append(key, [_say("g1", "assistant", "lunch booked")])
    target = on(db)
    speakers = lambda *a: [(h["position"], h["user_name"]) for h in _search(cli, target, *a)]  # noqa: E731
    assert speakers("lunch", "--user", "bob") == [(3, "Bob")]  # not Ada's, though she opened it
    assert speakers("lunch", "--user", "u1") == [(4, "Ada"), (2, "Ada")]  # the agent's: hers
    assert speakers("lunch") == [(4, "Ada"), (3, "Bob"), (2, "Ada")]


def test_relevance_order(ledger_db: Path) -> None:
    with reports.open_existing(ledger_db) as led:
        hits = search_messages(led, "deploy", order="relevance")
        assert hits[0].position == 6  # the shortest message ranks first
        assert sorted(h.position for h in hits) == [2, 3, 6]
        hits = search_messages(led, "deploy", SearchFilter(platform="telegram"), limit=1)
        assert [(h.position, h.marked("<", ">")) for h in hits] == [
            (3, "I will retry the <deploy> now")
        ]
        with pytest.raises(SearchSyntaxError, match="near"):
            search_messages(led, "deploy AND")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("AND", 'fts5: syntax error near "AND"'),
        ("e-mail", "no such column: mail"),
        ('"unterminated', "unterminated string"),
        ("(deploy", 'fts5: syntax error near ""'),
        ("*", "unknown special query"),
    ],
)
def test_fts_syntax_error_is_a_usage_error(
    ledger_db: Path, cli: Callable[..., Result], text: str, reason: str
) -> None:
    result = cli("search", "--db", str(ledger_db), text)
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Error: cannot read {text!r} as a search query ({reason})"
    assert lines[1].startswith('Try: words find words (cafe finds café); "a phrase"')
    assert "Traceback" not in result.output


def test_bad_values_are_usage_errors(ledger_db: Path, cli: Callable[..., Result]) -> None:
    for args, message in (
        (["  "], "Error: the search text is empty"),
        (["x", "--since", "someday"], "Try: give --since an ISO-8601 time"),
        (["x", "--platform", ""], "Invalid value for '--platform': the value is empty"),
        (["x", "--order", "best"], "Invalid value for '--order'"),
        (["x", "--limit", "0"], "Invalid value for '--limit'"),
    ):
        result = cli("search", "--db", str(ledger_db), *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output


def test_highlight_on_a_terminal(ledger_db: Path, tmp_path: Path) -> None:
    """On a terminal the match is bold and coloured (ANSI), without brackets."""
    leader, follower = pty.openpty()
    env = {**os.environ, "HERMES_HOME": str(tmp_path / "home")}
    try:
        done = subprocess.run(
            [installed_script(), "search", "--db", str(ledger_db), "cafe"],
            stdout=follower, stderr=subprocess.PIPE, env=env, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(follower)
    shown = b""
    try:
        while select.select([leader], [], [], 1.0)[0]:
            chunk = os.read(leader, 65536)
            if not chunk:
                break
            shown += chunk
    except OSError:  # EIO: the other end is closed and drained
        pass
    finally:
        os.close(leader)
    assert done.returncode == 0, done.stderr
    text = shown.decode()
    assert "\x1b[33m\x1b[1mcafé\x1b[0m" in text
    assert "[café]" not in text and "the deploy failed on the " in text


def test_the_documented_search_query_finds_what_the_library_finds(ledger_db: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "sql.md").read_text()
    found = re.search(r"```sql\n-- filter: search_newest_first\n(.*?)```", doc, re.S)
    assert found, "docs/sql.md has no query 'search_newest_first'"
    with reports.open_existing(ledger_db) as led:
        documented = led.query(found.group(1), {"query": "deploy", "platform": "telegram"})
        hits = search_messages(led, "deploy", SearchFilter(platform="telegram"))
    assert documented == [(h.session_key, h.session_id, h.role, h.ts, h.marked()) for h in hits]
    assert [row[4] for row in documented] == [
        "I will retry the [deploy] now",
        "the [deploy] failed on the café server",
    ]


def test_tz_shows_the_time_column_in_a_zone(ledger_db: Path, cli: Callable[..., Result]) -> None:
    result = cli("search", "--db", str(ledger_db), "cafe", "--tz", "Europe/Berlin")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2026-11-22T10:01:00.000000+01:00  agent:main:telegram:dm:1")
    (hit,) = _search(cli, ledger_db, "cafe", "--tz", "Europe/Berlin")
    assert hit["ts"] == "2026-11-22T09:01:00.000000Z"  # JSON stays UTC
    # A time typed without a zone is read in --tz: 10:02 in Berlin is 09:02 UTC.
    positions = [h["position"] for h in _search(cli, ledger_db, "deploy", "--tz", "Europe/Berlin",
                                                "--since", "2026-11-22T10:02")]  # fmt: skip
    assert positions == [6, 3]
