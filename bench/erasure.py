"""Erasure's costs (issue 13, item 7): append with forgettable content, erasing one
user among many events, and rebuilds, against the code before forgettable content.

Prints one table and the ratios docs/design.md ("Erasure") sets targets for:

  append   Ledger.append(key, [message]) one event per call (content, user name set),
           without and with the projections attached: this code (payload row, digest,
           secure_delete) against the baseline code (--baseline-rev, default the commit
           before migration 4), events/s; target >= 0.85x
  rebuild  projections.rebuild of a ledger of --rebuild-events events (each code
           rebuilds a ledger it wrote itself), events/s; target >= 0.9x
  erase    Ledger.erase of one user with --user-messages messages among --events
           events (projections attached: messages, FTS, sessions scrubbed; WAL
           checkpointed), seconds; target < 2 s

The baseline runs in a subprocess that imports ``git archive REV`` of the repository
(no checkout is touched); append and rebuild rounds alternate between the two codes
(--rounds, the median is shown), so a busy machine slows both alike.

    python bench/erasure.py [--events 1000000] [--user-messages 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BASELINE_REV = "91781b9"
"""The last commit before forgettable content (migration 0004)."""
TARGETS = {"append": 0.85, "append+projections": 0.85, "rebuild": 0.9}
TEXT = "the quick brown fox jumps over the lazy dog, message number {n} of the benchmark"


def _messages(n: int, session: str, user: str, start: int = 0) -> list[Any]:
    from hermes_ledger.ledger.events import MessageAppended

    return [
        MessageAppended(session_id=session, role="user" if i % 2 else "assistant",
                        user_id=user if i % 2 else None, user_name="Ada" if i % 2 else None,
                        content=TEXT.format(n=start + i))
        for i in range(n)
    ]  # fmt: skip


def _start(session: str, user: str) -> Any:
    from hermes_ledger.ledger.events import SessionStarted, Source

    return SessionStarted(session_id=session, source=Source(
        platform="telegram", user_id=user, user_name="Ada", chat_name="Ada's chat"))  # fmt: skip


# -- workers (run in a subprocess, with this code or the baseline's) ---------------


def work_append(path: Path, events: int, attached: bool) -> float:
    from hermes_ledger import projections
    from hermes_ledger.ledger import Ledger

    models = _messages(events, "s1", "u1")
    led = projections.open_ledger(path) if attached else Ledger.open(path)
    with led:
        led.append("k1", [_start("s1", "u1")])
        began = time.perf_counter()
        for model in models:
            led.append("k1", [model])
        return events / (time.perf_counter() - began)


def _fill(path: Path, events: int, *, per_session: int = 200, attached: bool = True) -> None:
    from hermes_ledger import projections
    from hermes_ledger.ledger import Ledger

    led = projections.open_ledger(path) if attached else Ledger.open(path)
    with led:
        n = 0
        session = 0
        while n < events:
            session += 1
            count = min(per_session, events - n) - 1
            sid, user = f"s{session}", f"u{session % 5000}"
            led.append(f"k{session}", [_start(sid, user), *_messages(count, sid, user, n)])
            n += count + 1


def work_rebuild(path: Path, events: int) -> float:
    from hermes_ledger import projections
    from hermes_ledger.ledger import Ledger

    _fill(path, events, attached=False)
    with Ledger.open(path) as led:
        began = time.perf_counter()
        projections.rebuild(led)
        return events / (time.perf_counter() - began)


def work_erase(path: Path, events: int, user_messages: int) -> dict[str, Any]:
    from hermes_ledger import projections
    from hermes_ledger.ledger.erasure import ErasureScope

    began = time.perf_counter()
    _fill(path, events - user_messages - 50)
    with projections.open_ledger(path) as led:
        # the subject: 50 sessions of their own, user_messages messages in all
        per = user_messages // 50
        for s in range(50):
            sid = f"subject-{s}"
            led.append(f"subject-key-{s}", [_start(sid, "subject"),
                                            *_messages(per, sid, "subject")])  # fmt: skip
        built = time.perf_counter() - began
        head = led.head()
        began = time.perf_counter()
        report = led.erase(ErasureScope("user", "subject"), requested_by="bench", dry_run=False)
        seconds = time.perf_counter() - began
    return {"seconds": seconds, "events": head, "erased_events": report.events,
            "erased_messages": report.messages, "checkpointed": report.checkpointed,
            "build_seconds": built}  # fmt: skip


def _worker(args: argparse.Namespace) -> None:
    if args.baseline_dir:
        # Import the baseline's tree, not the editable install of this checkout.
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, args.baseline_dir)
    path = Path(args.dir) / f"{args.worker}-{os.getpid()}.db"
    if args.worker == "append":
        result: Any = work_append(path, args.append_events, attached=False)
    elif args.worker == "append+projections":
        result = work_append(path, args.append_events, attached=True)
    elif args.worker == "rebuild":
        result = work_rebuild(path, args.rebuild_events)
    else:
        result = work_erase(path, args.events, args.user_messages)
    for leftover in Path(args.dir).glob(f"{path.name}*"):
        leftover.unlink()
    print(json.dumps(result))


# -- the run -----------------------------------------------------------------------


def _baseline(rev: str, into: Path) -> Path:
    """``git archive rev`` of the package folders, laid out as ``hermes_ledger/…``."""
    archive = into / "baseline.tar"
    with open(archive, "wb") as out:
        subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "ledger", "projections", "gateway",
             "migrations"], stdout=out, check=True,
        )  # fmt: skip
    root = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(root / "hermes_ledger", filter="data")
    return root


def _run(args: argparse.Namespace, worker: str, baseline: Path | None, work: Path) -> Any:
    command = [
        sys.executable, __file__, "--worker", worker, "--dir", str(work),
        "--append-events", str(args.append_events), "--rebuild-events", str(args.rebuild_events),
        "--events", str(args.events), "--user-messages", str(args.user_messages),
    ]  # fmt: skip
    if baseline is not None:
        command += ["--baseline-dir", str(baseline)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd="/")
    if done.returncode:
        raise SystemExit(f"{worker} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--user-messages", type=int, default=10_000)
    parser.add_argument("--append-events", type=int, default=5000)
    parser.add_argument("--rebuild-events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-erasure-") as tmp:
        work = Path(tmp)
        baseline = _baseline(args.baseline_rev, work)
        rows: dict[str, dict[str, float]] = {}
        for name in ("append", "append+projections", "rebuild"):
            now, then = [], []
            for _ in range(args.rounds):
                now.append(_run(args, name, None, work))
                then.append(_run(args, name, baseline, work))
            rows[name] = {"this": statistics.median(now), "baseline": statistics.median(then)}
        erase = _run(args, "erase", None, work)
    ratios = {name: row["this"] / row["baseline"] for name, row in rows.items()}
    if args.json:
        print(json.dumps({"rows": rows, "ratios": ratios, "erase": erase}, indent=2))
        return
    print(f"{'workload':<22}{'this code':>14}{'baseline':>14}{'ratio':>8}{'target':>9}")
    for name, row in rows.items():
        print(f"{name:<22}{row['this']:>10,.0f} ev/s{row['baseline']:>10,.0f} ev/s"
              f"{ratios[name]:>7.2f}x{'>= ' + str(TARGETS[name]):>9}")  # fmt: skip
    print(
        f"erase one user: {erase['erased_messages']:,} messages ({erase['erased_events']:,}"
        f" events) among {erase['events']:,} events in {erase['seconds']:.2f} s (target < 2 s;"
        f" WAL checkpointed: {erase['checkpointed']})"
    )


if __name__ == "__main__":
    main()
