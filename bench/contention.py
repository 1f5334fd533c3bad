"""Writers under contention: N processes appending messages to one ledger file.

    python bench/contention.py [--writers 1,4,8] [--calls 1500] [--sessions 4]
                               [--busy ledger|sqlite] [--json]

Each writer is its own OS process (this script with ``--worker``): it opens the ledger
(``Ledger.open``, so the connection setup of ledger/schema.py), builds a
``SessionStore`` over it, starts ``--sessions`` sessions of its own (untimed), then
waits at a start barrier (a pipe: it says ``ready`` on stdout and blocks reading
``go`` from stdin) and makes ``--calls`` ``append_to_transcript`` calls round-robin
over its sessions, timing each call. A busy error that reaches the caller
(LedgerBusyError, apsw.BusyError) is counted, not raised; it must stay 0.

Per N: aggregate throughput (all calls / wall time from the first writer's start to
the last writer's end) and p50/p99/p99.9/max over every call of every writer.
Targets (issue 11, item 13): aggregate throughput at 4 and 8 writers >= 0.9x one
writer's, p99.9 at 4 writers < 50 ms, no busy error reaching a caller.

``--busy sqlite`` replaces the ledger's busy handler by SQLite's default one
(``sqlite3_busy_timeout``, which sleeps in growing steps of up to 100 ms) with the
same timeout, to compare the two on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import apsw  # noqa: E402

from hermes_ledger.gateway import GatewayConfig, SessionSource  # noqa: E402
from hermes_ledger.gateway.sessions.store import SessionStore  # noqa: E402
from hermes_ledger.ledger import Ledger  # noqa: E402
from hermes_ledger.ledger.errors import LedgerBusyError  # noqa: E402

THROUGHPUT_TARGET = 0.9  # aggregate at N writers / one writer's
P999_TARGET_MS = 50.0  # at 4 writers
BUSY_TIMEOUT = 30.0
CONTENT = (
    "the gateway ledger keeps every message of the session in one append-only log; "
    "a reply from the agent arrives after the tool result and the summary note"
)


def source(writer: int, k: int) -> SessionSource:
    return SessionSource(
        platform="discord", chat_id=f"guild-{writer}-{k}", chat_type="group",
        user_id=f"user-{writer}-{k}", user_name=f"member {writer}", chat_name=f"channel {k}",
    )  # fmt: skip


# -- the writer process ------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    with Ledger.open(args.db, busy_timeout=BUSY_TIMEOUT) as ledger:
        if args.busy == "sqlite":
            ledger.connection.setbusytimeout(int(BUSY_TIMEOUT * 1000))
        store = SessionStore(ledger, GatewayConfig())
        ids = [store.get_or_create_session(source(args.name, k)).session_id
               for k in range(args.sessions)]  # fmt: skip
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go from the parent")
        latencies: list[float] = []
        busy = 0
        clock = time.perf_counter
        start = time.monotonic()
        for i in range(args.calls):
            message = {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} {CONTENT}"}
            t0 = clock()
            try:
                store.append_to_transcript(ids[i % len(ids)], message)
            except (LedgerBusyError, apsw.BusyError):
                busy += 1
            latencies.append(clock() - t0)
        end = time.monotonic()
    print(json.dumps({"start": start, "end": end, "busy": busy, "latencies": latencies}))


# -- the parent ----------------------------------------------------------------------


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    db = workdir / f"contention-{n}.db"
    Ledger.open(db).close()  # created and migrated before the writers race
    command = [sys.executable, __file__, "--worker", "--db", str(db), "--calls", str(args.calls),
               "--sessions", str(args.sessions), "--busy", args.busy]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*command, "--name", str(w)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for w in range(n)
    ]
    try:
        for proc in procs:  # the barrier: everyone is open, with its sessions started
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"writer {proc.args} did not get ready")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"writer {proc.args} exited {proc.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    latencies = sorted(x for r in results for x in r["latencies"])
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "writers": n,
        "calls": len(latencies),
        "seconds": wall,
        "calls_per_s": len(latencies) / wall,
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "p999_ms": pct(latencies, 0.999),
        "max_ms": latencies[-1] * 1000,
        "busy_errors": sum(r["busy"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", default="1,4,8", help="writer process counts, comma-separated")
    parser.add_argument("--calls", type=int, default=1500, help="appends per writer")
    parser.add_argument("--sessions", type=int, default=4, help="sessions per writer")
    parser.add_argument("--busy", choices=["ledger", "sqlite"], default="ledger",
                        help="the ledger's busy handler, or SQLite's default one")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--name", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    counts = sorted({int(n) for n in args.writers.split(",")})
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n in counts:
            rows.append(run(n, args, Path(tmp)))
            print(f"  ... {n} writer(s) done", file=sys.stderr)
    by_n = {r["writers"]: r for r in rows}
    ratios = {}
    if 1 in by_n:
        ratios = {n: by_n[n]["calls_per_s"] / by_n[1]["calls_per_s"] for n in counts if n > 1}
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": apsw.sqlite_lib_version()},
        "busy_handler": args.busy, "calls_per_writer": args.calls, "rows": rows,
        "throughput_ratios": {str(n): r for n, r in ratios.items()},
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"append_to_transcript from N writer processes, one ledger file, {args.calls:,} calls"
        f" per writer, busy handler: {args.busy} ({os.cpu_count()} CPUs)"
    )
    print(f"{'writers':>7}  {'calls':>7}  {'calls/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}"
          f"  {'p99.9 ms':>8}  {'max ms':>7}  {'busy':>4}")  # fmt: skip
    for r in rows:
        print(
            f"{r['writers']:>7}  {r['calls']:>7,}  {r['calls_per_s']:>8,.0f}  {r['p50_ms']:>7.2f}"
            f"  {r['p99_ms']:>7.2f}  {r['p999_ms']:>8.2f}  {r['max_ms']:>7.1f}"
            f"  {r['busy_errors']:>4}"
        )
    for n, ratio in ratios.items():
        mark = "PASS" if ratio >= THROUGHPUT_TARGET else "short"
        target = f"target >= {THROUGHPUT_TARGET}"
        print(f"aggregate at {n} / one writer: {ratio:.3f}   {target}   {mark}")
    if 4 in by_n:
        p999 = by_n[4]["p999_ms"]
        mark = "PASS" if p999 < P999_TARGET_MS else "short"
        print(f"p99.9 at 4 writers: {p999:.1f} ms   target < {P999_TARGET_MS:g} ms   {mark}")
    busy = sum(r["busy_errors"] for r in rows)
    print(f"busy errors reaching a caller: {busy}   target 0   {'PASS' if busy == 0 else 'short'}")
    print("notes: wall time runs from the first writer's go to the last writer's end;"
          " session starts are untimed; one SQLite write lock serialises all writers, so"
          " the aggregate cannot exceed one writer's, only keep up with it")  # fmt: skip


if __name__ == "__main__":
    main()
