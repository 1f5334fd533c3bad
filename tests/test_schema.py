"""Opening files: connection setup, migrations, and refusing what is not ours."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import apsw
import pytest

from hermes_ledger.ledger import Ledger, LedgerError, LedgerTooNewError, NotALedgerError
from hermes_ledger.ledger.events import SessionStarted, Source
from hermes_ledger.ledger.schema import APPLICATION_ID, connect, latest_version, load_migrations


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
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -16 * 1024
    conn.close()
    conn, _ = connect(db_path, synchronous="full", busy_timeout=2.5)
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    conn.close()


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


def _with_extra_migration(monkeypatch: pytest.MonkeyPatch, sql: str) -> None:
    """Pretend the code ships one more migration than the file has applied."""
    from hermes_ledger.ledger import schema
    from hermes_ledger.ledger.schema import Migration

    shipped = load_migrations()
    extra = Migration(len(shipped) + 1, f"{len(shipped) + 1:04d}_extra.sql", sql)
    monkeypatch.setattr(schema, "load_migrations", lambda: [*shipped, extra])


def test_an_older_ledger_is_migrated_on_open(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger.open(db_path) as led:
        led.append("k", [SessionStarted(session_id="s", source=Source(platform="cli"))])
    _with_extra_migration(
        monkeypatch, "CREATE TABLE extra (x INTEGER) STRICT;\nCREATE INDEX extra_x ON extra (x);"
    )
    with Ledger.open(db_path) as led:
        conn = led.connection
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2  # patched: 1 + extra
        names = [r[0] for r in conn.execute("SELECT name FROM ledger_migrations ORDER BY version")]
        assert names[-1].endswith("_extra.sql")
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'extra_x'").fetchone()
        assert led.head() == 1 and led.verify().ok


def test_a_failing_migration_changes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger.open(db_path):
        pass
    _with_extra_migration(
        monkeypatch, "CREATE TABLE half (x INTEGER) STRICT;\nSELECT * FROM no_such_table;"
    )
    with pytest.raises(LedgerError, match="no such table"):
        Ledger.open(db_path)
    monkeypatch.undo()
    with Ledger.open(db_path) as led:
        conn = led.connection
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        assert conn.execute("SELECT name FROM sqlite_schema WHERE name = 'half'").fetchone() is None
