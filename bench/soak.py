"""Crash soak: SIGKILL the runner 1,000+ times at random moments, then check.

    python bench/soak.py [--kills 1000] [--sessions 2000] [--seed N]

The same workload and checks as tests/test_soak.py (which runs 50 kills), at
length: many sessions on a short idle policy, a hook that appends every call to
a file, a flusher that logs every flush; the runner is killed at a random moment
after it starts working and restarted each time; a final run drains the rest.
Prints how many kills landed mid-run, closes, hook calls, redeliveries and
repeated flushes (a flush that ran but was not yet recorded when the kill came),
then a control run without kills, which must show zero redeliveries.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(ROOT / "tests"))  # the shared worker; not the root (it holds gateway/)

from soak_worker import FLUSHER_LOG, check, seed, setup_home  # noqa: E402

WORKER = ROOT / "tests" / "soak_worker.py"


def run(workdir: Path, sessions: int, kills: int, rng: random.Random) -> dict[str, int]:
    db, home, ready = workdir / "ledger.db", workdir / "home", workdir / "ready"
    setup_home(home)
    ids = seed(db, sessions, span_seconds=max(1200, kills * 60))
    landed = 0
    started = time.monotonic()
    for n in range(kills):
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(home), str(ready)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        while not ready.exists() and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.2))
        landed += proc.poll() is None
        proc.kill()
        _, err = proc.communicate()
        if proc.returncode not in (-9, 0):
            raise SystemExit(f"worker failed:\n{err.decode()[-3000:]}")
        if n and n % 100 == 0:
            print(f"  ... {n} kills, {time.monotonic() - started:.0f}s", file=sys.stderr)
    ready.unlink(missing_ok=True)
    final = subprocess.run(
        [sys.executable, str(WORKER), str(db), str(home), str(ready), "--drain"],
        capture_output=True, timeout=600,
    )  # fmt: skip
    if final.returncode != 0:
        raise SystemExit(f"drain failed:\n{final.stderr.decode()[-3000:]}")
    redeliveries = check(db, home, ids)
    calls = (home / "hooks" / "audit" / "calls.jsonl").read_text().count("\n")
    flushes = Counter((home / FLUSHER_LOG).read_text().split())
    return {
        "kills": kills,
        "mid_run": landed,
        "sessions_closed": len(ids),
        "hook_calls": calls,
        "redeliveries": redeliveries,
        "repeated_flushes": sum(c - 1 for c in flushes.values()),
        "seconds": round(time.monotonic() - started),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=20261122)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = []
    for kills in (args.kills, 0):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(Path(tmp), args.sessions, kills, rng))
    print(f"crash soak, seed {args.seed}: invariants 5 and 6 held in both runs")
    keys = list(results[0])
    print("  ".join(f"{k:>16}" for k in keys))
    for r in results:
        print("  ".join(f"{r[k]:>16,}" for k in keys))
    verdict = "PASS" if results[1]["redeliveries"] == 0 else "FAIL"
    print(f"control run without kills: {results[1]['redeliveries']} redeliveries   {verdict}")


if __name__ == "__main__":
    main()
