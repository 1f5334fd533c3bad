"""Opening files: connection setup, migrations, and refusing what is not ours."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import apsw
import pytest

from hermes_ledger.gateway.hooks.delivery import dead_letters, hook_states
from hermes_ledger.ledger import Ledger, LedgerError, LedgerTooNewError, NotALedgerError
from hermes_ledger.ledger.events import SessionEnded, SessionStarted, Source
from hermes_ledger.ledger.schema import (
    APPLICATION_ID,
    Migration,
    busy_handler,
    connect,
    latest_version,
    load_migrations,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_connection_setup_took_effect(db_path: Path) -> None:
    conn, version = connect(db_path)
    assert version == 0  # blank file, not migrated yet
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    # The ledger's own busy handler, not SQLite's (whose timeout this pragma reports).
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -16 * 1024
    conn.close()
    conn, _ = connect(db_path, synchronous="full", busy_timeout=2.5)
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    conn.close()


def test_busy_handler_waits_up_to_the_busy_timeout(db_path: Path) -> None:
    holder, _ = connect(db_path)
    waiter, _ = connect(db_path, busy_timeout=0.3)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(apsw.BusyError):
        waiter.execute("BEGIN IMMEDIATE")
    assert time.monotonic() - started >= 0.3  # it waited the whole timeout, then gave up
    holder.execute("COMMIT")
    waiter.execute("BEGIN IMMEDIATE")  # the lock is free: taken at once
    waiter.execute("COMMIT")
    holder.close()
    waiter.close()


def test_busy_handler_gives_up_after_its_deadline() -> None:
    handler = busy_handler(0.0)
    assert handler(0) is True  # the first busy try of a wait sets the deadline
    assert handler(1) is False  # past it: SQLite returns SQLITE_BUSY
    assert handler(0) is True  # a new wait starts a new deadline


def test_unknown_synchronous_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(LedgerError, match="synchronous must be one of OFF, NORMAL, FULL, EXTRA"):
        Ledger.open(db_path, synchronous="sometimes")


def test_new_ledger_is_migrated_and_identified(led: Ledger) -> None:
    conn = led.connection
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
    applied = conn.execute("SELECT version, name FROM ledger_migrations").fetchall()
    assert applied == [(m.version, m.name) for m in load_migrations()]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert {"events", "ledger_migrations"} <= tables
    strict = conn.execute("SELECT strict FROM pragma_table_list WHERE name = 'events'").fetchone()
    assert strict == (1,)


def test_reopening_applies_nothing_twice(db_path: Path) -> None:
    for _ in range(3):
        with Ledger.open(db_path) as led:
            rows = led.connection.execute("SELECT count(*) FROM ledger_migrations").fetchone()
            assert rows[0] == latest_version()


def test_new_ledger_files_are_private(db_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Ledger.open(db_path) as led:
            led.append("k", [SessionStarted(session_id="s", source=Source(platform="cli"))])
            wal, shm = Path(f"{db_path}-wal"), Path(f"{db_path}-shm")
            assert wal.exists() and shm.exists()
            assert _mode(db_path) == 0o600
            assert _mode(wal) == 0o600
            assert _mode(shm) == 0o600
    finally:
        os.umask(old)


def test_a_file_that_is_not_sqlite_is_refused_untouched(db_path: Path) -> None:
    db_path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = db_path.read_bytes()
    with pytest.raises(NotALedgerError, match=f"{db_path} is not a SQLite database") as info:
        Ledger.open(db_path)
    assert "--db" in (info.value.hint or "")
    assert db_path.read_bytes() == before
    assert _siblings(db_path) == ["ledger.db"]


def test_a_sqlite_file_that_is_not_a_ledger_is_refused_untouched(db_path: Path) -> None:
    conn = apsw.Connection(str(db_path))
    conn.execute("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep me')")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(NotALedgerError, match="a SQLite database but not a hermes-ledger"):
        Ledger.open(db_path)
    assert db_path.read_bytes() == before
    assert _siblings(db_path) == ["ledger.db"]  # no WAL was switched on


def test_another_applications_database_is_refused(db_path: Path) -> None:
    conn = apsw.Connection(str(db_path))
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    with pytest.raises(NotALedgerError, match="application_id 0x4d2"):
        Ledger.open(db_path)


def test_a_ledger_newer_than_the_code_is_refused_untouched(db_path: Path) -> None:
    with Ledger.open(db_path):
        pass
    conn = apsw.Connection(str(db_path))
    conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    conn.execute("PRAGMA journal_mode = DELETE").fetchall()
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(LedgerTooNewError, match="written by a newer hermes-ledger") as info:
        Ledger.open(db_path)
    assert str(db_path) in str(info.value)
    assert "upgrade" in (info.value.hint or "")
    assert db_path.read_bytes() == before


def test_an_empty_file_becomes_a_ledger(db_path: Path) -> None:
    db_path.touch()
    with Ledger.open(db_path) as led:
        assert led.head() == 0


def test_missing_directory_and_directory_paths_are_explained(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist") as info:
        Ledger.open(tmp_path / "nowhere" / "ledger.db")
    assert "mkdir -p" in (info.value.hint or "")
    with pytest.raises(LedgerError, match="is a directory"):
        Ledger.open(tmp_path)
    assert not (tmp_path / "nowhere").exists()


def test_readonly_open_of_a_missing_file_creates_nothing(db_path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger.open(db_path, readonly=True)
    assert not db_path.exists()


def _with_extra_migration(sql: str) -> list[Migration]:
    """The shipped migrations and one more: code newer than a file that has them all."""
    shipped = load_migrations()
    return [*shipped, Migration(len(shipped) + 1, f"{len(shipped) + 1:04d}_extra.sql", sql)]


def test_an_older_ledger_is_migrated_on_open(db_path: Path) -> None:
    with Ledger.open(db_path) as led:
        led.append("k", [SessionStarted(session_id="s", source=Source(platform="cli"))])
    migrations = _with_extra_migration(
        "CREATE TABLE extra (x INTEGER) STRICT;\nCREATE INDEX extra_x ON extra (x);"
    )
    with Ledger.open(db_path, migrations=migrations) as led:
        conn = led.connection
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(migrations)
        names = [r[0] for r in conn.execute("SELECT name FROM ledger_migrations ORDER BY version")]
        assert names[-1].endswith("_extra.sql")
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'extra_x'").fetchone()
        assert led.head() == 1 and led.verify().ok


def test_a_failing_migration_changes_nothing(db_path: Path) -> None:
    with Ledger.open(db_path):
        pass
    migrations = _with_extra_migration(
        "CREATE TABLE half (x INTEGER) STRICT;\nSELECT * FROM no_such_table;"
    )
    with pytest.raises(LedgerError, match="no such table"):
        Ledger.open(db_path, migrations=migrations)
    with Ledger.open(db_path) as led:
        conn = led.connection
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'half'").fetchone() is None


# -- migration 2: the gateway's tables under the schema machinery ---------------------

# What the scheduler's and the hook dispatcher's constructors created before the
# tables moved into migration 2, verbatim, as ledgers of schema v1 may hold them.
_CONSTRUCTOR_DDL = (
    """CREATE TABLE IF NOT EXISTS scheduler_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    position    INTEGER NOT NULL,
    config_hash TEXT NOT NULL
) STRICT""",
    """CREATE TABLE IF NOT EXISTS session_deadlines (
    session_key   TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    deadline      TEXT NOT NULL,
    reason        TEXT NOT NULL CHECK (reason IN ('idle', 'daily', 'cron', 'finish')),
    claimed_by    TEXT,
    claimed_until TEXT
) STRICT""",
    "CREATE INDEX IF NOT EXISTS session_deadlines_due ON session_deadlines (deadline)",
    """CREATE TABLE IF NOT EXISTS hook_checkpoints (
    hook        TEXT PRIMARY KEY CHECK (length(hook) > 0),
    position    INTEGER NOT NULL CHECK (position >= 0),
    updated_at  TEXT NOT NULL
) STRICT""",
    """CREATE TABLE IF NOT EXISTS hook_deliveries (
    delivery_id      TEXT PRIMARY KEY,
    hook             TEXT NOT NULL,
    position         INTEGER NOT NULL,
    event_id         TEXT NOT NULL,
    hook_event       TEXT NOT NULL
                     CHECK (hook_event IN ('session:start', 'session:reset', 'session:end')),
    session_key      TEXT NOT NULL,
    session_id       TEXT,
    context          TEXT NOT NULL CHECK (json_valid(context)),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'claimed', 'done', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claimed_by       TEXT,
    claimed_until    TEXT,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    delivered_at     TEXT,
    UNIQUE (hook, position),
    CHECK ((status = 'claimed') = (claimed_by IS NOT NULL AND claimed_until IS NOT NULL)),
    CHECK ((status = 'done') = (delivered_at IS NOT NULL))
) STRICT""",
    "CREATE INDEX IF NOT EXISTS hook_deliveries_queue ON hook_deliveries (hook, position)"
    " WHERE status IN ('pending', 'claimed')",
    "CREATE INDEX IF NOT EXISTS hook_deliveries_dead ON hook_deliveries (position)"
    " WHERE status = 'dead'",
    """CREATE TRIGGER IF NOT EXISTS hook_deliveries_match_the_log
