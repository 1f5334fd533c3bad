"""The log on PostgreSQL (hermes_ledger.ledger.postgres), against a real server: a
fresh database per test (tests/pg_support.py says which server, and when these
tests skip or fail for want of one)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import ManualClock, next_line
from pg_support import as_user, fresh_database, login_role

from hermes_ledger.ledger import (
    NO_STREAM,
    STREAM_EXISTS,
    ConcurrencyError,
    ExpectedVersionError,
    IdempotencyError,
    Ledger,
    LedgerError,
    LedgerTooNewError,
    SessionAlreadyEndedError,
    personal,
)
from hermes_ledger.ledger.events import (
    MessageAppended,
    SessionEnded,
    SessionStarted,
    UsageRecorded,
)
from hermes_ledger.ledger.postgres import WRITER_ROLE, PostgresLog

STREAM = "agent:main:telegram:dm:1"


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture
def log(pg_dsn: str, clock: ManualClock) -> Iterator[PostgresLog]:
    with PostgresLog.open(pg_dsn, clock=clock) as opened:
        yield opened


def _super(dsn: str) -> psycopg.Connection:
    """The test server's own role (a superuser) on the test database."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("SET search_path = hermes_ledger")
    return conn


def started(sid: str = "s1", **kw: object) -> SessionStarted:
    return SessionStarted(session_id=sid, source={"platform": "telegram"}, **kw)  # type: ignore[arg-type]


def said(sid: str = "s1", text: str | None = "hi", **kw: object) -> MessageAppended:
    return MessageAppended(session_id=sid, role="user", content=text, **kw)  # type: ignore[arg-type]


def ended(sid: str = "s1", **kw: object) -> SessionEnded:
    return SessionEnded(session_id=sid, reason="reset", **kw)  # type: ignore[arg-type]


# -- appending and reading ----------------------------------------------------


def test_append_read_and_verify(log: PostgresLog) -> None:
    assert log.head() == 0 and log.verify().ok
    first = log.append(STREAM, [started()], NO_STREAM)
    second = log.append(STREAM, [said(text="a"), said(text="b")], 1, meta={"actor": "t"})
    log.append("other", [started("s2")])
    assert (first.positions, first.version) == ((1,), 1)
    assert (second.positions, second.version, second.duplicate) == ((2, 3), 3, False)
    assert log.head() == 4 and log.stream_version(STREAM) == 3
    assert log.stream_version("nobody") == 0
    assert [r.position for r in log.read_all()] == [1, 2, 3, 4]
    assert [r.position for r in log.read_all(after=2, limit=1)] == [3]
    assert [r.position for r in log.read_all(types=["session_started"])] == [1, 4]
    assert [r.version for r in log.read_stream(STREAM, after_version=1)] == [2, 3]
    rec = next(log.read_stream(STREAM, after_version=2))
    assert rec.meta == {"schema_version": 1, "payload": rec.meta["payload"], "actor": "t"}
    assert rec.event == said(text="b", event_id=rec.event_id)
    assert log.head_row() == (4, next(log.read_all(after=3)).hash)
    report = log.verify()
    assert report.ok and report.checked == 4 and str(report).startswith("ok: 4 events")


def test_expected_versions(log: PostgresLog) -> None:
    with pytest.raises(ConcurrencyError, match="expected at stream exists, but it has no events"):
        log.append(STREAM, [started()], STREAM_EXISTS)
    log.append(STREAM, [started()], NO_STREAM)
    with pytest.raises(ConcurrencyError, match="is at version 1"):
        log.append(STREAM, [said()], NO_STREAM)
    with pytest.raises(ConcurrencyError):
        log.append(STREAM, [said()], 5)
    with pytest.raises(ExpectedVersionError):
        log.append(STREAM, [said()], -1)  # type: ignore[arg-type]
    assert log.append(STREAM, [said()], 1).version == 2
    assert log.append(STREAM, [said()], STREAM_EXISTS).version == 3
    assert log.head() == 3  # the refused appends wrote nothing


