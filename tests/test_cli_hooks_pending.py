"""`hermes-ledger hooks` lists pending deliveries (attempts, next retry, last error), not
only dead letters (issue 12). The tests that take ``backend`` run on SQLite and on
PostgreSQL (``--db postgresql://…``); the first shows a claim's expiry, which is in
the ledger's clock on SQLite only (PostgreSQL leases are in the database's)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from backends import Backend
from helpers import ManualClock
from hook_workers import recording_handler, write_hook

from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistry, hooks_overview
from hermes_ledger.gateway.hooks.delivery import PENDING_SHOWN, delivery_id_for
from hermes_ledger.ledger import EventLog, Ledger
from hermes_ledger.ledger.events import SessionEnded

K = "agent:main:telegram:dm:1"


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hooks"
    path.mkdir(mode=0o700)
    return path


def _setup(led: EventLog, clock: ManualClock, hooks_dir: Path, tmp_path: Path, ends: int) -> None:
    """audit delivers; flaky fails (1 attempt made, more queued behind it); held has
    its first delivery claimed by worker w1 (a call in progress)."""
    write_hook(hooks_dir, "audit", recording_handler(tmp_path / "a.jsonl"), events=["session:end"])
    failing = recording_handler(tmp_path / "f.jsonl", fail_unless=tmp_path / "ok")
    write_hook(hooks_dir, "flaky", failing, events=["session:end"])
    write_hook(hooks_dir, "held", recording_handler(tmp_path / "h.jsonl"), events=["session:end"])
    hooks = {h.name: h for h in HookRegistry.discover(hooks_dir).hooks}
    HookDispatcher(led, list(hooks.values()), clock=clock)  # registers all three at the head
    for n in range(1, ends + 1):
        led.append(K, [SessionEnded(event_id=f"e{n}", session_id=f"s{n}", reason="shutdown")])
    HookDispatcher(
        led, [hooks["audit"], hooks["flaky"]], clock=clock, max_attempts=3, backoff_base=30
    ).deliver()
    held = HookDispatcher(led, [hooks["held"]], clock=clock, worker_id="w1")
    held._queue.enqueue({"held": {"session_ended"}})
    claim, _ = held._queue.claim("held", "w1", hold=timedelta(minutes=5), retry=held.retry_policy)
    assert claim is not None


def test_hooks_lists_pending_deliveries_with_attempts_next_retry_and_last_error(
    cli: Any, led: Ledger, db_path: Path, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    _setup(led, clock, hooks_dir, tmp_path, ends=2)
    args = ("--db", str(db_path), "--hooks-dir", str(hooks_dir))
    result = cli("hooks", *args)
    assert result.exit_code == 0, result.output
    error = f"RuntimeError: the marker {tmp_path / 'ok'} is missing"
    assert result.output == (
        f"Hooks in {hooks_dir}:\n"
        "  audit  session:end  (checkpoint 2, 2 delivered, 0 pending, 0 dead)\n"
        "         test hook audit\n"
        "  flaky  session:end  (checkpoint 2, 0 delivered, 2 pending, 0 dead)\n"
        "         test hook flaky\n"
        "  held   session:end  (checkpoint 2, 0 delivered, 2 pending, 0 dead)\n"
        "         test hook held\n"
        "No dead letters.\n"
        "Pending deliveries (made in order by the next pass of `hermes-ledger run`):\n"
        f"  {delivery_id_for('flaky', 'e1')}  flaky  session:end  position 1  session s1"
        f"  1 attempt  next retry 2026-11-22T09:00:30.000000Z  {error}\n"
        f"  {delivery_id_for('flaky', 'e2')}  flaky  session:end  position 2  session s2"
        "  0 attempts  due 2026-11-22T09:00:00.000000Z\n"
        f"  {delivery_id_for('held', 'e1')}  held  session:end  position 1  session s1"
        "  1 attempt  being delivered by w1 until 2026-11-22T09:05:00.000000Z\n"
        f"  {delivery_id_for('held', 'e2')}  held  session:end  position 2  session s2"
        "  0 attempts  due 2026-11-22T09:00:00.000000Z\n"
    )

    listed = json.loads(cli("hooks", *args, "--json").output)
    first = listed["pending"][0]
    assert first == {
        "delivery_id": delivery_id_for("flaky", "e1"),
        "hook": "flaky",
        "event_type": "session:end",
        "position": 1,
        "event_id": "e1",
        "session_key": K,
        "session_id": "s1",
        "status": "pending",
        "attempts": 1,
        "next_attempt_at": "2026-11-22T09:00:30.000000Z",
        "last_error": error,
        "delivered_at": None,
        "claimed_by": None,
        "claimed_until": None,
    }
    assert [(d["hook"], d["status"], d["claimed_by"], d["claimed_until"]) for d in
            listed["pending"][1:]] == [
        ("flaky", "pending", None, None),
        ("held", "claimed", "w1", "2026-11-22T09:05:00.000000Z"),
        ("held", "pending", None, None),
    ]  # fmt: skip
    assert listed["dead_letters"] == []


def test_a_long_queue_shows_its_first_deliveries_and_how_many_more(
    cli: Any, backend: Backend, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    with backend.open() as led:
        _setup(led, clock, hooks_dir, tmp_path, ends=PENDING_SHOWN + 3)
    db_path = backend.target
    ov = hooks_overview(hooks_dir, db_path)
    assert [(d.hook, d.position) for d in ov.pending] == [
        *(("flaky", n) for n in range(1, PENDING_SHOWN + 1)),
        *(("held", n) for n in range(1, PENDING_SHOWN + 1)),
    ]
    result = cli("hooks", "--db", str(db_path), "--hooks-dir", str(hooks_dir))
    assert result.exit_code == 0, result.output
    assert result.output.endswith(
        "  … and 3 more pending for flaky\n  … and 3 more pending for held\n"
    )


def test_nothing_pending_prints_no_pending_section(
    cli: Any, backend: Backend, clock: ManualClock, hooks_dir: Path, tmp_path: Path
) -> None:
    write_hook(hooks_dir, "audit", recording_handler(tmp_path / "a.jsonl"), events=["session:end"])
    with backend.open() as led:
        dispatcher = HookDispatcher(led, HookRegistry.discover(hooks_dir), clock=clock)
        led.append(K, [SessionEnded(event_id="e1", session_id="s1", reason="shutdown")])
        dispatcher.deliver()
    db_path = backend.target
    result = cli("hooks", "--db", str(db_path), "--hooks-dir", str(hooks_dir), "--json")
    assert (result.exit_code, json.loads(result.output)["pending"]) == (0, [])
    result = cli("hooks", "--db", str(db_path), "--hooks-dir", str(hooks_dir))
    assert "Pending" not in result.output
