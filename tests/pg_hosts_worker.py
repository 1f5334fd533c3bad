"""A gateway host of tests/test_postgres_hosts.py: its own HERMES_HOME (with its own
``ledger-hooks/`` and their real handlers), its own connection to the one
PostgreSQL ledger, its own session store, scheduler and hook deliveries.

    HERMES_HOME=HOME python pg_hosts_worker.py DSN GO STOP T0 WALL0 SPEED MESSAGES SEED LEASE

Time is virtual and shared by every host: ``T0 + (time.time() - WALL0) * SPEED``
(one wall clock, so the hosts agree). The session keys take turns: in phase ``p``
(``PHASE`` seconds of wall time) key ``k`` is talked on when ``(k + p) % 2 == 0``,
so each key goes idle for a phase, long enough to expire (the idle policy is
shorter than a phase in virtual time): a scheduler tick or a late message closes
it, whichever comes first.

After GO exists the host sends MESSAGES messages on the shared keys (now and then
a ``/new``), ticking its scheduler and delivering its hooks between them, then
touches ``HOME/sent`` and keeps ticking and delivering until STOP exists. Every
message the store said it appended is written to ``HOME/acks.jsonl`` (one line
per message, after the append returned).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hermes_ledger.gateway import GatewayConfig, ResetPolicy, SessionSource
from hermes_ledger.gateway.config.paths import default_ledger_hooks_dir, hermes_home
from hermes_ledger.gateway.hooks.delivery import HOOK_EVENTS
from hermes_ledger.gateway.hooks.discovery import Hook, HookRegistry
from hermes_ledger.gateway.hooks.dispatch import run_handler
from hermes_ledger.gateway.hooks.postgres_delivery import PostgresDeliveryQueue, attach_outbox
from hermes_ledger.gateway.scheduler.postgres import PostgresScheduler
from hermes_ledger.gateway.sessions.store import SessionClosedError, SessionStore
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger.postgres import PostgresLog

KEYS = 6
PHASE = 0.4
"""Seconds of wall time a key is talked on, then left idle."""
CONFIG = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
RETRY = RetryPolicy(1000, timedelta(seconds=0.05))
TICK_EVERY = 0.3
"""Seconds of wall time between a host's scheduler ticks (about; jittered)."""


def source(k: int) -> SessionSource:
    return SessionSource(platform="telegram", chat_id=str(k), chat_type="dm", user_id=f"u{k}")


class Host:
    """One host's gateway parts over its own connection."""

    def __init__(self, dsn: str, clock: Any, lease: float) -> None:
        self.home = hermes_home()
        self.log = PostgresLog.open(dsn, clock=clock)
        self.store = SessionStore(self.log, CONFIG, clock)
        self.scheduler = PostgresScheduler(
            self.log, CONFIG, clock=clock, lease=timedelta(seconds=lease), batch=10
        )
        attach_outbox(self.log)
        self.queue = PostgresDeliveryQueue(self.log, hold=timedelta(seconds=lease))
        registry = HookRegistry.discover(default_ledger_hooks_dir(self.home))
        if registry.problems or not len(registry):
            raise SystemExit(f"hooks: {[str(p) for p in registry.problems]}")
        self.hooks = registry.hooks
        for hook in self.hooks:
            self.queue.subscribe(hook.name, sorted(HOOK_EVENTS[t] for t in hook.log_types))
        self.acks = os.open(self.home / "acks.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.next_tick = 0.0

    def chat(self, k: int, content: str) -> None:
        """One user message on key ``k``: the current session (closing an expired one
        first), then the message; acknowledged once appended."""
        for _ in range(20):
            entry = self.store.get_or_create_session(source(k))
            try:
                position = self.store.append_to_transcript(
                    entry.session_id, {"role": "user", "content": content}, source=source(k)
                )
            except SessionClosedError:  # closed under us (a tick, another host): again
                continue
            line = {"position": position, "session_id": entry.session_id, "content": content}
            os.write(self.acks, (json.dumps(line) + "\n").encode())
            return
        raise SystemExit(f"key {k}: no open session after 20 tries")

    def background(self, rng: random.Random) -> None:
        """Tick the scheduler when due, then deliver what is owed to the hooks."""
        if time.monotonic() >= self.next_tick:
            self.scheduler.tick()
            self.next_tick = time.monotonic() + rng.uniform(0.5, 1.5) * TICK_EVERY
        for hook in self.hooks:
            self.queue.deliver(hook.name, caller(hook), self.scheduler.name, retry=RETRY, limit=20)


def caller(hook: Hook) -> Any:
    def call(hook_event: str, context: Mapping[str, Any]) -> None:
        run_handler(hook, hook_event, context, timeout=30.0)

    return call


def main(argv: list[str]) -> None:
    dsn, go, stop = argv[0], Path(argv[1]), Path(argv[2])
    t0, wall0, speed = datetime.fromisoformat(argv[3]), float(argv[4]), float(argv[5])
    messages, seed, lease = int(argv[6]), int(argv[7]), float(argv[8])

    def clock() -> datetime:
        return (t0 + timedelta(seconds=(time.time() - wall0) * speed)).astimezone(UTC)

    host = Host(dsn, clock, lease)
    sent = host.home / "sent"
    sent.unlink(missing_ok=True)
    rng = random.Random(seed)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    tag = f"{host.home.name}-{os.getpid()}"
    for i in range(messages):
        phase = int((time.time() - wall0) / PHASE)
        k = rng.choice([k for k in range(KEYS) if (k + phase) % 2 == 0])
        if rng.random() < 0.03:
            key = CONFIG.session_key(source(k))
            if host.store.get_session(key) is not None:
                host.store.reset_session(key, trigger="/new")
        host.chat(k, f"{tag}-{i}")
        host.background(rng)
        time.sleep(rng.uniform(0.005, 0.025))
    sent.touch()
    while not stop.exists():
        host.background(rng)
        time.sleep(0.02)
    host.log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
