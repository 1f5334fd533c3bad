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
from hermes_ledger.projections.quoting import Target, quote_ident

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
    ``description`` says what a row is and ``column_descriptions`` what each column
    means, ``(column, text)``: the Datasette metadata of ``hermes-ledger serve`` is
    built from them (docs/sql.md says the same at more length).
    """

    name: str
    ddl: str
    columns: tuple[str, ...] = ()
    key: str = ""
    indexes: tuple[tuple[str, str], ...] = ()
    fts: bool = False
    description: str = ""
    column_descriptions: tuple[tuple[str, str], ...] = ()

    def described_columns(self) -> dict[str, str]:
        """``{column: description}`` for the columns this table has, in table order."""
        texts = dict(self.column_descriptions)
        return {c: texts[c] for c in self.columns if c in texts}

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


def _token_descriptions(whose: str) -> tuple[tuple[str, str], ...]:
    return (
        ("input_tokens", f"input tokens {whose} (summed usage_recorded)"),
        ("output_tokens", f"output tokens {whose} (summed usage_recorded)"),
        ("cache_read_tokens", f"prompt-cache reads {whose} (summed usage_recorded)"),
        ("cache_write_tokens", f"prompt-cache writes {whose} (summed usage_recorded)"),
        ("cost_nano_usd", f"cost {whose} in billionths of a US dollar (exact sums)"),
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
    description="One row per session key: its current session (the one started last).",
    column_descriptions=(
        ("session_key", "the key (agent:main:telegram:dm:99)"),
        ("session_id", "the key's current session: the one started last"),
        ("status", "open; closing once a reset or expiry is recorded; closed once it ended"),
        ("platform", "where the current session comes from (its session_started source)"),
        ("chat_type", "dm, group, channel… (from session_started)"),
        ("chat_id", "the chat (from session_started)"),
        ("chat_name", "the chat's name (from session_started)"),
        ("user_id", "the user (from session_started)"),
        ("user_name", "the user's name (from session_started)"),
        ("thread_id", "the thread (from session_started)"),
        ("display_name", "chat_name, else user_name, else user_id, else chat_id"),
        ("origin", "the whole session_started source, as JSON"),
        ("start_reason", "why the current session started"),
        ("session_started_at", "when the current session started (UTC)"),
        ("created_at", "the key's earliest event time (UTC)"),
        ("updated_at", "the key's latest event time (UTC)"),
        ("message_count", "transcript messages of the current session"),
        *_token_descriptions("of the current session"),
    ),
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
    description="One row per session (session_id): how it started, what it used, how it ended.",
    column_descriptions=(
        ("session_id", "the session"),
        ("session_key", "its key"),
        ("platform", "from its session_started"),
        ("chat_type", "from its session_started"),
        ("user_id", "from its session_started"),
        ("user_name", "from its session_started"),
        ("start_reason", "why it started (from session_started)"),
        ("previous_session_id", "the key's session before this one"),
        ("started_at", "when it started (UTC)"),
        ("first_message_at", "its first transcript message (UTC)"),
        ("last_message_at", "its last transcript message (UTC)"),
        ("message_count", "transcript messages (synthetic flush turns excluded)"),
        *_token_descriptions("of the session"),
        ("close_cause", "reset (session_reset) or expired (session_expired)"),
        ("close_detail", "the reset trigger (/new, api…) or the expiry reason (idle, daily, cron)"),
        ("close_actor", "meta.actor of the cause event, when the producer recorded one"),
        ("close_deadline", "the policy deadline that passed"),
        ("close_requested_at", "when the close cause was recorded (UTC)"),
        ("flush_status", "the last memory-flush outcome: ok, failed or skipped"),
        ("flush_attempts", "flushes tried (memory_flushed + memory_flush_failed)"),
        ("flush_provider", "the memory provider of the last flush"),
        ("flush_detail", "the last flush's detail or error"),
        ("flushed_at", "when the last flush outcome was recorded (UTC)"),
        ("ended_at", "when it ended (session_ended, at most one per session)"),
        ("end_reason", "why it ended (idle_expiry, daily_reset, manual_reset…)"),
    ),
)

MESSAGES = TableSpec(
    name="messages",
    ddl=transcript_ddl("{table}"),
    columns=tuple(c.name for c in TRANSCRIPT_COLUMNS),
    key=TRANSCRIPT_KEY,
    indexes=(("messages_by_session", "(session_id, position)"),),
    description=(
        "Transcripts: one row per message, in log order (synthetic flush turns excluded);"
        " full-text search over content."
    ),
    column_descriptions=(
        ("position", "the event's position in the log (also the full-text rowid)"),
        ("session_id", "the session the message belongs to"),
        ("session_key", "the session's key"),
        ("role", "user, assistant, tool or system"),
        ("content", "the message text (searched by messages_fts)"),
        ("user_id", "who spoke (for a user message, when the gateway recorded it)"),
        ("user_name", "their name, when the gateway recorded it"),
        ("tool_calls", "the assistant's tool calls, as JSON"),
        ("tool_name", "the tool a tool message answers for"),
        ("tool_call_id", "the tool call a tool message answers"),
        ("input_tokens", "input tokens reported with the message"),
        ("output_tokens", "output tokens reported with the message"),
        ("platform_message_id", "the chat platform's id of the message"),
        ("ts", "the message's time: its occurred_at, else recorded_at (UTC)"),
    ),
)
"""Transcripts: the columns are ``ledger.transcript.TRANSCRIPT_COLUMNS``."""

# External-content FTS5 index over messages.content. The content table is named
# without a schema: FTS5 looks it up in its own schema, and the name is always the
# canonical one, so a rebuild's fresh index is right once it is renamed into place.
# ``content="messages"`` is written as sqlite-utils' enable_fts writes it (a quoted
# identifier), because that is how sqlite-utils' and Datasette's detect_fts find a
# table's index: ``content='messages'`` (a string literal) is an index they cannot see.
MESSAGES_FTS = TableSpec(
    name="messages_fts",
    ddl=f"""CREATE VIRTUAL TABLE {{table}} USING fts5(
    {quote_ident(TRANSCRIPT_SEARCHED)},
    content={quote_ident(MESSAGES.name)},
    content_rowid={quote_ident(TRANSCRIPT_KEY)},
    tokenize='{TRANSCRIPT_TOKENIZER}'
)""",
    fts=True,
    description="The full-text index (FTS5) of messages.content, as sqlite-utils declares one.",
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
