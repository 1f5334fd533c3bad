"""A writer process of tests/test_contract.py (``python log_worker.py TARGET NAME COUNT
SYNC``): opens the log at TARGET (a SQLite path or a PostgreSQL DSN, through
``open_log``), marks itself ready in SYNC, waits for SYNC/go, then makes COUNT
appends of one event each, round robin over the streams shared-0..2. Prints one
JSON object, event_id -> the position the append returned; any exception ends it
with exit status 1 (``worker_support.run_worker``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from worker_support import run_worker, wait_for

from hermes_ledger.ledger import open_log
from hermes_ledger.ledger.events import MessageAppended


def main(target: str, name: str, count: int, sync: Path) -> None:
    told: dict[str, int] = {}
    with open_log(target) as log:
        (sync / f"ready-{name}").touch()
        wait_for([sync / "go"])
        for i in range(count):
            event = MessageAppended(session_id=f"{name}-{i % 3}", role="user", content=f"{i}")
            result = log.append(f"shared-{i % 3}", [event])
            told[event.event_id] = result.positions[0]
    print(json.dumps(told))


if __name__ == "__main__":
    run_worker(lambda: main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])))
