"""Erasure on PostgreSQL (PostgresLog.erase, projections/postgres/erasing.py), against
a real server (a fresh database per test, tests/pg_support.py): every scope covers
the same positions on both backends (one definition, ledger.erasure.SCOPE_PARTS);
the same events and the same erasure give the same chain and the same projection
rows on SQLite and PostgreSQL; dry runs, re-runs, verify, rebuild; the roles."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from helpers import ManualClock
from pg_support import as_user, fresh_database, login_role
from test_postgres_projections import KEY, OTHER, Both, conversation

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger import personal as personal_module
from hermes_ledger.ledger.erasure import SCOPE_SQL as SQLITE_SCOPE_SQL
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.payloads import SCOPE_SQL as PG_SCOPE_SQL
from hermes_ledger.projections import postgres as pgp

SCOPES = [
    ErasureScope("user", "u1"),
    ErasureScope("user", "7"),
    ErasureScope("session_key", KEY),
    ErasureScope("session_id", "g1"),
    ErasureScope("session_id", "s2"),
    ErasureScope("retention", before=datetime(2026, 11, 22, 9, 0, 5, tzinfo=UTC)),
    ErasureScope("retention", platform="telegram", before=datetime(2030, 1, 1, tzinfo=UTC)),
    ErasureScope("retention", chat_type="group", before=datetime(2030, 1, 1, tzinfo=UTC)),
    ErasureScope(
        "retention",
        platform="discord",
        chat_type="group",
        before=datetime(2026, 11, 22, 9, 0, 7, tzinfo=UTC),
    ),
]


@pytest.fixture(autouse=True)
def same_salts(monkeypatch: pytest.MonkeyPatch) -> None:
    """One salt for every payload: both backends then write the same metas, so
    their hash chains (and the subject_erased rows) can be compared."""
    monkeypatch.setattr(personal_module, "new_salt", lambda: b"\x07" * 16)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def both(tmp_path: Path, pg_dsn: str, clock: ManualClock) -> Iterator[Both]:
    with (
        PostgresLog.open(pg_dsn, clock=clock) as log,
        Ledger.open(tmp_path / "ledger.db", clock=clock) as led,
    ):
        pgp.attach(log)
        projections.attach(led)
        yield Both(led, log, clock)


def _super(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET search_path = hermes_ledger")
    return conn


def _payload_count(dsn: str) -> int:
    with _super(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM payloads").fetchone()[0])  # type: ignore[index]


def test_every_scope_covers_the_same_positions_on_both_backends(both: Both) -> None:
    conversation(both)
    head = both.led.head()
    assert both.log.head() == head
    for scope in SCOPES:
        bindings = scope.bindings(head)
        lite = sorted(r[0] for r in both.led.query(SQLITE_SCOPE_SQL[scope.kind], bindings))
        rows = both.log.connection.execute(PG_SCOPE_SQL[scope.kind], bindings).fetchall()
        assert lite, scope  # every scope covers something here
        assert sorted(r[0] for r in rows) == lite, scope
        # and the dry runs (the erase's own counting) agree, changing nothing
        dry_lite = both.led.erase(scope, requested_by="dpo", dry_run=True)
        dry_pg = both.log.erase(scope, requested_by="dpo", dry_run=True)
        assert dry_pg == dry_lite
        assert dry_pg.events == len(set(lite)) and dry_pg.position is None
    assert both.log.head() == head and both.led.head() == head


def test_the_same_erasure_gives_the_same_chain_and_rows_on_both(both: Both, pg_dsn: str) -> None:
    conversation(both)
    held = _payload_count(pg_dsn)
    scope = ErasureScope("user", "u1")
    lite = both.led.erase(scope, requested_by="dpo@example.com", dry_run=False)
    pg = both.log.erase(scope, requested_by="dpo@example.com", dry_run=False)
    assert pg.position == lite.position == both.log.head()
    assert (pg.events, pg.messages, pg.sessions, pg.payloads) == (
        lite.events, lite.messages, lite.sessions, lite.payloads,
    )  # fmt: skip
    assert pg.sessions == ("s1", "s2") and pg.payloads > 0
    assert pg.vacuumed is True and pg.warnings == []
    assert _payload_count(pg_dsn) == held - pg.payloads
    # the same subject_erased row, chained to the same hash
    lite_head = both.led.query("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
    assert both.log.head_row() == tuple(lite_head[0])
    assert both.log.verify().ok
    state = both.assert_same()
    assert [m["content"] for m in state.transcripts["s1"]] == ["[erased]", None, "[erased]"]
    assert state.session_map[KEY]["user_name"] == "[erased]"
    assert "Ann" not in str(state.session_map[KEY]) and "Ann" not in str(state.session_history)
    assert state.session_history["s1"]["flush_detail"] == "[erased]"
    assert state.transcripts["g1"][0]["content"] == "group hello"  # not the user's
    assert pgp.search_messages(both.log, "brave") == []
    assert [h.session_id for h in pgp.search_messages(both.log, "group")] == ["g1"]
    assert pgp.verify(both.log).ok  # the live rows equal a replay's
    pgp.rebuild(both.log)
    projections.rebuild(both.led)
    assert both.assert_same() == state
    # a re-run is harmless: nothing left to delete, the same rows
    both.clock.advance(seconds=1)
    again = both.log.erase(scope, requested_by="dpo@example.com", dry_run=False)
    both.led.erase(scope, requested_by="dpo@example.com", dry_run=False)
    assert again.payloads == 0 and again.events == pg.events
    assert both.log.verify().ok
    after = both.assert_same()
    assert (after.session_map, after.session_history, after.transcripts) == (
        state.session_map, state.session_history, state.transcripts,
    )  # fmt: skip


def test_erasing_other_scopes_keeps_both_backends_equal(both: Both) -> None:
    conversation(both)
    for scope in (SCOPES[3], SCOPES[5]):
        lite = both.led.erase(scope, requested_by="retention", dry_run=False)
        pg = both.log.erase(scope, requested_by="retention", dry_run=False)
        assert (pg.position, pg.events, pg.payloads) == (lite.position, lite.events, lite.payloads)
        both.clock.advance(seconds=1)
    assert both.log.verify().ok
    state = both.assert_same()
    assert state.session_map[OTHER]["display_name"] == "[erased]"
    assert pgp.verify(both.log).ok


def test_a_dry_run_changes_nothing(both: Both, pg_dsn: str) -> None:
    conversation(both)
    head, held = both.log.head(), _payload_count(pg_dsn)
    before = pgp.live_state(both.log)
    report = both.log.erase(ErasureScope("session_key", KEY), requested_by="dpo")
    assert report.dry_run and report.events > 0 and report.payloads > 0
    assert (both.log.head(), _payload_count(pg_dsn)) == (head, held)
    assert pgp.live_state(both.log) == before
    with pytest.raises(LedgerError, match="requested_by"):
        both.log.erase(ErasureScope("session_key", KEY), requested_by=" ", dry_run=False)


def test_the_writer_is_refused_and_the_eraser_may_erase(pg_dsn: str, clock: ManualClock) -> None:
    with PostgresLog.open(pg_dsn, clock=clock) as owner:
        owner.append(KEY, conversation_events())
        head = owner.head()
    held = _payload_count(pg_dsn)
    scope = ErasureScope("session_id", "s1")
    with (
        login_role("hermes_ledger_writer") as writer,
        PostgresLog.open(as_user(pg_dsn, writer), clock=clock) as log,
    ):
        assert log.erase(scope, requested_by="dpo").payloads == held  # a dry run may
        with pytest.raises(LedgerError, match="may not erase") as caught:
            log.erase(scope, requested_by="dpo", dry_run=False)
        assert "hermes_ledger_eraser" in (caught.value.hint or "")
        assert log.head() == head
    assert _payload_count(pg_dsn) == held
    with (
        login_role("hermes_ledger_eraser") as eraser,
        PostgresLog.open(as_user(pg_dsn, eraser), clock=clock) as log,
    ):
        report = log.erase(scope, requested_by="dpo", dry_run=False)
        assert report.payloads == held and report.position == head + 1
        assert report.vacuumed is False  # not the tables' owner: an operator must
        assert any("VACUUM" in w for w in report.warnings)
        assert log.verify().ok
        assert next(log.read_all(after=1)).event.content == "[erased]"  # type: ignore[attr-defined]
    assert _payload_count(pg_dsn) == 0


def conversation_events() -> list:  # type: ignore[type-arg]
    from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source

    source = Source(platform="telegram", chat_id="99", user_id="u1", user_name="Ann")
    return [
        SessionStarted(session_id="s1", source=source),
        MessageAppended(session_id="s1", role="user", content="secret one", user_id="u1"),
        MessageAppended(session_id="s1", role="assistant", content="secret two"),
    ]
