"""Subject access: ``export --user ID`` is everything the ledger holds about one
person (every event of the sessions they started, all roles, and their own
messages in other sessions), the same events an erasure of that user covers, as
JSONL and as readable Markdown (owner-only files), on a SQLite ledger and on the
same log in PostgreSQL (copied by ``migrate``): the same text from both."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backends import BACKENDS, pg_uri
from click.testing import Result
from helpers import ManualClock
from pg_support import fresh_database

from hermes_ledger.gateway import GatewayConfig, SessionSource
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.query import EventFilter, select_events

SHARED = GatewayConfig(group_sessions_per_user=False)
ADA = SessionSource(platform="discord", chat_id="g1", chat_type="group", user_id="u1",
                    user_name="ada", chat_name="crew")  # fmt: skip
BOB = SessionSource(platform="discord", chat_id="g1", chat_type="group", user_id="u2",
                    user_name="bob", chat_name="crew")  # fmt: skip
BOB_DM = SessionSource(platform="telegram", chat_id="d2", chat_type="dm", user_id="u2",
                       user_name="bob")  # fmt: skip


@pytest.fixture
def db(tmp_path: Path, clock: ManualClock) -> Path:
    """A group session ada opened and bob joined (a tool call, usage), then bob's DM."""
    path = tmp_path / "ledger.db"
    with Ledger.open(path, clock=clock) as led:
        store = SessionStore(led, SHARED, clock)
        group = store.get_or_create_session(ADA)
        clock.advance(seconds=5)
        store.append_to_transcript(
            group.session_id, {"role": "user", "content": "hi all"}, source=ADA
        )
        clock.advance(seconds=5)
        store.append_to_transcript(
            group.session_id, {"role": "user", "content": "hey ada\nwhat's up?"}, source=BOB
        )
        call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "web_search", "arguments": "{}"},
        }
        store.append_to_transcript(
            group.session_id, {"role": "assistant", "content": "", "tool_calls": [call]}
        )
        store.append_to_transcript(
            group.session_id,
            {"role": "tool", "content": "three results", "tool_name": "web_search",
             "tool_call_id": "c1"},
        )  # fmt: skip
        store.append_to_transcript(group.session_id, {"role": "assistant", "content": "hello both"})
        store.update_session(group.session_key, input_tokens=120, output_tokens=30, cost_usd=0.25)
        clock.advance(minutes=1)
        dm = store.get_or_create_session(BOB_DM)
        store.append_to_transcript(
            dm.session_id, {"role": "user", "content": "bob alone"}, source=BOB_DM
        )
        clock.advance(minutes=1)
        store.reset_session(dm.session_key)
    return path


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, db: Path, cli: Callable[..., Result]) -> Iterator[str]:
    """``db`` itself, or a PostgreSQL database holding the same log: its ``--db``."""
    if request.param == "sqlite":
        yield str(db)
        return
    with fresh_database() as dsn:
        copied = cli("migrate", "--to", dsn, "--from", str(db))
        assert copied.exit_code == 0, copied.output
        yield pg_uri(dsn)


def _markdown(result: Result) -> str:
    assert result.exit_code == 0, result.output
    # the export's own time and version line
    return re.sub(
        r"exported \S+ \S+ UTC by hermes-ledger [\w.+-]+?(?=\. |; )", "exported NOW", result.output
    )


def test_markdown_subject_access_of_the_group_opener(
    db: Path, target: str, cli: Callable[..., Result]
) -> None:
    with Ledger.open(db) as led:
        group = next(r.session_id for r in led.read_all() if r.type == "session_started")
    assert _markdown(cli("export", "--db", target, "--user", "u1", "--format", "markdown")) == (
        f"""# Ledger export: user u1

7 events, exported NOW. Times are UTC.

## Session `{group}`

- Key: `agent:main:discord:group:g1`
- Platform: discord (group "crew")
- Started: 2026-11-22 09:00:00 UTC by ada
- Usage: 120 input tokens, 30 output tokens, $0.2500

- 09:00:05 UTC **ada (user)**: hi all
- 09:00:10 UTC **bob (user)**: hey ada
  what's up?
- 09:00:10 UTC **assistant**: _calls `web_search`_
- 09:00:10 UTC **tool**: _result of `web_search`: 13 characters_
- 09:00:10 UTC **assistant**: hello both
"""
    )


def test_markdown_subject_access_of_a_member_and_a_dm(
    db: Path, target: str, cli: Callable[..., Result], tmp_path: Path
) -> None:
    out = tmp_path / "bob.md"
    result = cli("export", "--db", target, "--user", "u2", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    with Ledger.open(db) as led:
        starts = [r.session_id for r in led.read_all() if r.type == "session_started"]
    text = re.sub(
        r"exported \S+ \S+ UTC by hermes-ledger [\w.+-]+?(?=\. |; )",
        "exported NOW",
        out.read_text(),
    )
    assert text == (
        f"""# Ledger export: user u2

7 events, exported NOW. Times are UTC.

## Session `{starts[0]}`

- Key: `agent:main:discord:group:g1`
- Platform: discord (group)
- Started: 2026-11-22 09:00:00 UTC (by someone else: only this person's messages are exported)

- 09:00:10 UTC **bob (user)**: hey ada
  what's up?

## Session `{starts[1]}`

- Key: `agent:main:telegram:dm:d2`
- Platform: telegram (dm)
- Started: 2026-11-22 09:01:10 UTC by bob
- Ended: 2026-11-22 09:02:10 UTC (manual_reset)

- 09:01:10 UTC **bob (user)**: bob alone
- 09:02:10 UTC _session reset (/new)_
- 09:02:10 UTC _memory flush skipped (no flusher configured)_

## Session `{starts[2]}`

- Key: `agent:main:telegram:dm:d2`
- Platform: telegram (dm)
- Started: 2026-11-22 09:02:10 UTC by bob

_No messages._
"""
    )


def test_jsonl_subject_access_is_what_an_erasure_of_the_user_covers(
    db: Path, target: str, cli: Callable[..., Result]
) -> None:
    result = cli("export", "--db", target, "--user", "u2")
    assert result.exit_code == 0, result.output
    *lines, last = [json.loads(line) for line in result.output.splitlines()]
    assert [(x["position"], x["type"], x["data"].get("user_id")) for x in lines] == [
        (3, "message_appended", "u2"),  # in ada's session: only bob's own message
        (8, "session_started", None),  # his DM: all of it
        (9, "message_appended", "u2"),
        (10, "session_reset", None),
        (11, "memory_flush_skipped", None),
        (12, "session_ended", None),
        (13, "session_started", None),  # the DM's next session, started for him by the reset
    ]
    assert last["manifest"]["count"] == 7 and last["manifest"]["filters"] == {"user": "u2"}
    with Ledger.open(db) as led, Ledger.open(target) as log:
        for who in ("u1", "u2"):
            exported = list(select_events(led, EventFilter(user=who)))
            covered = log.erase(
                ErasureScope(kind="user", value=who), requested_by="t", dry_run=True
            )
            assert covered.events == len(exported)
            assert set(covered.sessions) == {r.session_id for r in exported}
