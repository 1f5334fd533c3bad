"""The projection tables: DDL, columns and indexes, as string templates.

``{table}`` in a template is replaced by a ``Target``'s qualified table name,
so one definition serves the live tables, a rebuild's fresh tables and the
scratch tables of verify/state_at. Times are UTC ISO-8601 text with ``Z``
(microseconds, fixed width like ``recorded_at``, so text order is time order). Token
totals come from ``usage_recorded`` events only (per-message counts are on the
``messages`` rows); cost is summed in integer billionths of a US dollar so that
any grouping of the replay gives exactly the same total.
"""

from __future__ import annotations

from dataclasses import dataclass

from hermes_ledger.ledger.transcript import (
    TRANSCRIPT_COLUMNS,
    TRANSCRIPT_KEY,
    TRANSCRIPT_SEARCHED,
    TRANSCRIPT_TOKENIZER,
    transcript_ddl,
)
from hermes_ledger.projections.quoting import Target

__all__ = [
    "CHECKPOINTS_DDL",
    "MESSAGES",
    "MESSAGES_FTS",
    "REBUILD_LEASE_DDL",
    "SESSION_HISTORY",
    "SESSION_MAP",
    "TableSpec",
]


@dataclass(frozen=True)
class TableSpec:
    """One projection table.

    ``columns`` lists every column in DDL order (all derived from the log, so verify
    compares every one); ``key`` names the primary key;
    ``indexes`` are ``(name, "(columns) [WHERE …]")``.
    ``fts`` marks an FTS5 index, which has no columns of its own to compare.
    """

    name: str
    ddl: str
    columns: tuple[str, ...] = ()
    key: str = ""
    indexes: tuple[tuple[str, str], ...] = ()
    fts: bool = False

    def create_sql(self, target: Target) -> str:
        return self.ddl.format(table=target.table(self.name))

    def index_sql(self, target: Target) -> list[str]:
        return [
            f"CREATE INDEX {target.index(index)} ON {target.bare(self.name)} {spec}"
            for index, spec in self.indexes
        ]


_TOKENS = """
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens   INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_nano_usd       INTEGER NOT NULL DEFAULT 0"""

_TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_nano_usd",
)

SESSION_MAP = TableSpec(
    name="session_map",
    ddl="""CREATE TABLE {table} (
    session_key         TEXT PRIMARY KEY,
    session_id          TEXT,
    status              TEXT CHECK (status IN ('open', 'closing', 'closed')),
    platform            TEXT,
    chat_type           TEXT,
    chat_id             TEXT,
    chat_name           TEXT,
    user_id             TEXT,
    user_name           TEXT,
    thread_id           TEXT,
    display_name        TEXT,
    origin              TEXT,
    start_reason        TEXT,
    session_started_at  TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    message_count       INTEGER NOT NULL DEFAULT 0,"""
    + _TOKENS
    + """
) STRICT""",
    columns=(
        "session_key",
        "session_id",
        "status",
        "platform",
        "chat_type",
        "chat_id",
        "chat_name",
        "user_id",
        "user_name",
        "thread_id",
        "display_name",
        "origin",
        "start_reason",
        "session_started_at",
        "created_at",
        "updated_at",
        "message_count",
        *_TOKEN_COLUMNS,
    ),
    key="session_key",
    indexes=(("session_map_by_session_id", "(session_id)"),),
)

SESSION_HISTORY = TableSpec(
    name="session_history",
    ddl="""CREATE TABLE {table} (
    session_id          TEXT PRIMARY KEY,
    session_key         TEXT NOT NULL,
    platform            TEXT,
    chat_type           TEXT,
    user_id             TEXT,
    user_name           TEXT,
    start_reason        TEXT,
    previous_session_id TEXT,
    started_at          TEXT,
    first_message_at    TEXT,
    last_message_at     TEXT,
    message_count       INTEGER NOT NULL DEFAULT 0,"""
    + _TOKENS
    + """,
    close_cause         TEXT CHECK (close_cause IN ('reset', 'expired')),
    close_detail        TEXT,
    close_actor         TEXT,
    close_deadline      TEXT,
    close_requested_at  TEXT,
    flush_status        TEXT CHECK (flush_status IN ('ok', 'failed', 'skipped')),
    flush_attempts      INTEGER NOT NULL DEFAULT 0,
    flush_provider      TEXT,
    flush_detail        TEXT,
    flushed_at          TEXT,
    ended_at            TEXT,
    end_reason          TEXT
) STRICT""",
    columns=(
        "session_id",
        "session_key",
        "platform",
        "chat_type",
        "user_id",
        "user_name",
        "start_reason",
        "previous_session_id",
        "started_at",
        "first_message_at",
        "last_message_at",
        "message_count",
        *_TOKEN_COLUMNS,
        "close_cause",
        "close_detail",
        "close_actor",
        "close_deadline",
        "close_requested_at",
        "flush_status",
        "flush_attempts",
        "flush_provider",
        "flush_detail",
        "flushed_at",
        "ended_at",
        "end_reason",
    ),
    key="session_id",
    indexes=(
        ("session_history_by_key", "(session_key, started_at)"),
        ("session_history_by_ended_at", "(ended_at) WHERE ended_at IS NOT NULL"),
    ),
)

MESSAGES = TableSpec(
    name="messages",
    ddl=transcript_ddl("{table}"),
    columns=tuple(c.name for c in TRANSCRIPT_COLUMNS),
    key=TRANSCRIPT_KEY,
    indexes=(("messages_by_session", "(session_id, position)"),),
)
"""Transcripts: the columns are ``ledger.transcript.TRANSCRIPT_COLUMNS``."""

# External-content FTS5 index over messages.content. The content table is named
# without a schema: FTS5 looks it up in its own schema, and the name is always the
# canonical one, so a rebuild's fresh index is right once it is renamed into place.
MESSAGES_FTS = TableSpec(
    name="messages_fts",
    ddl=f"""CREATE VIRTUAL TABLE {{table}} USING fts5(
    {TRANSCRIPT_SEARCHED},
    content='{MESSAGES.name}',
    content_rowid='{TRANSCRIPT_KEY}',
    tokenize='{TRANSCRIPT_TOKENIZER}'
)""",
    fts=True,
)

CHECKPOINTS_DDL = """CREATE TABLE IF NOT EXISTS main.projection_checkpoints (
    name     TEXT PRIMARY KEY,
    version  INTEGER NOT NULL CHECK (version >= 1),
    position INTEGER NOT NULL CHECK (position >= 0)
) STRICT"""
"""One row per projection: its schema version and the last position it has applied."""

REBUILD_LEASE_DDL = """CREATE TABLE IF NOT EXISTS main.projection_rebuild (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    token    TEXT NOT NULL,
    names    TEXT NOT NULL,
    position INTEGER NOT NULL
) STRICT"""
"""The rebuild in progress, if any: the last one to start owns the fresh tables."""
