"""Read models derived from the log: session map, session history, transcripts.

Attach them to an open ledger to keep them current inside every append
(``attach`` / ``open_ledger``); ``rebuild`` replays the whole log into fresh
tables and swaps them in; ``verify`` compares the live tables with a scratch
replay; ``state_at`` replays up to a position or a time.

    from hermes_ledger.ledger import Ledger
    from hermes_ledger import projections

    with Ledger.open("ledger.db") as led:
        projections.attach(led)            # catch up, then project every append
        ...
        print(projections.verify(led))     # ok: live projections equal a replay …
        then = projections.state_at(led, position=1000)

The tables (``session_map``, ``session_history``, ``messages`` with its FTS5
index ``messages_fts``), the audit views and example queries are described in
docs/sql.md.
"""

from hermes_ledger.projections.definitions import PROJECTIONS, Projection
from hermes_ledger.projections.errors import ProjectionError, RebuildSuperseded
from hermes_ledger.projections.inline import AttachReport, attach, open_ledger
from hermes_ledger.projections.rebuilding import RebuildReport, rebuild
from hermes_ledger.projections.state import State, live_state, state_at
from hermes_ledger.projections.verifying import Difference, VerifyReport, verify
from hermes_ledger.projections.views import VIEWS

__all__ = [
    "PROJECTIONS",
    "VIEWS",
    "AttachReport",
    "Difference",
    "Projection",
    "ProjectionError",
    "RebuildReport",
    "RebuildSuperseded",
    "State",
    "VerifyReport",
    "attach",
    "live_state",
    "open_ledger",
    "rebuild",
    "state_at",
    "verify",
]
