"""Crash soak (bounded): SIGKILL the runner at random moments, restart it each time,
then check invariants 5 and 6. bench/soak.py runs the same for 1,000+ kills."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import soak_worker
from soak_worker import check, seed, setup_home

WORKER = Path(soak_worker.__file__)


def start(db: Path, home: Path, ready: Path, *extra: str) -> subprocess.Popen[bytes]:
    ready.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), str(home), str(ready), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def soak(tmp_path: Path, sessions: int, kills: int, seed_value: int) -> tuple[int, int]:
    """Returns (kills that landed while the worker was running, redeliveries)."""
    db, home, ready = tmp_path / "ledger.db", tmp_path / "home", tmp_path / "ready"
    setup_home(home)
    ids = seed(db, sessions, span_seconds=max(1200, kills * 60))
    rng = random.Random(seed_value)
    landed = 0
    for _ in range(kills):
        proc = start(db, home, ready)
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))
        if proc.poll() is None:
            landed += 1
        proc.kill()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode in (-9, 0), err.decode()[-2000:]
    final = start(db, home, ready, "--drain")
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()[-2000:]
    return landed, check(db, home, ids)


def test_kill_9_at_random_moments_keeps_every_close_exactly_once(tmp_path: Path) -> None:
    landed, redeliveries = soak(tmp_path, sessions=120, kills=50, seed_value=20261122)
    assert landed >= 45  # the kills really interrupted a running worker
    print(f"50 kills ({landed} mid-run), {redeliveries} hook redeliveries")


def test_without_kills_there_are_no_redeliveries(tmp_path: Path) -> None:
    _, redeliveries = soak(tmp_path, sessions=60, kills=0, seed_value=1)
    assert redeliveries == 0
