"""Scheduler cost against the number of sessions, with the number due held fixed.

    python bench/tick.py [--totals 10000,100000] [--open 2000] [--due 1500] [--json]

For each total, a ledger holds ``total`` sessions of which ``--open`` are still
open and ``--due`` of those are past their idle deadline. After one warm-up
refresh (the scheduler's first pass over the log), we time the due-query alone
and then one whole tick (refresh + closing every due session). Targets: the
due-query under 5 ms; the tick at the largest total within 1.5x of the smallest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

# This directory holds a gateway.py (the session-store benchmark), which would
# shadow the `gateway` package when run as a script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from hermes_ledger.gateway import GatewayConfig, ResetPolicy  # noqa: E402
from hermes_ledger.gateway.scheduler.ticks import Scheduler  # noqa: E402
from hermes_ledger.ledger import Ledger  # noqa: E402
from hermes_ledger.ledger.events import SessionEnded, SessionStarted, Source  # noqa: E402
from hermes_ledger.projections import attach  # noqa: E402

START = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
CONFIG = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=60))


def build(path: Path, total: int, open_: int, due: int) -> datetime:
    """Sessions 0..total-1; the last ``open_`` stay open, the first ``due`` of those
    were last active long ago. Returns a tick time at which exactly ``due`` are due."""
    with Ledger.open(path, synchronous="OFF") as led:
        attach(led)
        for n in range(total):
            sid = f"s{n:07d}"
            closed = n < total - open_
            stale = not closed and n < total - open_ + due
            at = START if (closed or stale) else START + timedelta(hours=5)
            events = [
                SessionStarted(
                    session_id=sid,
                    source=Source(platform="discord", chat_id=f"c{n}", chat_type="group"),
                    occurred_at=at,
                )
            ]
            if closed:
                events.append(SessionEnded(session_id=sid, reason="idle_expiry", occurred_at=at))
            led.append(f"agent:main:discord:group:c{n}", events)
            if n and n % 20_000 == 0:
                print(f"  ... built {n:,} of {total:,}", file=sys.stderr)
    return START + timedelta(hours=2)  # stale ones due (01:00), fresh ones not (06:00)


def measure(total: int, open_: int, due: int, workdir: Path) -> dict[str, float | int]:
    path = workdir / f"tick-{total}.db"
    now = build(path, total, open_, due)
    with Ledger.open(path) as led:
        scheduler = Scheduler(led, CONFIG, batch=due)
        warm = time.perf_counter()
        scheduler.refresh()
        warm_s = time.perf_counter() - warm
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            rows = scheduler.due(now, limit=due)
            samples.append(time.perf_counter() - start)
        samples.sort()
        start = time.perf_counter()
        report = scheduler.tick(now)
        tick_s = time.perf_counter() - start
    return {
        "total": total,
        "due_rows": len(rows),
        "first_refresh_s": warm_s,
        "due_query_ms": samples[len(samples) // 2] * 1000,
        "tick_s": tick_s,
        "closed": len(report.closed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--totals", default="10000,100000")
    parser.add_argument("--open", type=int, default=2000)
    parser.add_argument("--due", type=int, default=1500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    totals = sorted(int(t) for t in args.totals.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(t, args.open, args.due, Path(tmp)) for t in totals]
    ratio = rows[-1]["tick_s"] / rows[0]["tick_s"]
    worst_query = max(r["due_query_ms"] for r in rows)
    if args.json:
        print(json.dumps({"rows": rows, "tick_ratio": ratio}, indent=2))
        return
    print(f"scheduler tick: {args.open:,} open sessions, {args.due:,} due, idle policy")
    header = f"{'sessions':>9} {'due':>6} {'closed':>7} {'due-query ms':>13} {'tick s':>8}"
    print(header + f" {'1st refresh s':>14}")
    for r in rows:
        print(
            f"{r['total']:>9,} {r['due_rows']:>6,} {r['closed']:>7,} {r['due_query_ms']:>13.3f}"
            f" {r['tick_s']:>8.3f} {r['first_refresh_s']:>14.3f}"
        )
    print(
        f"due-query (median of 20) worst {worst_query:.3f} ms   target < 5 ms   "
        f"{'PASS' if worst_query < 5 else 'short'}"
    )
    print(
        f"tick at {totals[-1]:,} / at {totals[0]:,}: {ratio:.2f}   target < 1.5   "
        f"{'PASS' if ratio < 1.5 else 'short'}"
    )


if __name__ == "__main__":
    main()
