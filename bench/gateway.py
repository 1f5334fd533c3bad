"""Per-call latency of the session store as the number of sessions grows.

    python bench/gateway.py [--buckets 1000,10000,100000] [--sample 1000] [--json]
                            [--hermes-python /path/to/venv/bin/python]

One call = ``get_or_create_session(source)`` + ``append_to_transcript(...)`` for a
group session. Sessions are created up to each bucket size; at each bucket we
time the last ``--sample`` creations ("new") and ``--sample`` calls on random
existing keys ("revisit"), and print p50/p99 per bucket. Targets: p50 at the
largest bucket within 1.5x of the smallest (flat), and p50 under 1 ms.

With ``--hermes-python`` (a Python that has ``hermes-agent`` installed, e.g. a
separate venv), the Hermes gateway's own SessionStore is measured side by side
on a smaller bucket (it rewrites its whole routing index on every call, so large
buckets take hours) and the ratio at that size is printed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# This file is named after what it measures, which shadows the `gateway` package
# when run as a script: drop its own directory from the import path first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from hermes_ledger.gateway import GatewayConfig, SessionSource  # noqa: E402
from hermes_ledger.gateway.sessions.store import SessionStore  # noqa: E402
from hermes_ledger.ledger import Ledger  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 9, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def source(n: int) -> SessionSource:
    return SessionSource(
        platform="discord", chat_id=f"guild-{n}", chat_type="group", user_id=f"user-{n}",
        user_name=f"member {n}", chat_name=f"channel {n}",
    )  # fmt: skip


def call(store: SessionStore, n: int) -> float:
    start = time.perf_counter()
    entry = store.get_or_create_session(source(n))
    store.append_to_transcript(entry.session_id, {"role": "user", "content": f"hello from {n}"})
    return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_ours(buckets: list[int], sample: int, workdir: Path) -> list[dict[str, float | int | str]]:
    rows: list[dict[str, float | int | str]] = []
    with Ledger.open(workdir / "ledger.db") as led:
        store = SessionStore(led, GatewayConfig(), Clock())
        created = 0
        rng = random.Random(7)
        for bucket in buckets:
            new_times = []
            while created < bucket:
                elapsed = call(store, created)
                if created >= bucket - sample:
                    new_times.append(elapsed)
                created += 1
            revisits = [call(store, rng.randrange(created)) for _ in range(sample)]
            for kind, values in (("new", new_times), ("revisit", revisits)):
                rows.append(
                    {"sessions": bucket, "kind": kind, "calls": len(values),
                     "p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99),
                     "mean_ms": statistics.fmean(values) * 1000}
                )  # fmt: skip
            print(f"  ... {bucket:,} sessions done", file=sys.stderr)
    return rows


HERMES_SCRIPT = r"""
import json, random, sys, tempfile, time, os
from pathlib import Path
home = Path(tempfile.mkdtemp()); os.environ["HERMES_HOME"] = str(home)
from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.session import SessionSource, SessionStore
from hermes_ledger.gateway.config.gateway import Platform
bucket, sample = int(sys.argv[1]), int(sys.argv[2])
store = SessionStore(home / "sessions", GatewayConfig())
def call(n):
    t = time.perf_counter()
    src = SessionSource(platform=Platform.DISCORD, chat_id=f"guild-{n}", chat_type="group",
                        user_id=f"user-{n}", user_name=f"member {n}", chat_name=f"channel {n}")
    e = store.get_or_create_session(src)
    store.append_to_transcript(e.session_id, {"role": "user", "content": f"hello from {n}"})
    return time.perf_counter() - t
new = [call(n) for n in range(bucket)][-sample:]
rng = random.Random(7)
rev = [call(rng.randrange(bucket)) for _ in range(sample)]
print(json.dumps({"new": new, "revisit": rev}))
"""


def run_hermes(python: str, bucket: int, sample: int) -> dict[str, list[float]] | None:
    proc = subprocess.run(
        [python, "-c", HERMES_SCRIPT, str(bucket), str(sample)],
        capture_output=True, text=True, timeout=3 * 3600, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    if proc.returncode != 0:
        print(f"hermes-agent run failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--buckets", default="1000,10000,100000")
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--hermes-python", help="a Python with hermes-agent installed")
    parser.add_argument("--hermes-bucket", type=int, default=1000)
    parser.add_argument("--hermes-sample", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    buckets = sorted(int(b) for b in args.buckets.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_ours(buckets, min(args.sample, buckets[0]), Path(tmp))
    hermes = None
    if args.hermes_python:
        hermes = run_hermes(args.hermes_python, args.hermes_bucket, args.hermes_sample)
    p50 = {(r["sessions"], r["kind"]): float(r["p50_ms"]) for r in rows}
    small, large = buckets[0], buckets[-1]
    flat = {k: p50[(large, k)] / p50[(small, k)] for k in ("new", "revisit")}
    result = {"rows": rows, "flatness": flat}
    if hermes:
        ours_at = min(buckets, key=lambda b: abs(b - args.hermes_bucket))
        result["hermes"] = {
            kind: {"sessions": args.hermes_bucket, "p50_ms": pct(values, 0.5),
                   "p99_ms": pct(values, 0.99),
                   "ratio_vs_ours": pct(values, 0.5) / p50[(ours_at, kind)]}
            for kind, values in hermes.items()
        }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("hermes-ledger SessionStore: get_or_create_session + append_to_transcript, group DMs")
    print(f"{'sessions':>9}  {'calls':>6}  {'kind':<8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for r in rows:
        print(
            f"{r['sessions']:>9,}  {r['calls']:>6,}  {r['kind']:<8} {r['p50_ms']:>8.3f}"
            f" {r['p99_ms']:>8.3f} {r['mean_ms']:>8.3f}"
        )
    for kind, ratio in flat.items():
        mark = "PASS" if ratio <= 1.5 else "short"
        print(f"p50 {kind:<8} at {large:,} / at {small:,}: {ratio:.2f}   target <= 1.5   {mark}")
    worst = max(p50[(large, k)] for k in ("new", "revisit"))
    print(f"p50 at {large:,}: {worst:.3f} ms   target < 1 ms   {'PASS' if worst < 1 else 'short'}")
    if hermes:
        for kind, h in result["hermes"].items():
            print(
                f"hermes-agent {kind:<8} at {h['sessions']:,}: p50 {h['p50_ms']:.1f} ms,"
                f" p99 {h['p99_ms']:.1f} ms = {h['ratio_vs_ours']:.0f}x ours"
            )
    else:
        print("hermes-agent not measured (pass --hermes-python to a venv that has it)")


if __name__ == "__main__":
    main()
