"""A runner of tests/test_postgres_scheduler.py, as if on its own host: its own
connection to the PostgreSQL ledger, closing due sessions (PostgresScheduler) and
delivering their ends to a recording hook (PostgresDeliveryQueue), until the file
STOP exists.

    python pg_scheduler_worker.py DSN RECORD STOP LEASE_SECONDS HANDLER_SLEEP

The hook appends ``delivery_id session_id hook_event pid`` to RECORD (one write
per call, O_APPEND) and then sleeps HANDLER_SLEEP seconds (a window for kill -9
between the call and its outcome).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from hermes_ledger.gateway import GatewayConfig, ResetPolicy
from hermes_ledger.gateway.hooks.postgres_delivery import PostgresDeliveryQueue, attach_outbox
from hermes_ledger.gateway.scheduler.postgres import PostgresScheduler
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger.postgres import PostgresLog

HOOK = "recorder"
CONFIG = GatewayConfig(default_reset_policy=ResetPolicy(mode="idle", idle_minutes=30))
RETRY = RetryPolicy(1000, timedelta(seconds=0.1))


def main(dsn: str, record: str, stop: str, lease: float, pause: float) -> None:
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handler(hook_event: str, context: Mapping[str, Any]) -> None:
        line = f"{context['delivery_id']} {context['session_id']} {hook_event} {os.getpid()}\n"
        os.write(fd, line.encode())
        if pause:
            time.sleep(pause)

    with PostgresLog.open(dsn) as log:
        scheduler = PostgresScheduler(log, CONFIG, lease=timedelta(seconds=lease), batch=10)
        attach_outbox(log)
        queue = PostgresDeliveryQueue(log, hold=timedelta(seconds=lease))
        print("ready", flush=True)
        while not Path(stop).exists():
            scheduler.tick()
            queue.deliver(HOOK, handler, scheduler.name, retry=RETRY, limit=10)
            time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
