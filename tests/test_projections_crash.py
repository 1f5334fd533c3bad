"""Projections across kill -9 and several processes: real subprocesses, real SIGKILL.

On both backends (``backend``, tests/backends.py). On SQLite the parent aims its
kill at the child's progress lines (a rebuild or a catch-up goes in chunks, each
its own transaction); on PostgreSQL each is one transaction, so the parent holds a
lock the child's transaction needs next (``LOCK TABLE``), waits until the child
waits for it (pg_stat_activity), and kills it there: inside its transaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from backends import Backend

from hermes_ledger.ledger import EventLog
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source, UsageRecorded

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

CHILD = textwrap.dedent(
    """
    import sys, time
    from hermes_ledger.ledger import open_log
    from hermes_ledger.ledger.backend import is_dsn
    from hermes_ledger import projections

    path, action, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def progress(done, total):
        print(f"progress {done} {total}", flush=True)
        time.sleep(0.002)  # a steadier pace for the parent to aim its kill at

    with open_log(path) as led:
        if is_dsn(path):  # one transaction each, no chunks
            from hermes_ledger.projections import postgres as pg
            print("started", flush=True)
            report = pg.rebuild(led) if action == "rebuild" else pg.attach(led)
        elif action == "rebuild":
            report = projections.rebuild(led, chunk_size=chunk, progress=progress)
        else:
            report = projections.attach(led, chunk_size=chunk, progress=progress)
        print("done", report, flush=True)
    """
)


def child(path: Path | str, action: str, chunk: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), action, str(chunk)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after(proc: subprocess.Popen[str], lines: int, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after its ``lines``-th progress line; False if
    it finished first."""
    assert proc.stdout is not None
    seen, killed = 0, False
    for line in proc.stdout:
        if line.startswith("done"):
            break
        seen += line.startswith("progress")
        if seen >= lines:
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.communicate()  # reap it and close its pipes
    return killed and proc.returncode == -signal.SIGKILL


SQL_WAITING_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
)


@contextmanager
def holding(backend: Backend, statement: str) -> Iterator[None]:
    """Hold the lock ``statement`` takes (in a transaction of a connection of its own)
    until the block ends."""
    with psycopg.connect(backend.target, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL search_path = hermes_ledger")
        conn.execute(statement)  # type: ignore[arg-type]
        yield


def kill_when_blocked(backend: Backend, proc: subprocess.Popen[str]) -> bool:
    """SIGKILL ``proc`` once another session waits for a lock (the child, inside its
    transaction, waiting on the one the test holds); False if it finished first."""
    deadline = time.monotonic() + 60
    try:
        while not int(backend.scalar(SQL_WAITING_FOR_A_LOCK)):
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:  # whatever happened, the child is gone and reaped after this
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return proc.returncode == -signal.SIGKILL


def fill(led: EventLog, sessions: int, messages: int) -> None:
    for n in range(sessions):
        key = f"agent:main:telegram:dm:{n}"
        led.append(key, [SessionStarted(session_id=f"s{n}", source=Source(platform="telegram"))])
        batch = [
            MessageAppended(session_id=f"s{n}", role="user", content=f"message {m} of {n}")
            for m in range(messages)
        ]
        led.append(key, [*batch, UsageRecorded(session_id=f"s{n}", input_tokens=n)])


SQL_LEFTOVERS = {
    "sqlite": "SELECT name FROM sqlite_schema WHERE name GLOB '*__next*'",
    "postgresql": "SELECT relname FROM pg_class WHERE relname LIKE '%\\_\\_next%'",
}


def leftovers(backend: Backend) -> list[str]:
    """Tables or indexes a rebuild left behind."""
    return [name for (name,) in backend.raw(SQL_LEFTOVERS[backend.name])]


def chunked(backend: Backend, size: int) -> dict[str, int]:
    return {"chunk_size": size} if backend.name == "sqlite" else {}


@pytest.mark.parametrize(
    ("backend", "delay"),
    # SQLite: kills at three moments after the third chunk; PostgreSQL: one, inside
    # its one transaction (blocked on the test's lock, the moment does not matter)
    [("sqlite", 0.0), ("sqlite", 0.01), ("sqlite", 0.03), ("postgresql", 0.0)],
    indirect=["backend"],
)
def test_kill_9_during_rebuild_leaves_the_live_tables_untouched(
    backend: Backend, delay: float
) -> None:
    p = backend.projections
    with backend.open(projections=True) as led:
        fill(led, sessions=30, messages=60)
        if backend.name == "sqlite":
            proc = child(backend.target, "rebuild", chunk=40)
        # appends go on while the other process rebuilds
        led.append("agent:main:telegram:dm:0", [MessageAppended(
            session_id="s0", role="user", content="during the rebuild")])  # fmt: skip
        expected = p.state_at(led)
        if backend.name == "sqlite":
            killed = kill_after(proc, lines=3, delay=delay)
        else:  # the rebuild's swap waits to drop session_map, which the test reads
            with holding(backend, "LOCK TABLE session_map IN ACCESS SHARE MODE"):
                proc = child(backend.target, "rebuild", chunk=0)
                killed = kill_when_blocked(backend, proc)
            backend.settle()
        assert killed, "the rebuild finished before it could be killed"
        assert p.live_state(led) == expected
        assert p.verify(led).ok
        led.append("agent:main:telegram:dm:1", [MessageAppended(
            session_id="s1", role="user", content="after the kill")])  # fmt: skip
        expected = p.state_at(led)
        report = p.rebuild(led, **chunked(backend, 500))  # the rerun
        assert report.position == led.head()
        assert p.live_state(led) == expected
        assert p.verify(led).ok
        assert leftovers(backend) == []


def test_kill_9_during_catch_up_then_attach_finishes_it(backend: Backend) -> None:
    p = backend.projections
    with backend.open(projections=True) as led:
        led.append("k", [SessionStarted(session_id="s", source=Source(platform="local"))])
    with backend.open() as bare:  # appends with no projections attached: a lag
        fill(bare, sessions=20, messages=50)
    if backend.name == "sqlite":
        proc = child(backend.target, "attach", chunk=10)
        assert kill_after(proc, lines=5, delay=0.005)
    else:  # the catch-up waits to insert its messages, which the test locks
        with holding(backend, "LOCK TABLE messages IN SHARE MODE"):
            proc = child(backend.target, "attach", chunk=0)
            assert kill_when_blocked(backend, proc)
        backend.settle()
    with backend.open() as led:
        behind = backend.scalar("SELECT min(position) FROM projection_checkpoints")
        assert 1 <= behind < led.head()
        report = p.attach(led, **chunked(backend, 100))
        assert sum(report.caught_up.values()) > 0
        assert p.verify(led).ok
        assert p.live_state(led) == p.state_at(led)


def test_two_processes_attaching_at_once_build_the_projections_once(backend: Backend) -> None:
    path = backend.target
    with backend.open() as bare:  # a ledger from before projections existed
        fill(bare, sessions=20, messages=40)
    procs = [child(path, "attach", chunk=25) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "done" in out
    with backend.open() as led:
        assert backend.projections.verify(led).ok
    assert leftovers(backend) == []
    counts = backend.raw("SELECT count(*), sum(message_count) FROM session_history")
    assert [tuple(int(n) for n in row) for row in counts] == [(20, 20 * 40)]
