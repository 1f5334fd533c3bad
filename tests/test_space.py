"""Space in the ledger file: free pages after a replay (shown by ``status``, reused by
the next replay) and ``hermes-ledger vacuum``, which returns them to the disk; real
files, real processes (another one holding the write lock, a SIGKILL mid-vacuum)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import pg_uri
from click.testing import Result
from helpers import hold_write_lock, installed_script, next_line, run_on_terminal
from pg_support import as_user, fresh_database, login_role

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.log import describe_dsn
from hermes_ledger.projections import open_ledger
from hermes_ledger.projections import postgres as pg_projections

WORDS = (
    "session", "memory", "flush", "telegram", "discord", "slack", "agent", "tool", "search",
)  # fmt: skip


def _fill(path: Path, sessions: int = 20, messages: int = 150) -> None:
    with open_ledger(path) as led:
        for s in range(sessions):
            key = f"agent:main:telegram:dm:{s}"
            sid = f"s{s}"
            led.append(key, [SessionStarted(session_id=sid, source=Source(platform="telegram"))])
            led.append(key, [
                MessageAppended(
                    session_id=sid, role="user" if i % 2 else "assistant",
                    content=" ".join(WORDS[(i + j) % len(WORDS)] for j in range(30)),
                )
                for i in range(messages)
            ])  # fmt: skip


def _pages(path: Path) -> tuple[int, int]:
    """(page_count, freelist_count), read with SQLite's own pragmas."""
    with Ledger.open(path, readonly=True) as led:
        row: Any = led.query("SELECT * FROM pragma_page_count, pragma_freelist_count")[0]
        return row[0], row[1]


def _events(path: Path) -> list[Any]:
    with Ledger.open(path, readonly=True) as led:
        return led.query("SELECT * FROM events ORDER BY position")


