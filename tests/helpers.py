"""Helpers the test modules share: a hand-ticked clock, the installed console
scripts, waiting for a child process's next line, and running a command on a
pseudo-terminal. ``tests/`` is on ``sys.path`` (pytest's
``pythonpath``), the repository root is not: its ``gateway/`` folder would shadow
Hermes's own ``gateway`` package."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

__all__ = ["ManualClock", "hold_write_lock", "installed_script", "next_line", "run_on_terminal"]


def installed_script(name: str = "hermes-ledger") -> str:
    """The path of an installed console script (``hermes``, ``hermes-ledger``): the
    one beside this interpreter, else the first on PATH. Fails the test when there
    is none, since these tests are about the installed entry points."""
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if found is None:
        pytest.fail(f"the {name!r} console script is not installed; run pip install -e .")
    return found


class ManualClock:
    """A clock that only moves when a test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def next_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """The next line ``proc`` writes to its stdout (a text-mode pipe): what a test
    waits for, instead of sleeping, while a child gets ready. Fails the test (with
    the child's stderr) if the child exits first or writes no line in ``timeout``
    seconds."""
    assert proc.stdout is not None
    stdout = proc.stdout
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if got and got[0]:
        return got[0]
    timed_out = not got
    if timed_out:
        proc.kill()
        reader.join()
    _, err = proc.communicate()
    if timed_out:
        pytest.fail(f"{proc.args} wrote no line in {timeout:g}s:\n{err}")
    pytest.fail(f"{proc.args} exited {proc.returncode} before writing a line:\n{err}")


def run_on_terminal(
    command: Sequence[str], stream: Literal["stdin", "stderr"], timeout: float = 60.0
) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run ``command`` with its ``stream`` on a pseudo-terminal and its other output
    streams on pipes (text). Returns the finished process and the bytes it wrote
    to the terminal."""
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            list(command),
            stdin=follower if stream == "stdin" else None,
            stdout=subprocess.PIPE,
            stderr=follower if stream == "stderr" else subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    finally:
        os.close(follower)
    shown = b""
    try:
        while select.select([leader], [], [], 1.0)[0]:
            chunk = os.read(leader, 65536)
            if not chunk:
                break
            shown += chunk
    except OSError:  # EIO: the terminal's other end is closed and drained
        pass
    finally:
        os.close(leader)
    return done, shown


_LOCKER = """
import sqlite3, sys, time, pathlib
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
release = pathlib.Path(sys.argv[2])
deadline = time.monotonic() + 120
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.01)
con.execute("COMMIT")
"""


def hold_write_lock(
    db: os.PathLike[str] | str, release: os.PathLike[str] | str
) -> subprocess.Popen[str]:
    """Another process holding ``BEGIN IMMEDIATE`` on ``db`` until the file ``release``
    exists (or two minutes pass); returns once it holds the lock."""
    locker = subprocess.Popen(
        [sys.executable, "-I", "-c", _LOCKER, str(db), str(release)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert next_line(locker).strip() == "locked"
    return locker
