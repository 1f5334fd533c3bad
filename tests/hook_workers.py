"""Hook directories for the tests, and dispatcher processes (``python hook_workers.py …``).

``write_hook`` makes a real hook directory (HOOK.yaml + handler.py, owner-only
modes). ``recording_handler`` is the source of a handler that appends one line per
call to a file (one ``write`` on an ``O_APPEND`` descriptor, so lines from several
processes never interleave) and can be told to fail or to block through marker
files, so a test steers it without touching its code.

As a script, ``dispatch`` runs a HookDispatcher over a real ledger file in its own
OS process; any exception is printed to stderr and the process exits 1
(``worker_support.run_worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from worker_support import WAIT, run_worker, wait_for

from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistry
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import parse_utc


def write_hook(
    hooks_dir: Path,
    dirname: str,
    handler: str,
    *,
    name: str | None = None,
    events: list[str] | None = None,
    manifest: str | None = None,
) -> Path:
    """Create ``hooks_dir/dirname`` with HOOK.yaml and handler.py (mode 0755/0644)."""
    hooks_dir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(hooks_dir, 0o755)
    hook_dir = hooks_dir / dirname
    hook_dir.mkdir(mode=0o755)
    os.chmod(hook_dir, 0o755)
    if manifest is None:
        manifest = (
            f"name: {name or dirname}\n"
            f"description: test hook {name or dirname}\n"
            f"events: {json.dumps(events or ['session:*'])}\n"
        )
    for filename, text in (("HOOK.yaml", manifest), ("handler.py", handler)):
        path = hook_dir / filename
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o644)
    return hook_dir


def recording_handler(
    calls: Path,
    *,
    fail_unless: Path | None = None,
    block_while: Path | None = None,
    sleep: float = 0.0,
    is_async: bool = False,
) -> str:
    """Source of a ``handle`` appending ``{"event": …, "context": …, "pid": …}`` lines.

    ``fail_unless``: raise unless that file exists. ``block_while``: after writing
    a ``"phase": "started"`` line, wait while that file exists. ``sleep``: seconds
    each call takes.
    """
    return f"""
import asyncio, json, os, time
from pathlib import Path

CALLS = {str(calls)!r}
FAIL_UNLESS = {None if fail_unless is None else str(fail_unless)!r}
BLOCK_WHILE = {None if block_while is None else str(block_while)!r}


def _write(line):
    fd = os.open(CALLS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\\n").encode())
    finally:
        os.close(fd)


def _handle(event_type, context):
    if FAIL_UNLESS is not None and not Path(FAIL_UNLESS).exists():
        raise RuntimeError("the marker " + FAIL_UNLESS + " is missing")
    if BLOCK_WHILE is not None:
        _write({{"phase": "started", "event": event_type, "context": context,
                 "pid": os.getpid()}})
        deadline = time.monotonic() + 60
        while Path(BLOCK_WHILE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    if {sleep!r}:
        time.sleep({sleep!r})
    _write({{"phase": "done", "event": event_type, "context": context, "pid": os.getpid()}})


{"async " if is_async else ""}def handle(event_type, context):
    {"await asyncio.sleep(0)" if is_async else "pass"}
    _handle(event_type, context)
"""


def read_calls(calls: Path, phase: str = "done") -> list[dict[str, Any]]:
    """The lines a recording handler wrote (only those of ``phase``)."""
    if not calls.exists():
        return []
    lines = [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line["phase"] == phase]


# -- processes ---------------------------------------------------------------------


def dispatch(args: argparse.Namespace) -> None:
    """Deliver until every hook is caught up with the log and has nothing pending."""
    fixed = None if args.clock is None else parse_utc(args.clock)

    def clock() -> datetime:
        assert fixed is not None
        return fixed

    with Ledger.open(args.db) as ledger:
        registry = HookRegistry.discover(args.hooks)
        assert registry.hooks and not registry.problems, registry.problems
        dispatcher = HookDispatcher(
            ledger,
            registry,
            clock=None if fixed is None else clock,
            new_hooks_from="beginning",
            call_timeout=30.0,
        )
        if args.ready:
            Path(args.ready).touch()
        if args.go:
            wait_for([Path(args.go)])
        deadline = time.monotonic() + WAIT
        calls = 0
        while True:
            calls += len(dispatcher.deliver().outcomes)
            head = ledger.head()
            states = dispatcher.status()
            if all(s.checkpoint == head and s.pending + s.claimed == 0 for s in states):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"not caught up after {WAIT}s: {states}")
            time.sleep(0.001)
        print(json.dumps({"calls": calls}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dispatch")
    p.add_argument("--db", required=True)
    p.add_argument("--hooks", required=True)
    p.add_argument("--clock", help="a fixed time for the dispatcher's clock (ISO-8601)")
    p.add_argument("--ready", help="touch this file once the dispatcher is made")
    p.add_argument("--go", help="wait for this file before delivering")
    args = parser.parse_args(argv)
    dispatch(args)


if __name__ == "__main__":
    run_worker(main)
