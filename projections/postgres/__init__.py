"""The projections on PostgreSQL (issue 14): ``session_map``, ``session_history`` and
``messages`` beside a ``PostgresLog``, kept inside every append's transaction.

The tables have the SQLite projections' columns and meaning (their DDL is derived
from the same definitions); ``messages`` adds a generated ``tsvector`` with a GIN
index. See docs/postgres.md, "Projections".

    from hermes_ledger.ledger.postgres import PostgresLog
    from hermes_ledger.projections import postgres as pg_projections

    with PostgresLog.open(dsn) as log:
        pg_projections.attach(log)          # create or catch up, then project every append
        print(pg_projections.verify(log))   # ok: live projections equal a replay …
        hits = pg_projections.search_messages(log, "brave world")
"""

from hermes_ledger.projections.postgres.live import AttachReport, InlineProjector, attach, rebuild
from hermes_ledger.projections.postgres.replaying import live_state, state_at, verify
from hermes_ledger.projections.postgres.search import MessageHit, search_messages

__all__ = [
    "AttachReport",
    "InlineProjector",
    "MessageHit",
    "attach",
    "live_state",
    "rebuild",
    "search_messages",
    "state_at",
    "verify",
]
