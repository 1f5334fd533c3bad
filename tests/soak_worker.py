"""Crash soak: a runner killed with SIGKILL at random moments, restarted each time.

Used by tests/test_soak.py (bounded) and bench/soak.py (long). Run as a script
it is the worker: ``python soak_worker.py DB HOME READY_FILE`` ticks the
scheduler and delivers hooks in a loop on a simulated clock (one real second is
ten simulated minutes, anchored in HOME/anchor so restarts continue the same
timeline) until killed, or until every session is closed when ``--drain``.

``seed`` writes the workload; ``check`` asserts invariants 5 and 6 of docs/design.md
and returns the redelivery count.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hermes_ledger.gateway import GatewayConfig, ResetPolicy, Runner, RunnerSettings, SessionSource
from hermes_ledger.gateway.hooks import HookRegistry
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger

START = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
SPEED = 600  # simulated seconds per real second
CONFIG = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=5))

HOOK_YAML = 'name: audit\ndescription: soak hook\nevents: ["session:end", "session:start"]\n'
HOOK_PY = """\
import json, os
from pathlib import Path

LOG = Path(__file__).with_name("calls.jsonl")


def handle(event_type, context):
    line = json.dumps({"event": event_type, "delivery_id": context["delivery_id"],
                       "session_id": context["session_id"]}) + "\\n"
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
"""
FLUSHER_LOG = "flushes.log"


def setup_home(home: Path) -> None:
    hook = home / "hooks" / "audit"
    hook.mkdir(parents=True)
    for d in (home, home / "hooks", hook):
        d.chmod(0o700)
    (hook / "HOOK.yaml").write_text(HOOK_YAML)
    (hook / "handler.py").write_text(HOOK_PY)


def seed(db: Path, sessions: int, span_seconds: int = 1200) -> list[str]:
    """``sessions`` sessions whose last activity is spread over ``span_seconds`` of
    simulated time (so expiries keep coming while the runner is being killed), each
    with a few messages; every one of them will expire."""
    ids = []
    now = [START]
    with Ledger.open(db) as led:
        store = SessionStore(led, CONFIG, lambda: now[0])
        for n in range(sessions):
            now[0] = START + timedelta(seconds=n * span_seconds // max(sessions, 1))
            source = SessionSource(platform="telegram", chat_id=str(n), chat_type="dm")
            entry = store.get_or_create_session(source)
            for i in range(3):
                store.append_to_transcript(entry.session_id, {"role": "user", "content": f"{i}"})
            ids.append(entry.session_id)
    return ids


def _simulated_now(home: Path) -> datetime:
    anchor = home / "anchor"
    if not anchor.exists():
        anchor.write_text(str(time.time()))
    elapsed = time.time() - float(anchor.read_text())
    return START + timedelta(minutes=4) + timedelta(seconds=elapsed * SPEED)


def work(db: Path, home: Path, ready: Path, drain: bool) -> None:
    def flusher(context: object, transcript: object) -> str:
        with (home / FLUSHER_LOG).open("a") as out:
            out.write(f"{getattr(context, 'session_id', '?')}\n")
        return "ok"

    with Ledger.open(db) as led:
        runner = Runner(
            led,
            CONFIG,
            RunnerSettings(flush_timeout=5, hook_timeout=5),
            HookRegistry.discover(home / "hooks"),
            flusher=flusher,
        )
        ready.write_text("ready")
        while True:
            now = datetime(2026, 11, 23, tzinfo=UTC) if drain else _simulated_now(home)
            report = runner.once(now)
            if drain:
                if not report.tick.closed and report.delivered == 0 and report.failed == 0:
                    return
            else:
                time.sleep(0.005)


def check(db: Path, home: Path, session_ids: list[str]) -> int:
    """Invariants 5 and 6; returns how many hook calls were redeliveries."""
    with Ledger.open(db, readonly=True) as led:
        assert led.verify().ok
        rows = led.query(
            "SELECT session_id, type, position FROM events WHERE session_id IS NOT NULL"
            " ORDER BY position"
        )
    by_session: dict[str, list[str]] = {}
    for sid, event_type, _ in rows:
        by_session.setdefault(sid, []).append(event_type)
    ended = set()
    for sid in session_ids:
        types = by_session[sid]
        assert types.count("session_ended") == 1, (sid, types)
        end = types.index("session_ended")
        cause = [i for i, t in enumerate(types) if t in ("session_expired", "session_reset")]
        outcome = [i for i, t in enumerate(types) if t.startswith("memory_flush")]
        assert cause and outcome and cause[0] < outcome[0] < end, (sid, types)
        assert "message_appended" not in types[cause[0] :], (sid, types)
        ended.add(sid)
    log = home / "hooks" / "audit" / "calls.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    ends = [c for c in calls if c["event"] == "session:end"]
    assert {c["session_id"] for c in ends} == ended  # every end reached the hook …
    distinct = {c["delivery_id"] for c in ends}
    assert len(distinct) == len(ended)  # … under one delivery_id per end
    for delivery_id, count in Counter(c["delivery_id"] for c in ends).items():
        sids = {c["session_id"] for c in ends if c["delivery_id"] == delivery_id}
        assert len(sids) == 1 and count >= 1
    starts = {c["session_id"] for c in calls if c["event"] == "session:start"}
    assert starts <= set(by_session)  # never a call for something that did not happen
    return len(calls) - len({c["delivery_id"] for c in calls})


if __name__ == "__main__":
    db_arg, home_arg, ready_arg = (Path(a) for a in sys.argv[1:4])
    work(db_arg, home_arg, ready_arg, drain="--drain" in sys.argv)
