"""A change of reset policies reaches every session's deadline, on both backends.

Both schedulers store the fingerprint of the policies their deadlines were derived
under (``ticks.policy_hash``, in ``scheduler_state``) and re-derive every deadline
when a scheduler is made with other policies (SQLite: each tick's refresh;
PostgreSQL: ``postgres.sync_deadlines``, from ``runner.scheduler_for``). The CLI
tests edit ``config.yaml`` between real ``tick`` invocations; the concurrency test
starts two runner processes at once on one PostgreSQL database.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from backends import Backend, pg_uri
from click.testing import Result
from helpers import ManualClock, next_line
from pg_support import as_user, login_role

from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.bootstrap import open_gateway
from hermes_ledger.gateway.scheduler.postgres import claim_due, refresh_deadlines, sync_deadlines
from hermes_ledger.gateway.scheduler.runner import scheduler_for
from hermes_ledger.gateway.scheduler.ticks import policy_hash
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.schema import WRITER_ROLE

WORKER = Path(__file__).with_name("policy_sync_worker.py")


def write_config(home: Path, idle_minutes: int) -> None:
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text(
        f"session_reset:\n  mode: idle\n  idle_minutes: {idle_minutes}\n"
    )


def seed(backend: Backend, home: Path, clock: ManualClock, n: int = 1) -> list[str]:
    """``n`` sessions with one message each at the clock's time, through the gateway
    (so on PostgreSQL their deadlines are kept by the append, under ``home``'s policies)."""
    with open_gateway(backend.target, home=home, clock=clock) as gateway:
        ids = []
        for i in range(n):
            source = SessionSource(platform="telegram", chat_id=str(i), chat_type="dm", user_id="5")
            entry = gateway.store.get_or_create_session(source)
            gateway.store.append_to_transcript(entry.session_id, {"role": "user", "content": "hi"})
            ids.append(entry.session_id)
        return ids


def tick(cli: Callable[..., Result], backend: Backend, home: Path, at: str) -> dict:
    result = cli("tick", "--db", backend.target, "--config", str(home), "--now", at, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def closed(report: dict) -> list[tuple[str, str, str]]:
    return [(c["session_id"], c["reason"], c["deadline"]) for c in report["tick"]["closed"]]


def next_deadlines(cli: Callable[..., Result], backend: Backend) -> list[str | None]:
    result = cli("sessions", "--db", backend.target, "--json")
    assert result.exit_code == 0, result.output
    return [row["next_deadline"] for row in json.loads(result.output)]


# The session's last activity is 09:00 (ManualClock's start).


def test_a_shortened_idle_minutes_closes_an_idle_session_at_the_next_tick(
    tmp_path: Path, backend: Backend, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    home = tmp_path / "home"
    write_config(home, 120)
    (sid,) = seed(backend, home, clock)
    assert closed(tick(cli, backend, home, "2026-11-22T09:20:00Z")) == []  # due at 11:00
    write_config(home, 30)
    report = tick(cli, backend, home, "2026-11-22T09:31:00Z")
    assert closed(report) == [(sid, "idle_expiry", "2026-11-22T09:30:00.000000Z")]
    assert closed(tick(cli, backend, home, "2026-11-22T12:00:00Z")) == []  # once


def test_a_lengthened_idle_minutes_keeps_open_a_session_the_old_policy_would_close(
    tmp_path: Path, backend: Backend, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    home = tmp_path / "home"
    write_config(home, 30)
    (sid,) = seed(backend, home, clock)
    assert closed(tick(cli, backend, home, "2026-11-22T09:10:00Z")) == []
    assert next_deadlines(cli, backend) == ["2026-11-22T09:30:00.000000Z"]
    write_config(home, 120)
    assert closed(tick(cli, backend, home, "2026-11-22T09:20:00Z")) == []
    # the deadline shown (and doctor's "overdue") is the new policy's from the next tick on
    assert next_deadlines(cli, backend) == ["2026-11-22T11:00:00.000000Z"]
    assert closed(tick(cli, backend, home, "2026-11-22T09:31:00Z")) == []
    assert closed(tick(cli, backend, home, "2026-11-22T10:59:00Z")) == []
    report = tick(cli, backend, home, "2026-11-22T11:01:00Z")
    assert closed(report) == [(sid, "idle_expiry", "2026-11-22T11:00:00.000000Z")]


# -- PostgreSQL: the stored fingerprint ----------------------------------------------


def waiting_for_lock(conn: psycopg.Connection, n: int, timeout: float = 60.0) -> None:
    """Return once ``n`` other sessions of ``conn``'s database wait for a lock."""
    give_up = time.monotonic() + timeout
    with psycopg.connect(conn.info.dsn, autocommit=True) as watcher:
        while True:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] >= n:
                return
            assert time.monotonic() < give_up, f"fewer than {n} sessions wait for a lock"
            time.sleep(0.01)


def loaded(home: Path) -> GatewayConfig:
    return GatewayConfig.load(home, env={})


def rederivations(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "deadlines_rederived"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_unchanged_configuration_only_derives_missing_deadlines(
    tmp_path: Path, backend: Backend, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    write_config(home, 30)
    with caplog.at_level(logging.INFO, logger="hermes_ledger"):
        seed(backend, home, clock, n=2)  # its scheduler stored the fingerprint (no rows yet)
    assert [getattr(r, "sessions", None) for r in rederivations(caplog)] == [0]
    ((stored, stamp),) = backend.raw("SELECT config_hash, updated_at FROM scheduler_state")
    assert stored == policy_hash(loaded(home))
    # a row no derivation would write, and a row missing (an append without the projector)
    backend.raw(
        "UPDATE session_deadlines SET deadline = '2030-01-01Z' WHERE session_key LIKE '%:0'"
    )
    backend.raw("DELETE FROM session_deadlines WHERE session_key ~ ':1$'")
    caplog.clear()
    with backend.open() as log, caplog.at_level(logging.INFO, logger="hermes_ledger"):
        assert isinstance(log, PostgresLog)
        assert sync_deadlines(log, loaded(home)) == (False, 1)  # the cheap path
        scheduler_for(log, loaded(home))
    assert rederivations(caplog) == []
    rows = backend.raw("SELECT right(session_key, 2), deadline FROM session_deadlines ORDER BY 1")
    assert [(k, format_utc(d)) for k, d in rows] == [
        (":0", "2030-01-01T00:00:00.000000Z"),  # left as it was: not re-derived
        (":1", "2026-11-22T09:30:00.000000Z"),  # the missing one derived
    ]
    assert backend.raw("SELECT config_hash, updated_at FROM scheduler_state") == [(stored, stamp)]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_deadlines_with_no_fingerprint_stored_are_rederived_once(
    tmp_path: Path, backend: Backend, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A database migrated to 7 under deadline rows derived by an older version (under
    policies no one recorded): the first scheduler re-derives them all, the next does not."""
    home = tmp_path / "home"
    write_config(home, 30)
    seed(backend, home, clock, n=3)
    backend.raw("DELETE FROM scheduler_state")
    backend.raw("UPDATE session_deadlines SET deadline = '2030-01-01Z'")
    with backend.open() as log, caplog.at_level(logging.INFO, logger="hermes_ledger"):
        assert isinstance(log, PostgresLog)
        scheduler_for(log, loaded(home))
        scheduler_for(log, loaded(home))
    assert [getattr(r, "sessions", None) for r in rederivations(caplog)] == [3]
    deadlines = backend.raw("SELECT DISTINCT deadline FROM session_deadlines")
    assert [format_utc(d) for (d,) in deadlines] == ["2026-11-22T09:30:00.000000Z"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_rederivation_keeps_the_lease_of_a_runner_closing_a_session(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    home = tmp_path / "home"
    write_config(home, 30)
    seed(backend, home, clock, n=2)
    idle_120 = ResetPolicy(mode="idle", idle_minutes=120)
    with backend.open() as log:
        assert isinstance(log, PostgresLog)
        with log._lock:
            claimed = claim_due(log.connection, "host-a", clock.now + timedelta(minutes=31), 1,
                                timedelta(minutes=5))  # fmt: skip
        assert len(claimed) == 1
        assert refresh_deadlines(log, GatewayConfig(default_reset_policy=idle_120)) == 2
    rows = backend.raw("SELECT session_key, claimed_by, deadline FROM session_deadlines ORDER BY 1")
    assert [(k, by) for k, by, _ in rows if by] == [(claimed[0][0], "host-a")]
    assert {format_utc(d) for _, _, d in rows} == {"2026-11-22T11:00:00.000000Z"}
    wanted = policy_hash(GatewayConfig(default_reset_policy=idle_120))
    assert backend.raw("SELECT config_hash FROM scheduler_state") == [(wanted,)]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_two_runners_starting_at_once_with_new_policies_rederive_once(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    home = tmp_path / "home"
    write_config(home, 30)
    seed(backend, home, clock, n=50)  # the old policies' fingerprint stored
    assert backend.raw("SELECT config_hash FROM scheduler_state") == [(policy_hash(loaded(home)),)]
    write_config(home, 5)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), backend.target, str(home), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    # The append lock held here until both runners wait for it: each has read the
    # stored fingerprint (the old one) by then, so only a runner that reads it again
    # once it holds the lock can see that the other has re-derived already.
    try:
        for proc in procs:  # both connected and waiting at the barrier
            assert next_line(proc) == "ready\n"
        with psycopg.connect(backend.target) as holder:
            holder.execute("LOCK TABLE hermes_ledger.events IN EXCLUSIVE MODE")
            go.touch()
            waiting_for_lock(holder, 2)
    finally:
        go.touch()  # (releasing the others too if one failed)
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    records = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    rederived = [r for r in records if r["event"] == "deadlines_rederived"]
    assert [r["sessions"] for r in rederived] == [50]  # by one of them, once
    started = [r for r in records if r["event"] == "worker_started"]
    assert len(started) == 2
    assert backend.raw("SELECT config_hash FROM scheduler_state") == [(policy_hash(loaded(home)),)]
    deadlines = backend.raw("SELECT DISTINCT deadline FROM session_deadlines")
    assert [format_utc(d) for (d,) in deadlines] == ["2026-11-22T09:05:00.000000Z"]
    assert backend.raw("SELECT count(*) FROM session_deadlines") == [(50,)]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_runner_logged_in_as_the_writer_role_rederives_and_the_reader_only_reads(
    tmp_path: Path, backend: Backend, clock: ManualClock, cli: Callable[..., Result]
) -> None:
    home = tmp_path / "home"
    write_config(home, 120)
    (sid,) = seed(backend, home, clock)  # as the owner: the tables are made
    write_config(home, 30)
    with login_role(WRITER_ROLE) as user:
        writer = pg_uri(as_user(psycopg.conninfo.make_conninfo(backend.target), user))
        result = cli("tick", "--db", writer, "--config", str(home), "--now",
                     "2026-11-22T09:31:00Z", "--json")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert closed(json.loads(result.output)) == [
            (sid, "idle_expiry", "2026-11-22T09:30:00.000000Z")
        ]
    assert backend.raw("SELECT config_hash FROM scheduler_state") == [(policy_hash(loaded(home)),)]
    may = backend.raw(
        "SELECT p, has_table_privilege('hermes_ledger_reader', 'scheduler_state', p),"
        " has_table_privilege('hermes_ledger_writer', 'scheduler_state', p)"
        " FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p"
    )
    assert may == [("SELECT", True, True), ("INSERT", False, True), ("UPDATE", False, True),
                   ("DELETE", False, False), ("TRUNCATE", False, False)]  # fmt: skip
