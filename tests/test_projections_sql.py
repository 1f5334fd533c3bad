"""Every audit query in docs/sql.md, run against a known history."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import (
    EventModel,
    MemoryFlushed,
    MemoryFlushFailed,
    MemoryFlushSkipped,
    MessageAppended,
    SessionEnded,
    SessionExpired,
    SessionReset,
    SessionStarted,
    Source,
    UsageRecorded,
)
from hermes_ledger.projections.audits import run_report
from hermes_ledger.projections.definitions import SESSIONS, TRANSCRIPTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
QUERY = re.compile(r"```sql\n-- name: (\w+)\n(.*?)```", re.S)

A = "agent:main:telegram:dm:99"
B = "agent:main:discord:group:42:u7"
C = "agent:main:slack:channel:C1"
D = "agent:main:whatsapp:dm:55"


def queries() -> dict[str, str]:
    found = dict(QUERY.findall(DOC.read_text("utf-8")))
    assert len(found) == len(QUERY.findall(DOC.read_text("utf-8"))), "duplicate query names"
    return found


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def at(day: int, hour: int, minute: int) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """Four keys over two days: an idle expiry, a manual reset with a failed flush,
    a daily expiry with nothing to flush, a manual reset by the user, a stuck close."""
    clock = Clock()
    path = tmp_path_factory.mktemp("sql") / "ledger.db"
    led = Ledger.open(path, clock=clock)
    projections.attach(led)

    def add(when: datetime, key: str, *events: EventModel, **meta: Any) -> None:
        clock.now = when
        led.append(key, list(events), meta=meta or None)

    ann = Source(platform="telegram", chat_id="99", user_id="u1", user_name="Ann")
    group = Source(platform="discord", chat_type="group", chat_id="42", user_id="u7")
    channel = Source(platform="slack", chat_type="channel", chat_id="C1", chat_name="general")
    bob = Source(platform="whatsapp", chat_id="55", user_id="u55")

    add(at(20, 9, 0), A, SessionStarted(session_id="a1", source=ann))
    add(
        at(20, 9, 1),
        A,
        MessageAppended(session_id="a1", role="user", content="hello from telegram"),
    )
    add(
        at(20, 9, 2),
        A,
        MessageAppended(session_id="a1", role="assistant", content="hi Ann, how can I help"),
        UsageRecorded(session_id="a1", input_tokens=100, output_tokens=20, cost_usd=0.01),
    )
    add(at(20, 9, 3), B, SessionStarted(session_id="b1", source=group))
    add(
        at(20, 9, 4),
        B,
        MessageAppended(session_id="b1", role="user", content="deploy the branch please"),
    )
    add(
        at(20, 9, 5),
        B,
        MessageAppended(
            session_id="b1",
            role="assistant",
            content=None,
            tool_calls=[{"id": "c1", "function": {"name": "deploy"}}],
        ),
        MessageAppended(
            session_id="b1",
            role="tool",
            content="deployed branch main",
            tool_name="deploy",
            tool_call_id="c1",
        ),
        UsageRecorded(session_id="b1", input_tokens=300, output_tokens=50, cost_usd=0.02),
    )
    add(at(20, 9, 10), B, SessionReset(session_id="b1", trigger="/new"), actor="u7")
    add(at(20, 9, 10), B, MemoryFlushFailed(session_id="b1", provider="honcho", error="timeout"))
    add(at(20, 9, 11), B, SessionEnded(session_id="b1", reason="manual_reset"))
    add(
        at(20, 10, 31),
        A,
        SessionExpired(
            session_id="a1", reason="idle", deadline=at(20, 10, 30), evaluated_at=at(20, 10, 31)
        ),
        MemoryFlushed(session_id="a1", provider="honcho", detail="2 facts"),
        SessionEnded(session_id="a1", reason="idle_expiry"),
        SessionStarted(session_id="a2", source=ann, reason="auto_reset", previous_session_id="a1"),
    )
    add(at(20, 10, 32), A, MessageAppended(session_id="a2", role="user", content="back again café"))
    add(at(21, 8, 0), C, SessionStarted(session_id="c1", source=channel))
    add(
        at(21, 8, 5),
        C,
        MessageAppended(session_id="c1", role="user", content="daily standup notes"),
    )
    add(
        at(21, 8, 6),
        C,
        MessageAppended(session_id="c1", role="user", content="flush prompt", synthetic=True),
    )
    add(
        at(21, 9, 0),
        C,
        SessionExpired(
            session_id="c1", reason="daily", deadline=at(21, 9, 0), evaluated_at=at(21, 9, 0)
        ),
        MemoryFlushSkipped(session_id="c1"),
        SessionEnded(session_id="c1", reason="daily_reset"),
    )
    add(
        at(21, 9, 30),
        A,
        SessionReset(session_id="a2", trigger="/reset"),
        MemoryFlushed(session_id="a2", provider="honcho"),
        SessionEnded(session_id="a2", reason="manual_reset"),
    )
    add(
        at(21, 10, 0),
        D,
        SessionStarted(session_id="d1", source=bob),
        MessageAppended(session_id="d1", role="user", content="remember my birthday"),
    )
    add(at(21, 10, 5), D, SessionReset(session_id="d1", trigger="/new"))
    add(at(21, 10, 5), D, MemoryFlushFailed(session_id="d1", provider="honcho", error="quota"))
    add(at(21, 10, 6), D, MemoryFlushFailed(session_id="d1", provider="honcho", attempt=2,
                                            error="quota"))  # fmt: skip
    yield led
    led.close()


def run(led: Ledger, name: str, **params: object) -> list[tuple[object, ...]]:
    return list(led.connection.execute(queries()[name], params))


def t(day: int, hour: int, minute: int) -> str:
    return f"2026-11-{day}T{hour:02d}:{minute:02d}:00.000000Z"


EXPECTED: dict[str, tuple[dict[str, object], list[tuple[object, ...]]]] = {
    "idle_expiries_in_window": (
        {"since": "2026-11-20", "until": "2026-11-21"},
        [("a1", A, t(20, 10, 30), t(20, 10, 31), "idle_expiry")],
    ),
    "messages_per_platform_per_day": (
        {},
        [
            ("2026-11-20", "discord", 3, 1, 1, 1),
            ("2026-11-20", "telegram", 3, 2, 1, 2),
            ("2026-11-21", "slack", 1, 1, 0, 1),
            ("2026-11-21", "whatsapp", 1, 1, 0, 1),
        ],
    ),
    "full_text_search": ({"query": "cafe"}, [("a2", "user", "back again [café]")]),
    "usage_per_platform": (
        {},
        [
            ("discord", 1, 300, 50, 0.02),
            ("slack", 1, 0, 0, 0.0),
            ("telegram", 2, 100, 20, 0.01),
            ("whatsapp", 1, 0, 0, 0.0),
        ],
    ),
    "stuck_closes": ({}, [(D, "d1", "reset", t(21, 10, 5), "failed", 2)]),
    "failed_flush_attempts": (
        {},
        [
            ("b1", "honcho", 1, "timeout", t(20, 9, 10)),
            ("d1", "honcho", 1, "quota", t(21, 10, 5)),
            ("d1", "honcho", 2, "quota", t(21, 10, 6)),
        ],
    ),
    "transcript": (
        {"session_id": "b1"},
        [
            ("user", "deploy the branch please", None, None),
            ("assistant", None, None, None),
            ("tool", "deployed branch main", "deploy", "c1"),
        ],
    ),
    "sessions_of_a_key": (
        {"session_key": A},
        [("a1", "first", None, "idle_expiry", 2), ("a2", "auto_reset", "a1", "manual_reset", 1)],
    ),
    "ends_without_cause_or_flush": ({}, []),
    "projection_lag": (
        {},
        [("sessions", SESSIONS.version, 31, 0), ("transcripts", TRANSCRIPTS.version, 31, 0)],
    ),
    "next_deadlines": ({}, [(D, "d1", "closing", None, None)]),  # no scheduler has run
    "events_in_business_window": (
        {"since": t(21, 9, 0), "until": t(21, 9, 30)},
        [
            (21, "session_expired", "c1", t(21, 9, 0), t(21, 9, 0)),
            (22, "memory_flush_skipped", "c1", t(21, 9, 0), t(21, 9, 0)),
            (23, "session_ended", "c1", t(21, 9, 0), t(21, 9, 0)),
        ],
    ),
}


def test_the_page_has_at_least_eight_queries_and_each_is_tested() -> None:
    assert len(queries()) >= 8
    assert set(queries()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_audit_query(history: Ledger, name: str) -> None:
    params, expected = EXPECTED[name]
    assert run(history, name, **params) == expected


def test_the_queries_give_the_same_answers_after_a_rebuild(history: Ledger) -> None:
    before = {name: run(history, name, **params) for name, (params, _) in EXPECTED.items()}
    projections.rebuild(history, chunk_size=4)
    assert {name: run(history, name, **p) for name, (p, _) in EXPECTED.items()} == before


# Queries 3-5 of the page are named reports (projections/audits.py, docs/sql.md "Named
# reports"): run here on the same history, they give what the page's queries gave.
REPORTED: list[tuple[str, dict[str, str], list[tuple[object, ...]]]] = [
    (
        "unflushed-ends",
        {},
        [
            ("b1", B, "discord", "failed", 1, "timeout", "manual_reset", t(20, 9, 11)),
            ("c1", C, "slack", "skipped", 0, "no flusher configured", "daily_reset", t(21, 9, 0)),
        ],
    ),
    ("unflushed-ends", {"platform": "slack", "until": "2026-11-21"}, []),
    (
        "idle-before-close",
        {},
        [
            ("a2", A, "telegram", t(20, 10, 32), t(21, 9, 30), "manual_reset", 82680.0),
            ("a1", A, "telegram", t(20, 9, 2), t(20, 10, 31), "idle_expiry", 5340.0),
            ("c1", C, "slack", t(21, 8, 5), t(21, 9, 0), "daily_reset", 3300.0),
            ("b1", B, "discord", t(20, 9, 5), t(20, 9, 11), "manual_reset", 360.0),
        ],
    ),
    (
        "resets-by-user",
        {"user": "u1"},
        [("u1", "Ann", "a2", A, "telegram", "/reset", t(21, 9, 30))],
    ),
    # the recorded actor of b1's reset, not the session's (group) user
    ("resets-by-user", {"user": "u7"}, [("u7", None, "b1", B, "discord", "/new", t(20, 9, 10))]),
    ("resets-by-user", {"user": "nobody"}, []),
]


@pytest.mark.parametrize(("name", "params", "expected"), REPORTED)
def test_the_named_reports_on_the_same_history(
    history: Ledger, name: str, params: dict[str, str], expected: list[tuple[object, ...]]
) -> None:
    assert list(run_report(history, name, params).rows) == expected


def test_an_end_without_its_cause_is_found(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "bad.db") as led:
        source = Source(platform="local")
        led.append("k", [SessionStarted(session_id="x", source=source)])
        led.append("k", [SessionEnded(session_id="x", reason="shutdown")])
        assert list(led.connection.execute(queries()["ends_without_cause_or_flush"])) == [("x", 2)]