def test_retried_append_returns_the_original_positions(log: PostgresLog) -> None:
    log.append("other", [started("s0")])
    batch = [started(event_id="e1"), said(event_id="e2")]
    original = log.append(STREAM, batch, NO_STREAM)
    again = log.append(STREAM, batch, NO_STREAM)  # expected version no longer holds
    anyway = log.append(STREAM, batch)
    assert original.positions == (2, 3) and not original.duplicate
    assert again == anyway == type(original)((2, 3), 2, True)
    assert log.head() == 3
    with pytest.raises(IdempotencyError, match="already in the log, others are not"):
        log.append(STREAM, [said(event_id="e3"), said(event_id="e2")])
    with pytest.raises(IdempotencyError, match="with different content"):
        log.append(STREAM, [said(text="changed", event_id="e2")])
    assert log.head() == 3 and log.verify().ok


def test_one_session_ended_per_session(log: PostgresLog, pg_dsn: str) -> None:
    log.append(STREAM, [started(), ended()])
    with pytest.raises(SessionAlreadyEndedError, match="'s1' has already ended"):
        log.append("elsewhere", [ended()])
    assert log.head() == 2
    # A property of the database, whoever writes: the index refuses a raw row too.
    with _super(pg_dsn) as conn, pytest.raises(psycopg.errors.UniqueViolation) as exc:
        conn.execute(
            "INSERT INTO events (position, event_id, stream, version, type, session_id, data,"
            " meta, recorded_at, hash) VALUES (3, 'x', 'raw', 1, 'session_ended', 's1', '{}',"
            " '{}', '2026-01-01T00:00:00.000000Z', repeat('a', 64))"
        )
    assert exc.value.diag.constraint_name == "events_one_end_per_session"


# -- what the database refuses ---------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "word"),
    [
        ("UPDATE events SET type = 'x'", "updated"),
        ("DELETE FROM events", "deleted"),
        ("TRUNCATE events", "truncated"),
    ],
)
def test_triggers_refuse_changes(log: PostgresLog, pg_dsn: str, statement: str, word: str) -> None:
    log.append(STREAM, [started(), said()])
    with _super(pg_dsn) as conn, pytest.raises(psycopg.errors.RestrictViolation) as exc:
        conn.execute(statement)
    assert exc.value.diag.message_primary == (
        f"the ledger is append-only: events cannot be {word}; "
        + (
            "append a new event instead"
            if word == "updated"
            else "export and start a new ledger instead"
        )
    )
    assert log.head() == 2 and log.verify().ok


def test_invalid_json_is_refused(log: PostgresLog, pg_dsn: str) -> None:
    with _super(pg_dsn) as conn, pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute(
            "INSERT INTO events (position, event_id, stream, version, type, data, meta,"
            " recorded_at, hash) VALUES (1, 'x', 's', 1, 't', '{not json', '{}',"
            " '2026-01-01T00:00:00.000000Z', repeat('a', 64))"
        )


