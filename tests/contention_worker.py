"""The writer process of tests/test_contention.py (run as ``python contention_worker.py …``).

Opens the ledger, starts its own sessions through the real SessionStore, meets the
other writers at a barrier (marker files), then makes ``--count`` append_to_transcript
calls. A busy error that reaches the caller is counted (and reported), not swallowed;
any other exception ends the worker with exit status 1 (``worker_support.run_worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import apsw
from worker_support import run_worker, wait_for

from hermes_ledger.gateway import GatewayConfig, SessionSource
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.errors import LedgerBusyError


def source(name: str, k: int) -> SessionSource:
    return SessionSource(
        platform="discord", chat_id=f"guild-{name}-{k}", chat_type="group", user_id=f"u-{name}"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="contention_worker")
    parser.add_argument("--db", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--sync", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    sync = Path(args.sync)
    with Ledger.open(args.db) as ledger:
        store = SessionStore(ledger, GatewayConfig())
        ids = [store.get_or_create_session(source(args.name, k)).session_id
               for k in range(args.sessions)]  # fmt: skip
        (sync / f"ready-{args.name}").touch()
        wait_for([sync / "go"])
        calls = []
        busy = []
        for i in range(args.count):
            session_id = ids[i % len(ids)]
            content = f"{args.name} message {i}"
            try:
                position = store.append_to_transcript(
                    session_id, {"role": "user", "content": content}
                )
            except (LedgerBusyError, apsw.BusyError) as exc:
                busy.append(repr(exc))
                continue
            calls.append([session_id, content, position])
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"ids": ids, "calls": calls, "busy": busy}), encoding="utf-8")
    os.replace(tmp, out)


if __name__ == "__main__":
    run_worker(lambda: main(sys.argv[1:]))
