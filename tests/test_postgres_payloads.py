"""Personal content on PostgreSQL (ledger/postgres/migrations/0003_payloads.sql): the
append splits bodies as the SQLite store does, reads merge them back (event_bodies,
hl_merged = SQLite's json_patch text), verify checks the payloads, and the privileges.
A real server, a fresh database per test (tests/pg_support.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import ManualClock
from pg_support import as_user, fresh_database, login_role

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger import personal as personal_module
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import (
    EventModel,
    MemoryFlushed,
    MemoryFlushFailed,
    MessageAppended,
    SessionStarted,
)
from hermes_ledger.ledger.personal import ERASED
from hermes_ledger.ledger.postgres import PostgresLog

STREAM = "agent:main:telegram:dm:1"
AWKWARD = [
    "plain",
    'quote " and backslash \\ and slash /',
    "line\nbreak\ttab\r\x01\x1f\x7f",
    "nul \x00 inside",
    "literal \\u0000 and \\ud800\\udc00 typed",
    "emoji 🦊 é ü 中文 \u2028 \ufeff",
    "",
    "[erased]",
]


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def log(pg_dsn: str, clock: ManualClock) -> Iterator[PostgresLog]:
    with PostgresLog.open(pg_dsn, clock=clock) as opened:
        yield opened


@pytest.fixture
def same_salts(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Salts from a counter, restarted by the returned function: each backend's n-th
    payload gets the same salt, so the digests, metas and hashes of both can be
    compared (a salt is random otherwise)."""
    counter = itertools.count(1)

    def restart() -> None:
        nonlocal counter
        counter = itertools.count(1)

    monkeypatch.setattr(personal_module, "new_salt", lambda: next(counter).to_bytes(16, "big"))
    return restart


