"""bench/postgres.py --quick runs end to end against the PostgreSQL test server and
prints its table: every row, every column, ratios and targets, then the commit
floor and how many rows meet each target (no timing is
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
        "eventsourcing", "SQLite", "Ledger", "pg/raw", "pg/es", "raw/es", "targets",
    ]  # fmt: skip
    rows = [line.split() for line in lines[2:-2]]
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
            assert float(row[9]) > 0
            assert row[10] == "pg/raw>=0.7" and row[11] in ("ok;", "MISSED;")
            assert row[12] == "pg/es>=3" and row[13] in ("ok", "MISSED")
        else:
            assert row[5] == row[8] == row[9] == "-" and row[10] == "pg/raw>=0.7"
            assert row[11] in ("ok", "MISSED") and len(row) == 12
    floor, met = lines[-2], lines[-1]
    assert floor.startswith("commit floor: one process committing a one-row INSERT")
    assert "pg/es is at most floor/es: 1 writer " in floor and ", 2 writers " in floor
    ok_raw = sum(row[11].startswith("ok") for row in rows)
    ok_es = sum(row[13] == "ok" for row in rows if row[0] == "without")
    assert met == (
        f"targets met: pg/raw >= 0.7 in {ok_raw} of 8 rows; pg/es >= 3 in {ok_es} of 4 rows"
    )
