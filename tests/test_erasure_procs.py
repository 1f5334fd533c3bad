"""Erasure with real processes: while another process appends (both succeed,
nothing is lost), and killed with SIGKILL at random moments (the ledger is as
before the erasure or as after it, never half; a re-run finishes it)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import installed_script, next_line

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.erasure import ErasureScope
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source

MARK = "Vqmarkerzz"
KEY = "agent:main:telegram:dm:1"


def fill(path: Path, messages: int) -> None:
    with projections.open_ledger(path) as led:
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
from hermes_ledger import projections
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
key = "agent:main:telegram:dm:2"
with projections.open_ledger(sys.argv[1]) as led:
    led.append(key, [SessionStarted(session_id="s2", source=Source(
        platform="telegram", user_id="u2"))])
    print("ready", flush=True)
    for n in range(int(sys.argv[2])):
        led.append(key, [MessageAppended(session_id="s2", role="user", user_id="u2",
                                         content=f"kept {n}")])
print("done", flush=True)
"""


def test_erasure_while_another_process_appends(db_path: Path) -> None:
    fill(db_path, 500)
    count = 400
    with subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(db_path), str(count)],
        stdout=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            assert next_line(proc).strip() == "ready"
            with projections.open_ledger(db_path) as led:
                for _ in range(3):
                    led.erase(ErasureScope("user", "u1"), requested_by="t", dry_run=False)
            assert next_line(proc).strip() == "done"
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    with projections.open_ledger(db_path) as led:
        assert led.verify().ok
        assert projections.verify(led).ok
        kept = led.query("SELECT count(*) FROM messages WHERE session_id = 's2'")
        assert kept == [(count,)]
        assert led.query(
            "SELECT count(*) FROM messages WHERE session_id = 's1' AND content <> '[erased]'"
        ) == [(0,)]


def _state(path: Path) -> str:
    """'before' or 'after' the erasure, or a description of a half state."""
    with Ledger.open(path) as led:
        erasures = led.query("SELECT count(*) FROM events WHERE type = 'subject_erased'")[0][0]
        payloads = led.query("SELECT count(*) FROM payloads")[0][0]
        clear = led.query("SELECT count(*) FROM messages WHERE content <> '[erased]'")[0][0]
        fts = led.query("SELECT count(*) FROM messages_fts WHERE messages_fts MATCH ?", (MARK,))[0][
            0
        ]
        ok = led.verify().ok
    if erasures == 0 and payloads > 0 and clear > 0 and fts == clear and ok:
        return "before"
    if erasures >= 1 and payloads == 0 and clear == 0 and fts == 0 and ok:
        return "after"
    return f"half: {erasures=} {payloads=} {clear=} {fts=} {ok=}"


def test_kill_9_mid_erasure_leaves_before_or_after(db_path: Path) -> None:
    fill(db_path, 3000)
    script = installed_script()
    rng = random.Random(1313)
    seen = set()
    for _ in range(6):
        if _state(db_path) == "after":
            break
        proc = subprocess.Popen(
            [script, "erase", "--db", str(db_path), "--user", "u1", "--yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rng.uniform(0.05, 0.6))  # a random moment, not a timing assertion
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(db_path)
        assert state in ("before", "after"), state
        seen.add(state)
    # a re-run finishes it (or finds nothing left to do)
    done = subprocess.run(
        [script, "erase", "--db", str(db_path), "--user", "u1", "--yes"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _state(db_path) == "after"
    data = b"".join(
        Path(f"{db_path}{s}").read_bytes()
        for s in ("", "-wal", "-shm")
        if Path(f"{db_path}{s}").exists()
    )
    assert MARK.encode() not in data


PAUSED_ERASER = """
import sys, time
from hermes_ledger import projections
from hermes_ledger.ledger.erasure import ErasureScope
led = projections.open_ledger(sys.argv[1])
def pause(conn):
    print("inside", flush=True)  # the payloads are deleted, nothing is committed
    time.sleep(120)
led.add_scrubber(pause)
led.erase(ErasureScope("user", "u1"), requested_by="t", dry_run=False)
"""


def test_kill_9_inside_the_erasure_transaction_leaves_before(db_path: Path) -> None:
    fill(db_path, 300)
    with subprocess.Popen(
        [sys.executable, "-c", PAUSED_ERASER, str(db_path)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert next_line(proc).strip() == "inside"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _state(db_path) == "before"
    with projections.open_ledger(db_path) as led:
        led.erase(ErasureScope("user", "u1"), requested_by="t", dry_run=False)
    assert _state(db_path) == "after"