def _status(cli: Callable[..., Result], db: Path) -> dict[str, Any]:
    result = cli("status", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def _replay(cli: Callable[..., Result], db: Path) -> None:
    result = cli("replay", "--db", str(db))
    assert result.exit_code == 0, result.output


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.db"
    _fill(db)
    return db


def test_status_shows_free_pages_after_a_replay_and_the_next_replay_reuses_them(
    ledger: Path, cli: Callable[..., Result]
) -> None:
    assert _status(cli, ledger)["free_pages"] == 0
    _replay(cli, ledger)  # the old projection tables' pages are free now
    pages, free = _pages(ledger)
    st = _status(cli, ledger)
    assert free > 0 and (st["pages"], st["free_pages"]) == (pages, free)
    assert st["free_bytes"] == free * st["page_size"]
    lines = cli("status", "--db", str(ledger)).output.splitlines()
    assert f"free pages:  {free} (" in "\n".join(lines)
    assert lines[-1].endswith("returned to the disk by `hermes-ledger vacuum`)")
    # The next replay builds its fresh tables in those pages: the file does not grow.
    for _ in range(2):
        _replay(cli, ledger)
        assert _pages(ledger)[0] <= pages


def test_vacuum_returns_the_free_pages_and_keeps_every_event(
    ledger: Path, cli: Callable[..., Result]
) -> None:
    _replay(cli, ledger)
    before = _events(ledger)
    pages, free = _pages(ledger)
    size = ledger.stat().st_size
    result = cli("vacuum", "--db", str(ledger))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Vacuumed {ledger} in ")
    assert f"{free} free pages before, 0 after)" in result.output
    after_pages, after_free = _pages(ledger)
    assert after_free == 0 and after_pages <= pages - free  # VACUUM packs pages too
    assert ledger.stat().st_size < size
    assert _events(ledger) == before
    for name in (ledger, Path(f"{ledger}-wal")):
        if name.exists():
            assert oct(name.stat().st_mode & 0o777) == "0o600", name
    verify = cli("verify", "--db", str(ledger))
    assert verify.exit_code == 0, verify.output
    again = cli("vacuum", "--db", str(ledger), "--json")
    report = json.loads(again.output)
    assert (report["free_pages_before"], report["free_pages_after"]) == (0, 0)
    assert report["size_after"] <= report["size_before"] and report["warnings"] == []


def test_vacuum_refuses_while_another_process_holds_the_write_lock(
    ledger: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    _replay(cli, ledger)
    pages = _pages(ledger)
    release = tmp_path / "release"
    locker = hold_write_lock(ledger, release)
    try:
        result = cli("vacuum", "--db", str(ledger), "--wait", "0.2")
    finally:
        release.touch()
        locker.communicate(timeout=60)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {ledger}: another process held the write lock for more than 0.2s;"
        " the vacuum did not start and nothing was changed\n"
        "Try: retry when it is done (a replay or a large import holds the lock for a while),"
        " or wait longer with --wait SECONDS\n"
    )
    assert _pages(ledger) == pages
    assert cli("vacuum", "--db", str(ledger)).exit_code == 0  # once it is free


def test_vacuum_of_no_ledger_says_what_to_do(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("vacuum", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 1 and result.output.startswith("Error: there is no ledger at ")
    assert not (tmp_path / "none.db").exists()


_KILLED_MID_VACUUM = """
import sys, time
from hermes_ledger.ledger import admin
calls = 0
def progress(done, total):
    global calls
    calls += 1
    if calls == 3:  # inside VACUUM: the progress handler's second report
        print("vacuuming", flush=True)
        time.sleep(120)
admin.vacuum(sys.argv[1], progress=progress)
"""


def test_a_kill_during_vacuum_leaves_the_ledger_as_it_was(
    ledger: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    _replay(cli, ledger)
    before, pages = _events(ledger), _pages(ledger)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_VACUUM, str(ledger)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert next_line(child).strip() == "vacuuming"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate(timeout=60)  # reaps it and closes its pipes
    assert child.returncode == -signal.SIGKILL
    assert _events(ledger) == before and _pages(ledger) == pages
    verify = cli("verify", "--db", str(ledger))
    assert verify.exit_code == 0, verify.output
    assert cli("vacuum", "--db", str(ledger)).exit_code == 0
    assert _events(ledger) == before and _pages(ledger)[1] == 0


def test_vacuum_shows_progress_on_a_terminal(ledger: Path) -> None:
    done, shown = run_on_terminal([installed_script(), "vacuum", "--db", str(ledger)], "stderr")
    assert done.returncode == 0, done.stderr
    assert b"vacuuming" in shown and b"100%" in shown, shown


# -- on a PostgreSQL ledger: VACUUM (ANALYZE) of its tables ----------------------------------


@pytest.fixture
def pg_ledger() -> Iterator[str]:
    """A PostgreSQL ledger whose projections were updated row by row (an upsert per
    message: dead tuples in session_map and session_history), autovacuum off on its
    tables so that only the command under test vacuums them."""
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        with PostgresLog.open(uri) as log:
            pg_projections.attach(log)
            with psycopg.connect(dsn, autocommit=True) as admin:
                for table in ("session_map", "session_history", "messages", "events"):
                    admin.execute(
                        f"ALTER TABLE hermes_ledger.{table} SET (autovacuum_enabled = false)"
                    )
            log.append("k", [SessionStarted(session_id="s1", source=Source(platform="local"))])
            for i in range(30):
                log.append("k", [MessageAppended(session_id="s1", role="user", content=f"m{i}")])
        yield uri


def _pg_events(uri: str) -> list[Any]:
    with psycopg.connect(uri) as conn:
        return conn.execute("SELECT * FROM hermes_ledger.events ORDER BY position").fetchall()


def test_vacuum_on_postgres_reports_dead_tuples_before_and_after(
    pg_ledger: str, cli: Callable[..., Result]
) -> None:
    before = _pg_events(pg_ledger)
    result = cli("vacuum", "--db", pg_ledger, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    tables = {t["table"]: t for t in report["tables"]}
    assert {"events", "payloads", "session_map", "session_history", "messages"} <= set(tables)
    # an upsert per message leaves a dead row version (fewer once page pruning ran)
    assert tables["session_map"]["dead_before"] > 0
    assert tables["session_history"]["dead_before"] > 0
    assert all(t["dead_after"] == 0 for t in tables.values()), tables
    assert tables["messages"]["live_after"] == 30
    assert report["dead_tuples_before"] == sum(t["dead_before"] for t in tables.values())
    assert report["dead_tuples_after"] == 0 and report["skipped"] == []
    assert _pg_events(pg_ledger) == before
    text = cli("vacuum", "--db", pg_ledger)
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].startswith(f"Vacuumed {describe_dsn(pg_ledger)} (VACUUM (ANALYZE), ")
    assert f"(VACUUM (ANALYZE), {len(tables)} tables) in " in lines[0]
    assert ": 0 dead tuples before, 0 after; " in lines[0]
    assert any(line.split()[0] == "session_map" for line in lines[1:])
    assert cli("verify", "--db", pg_ledger).exit_code == 0


def test_vacuum_on_postgres_needs_the_owner(pg_ledger: str, cli: Callable[..., Result]) -> None:
    with login_role("hermes_ledger_writer") as gateway:
        login = pg_uri(as_user(pg_ledger, gateway))
        result = cli("vacuum", "--db", login)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: this role may not vacuum the ledger's tables at {describe_dsn(login)}"
        " (on PostgreSQL only a table's owner, the database's owner or a superuser may);"
        " nothing was done",
        "Try: connect as the database's owner (the role that ran the migrations)",
    ]


def test_vacuum_on_postgres_refuses_a_table_locked_too_long(
    pg_ledger: str, cli: Callable[..., Result]
) -> None:
    with psycopg.connect(pg_ledger) as holder:  # an append in progress holds this lock
        holder.execute("LOCK TABLE hermes_ledger.events IN EXCLUSIVE MODE")
        result = cli("vacuum", "--db", pg_ledger, "--wait", "0.2")
    assert result.exit_code == 1
    assert result.output.startswith("Error: hermes_ledger.events stayed locked for more than 0.2 s")
    assert "Try: try again later, or give it longer with --wait SECONDS" in result.output
    assert cli("vacuum", "--db", pg_ledger).exit_code == 0  # once it is free
