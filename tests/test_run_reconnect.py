"""``hermes-ledger run`` on PostgreSQL rides out a lost connection (a server restart
or failover, gateway/scheduler/reconnect.py), in a real subprocess on a real server.

The outage is made by the test as the superuser: the database is closed to new
connections (``ALLOW_CONNECTIONS false``, so reconnecting fails for as long as the
test wants) and the runner's server processes are ended with
``pg_terminate_backend``, as a restart ends them."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from backends import pg_uri
from helpers import ManualClock, next_line
from pg_support import admin_connection, fresh_database
from psycopg import sql
from test_cli_run import make_home, seed

from hermes_ledger.ledger import open_log

WAIT = 60.0  # seconds a step may take before the test fails (never a timing assertion)


class Stderr:
    """The child's stderr, line by line, read by a thread (so the pipe never fills)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        stream = proc.stderr
        self._reader = threading.Thread(
            target=lambda: [self._queue.put(line) for line in stream], daemon=True
        )
        self._reader.start()

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        """The first line from now on that contains ``text``."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no log line with {text!r}; got:\n{''.join(self.lines)}")
            self.lines.append(line)
            if text in line:
                return line

    def rest(self) -> str:
        """Everything, once the child has exited: the reader is joined first (at
        the pipe's end), so the last lines are not lost to a race."""
        self._reader.join(timeout=WAIT)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "".join(self.lines)


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """(the URI, the database's name) of a fresh database; open to connections again
    at the end whatever the test did."""
    with fresh_database() as dsn:
        name = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
        try:
            yield pg_uri(dsn), name
        finally:
            allow_connections(name, True)


def allow_connections(name: str, allowed: bool) -> None:
    with admin_connection() as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.Literal(allowed)
            )
        )


def terminate_backends(name: str) -> int:
    """End every server process connected to database ``name`` (the runner's)."""
    with admin_connection() as admin:
        row = admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def start_run(
    uri: str, home: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Stderr]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hermes_ledger.gateway", "run", "--db", uri,
         "--config", str(home), "--interval", "0.1", "--verbose", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert next_line(proc).startswith("Running on ")  # the signal handlers are in place
    return proc, Stderr(proc)


def stop(proc: subprocess.Popen[str], stderr: Stderr) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    # Not communicate(): it would read stderr too, taking the last lines from the
    # reader thread. stdout holds two lines, so the child cannot block on it.
    proc.wait(timeout=WAIT)
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()
    err = stderr.rest()
    assert proc.stderr is not None
    proc.stderr.close()
    assert proc.returncode == 0, err
    return out, err


def ends(uri: str) -> list[str]:
    with open_log(uri) as log:
        return [r.session_id or "" for r in log.read_all(types=["session_ended"])]


def test_run_reconnects_after_its_connections_are_terminated_and_closes_once(
    tmp_path: Path, database: tuple[str, str]
) -> None:
    uri, name = database
    home = make_home(tmp_path)
    with open_log(uri):
        pass  # the schema, before the runner starts
    proc, stderr = start_run(uri, home)
    try:
        stderr.wait_for("pass at")  # a pass went through on the first connection
        allow_connections(name, False)
        assert terminate_backends(name) >= 1
        lost = stderr.wait_for("lost the connection to")
        stderr.wait_for("still cannot reach")  # a failed attempt: the backoff goes on
        allow_connections(name, True)
        session_id = seed(uri, ManualClock(), home)  # idle for days: due at once
        back = stderr.wait_for("reconnected to")
        stderr.wait_for(f"session {session_id} reason")
        stderr.wait_for("pass at")
        stderr.wait_for("pass at")  # passes after the close: nothing closed twice
    finally:
        out, err = stop(proc, stderr)
    assert f"postgresql://127.0.0.1:5432/{name}" in lost and "reconnecting in 1 s" in lost
    assert " WARNING " in lost and " INFO " in back
    assert err.count("lost the connection to") == 1  # once per outage, however many tries
    assert "Error:" not in err and "Traceback" not in err
    assert "Stopped after" in out
    assert ends(uri) == [session_id]
    calls_file = home / "hooks" / "recorder" / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    assert [c["session_id"] for c in calls if c["event"] == "session:end"] == [session_id]