def _super(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET search_path = hermes_ledger")
    return conn


def personal_events(sid: str = "s1") -> list[EventModel]:
    """Every kind of personal field: nested (source), top-level, a list, awkward text."""
    source = {"platform": "telegram", "user_id": "u1", "user_name": "Ann \x00 \"A\"",
              "chat_name": "Chat 🦊", "chat_topic": "t\nopic"}  # fmt: skip
    events: list[EventModel] = [SessionStarted(session_id=sid, source=source)]  # type: ignore[arg-type]
    for i, text in enumerate(AWKWARD):
        events.append(
            MessageAppended(
                session_id=sid, role="user", content=text, user_id="u1", user_name=f"Ann {i}"
            )
        )
    events += [
        MessageAppended(session_id=sid, role="assistant", content=None),
        MessageAppended(
            session_id=sid,
            role="assistant",
            content="calling",
            tool_calls=[{"name": "search", "arguments": {"q": "a \x00 b", "n": 1.5e3}}],
        ),
        MemoryFlushed(session_id=sid, provider="mem", detail="kept \\ 3 facts"),
        MemoryFlushed(session_id=sid, provider="mem"),
        MemoryFlushFailed(session_id=sid, provider="mem", error="boom \x00"),
    ]
    return events


def test_personal_content_is_stored_apart_and_read_whole(log: PostgresLog, pg_dsn: str) -> None:
    events = personal_events()
    log.append(STREAM, events)
    with _super(pg_dsn) as conn:
        data = conn.execute("SELECT data FROM events WHERE position = 2").fetchone()
        bodies = conn.execute("SELECT count(*) FROM payloads").fetchone()
    assert data is not None and '"content":"[erased]"' in data[0] and "plain" not in data[0]
    assert bodies == (len(events) - 2,)  # the message without content and the bare flush
    read = list(log.read_all())
    assert [r.event for r in read] == [
        e.model_copy(update={"event_id": r.event_id}) for e, r in zip(events, read, strict=True)
    ]
    assert [r.event for r in log.read_stream(STREAM)] == [r.event for r in read]
    assert log.verify().ok
    # A retried append is recognised by its whole body (its salts are new).
    assert log.append(STREAM, events).duplicate


def test_same_rows_payloads_and_merged_bodies_as_sqlite(
    log: PostgresLog,
    pg_dsn: str,
    tmp_path: Path,
    clock: ManualClock,
    same_salts: Callable[[], None],
) -> None:
    events = personal_events()
    with Ledger.open(tmp_path / "l.db", clock=clock) as sqlite:
        lite_result = sqlite.append(STREAM, events, meta={"n": "\x00"})
        same_salts()
        assert log.append(STREAM, events, meta={"n": "\x00"}) == lite_result
        lite_rows = sqlite.query("SELECT * FROM events ORDER BY position")
        lite_payloads = sqlite.query("SELECT * FROM payloads ORDER BY position")
        lite_bodies = sqlite.query("SELECT * FROM event_bodies ORDER BY position")
        lite_read = list(sqlite.read_all())
    cols = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"
    with _super(pg_dsn) as conn:
        pg_rows = conn.execute(f"SELECT {cols}, occurred_at FROM events ORDER BY 1").fetchall()
        pg_payloads = conn.execute("SELECT * FROM payloads ORDER BY 1").fetchall()
        pg_bodies = conn.execute("SELECT * FROM event_bodies ORDER BY 1").fetchall()
    assert [tuple(r) for r in lite_rows] == pg_rows
    assert [(p, bytes(s), b) for p, s, b in lite_payloads] == [
        (p, bytes(s), b) for p, s, b in pg_payloads
    ]
    assert [(*tuple(r[:-1]), bool(r[-1])) for r in lite_bodies] == pg_bodies
    assert list(log.read_all()) == lite_read
    assert all(not r[-1] for r in pg_bodies)


def test_merge_matches_sqlite_json_patch(log: PostgresLog, tmp_path: Path) -> None:
    """hl_json_patch gives json_patch's text: order kept, members replaced in place,
    new ones appended, nulls removed, objects merged, values' text as written."""
    cases = [
        ('{"a":1,"b":"[erased]","c":3}', '{"b":"x\\u0000\\n"}'),
        ('{"a":{"x":1,"y":"[erased]"},"z":[1,2]}', '{"a":{"y":"é"},"n":{"k":null,"m":2}}'),
        ('{"a":1.50,"b":true}', '{"a":null,"c":[{"d":1e3}]}'),
        ('{"a":"\\\\u0000"}', '{"b":"\\ud83e\\udd8a"}'),
    ]
    with Ledger.open(tmp_path / "x.db") as sqlite:
        for target, patch in cases:
            lite = sqlite.query("SELECT json_patch(?, ?)", (target, patch))[0][0]
            row = log.connection.execute("SELECT hl_merged(%s, %s)", (target, patch)).fetchone()
            assert row == (lite,), (target, patch)


def test_erased_payload_reads_as_erased_and_verify_needs_an_erasure(
    log: PostgresLog, pg_dsn: str
) -> None:
    log.append(STREAM, personal_events())
    with _super(pg_dsn) as conn:
        conn.execute("DELETE FROM payloads WHERE position = 2")
        erased = conn.execute("SELECT data, erased FROM event_bodies WHERE position = 2").fetchone()
    assert erased is not None and erased[1] is True
    assert '"content":"[erased]"' in erased[0] and '"user_name":"[erased]"' in erased[0]
    rec = next(log.read_all(after=1, limit=1))
    assert isinstance(rec.event, MessageAppended) and rec.event.content == ERASED
    report = log.verify()
    assert not report.ok and report.first_bad_position == 2
    assert report.problem == "the event's payload is missing and no recorded erasure covers it"


def test_verify_accepts_payloads_an_erasure_covers(tmp_path: Path, pg_dsn: str) -> None:
    """A SQLite ledger with an erasure, copied row by row: the missing payloads are
    covered (the PostgreSQL scope queries agree with SQLite's)."""
    with Ledger.open(tmp_path / "l.db") as sqlite:
        sqlite.append(STREAM, personal_events("s1"))
        sqlite.append("other", personal_events("s2"))
        sqlite.erase(ErasureScope("session_id", "s1"), requested_by="t", dry_run=False)
        rows = [tuple(r) for r in sqlite.query("SELECT * FROM events ORDER BY position")]
        payloads = [tuple(p) for p in sqlite.query("SELECT * FROM payloads ORDER BY position")]
    with PostgresLog.open(pg_dsn) as log:
        log.insert_copied([r[:10] for r in rows], payloads)  # type: ignore[arg-type]
        assert log.verify().ok
        with _super(pg_dsn) as conn:
            conn.execute(
                "DELETE FROM payloads WHERE position = (SELECT max(position) FROM payloads)"
            )
        report = log.verify()
    assert not report.ok and report.problem and "no recorded erasure covers it" in report.problem


def test_verify_finds_an_edited_payload(log: PostgresLog, pg_dsn: str) -> None:
    log.append(STREAM, personal_events())
    with _super(pg_dsn) as conn, conn.transaction():
        conn.execute("ALTER TABLE payloads DISABLE TRIGGER payloads_refuse_update")
        conn.execute("UPDATE payloads SET body = replace(body, 'plain', 'forged')")
        conn.execute("ALTER TABLE payloads ENABLE TRIGGER payloads_refuse_update")
    report = log.verify()
    assert not report.ok and report.first_bad_position == 2
    assert report.problem == "the event's payload does not match the digest in its meta"


def test_payloads_cannot_be_updated_or_truncated(log: PostgresLog, pg_dsn: str) -> None:
    log.append(STREAM, personal_events())
    with _super(pg_dsn) as conn:
        for statement in ("UPDATE payloads SET body = '{}'", "TRUNCATE payloads"):
            with pytest.raises(psycopg.errors.RestrictViolation, match="only ever erased"):
                conn.execute(statement)


def test_writer_may_add_and_read_payloads_and_only_the_eraser_delete(
    pg_dsn: str, clock: ManualClock
) -> None:
    PostgresLog.open(pg_dsn).close()  # the owner applies the migrations
    with (
        login_role("hermes_ledger_writer") as writer,
        PostgresLog.open(as_user(pg_dsn, writer), clock=clock) as log,
    ):
        log.append(STREAM, personal_events())
        assert next(log.read_all(after=1)).event.content == "plain"  # type: ignore[attr-defined]
        assert log.verify().ok
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            log.connection.execute("DELETE FROM payloads WHERE position = 2")
    with (
        login_role("hermes_ledger_eraser") as eraser,
        psycopg.connect(as_user(pg_dsn, eraser), autocommit=True) as conn,
    ):
        conn.execute("SET search_path = hermes_ledger")
        deleted = conn.execute("DELETE FROM payloads WHERE position = 2")
        assert deleted.rowcount == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM events WHERE position = 2")