BEFORE INSERT ON hook_deliveries
WHEN NOT EXISTS (
    SELECT 1 FROM events
    WHERE position = NEW.position AND event_id = NEW.event_id AND stream = NEW.session_key
      AND session_id IS NEW.session_id
      AND type = CASE NEW.hook_event WHEN 'session:start' THEN 'session_started'
                                     WHEN 'session:reset' THEN 'session_reset'
                                     WHEN 'session:end' THEN 'session_ended' END)
BEGIN
    SELECT RAISE(ABORT, 'a hook delivery must name a session event of the log');
END""",
)
_GATEWAY_TABLES = ("scheduler_state", "session_deadlines", "hook_checkpoints", "hook_deliveries")
_GATEWAY_OBJECTS = {
    *_GATEWAY_TABLES,
    "session_deadlines_due",
    "hook_deliveries_queue",
    "hook_deliveries_dead",
    "hook_deliveries_match_the_log",
}
_STAMP = "2026-11-22T09:00:00.000000Z"


def _v1_ledger(path: Path, *, constructor_tables: bool) -> None:
    """A ledger as the previous version left it: schema v1 (migration 2 taken back
    out of a new ledger), one session that ended, and (``constructor_tables``) the
    gateway tables its constructors created, with rows."""
    with Ledger.open(path, migrations=load_migrations()[:2]) as led:
        source = Source(platform="cli")
        led.append("k", [SessionStarted(session_id="s", source=source)])
        led.append("k", [SessionEnded(session_id="s", reason="shutdown")])
        (end_id,) = led.query("SELECT event_id FROM events WHERE position = 2")[0]

        def back_to_v1(conn: apsw.Connection) -> None:
            for table in _GATEWAY_TABLES:
                conn.execute(f"DROP TABLE {table}")  # with its indexes and trigger
            conn.execute("DELETE FROM ledger_migrations WHERE version > 1")
            conn.execute("PRAGMA user_version = 1")
            if not constructor_tables:
                return
            for statement in _CONSTRUCTOR_DDL:
                conn.execute(statement).fetchall()
            conn.execute("INSERT INTO scheduler_state VALUES (1, 2, 'cafe')")
            conn.execute("INSERT INTO session_deadlines VALUES ('k2', 's2', ?, 'idle', NULL, NULL)",
                         (_STAMP,))  # fmt: skip
            conn.execute("INSERT INTO hook_checkpoints VALUES ('audit', 2, ?)", (_STAMP,))
            conn.execute(
                "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id, hook_event,"
                " session_key, session_id, context, status, attempts, next_attempt_at,"
                " last_error, created_at)"
                " VALUES ('d1', 'audit', 2, ?, 'session:end', 'k', 's', '{}', 'dead', 5, ?,"
                " 'HTTPError: 503', ?)",
                (end_id, _STAMP, _STAMP),
            )

        led.write(back_to_v1)


def _objects(conn: apsw.Connection) -> set[tuple[str, str]]:
    rows = conn.execute("SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")
    return set(rows.fetchall())


def test_a_fresh_v1_ledger_gets_the_gateway_tables(db_path: Path, tmp_path: Path) -> None:
    _v1_ledger(db_path, constructor_tables=False)
    with Ledger.open(tmp_path / "new.db") as new:
        expected = _objects(new.connection)
    assert {name for _, name in expected} >= _GATEWAY_OBJECTS
    with Ledger.open(db_path) as led:
        assert led.connection.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        assert _objects(led.connection) == expected
        applied = led.query("SELECT version, name FROM ledger_migrations ORDER BY version")
        assert applied == [(m.version, m.name) for m in load_migrations()]
        assert led.head() == 2 and led.verify().ok


def test_a_v1_ledger_with_the_constructor_tables_keeps_their_rows(
    db_path: Path, tmp_path: Path
) -> None:
    _v1_ledger(db_path, constructor_tables=True)
    with Ledger.open(tmp_path / "new.db") as new:
        expected = _objects(new.connection)
    with Ledger.open(db_path) as led:
        assert led.connection.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        assert _objects(led.connection) == expected
        assert led.query("SELECT * FROM scheduler_state") == [(1, 2, "cafe")]
        assert led.query("SELECT session_key, deadline FROM session_deadlines") == [("k2", _STAMP)]
        assert [(s.hook, s.checkpoint, s.dead) for s in hook_states(led)] == [("audit", 2, 1)]
        (dead,) = dead_letters(led)
        assert (dead.delivery_id, dead.attempts, dead.last_error) == ("d1", 5, "HTTPError: 503")
        with pytest.raises(apsw.ConstraintError, match="must name a session event of the log"):
            led.connection.execute(
                "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id, hook_event,"
                " session_key, context, status, next_attempt_at, created_at)"
                " VALUES ('d2', 'audit', 9, 'nope', 'session:end', 'k', '{}', 'pending', ?, ?)",
                (_STAMP, _STAMP),
            )


def test_a_v1_ledger_opened_read_only_is_refused_untouched_until_migrated(
    db_path: Path,
) -> None:
    """A read-only open cannot migrate: it says so (and how to migrate) instead of
    failing later on a missing table; once migrated, read-only opens work."""
    _v1_ledger(db_path, constructor_tables=True)
    before = db_path.read_bytes()
    with pytest.raises(LedgerError, match=r"older schema \(v1\) and is opened read-only") as info:
        Ledger.open(db_path, readonly=True)
    assert "migrate" in (info.value.hint or "")
    assert db_path.read_bytes() == before
    with Ledger.open(db_path):
        pass
    with Ledger.open(db_path, readonly=True) as ro:
        assert [s.hook for s in hook_states(ro)] == ["audit"]
        assert [d.delivery_id for d in dead_letters(ro)] == ["d1"]