SLOW_FLUSHER = """\
import time
from pathlib import Path

HERE = Path(__file__).parent

def flush(context, transcript):
    with (HERE / "flushes.txt").open("a") as out:
        out.write(context.session_id + "\\n")
    if not (HERE / "released").exists():  # the first call waits for the test
        (HERE / "flushing").touch()
        give_up = time.monotonic() + 60
        while not (HERE / "go").exists() and time.monotonic() < give_up:
            time.sleep(0.02)
        (HERE / "released").touch()
    return "flushed"
"""


def test_a_close_cut_off_mid_flush_is_finished_once_when_its_lease_expires(
    tmp_path: Path, database: tuple[str, str]
) -> None:
    uri, name = database
    flushers = tmp_path / "flushers"
    flushers.mkdir()
    (flushers / "slow_flush.py").write_text(SLOW_FLUSHER)
    home = make_home(tmp_path, "ledger:\n  flusher: slow_flush:flush\n  flush_timeout: 5\n")
    session_id = seed(uri, ManualClock(), home)  # idle for days: the first pass closes it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(flushers), *sys.path])}
    proc, stderr = start_run(uri, home, env=env)
    try:
        give_up = time.monotonic() + WAIT
        while not (flushers / "flushing").exists():  # the close is claimed and flushing
            assert time.monotonic() < give_up and proc.poll() is None, stderr.rest()
            time.sleep(0.02)
        assert terminate_backends(name) >= 1
        (flushers / "go").touch()  # the flush returns; recording it finds no connection
        stderr.wait_for("lost the connection to")
        stderr.wait_for("reconnected to")
        # The claim is the lost connection's until its lease (flush timeout + 60 s) ends.
        stderr.wait_for(f"session {session_id} reason", timeout=WAIT + 65)
        stderr.wait_for("pass at")
    finally:
        out, err = stop(proc, stderr)
    assert "Stopped after" in out and "Traceback" not in err
    assert ends(uri) == [session_id]
    with open_log(uri) as log:
        closing = [r.type for r in log.read_all() if r.type not in ("session_started",
                   "message_appended")]  # fmt: skip
    assert closing == ["session_expired", "memory_flushed", "session_ended"]
    # The flush whose outcome was never recorded ran again (a flush is at least once).
    assert (flushers / "flushes.txt").read_text().split() == [session_id, session_id]
    calls_file = home / "hooks" / "recorder" / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    assert [c["session_id"] for c in calls if c["event"] == "session:end"] == [session_id]


def test_sigterm_while_reconnecting_stops_the_runner(
    tmp_path: Path, database: tuple[str, str]
) -> None:
    uri, name = database
    home = make_home(tmp_path)
    with open_log(uri):
        pass
    proc, stderr = start_run(uri, home, "--log-format", "json")
    try:
        stderr.wait_for("pass at")
        allow_connections(name, False)  # no reconnection can succeed until the test ends
        assert terminate_backends(name) >= 1
        lost = json.loads(stderr.wait_for("lost the connection to"))
        tried = json.loads(stderr.wait_for("still cannot reach"))
    finally:
        out, err = stop(proc, stderr)
    assert (lost["level"], lost["event"], lost["retry_in"]) == ("warning", "connection_lost", 1)
    assert "terminating connection" in lost["error"]
    assert (tried["event"], tried["attempt"], tried["retry_in"]) == ("reconnect_failed", 1, 2)
    assert "not currently accepting connections" in tried["error"]
    assert "SIGTERM: finishing the current pass" in err
    assert "Stopped after" in out
    assert "reconnected" not in err and "Traceback" not in err


def test_run_on_a_database_that_cannot_be_reached_fails_at_once(
    tmp_path: Path, database: tuple[str, str]
) -> None:
    uri, _name = database
    home = make_home(tmp_path)
    wrong = uri.rsplit("/", 1)[0] + "/hl_no_such_database"
    proc = subprocess.run(
        [sys.executable, "-m", "hermes_ledger.gateway", "run", "--db", wrong,
         "--config", str(home), "--interval", "0.1"],
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: cannot connect to PostgreSQL")
    assert "Try:" in proc.stderr and "reconnecting" not in proc.stderr
    assert "Running on" not in proc.stdout
