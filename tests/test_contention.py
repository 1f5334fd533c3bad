"""Writers under contention (issue 11, item 13): four real writer processes appending
through the SessionStore to one ledger file. Correctness only: every append is in the
log exactly once, no busy error reached a caller, versions run 1..n in every stream.
No timing assertions (bench/contention.py measures the latencies).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from test_processes import finish_all, kill_all, wait_for_files

from hermes_ledger.ledger import Ledger

WORKER = Path(__file__).with_name("contention_worker.py")
WRITERS = 4
COUNT = 300
SESSIONS = 3


def test_four_writers_through_the_store(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    Ledger.open(db).close()
    sync = tmp_path / "sync"
    sync.mkdir()
    names = [f"w{n}" for n in range(WRITERS)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "--db",
                str(db),
                "--name",
                name,
                "--count",
                str(COUNT),
                "--sessions",
                str(SESSIONS),
                "--sync",
                str(sync),
                "--out",
                str(tmp_path / f"{name}.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        wait_for_files([sync / f"ready-{name}" for name in names], procs)
        (sync / "go").touch()
        finish_all(procs)
    finally:
        kill_all(procs)
    results = [json.loads((tmp_path / f"{name}.json").read_text("utf-8")) for name in names]
    assert [r["busy"] for r in results] == [[]] * WRITERS  # no busy error reached a caller
    calls = [call for r in results for call in r["calls"]]
    assert len(calls) == WRITERS * COUNT

    with Ledger.open(db) as ledger:
        records = list(ledger.read_all())
        report = ledger.verify()
    assert [r.position for r in records] == list(range(1, len(records) + 1))
    assert report.ok, report
    messages = [r for r in records if r.type == "message_appended"]
    by_position = {r.position: r for r in messages}
    # Every call's event is in the log once, at the position the call returned.
    assert len(messages) == len(calls)
    assert sorted(p for _, _, p in calls) == sorted(by_position)
    for session_id, content, position in calls:
        assert by_position[position].session_id == session_id
        assert by_position[position].data["content"] == content
    versions: defaultdict[str, list[int]] = defaultdict(list)
    for r in records:
        versions[r.stream].append(r.version)
    assert len(versions) == WRITERS * SESSIONS  # each writer's own session keys
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), stream
