"""A runner of tests/test_policy_change.py, as if on its own host: connects to the
PostgreSQL ledger and attaches the projections and the hook outbox (so that, after
the barrier, the first statement to take the append lock is the scheduler's),
prints ``ready``, waits for the file GO, then builds the gateway from the Hermes
home HOME (its scheduler brings the deadlines up to date for HOME's reset
policies: ``sync_deadlines``) with the ledger's log records printed on stdout as
JSON lines, and a last line ``worker_started``.

    python policy_sync_worker.py DSN HOME GO
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hermes_ledger.gateway.bootstrap import build_gateway
from hermes_ledger.gateway.hooks.postgres_delivery import attach_outbox
from hermes_ledger.gateway.logs import configured_logging, fields
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.projections import postgres as pg_projections


def main(dsn: str, home: str, go: str) -> None:
    with PostgresLog.open(dsn) as log:
        pg_projections.attach(log)
        attach_outbox(log)
        print("ready", flush=True)
        while not Path(go).exists():
            time.sleep(0.001)
        with configured_logging("json", logging.INFO, stream=sys.stdout):
            build_gateway(log, home=home)
            logging.getLogger("hermes_ledger.tests").info("started", extra=fields("worker_started"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