def test_writer_role_may_only_insert_and_select(pg_dsn: str, clock: ManualClock) -> None:
    PostgresLog.open(pg_dsn).close()  # the owner applies the migrations (and makes the role)
    with login_role(WRITER_ROLE) as user:
        writer_dsn = as_user(pg_dsn, user)
        with PostgresLog.open(writer_dsn, clock=clock) as log:
            assert log.append(STREAM, [started(), said()]).positions == (1, 2)
            assert [r.position for r in log.read_all()] == [1, 2]
            assert log.verify().ok
        with psycopg.connect(writer_dsn, autocommit=True) as conn:
            conn.execute("SET search_path = hermes_ledger")
            for statement in (
                "DROP TRIGGER events_refuse_update ON events",
                "ALTER TABLE events DISABLE TRIGGER USER",
                "BEGIN; LOCK TABLE events IN EXCLUSIVE MODE",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
                if statement.startswith("BEGIN"):
                    conn.execute("ROLLBACK")
            conn.execute("GRANT UPDATE, DELETE, TRUNCATE ON events TO CURRENT_USER")  # a no-op
            assert conn.execute(
                "SELECT has_table_privilege('events', 'UPDATE')"
                " OR has_table_privilege('events', 'DELETE')"
                " OR has_table_privilege('events', 'TRUNCATE')"
            ).fetchone() == (False,)
            # Even with every trigger gone, the privileges refuse the change.
            with _super(pg_dsn) as owner:
                owner.execute("ALTER TABLE events DISABLE TRIGGER USER")
            for statement in (
                "UPDATE events SET type = 'x'",
                "DELETE FROM events",
                "TRUNCATE events",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                    conn.execute(statement)
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (2,)


def test_writer_cannot_migrate_a_new_database(pg_dsn: str) -> None:
    PostgresLog.open(pg_dsn).close()  # the writer role exists on the server from now on
    with fresh_database() as other, login_role(WRITER_ROLE) as user:
        with pytest.raises(LedgerError, match="migrations this role may not apply") as exc:
            PostgresLog.open(as_user(other, user))
        assert exc.value.hint and "owner" in exc.value.hint


# -- migrations -------------------------------------------------------------------


def test_migrations_are_recorded_and_applied_once(pg_dsn: str) -> None:
    PostgresLog.open(pg_dsn).close()
    PostgresLog.open(pg_dsn).close()
    with _super(pg_dsn) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
        assert rows == [
            (1, "0001_events.sql"),
            (2, "0002_writer_role.sql"),
            (3, "0003_payloads.sql"),
            (4, "0004_gateway_state.sql"),
            (5, "0005_append_cost.sql"),
            (6, "0006_reader_role.sql"),
            (7, "0007_scheduler_state.sql"),
        ]
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (99, '0099_future.sql')")
    with pytest.raises(LedgerTooNewError, match="migration 99") as exc:
        PostgresLog.open(pg_dsn)
    assert exc.value.hint == "upgrade hermes-ledger"


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(
        LedgerError, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1:1/x"
    ) as exc:
        PostgresLog.open("postgresql://127.0.0.1:1/x", connect_timeout=2)
    assert exc.value.hint and "server is running" in exc.value.hint


# -- the chain ---------------------------------------------------------------------


def test_verify_finds_a_row_edited_with_the_triggers_disabled(
    log: PostgresLog, pg_dsn: str
) -> None:
    log.append(STREAM, [started(), said(text="original"), said(text="later")])
    with _super(pg_dsn) as conn, conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_refuse_update")
        conn.execute(
            "UPDATE events SET data = replace(data, '\"user\"', '\"assistant\"') WHERE position = 2"
        )
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_refuse_update")
    report = log.verify()
    assert not report.ok and report.first_bad_position == 2
    assert report.problem == "hash does not match the row's content and the previous hash"
    assert log.verify(after=(2, next(log.read_all(after=1)).hash)).ok  # from a trusted row on


def test_same_events_give_the_same_hashes_as_sqlite(
    log: PostgresLog, pg_dsn: str, tmp_path: Path, clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The rows, payloads, hashes and business times agree byte for byte, events
    with personal content (split into a payload) included. Salts come from a counter
    restarted before each append, so both backends salt alike (random otherwise)."""
    counter = iter(())

    def salt() -> bytes:
        return next(counter).to_bytes(16, "big")

    monkeypatch.setattr(personal, "new_salt", salt)
    week_ago = "2026-11-15T10:00:00.123456789+02:00"
    source = {"platform": "telegram", "user_id": "u1", "user_name": "Ann", "chat_name": "é"}
    batches = [
        (STREAM, [started(event_id="a1", occurred_at=week_ago)], {"actor": "import"}),
        (STREAM, [said(text=None, event_id="a2"), ended(event_id="a3")], None),
        (
            "usage",
            [UsageRecorded(event_id="a4", session_id="s1", input_tokens=3)],
            {"é": "ü\u0000"},
        ),
        ("k2", [SessionStarted(session_id="s2", event_id="b1", source=source)], None),  # type: ignore[arg-type]
        ("k2", [said("s2", "nul \x00, \\u0000 \"q\" 🦊\n", event_id="b2", user_name="A"),
                said("s2", "", event_id="b3"), ended("s2", event_id="b4")], {"n": 1}),
    ]  # fmt: skip
    with Ledger.open(tmp_path / "l.db", clock=clock) as sqlite:
        for stream, events, meta in batches:
            counter = itertools.count(1)
            lite = sqlite.append(stream, events, meta=meta)
            counter = itertools.count(1)
            assert lite == log.append(stream, events, meta=meta)
            clock.advance(seconds=1.5)
        sqlite_rows = sqlite.query("SELECT *, occurred_at FROM events ORDER BY position")
        sqlite_payloads = sqlite.query("SELECT * FROM payloads ORDER BY position")
        sqlite_read = list(sqlite.read_all())
    with _super(pg_dsn) as conn:
        pg_rows = conn.execute(
            "SELECT position, event_id, stream, version, type, session_id, data, meta,"
            " recorded_at, hash, occurred_at, occurred_at FROM events ORDER BY position"
        ).fetchall()
        pg_payloads = conn.execute("SELECT position, salt, body FROM payloads ORDER BY 1")
        assert [tuple(p) for p in sqlite_payloads] == pg_payloads.fetchall()
    assert [tuple(r) for r in sqlite_rows] == pg_rows
    assert sqlite_rows[0][10] == "2026-11-15T08:00:00.123456Z"
    assert len(sqlite_payloads) == 3 and list(log.read_all()) == sqlite_read
    assert log.verify().ok


# -- many writers --------------------------------------------------------------------


def test_concurrent_writer_processes_leave_no_gap(log: PostgresLog, pg_dsn: str) -> None:
    """Four writer processes append at once; a reader polling meanwhile never sees a
    position without every position before it."""
    per_writer = 60
    script = Path(__file__).with_name("pg_support.py")
    writers = [
        subprocess.Popen(
            [sys.executable, str(script), pg_dsn, f"w{n}", str(per_writer)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    try:
        for proc in writers:
            assert next_line(proc) == "ready\n"
        for proc in writers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        seen = 0
        snapshots = 0
        with _super(pg_dsn) as reader:
            while seen < 4 * per_writer:
                count, top = reader.execute(
                    "SELECT count(*), coalesce(max(position), 0) FROM events"
                ).fetchone()  # type: ignore[misc]
                assert count == top, f"a reader saw {count} events up to position {top}"
                new = [r.position for r in log.read_all(after=seen)]
                assert new == list(range(seen + 1, seen + 1 + len(new)))
                seen += len(new)
                snapshots += 1
                if any(p.poll() not in (None, 0) for p in writers):
                    break
        for proc in writers:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert out == "done\n"
    finally:
        for proc in writers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert log.head() == 4 * per_writer and snapshots > 1
    assert all(log.stream_version(f"w{n}") == per_writer for n in range(4))
    assert log.verify().ok


def test_connections_keep_alive_and_the_dsn_says_how(pg_dsn: str) -> None:
    """A silent server or network is noticed (TCP keepalives on every connection of
    the ledger), with the DSN's own settings winning over ours."""
    with PostgresLog.open(pg_dsn) as log:
        ours = log.connection.info.get_parameters()
    assert (ours["keepalives"], ours["keepalives_idle"], ours["keepalives_count"]) == (
        "1", "30", "3"
    )  # fmt: skip
    own = psycopg.conninfo.make_conninfo(pg_dsn, keepalives_idle="5")
    with PostgresLog.open(own) as log:
        assert log.connection.info.get_parameters()["keepalives_idle"] == "5"
