"""Erasure with real processes: while another process appends (both succeed,
nothing is lost), and killed with SIGKILL at random moments (the ledger is as
before the erasure or as after it, never half; a re-run finishes it). On both
backends (``backend``, tests/backends.py): the processes open the ledger by its
target, a file or a PostgreSQL database."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from backends import Backend, open_projected
from helpers import installed_script, next_line

from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source

MARK = "Vqmarkerzz"
KEY = "agent:main:telegram:dm:1"


TESTS = str(Path(__file__).parent)
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])),
}
"""A child's environment: it imports ``backends`` (``open_projected``) as the tests do."""


def fill(target: str, messages: int) -> None:
    with open_projected(target) as led:
        led.append(KEY, [SessionStarted(session_id="s1", source=Source(
            platform="telegram", user_id="u1", user_name=f"{MARK} name"))])  # fmt: skip
        for start in range(0, messages, 100):
            led.append(KEY, [
                MessageAppended(session_id="s1", role="user", user_id="u1",
                                content=f"{MARK} number {n}")
                for n in range(start, start + 100)
            ])  # fmt: skip


APPENDER = """
import sys
from backends import open_projected
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
key = "agent:main:telegram:dm:2"
with open_projected(sys.argv[1]) as led:
    led.append(key, [SessionStarted(session_id="s2", source=Source(
        platform="telegram", user_id="u2"))])
    print("ready", flush=True)
    for n in range(int(sys.argv[2])):
        led.append(key, [MessageAppended(session_id="s2", role="user", user_id="u2",
                                         content=f"kept {n}")])
print("done", flush=True)
"""


def read(backend: Backend, sql: str) -> int:
    """The one number ``sql`` counts, read behind the interface."""
    return int(backend.scalar(sql))


def test_erasure_while_another_process_appends(backend: Backend) -> None:
    fill(backend.target, 500)
    count = 400
    with subprocess.Popen(
        [sys.executable, "-c", APPENDER, backend.target, str(count)],
        stdout=subprocess.PIPE, text=True, env=CHILD_ENV,
    ) as proc:  # fmt: skip
        try:
            assert next_line(proc).strip() == "ready"
            with open_projected(backend.target) as led:
                for _ in range(3):
                    led.erase(ErasureScope("user", "u1"), requested_by="t", dry_run=False)
            assert next_line(proc).strip() == "done"
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    with backend.open(projections=True) as led:
        assert led.verify().ok
        assert backend.projections.verify(led).ok
    assert read(backend, "SELECT count(*) FROM messages WHERE session_id = 's2'") == count
    assert read(backend,
        "SELECT count(*) FROM messages WHERE session_id = 's1' AND content <> '[erased]'"
    ) == 0  # fmt: skip


FULL_TEXT_COUNT = {
    "sqlite": f"SELECT count(*) FROM messages_fts WHERE messages_fts MATCH '{MARK}'",
    "postgresql": "SELECT count(*) FROM messages WHERE search_vector"
    f" @@ plainto_tsquery('hermes_ledger.hl_words'::regconfig, '{MARK}')",
}
"""How many messages the full-text index finds MARK in."""


def _state(backend: Backend) -> str:
    """'before' or 'after' the erasure, or a description of a half state."""
    backend.settle()  # a killed eraser's transaction is over
    with backend.open() as led:
        erasures = read(backend, "SELECT count(*) FROM events WHERE type = 'subject_erased'")
        payloads = read(backend, "SELECT count(*) FROM payloads")
        clear = read(backend, "SELECT count(*) FROM messages WHERE content <> '[erased]'")
        fts = read(backend, FULL_TEXT_COUNT[backend.name])
        ok = led.verify().ok
    if erasures == 0 and payloads > 0 and clear > 0 and fts == clear and ok:
        return "before"
    if erasures >= 1 and payloads == 0 and clear == 0 and fts == 0 and ok:
        return "after"
    return f"half: {erasures=} {payloads=} {clear=} {fts=} {ok=}"


def test_kill_9_mid_erasure_leaves_before_or_after(backend: Backend) -> None:
    fill(backend.target, 3000)
    script = installed_script()
    rng = random.Random(1313)
    seen = set()
    for _ in range(6):
        if _state(backend) == "after":
            break
        proc = subprocess.Popen(
            [script, "erase", "--db", backend.target, "--user", "u1", "--yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.05, 0.6))  # a random moment, not a timing assertion
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(backend)
        assert state in ("before", "after"), state
        seen.add(state)
    # a re-run finishes it (or finds nothing left to do)
    done = subprocess.run(
        [script, "erase", "--db", backend.target, "--user", "u1", "--yes"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _state(backend) == "after"
    if backend.name == "sqlite":
        db_path = backend.target
        data = b"".join(
            Path(f"{db_path}{s}").read_bytes()
            for s in ("", "-wal", "-shm")
            if Path(f"{db_path}{s}").exists()
        )
        assert MARK.encode() not in data


PAUSED_ERASER = """
import sys, time
from backends import open_projected
from hermes_ledger.ledger.erasure import ErasureScope
led = open_projected(sys.argv[1])
def pause(conn):
    print("inside", flush=True)  # the payloads are deleted, nothing is committed
    time.sleep(120)
    return []
led.add_scrubber(pause)
led.erase(ErasureScope("user", "u1"), requested_by="t", dry_run=False)
"""


def test_kill_9_inside_the_erasure_transaction_leaves_before(backend: Backend) -> None:
    fill(backend.target, 300)
    with subprocess.Popen(
        [sys.executable, "-c", PAUSED_ERASER, backend.target],
        stdout=subprocess.PIPE, text=True, env=CHILD_ENV,
    ) as proc:  # fmt: skip
        try:
            assert next_line(proc).strip() == "inside"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _state(backend) == "before"
    with open_projected(backend.target) as led:
        led.erase(ErasureScope("user", "u1"), requested_by="t", dry_run=False)
    assert _state(backend) == "after"
