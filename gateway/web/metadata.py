"""Datasette's metadata for a ledger, built from the projection definitions.

Table and column descriptions come from each projection table's ``TableSpec``
(``projections.tables``), the canned queries from the named reports and
docs/sql.md (``AUDIT_QUERIES``); only the log (``events``), the views and the
scheduler's tables are described here. Full-text search on ``messages`` needs
nothing here: Datasette finds ``messages_fts`` by itself, since the index is
declared the way sqlite-utils declares one.
"""

from __future__ import annotations

from typing import Any

from hermes_ledger.gateway.web.queries import AUDIT_QUERIES
from hermes_ledger.projections.definitions import PROJECTIONS

__all__ = ["DATABASE_NAME", "build_metadata"]

DATABASE_NAME = "ledger"
"""The database's name in Datasette's URLs (``/ledger/session_history``)."""

_OTHER_TABLES: dict[str, str] = {
    "events": "The log itself: append-only and hash-chained, one row per event.",
    "session_deadlines": "The scheduler's next deadline of each key with an unclosed session.",
    "scheduler_state": "The scheduler's checkpoint.",
    "projection_checkpoints": "Each projection's schema version and the last event applied.",
    "session_closes": "View: every session with a close cause or an end, and the flush outcome.",
    "flush_outcomes": "View: every memory-flush attempt, read straight from the log.",
    "session_overview": "View: one row per session with status, duration, tokens and cost_usd.",
    "daily_messages": "View: transcript messages per UTC day and platform.",
}

_SORT_DESC: dict[str, str] = {
    "session_map": "updated_at",
    "session_history": "started_at",
    "events": "position",
}


def build_metadata(database: str = DATABASE_NAME) -> dict[str, Any]:
    """The metadata document (Datasette's ``metadata.json`` shape) for a ledger
    served as ``database``."""
    tables: dict[str, dict[str, Any]] = {}
    for projection in PROJECTIONS:
        for spec in projection.tables:
            if spec.fts:
                continue  # Datasette hides the index and searches it from its table
            entry: dict[str, Any] = {"description": spec.description}
            columns = spec.described_columns()
            if columns:
                entry["columns"] = columns
            tables[spec.name] = entry
    for name, description in _OTHER_TABLES.items():
        tables[name] = {"description": description}
    for name, column in _SORT_DESC.items():
        tables[name]["sort_desc"] = column
    queries = {
        q.name: {"title": q.title, "sql": q.sql, "params": list(q.params)} for q in AUDIT_QUERIES
    }
    return {
        "title": "Hermes session ledger",
        "description": (
            "Sessions, transcripts and audit reports of a Hermes gateway, read-only."
            " The tables are projections of the events log; each is described on its page."
        ),
        "databases": {
            database: {
                "description": "The ledger file (read-only).",
                "tables": tables,
                "queries": queries,
            }
        },
    }
