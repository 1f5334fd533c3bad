"""bench/postgres.py --quick runs end to end against the PostgreSQL test server and
prints its table: every row, every column, ratios and targets (no timing is
asserted: the figures are for people).

Skips when the server cannot be reached (fails instead with
HERMES_LEDGER_REQUIRE_PG=1, tests/pg_support.py) or when the eventsourcing library
with its PostgreSQL module is not installed (the bench extra, not the test one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pg_support import ADMIN_DSN, admin_connection

BENCH = Path(__file__).resolve().parents[1] / "bench" / "postgres.py"


def test_bench_postgres_quick_prints_its_table() -> None:
    admin_connection().close()  # skips (or fails when required) without a server
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        env={**os.environ, "HERMES_LEDGER_BENCH_PG": ADMIN_DSN},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("PostgreSQL ")
    assert "events/s (48 events one per transaction, 800 in batches; median of 1 runs)" in lines[0]
    assert lines[1].split() == [
        "projections", "per", "call", "writers", "raw", "psycopg", "PostgresLog",
        "eventsourcing", "SQLite", "Ledger", "pg/raw", "pg/es", "targets",
    ]  # fmt: skip
    rows = [line.split() for line in lines[2:]]
    assert [row[:3] for row in rows] == [
        [projections, batch, writers]
        for projections in ("without", "with")
        for batch in ("1", "100")
        for writers in ("1", "2")
    ]
    for row in rows:
        assert all(float(cell.replace(",", "")) > 0 for cell in row[3:5] + row[6:8])
        if row[0] == "without":
            assert float(row[5].replace(",", "")) > 0 and float(row[8]) > 0
            assert " ".join(row[9:11]) == ">= 0.7" and row[12:14] == [">=", "3"]
        else:
            assert row[5] == row[8] == "-" and " ".join(row[9:11]) == ">= 0.7"
