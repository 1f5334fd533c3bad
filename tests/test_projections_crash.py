"""Projections across kill -9 and several processes: real subprocesses, real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source, UsageRecorded

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

CHILD = textwrap.dedent(
    """
    import sys, time
    from hermes_ledger.ledger import Ledger
    from hermes_ledger import projections

    path, action, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def progress(done, total):
        print(f"progress {done} {total}", flush=True)
        time.sleep(0.002)  # a steadier pace for the parent to aim its kill at

    with Ledger.open(path) as led:
        if action == "rebuild":
            report = projections.rebuild(led, chunk_size=chunk, progress=progress)
        else:
            report = projections.attach(led, chunk_size=chunk, progress=progress)
        print("done", report, flush=True)
    """
)


def child(path: Path, action: str, chunk: int) -> subprocess.Popen[str]:
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


def fill(led: Ledger, sessions: int, messages: int) -> None:
    for n in range(sessions):
        key = f"agent:main:telegram:dm:{n}"
        led.append(key, [SessionStarted(session_id=f"s{n}", source=Source(platform="telegram"))])
        batch = [
            MessageAppended(session_id=f"s{n}", role="user", content=f"message {m} of {n}")
            for m in range(messages)
        ]
        led.append(key, [*batch, UsageRecorded(session_id=f"s{n}", input_tokens=n)])


def leftovers(led: Ledger) -> list[str]:
    names = led.connection.execute("SELECT name FROM sqlite_schema WHERE name GLOB '*__next*'")
    return [name for (name,) in names]


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03])
def test_kill_9_during_rebuild_leaves_the_live_tables_untouched(
    tmp_path: Path, delay: float
) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as led:
        projections.attach(led)
        fill(led, sessions=30, messages=60)
        proc = child(path, "rebuild", chunk=40)
        # appends go on while the other process rebuilds
        led.append("agent:main:telegram:dm:0", [MessageAppended(
            session_id="s0", role="user", content="during the rebuild")])  # fmt: skip
        expected = projections.state_at(led)
        killed = kill_after(proc, lines=3, delay=delay)
        assert killed, "the rebuild finished before it could be killed"
        assert projections.live_state(led) == expected
        assert projections.verify(led).ok
        led.append("agent:main:telegram:dm:1", [MessageAppended(
            session_id="s1", role="user", content="after the kill")])  # fmt: skip
        expected = projections.state_at(led)
        report = projections.rebuild(led, chunk_size=500)  # the rerun
        assert report.position == led.head()
        assert projections.live_state(led) == expected
        assert projections.verify(led).ok
        assert leftovers(led) == []


def test_kill_9_during_catch_up_then_attach_finishes_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as led:
        projections.attach(led)
        led.append("k", [SessionStarted(session_id="s", source=Source(platform="local"))])
    with Ledger.open(path) as bare:  # appends with no projections attached: a lag
        fill(bare, sessions=20, messages=50)
    proc = child(path, "attach", chunk=10)
    assert kill_after(proc, lines=5, delay=0.005)
    with Ledger.open(path) as led:
        behind = led.connection.execute("SELECT min(position) FROM projection_checkpoints")
        assert 1 <= behind.fetchone()[0] < led.head()
        report = projections.attach(led, chunk_size=100)
        assert sum(report.caught_up.values()) > 0
        assert projections.verify(led).ok
        assert projections.live_state(led) == projections.state_at(led)


def test_two_processes_attaching_at_once_build_the_projections_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as bare:  # a ledger from before projections existed
        fill(bare, sessions=20, messages=40)
    procs = [child(path, "attach", chunk=25) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "done" in out
    with Ledger.open(path) as led:
        assert projections.verify(led).ok
        assert leftovers(led) == []
        counts = led.connection.execute("SELECT count(*), sum(message_count) FROM session_history")
        assert counts.fetchone() == (20, 20 * 40)
