"""``hermes-ledger migrate --to postgresql://…`` (ledger/postgres/migrate.py): a real
server (tests/pg_support.py), real ledgers, the real CLI, a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import Result
from pg_support import fresh_database

from hermes_ledger.gateway.demo.day import run_demo
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import MessageAppended, SessionStarted
from hermes_ledger.ledger.postgres import PostgresLog

CLI = Path(sys.executable).with_name("hermes-ledger")
COLS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


def _pg(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = hermes_ledger")
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def _lite(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with Ledger.open(path, readonly=True) as led:
        return [tuple(r) for r in led.query(sql)]


def assert_same(path: Path, dsn: str) -> None:
    """Every events row, payload row and merged body equal, byte for byte."""
    assert _lite(path, f"SELECT {COLS} FROM events ORDER BY 1") == _pg(
        dsn, f"SELECT {COLS} FROM events ORDER BY 1"
    )
    payloads = "SELECT position, salt, body FROM payloads ORDER BY 1"
    assert [(p, bytes(s), b) for p, s, b in _lite(path, payloads)] == [
        (p, bytes(s), b) for p, s, b in _pg(dsn, payloads)
    ]
    bodies = "SELECT position, data, erased FROM event_bodies ORDER BY 1"
    assert [(p, d, bool(e)) for p, d, e in _lite(path, bodies)] == _pg(dsn, bodies)


@pytest.fixture
def demo_ledger(tmp_path: Path) -> Path:
    """The demo day, with one session erased."""
    path = tmp_path / "ledger.db"
    run_demo(path)
    with Ledger.open(path) as led:
        sid = led.query("SELECT session_id FROM events WHERE type = 'message_appended' LIMIT 1")
        report = led.erase(ErasureScope("session_id", sid[0][0]), requested_by="t", dry_run=False)
        assert report.payloads > 0
    return path


def test_copies_a_demo_day_with_an_erasure(
    demo_ledger: Path, pg_dsn: str, cli: Callable[..., Result]
) -> None:
    result = cli("migrate", "--to", pg_dsn, "--from", str(demo_ledger), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    events = _lite(demo_ledger, "SELECT count(*), max(position) FROM events")[0]
    payloads = _lite(demo_ledger, "SELECT count(*) FROM payloads")[0][0]
    head_hash = _lite(demo_ledger, "SELECT hash FROM events ORDER BY position DESC LIMIT 1")
    assert report["verified"] and report["resumed_from"] == 0
    assert (report["events"], report["copied_events"], report["head"]) == (events[0],) * 2 + (
        events[1],
    )
    assert (report["payloads"], report["head_hash"]) == (payloads, head_hash[0][0])
    assert_same(demo_ledger, pg_dsn)
    assert _pg(pg_dsn, "SELECT count(*) FROM event_bodies WHERE erased")[0][0] > 0
    assert _pg(pg_dsn, "SELECT count(*) FROM events WHERE type = 'subject_erased'") == [(1,)]
    with PostgresLog.open(pg_dsn) as log, Ledger.open(demo_ledger, readonly=True) as led:
        assert log.verify().ok
        assert list(log.read_all()) == list(led.read_all())
    # Run again: everything is there, nothing to copy, still verified.
    again = cli("migrate", "--to", pg_dsn, "--from", str(demo_ledger))
    assert again.exit_code == 0, again.output
    assert f"Copied 0 events and 0 payloads from {demo_ledger}" in again.output
    assert f"resumed after position {events[1]}" in again.output


def _big_ledger(path: Path, sessions: int = 60, messages: int = 50) -> None:
    with Ledger.open(path) as led:
        for s in range(sessions):
            sid = f"s{s}"
            events: list[Any] = [SessionStarted(session_id=sid, source={"platform": "cli"})]  # type: ignore[arg-type]
            events += [
                MessageAppended(session_id=sid, role="user", content=f"message {i} of {sid}")
                for i in range(messages)
            ]
            led.append(f"key:{s}", events)


def test_resumes_after_kill_9(tmp_path: Path, pg_dsn: str, cli: Callable[..., Result]) -> None:
    path = tmp_path / "big.db"
    _big_ledger(path)
    total = _lite(path, "SELECT count(*) FROM events")[0][0]
    PostgresLog.open(pg_dsn).close()  # the schema, so that the rows can be counted
    proc = subprocess.Popen(
        [str(CLI), "migrate", "--to", pg_dsn, "--from", str(path), "--batch", "7"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HERMES_HOME": str(tmp_path)},
    )
    try:
        copied = 0
        deadline = time.monotonic() + 120
        while copied == 0 and proc.poll() is None and time.monotonic() < deadline:
            copied = _pg(pg_dsn, "SELECT count(*) FROM events")[0][0]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    held = _pg(pg_dsn, "SELECT count(*), coalesce(max(position), 0) FROM events")[0]
    assert 0 < held[0] < total and held[0] == held[1]  # a committed prefix
    assert _pg(pg_dsn, "SELECT count(*) FROM payloads")[0][0] == held[0] - held[0] // 51 - (
        1 if held[0] % 51 else 0
    )
    result = cli("migrate", "--to", pg_dsn, "--from", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["resumed_from"] == held[0] and report["copied_events"] == total - held[0]
    assert report["events"] == total and report["verified"]
    assert_same(path, pg_dsn)


def test_refuses_a_foreign_log_and_writes_nothing(
    tmp_path: Path, pg_dsn: str, cli: Callable[..., Result]
) -> None:
    path = tmp_path / "l.db"
    _big_ledger(path, sessions=2, messages=3)
    with PostgresLog.open(pg_dsn) as log:
        log.append("other", [SessionStarted(session_id="x", source={"platform": "cli"})])  # type: ignore[arg-type]
    before = _pg(pg_dsn, f"SELECT {COLS} FROM events")
    result = cli("migrate", "--to", pg_dsn, "--from", str(path))
    assert result.exit_code == 1
    assert "Error: " in result.output and "holds another log" in result.output
    assert "Try: migrate into an empty database" in result.output
    assert "Traceback" not in result.output
    assert _pg(pg_dsn, f"SELECT {COLS} FROM events") == before
    # A longer log than the source is refused as well.
    short = tmp_path / "short.db"
    with Ledger.open(short) as led:
        led.append("k", [SessionStarted(session_id="y", source={"platform": "cli"})])  # type: ignore[arg-type]
    with PostgresLog.open(pg_dsn) as log:
        log.append("other", [MessageAppended(session_id="x", role="user", content="hi")])
    result = cli("migrate", "--to", pg_dsn, "--from", str(short))
    assert result.exit_code == 1 and "more than" in result.output


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://127.0.0.1:1/nowhere", "cannot connect to PostgreSQL at 127.0.0.1:1/nowhere"),
        ("host=127.0.0.1 port=1 = broken", "cannot connect to PostgreSQL"),
    ],
)
def test_bad_dsn_or_unreachable_server_is_a_clear_error(
    tmp_path: Path, dsn: str, message: str
) -> None:
    path = tmp_path / "l.db"
    _big_ledger(path, sessions=1, messages=1)
    done = subprocess.run(
        [str(CLI), "migrate", "--to", dsn, "--from", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "HERMES_HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"Error: {message}" in done.stderr and "Try: " in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_missing_source_and_usage_errors(
    tmp_path: Path, pg_dsn: str, cli: Callable[..., Result]
) -> None:
    result = cli("migrate", "--to", pg_dsn, "--from", str(tmp_path / "none.db"))
    assert result.exit_code == 1 and "Error: " in result.output
    assert _pg(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'hermes_ledger'") == [
        (0,)
    ]
    assert cli("migrate", "--from", str(tmp_path / "x.db")).exit_code == 2
    assert cli("migrate", "--to", "", "--from", str(tmp_path / "x.db")).exit_code == 2
    assert cli("migrate", "--to", pg_dsn, "--batch", "0").exit_code == 2
