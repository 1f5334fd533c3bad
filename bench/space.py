"""Space: the file's size and free pages before and after replays and a vacuum.

    python bench/space.py                        # 200,000 events over 2,000 sessions
    python bench/space.py --events 1000000 --sessions 10000

Generates a ledger (bench/rebuild.py's generator; cached under bench/results/,
reused with --keep), copies it, then on the copy: replays (``projections.rebuild``)
three times, vacuums (``ledger.admin.vacuum``), replays once more. After each step
it prints the ledger file's size, its WAL's, the page count and the free pages
(``PRAGMA freelist_count``: pages of dropped tables, which later writes reuse and
only a vacuum returns to the disk).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rebuild import RESULTS, generate

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger, admin

MIB = 2**20


def _row(step: str, db: Path, seconds: float | None) -> str:
    with Ledger.open(db) as led:
        pages = admin.space(led.connection)
    wal = Path(f"{db}-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    took = "" if seconds is None else f"{seconds:.1f}"
    return (
        f"{step:<24} {db.stat().st_size / MIB:>9.1f} {wal_size / MIB:>8.1f} {pages.pages:>8} "
        f"{pages.free_pages:>8} {pages.free_bytes / MIB:>9.1f} {took:>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--keep", action="store_true", help="reuse a generated ledger")
    args = parser.parse_args()
    keys = max(args.sessions // 2, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    source = RESULTS / f"rebuild-{args.events}-{args.sessions}-{keys}.db"
    if not (args.keep and source.exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{source}{suffix}").unlink(missing_ok=True)
        generate(source, args.events, args.sessions, keys)
    db = RESULTS / f"space-{args.events}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, db)
    os.chmod(db, 0o600)

    print(f"\nspace of a ledger of {args.events:,} events over {args.sessions:,} sessions")
    print(f"{'step':<24} {'file MiB':>9} {'WAL MiB':>8} {'pages':>8} {'free':>8} "
          f"{'free MiB':>9} {'seconds':>7}")  # fmt: skip
    print(_row("generated (no replay)", db, None))
    steps = ["replay 1", "replay 2", "replay 3", "vacuum", "replay after vacuum"]
    for step in steps:
        started = time.perf_counter()
        if step == "vacuum":
            admin.vacuum(db)
        else:
            with Ledger.open(db) as led:
                projections.rebuild(led)
        print(_row(step, db, time.perf_counter() - started))


if __name__ == "__main__":
    main()
