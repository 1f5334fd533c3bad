"""bench/queries.py runs end to end on a tiny ledger and prints its table (no timing
is asserted: the figures are for people)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "queries.py"


def test_bench_queries_prints_its_table(tmp_path: Path) -> None:
    db = tmp_path / "queries.db"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--events", "3000", "--runs", "2", "--db", str(db)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "queries on 3,000 events, 2 runs each (ratio: raw p50 / ours p50)"
    assert lines[1].split() == ["query", "rows", "ours", "p50", "p95", "raw", "p50", "p95", "ratio"]
    rows = lines[2:-2]
    assert [row.split("  ")[0] for row in rows] == [
        "sessions --platform telegram --chat-type group --since T --all",
        "sessions --user 'User 7' --key 'agent:main:discord:*' --all",
        "sessions --end-reason idle_expiry --platform slack",
        "search invoice",
        "search refund --platform slack --since T",
        "search 'w0500x' (a rare word)",
        "search 'w0500x' --order relevance",
    ]
    assert all(row.rstrip().endswith("x") and " ms " in row for row in rows)
    assert lines[-1].startswith("targets: ratio >= 0.8x and ours p50 < 100 ms -> ")
    assert "generated 3,000 events" in done.stderr
