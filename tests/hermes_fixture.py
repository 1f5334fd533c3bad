"""A writer of Hermes 0.19 homes for tests: ``state.db`` (schema version 22) and
``sessions/sessions.json``, with the tables, indexes, FTS triggers and row shapes
Hermes' own code produces (its DDL, ``create_session``, ``append_message``,
``update_token_counts(absolute=True)``, ``end_session`` and the routing index).

This is our own code; it does not import Hermes. ``build_standard_home`` writes
the home most tests import: sessions across Telegram, Discord, Slack, the API
server, WhatsApp, Signal and the CLI, DMs and groups, ended (with various end
reasons) and open, tool calls, token usage, a compression continuation, a
rewound message and multimodal content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import apsw

SCHEMA_VERSION = 22

# state.db as Hermes 0.19 creates it (hermes_state.SCHEMA_SQL, the deferred and
# migration-time indexes, FTS_SQL and FTS_TRIGRAM_SQL), statement by statement.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    user_id TEXT,
    session_key TEXT,
    chat_id TEXT,
    chat_type TEXT,
    thread_id TEXT,
    display_name TEXT,
    origin_json TEXT,
    expiry_finalized INTEGER DEFAULT 0,
    model TEXT,
    model_config TEXT,
    system_prompt TEXT,
    parent_session_id TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT,
    message_count INTEGER DEFAULT 0,
    tool_call_count INTEGER DEFAULT 0,
    input_tokens INTEGER DEFAULT 0,
    output_tokens INTEGER DEFAULT 0,
    cache_read_tokens INTEGER DEFAULT 0,
    cache_write_tokens INTEGER DEFAULT 0,
    reasoning_tokens INTEGER DEFAULT 0,
    cwd TEXT,
    git_branch TEXT,
    git_repo_root TEXT,
    billing_provider TEXT,
    billing_base_url TEXT,
    billing_mode TEXT,
    estimated_cost_usd REAL,
    actual_cost_usd REAL,
    cost_status TEXT,
    cost_source TEXT,
    pricing_version TEXT,
    title TEXT,
    api_call_count INTEGER DEFAULT 0,
    handoff_state TEXT,
    handoff_platform TEXT,
    handoff_error TEXT,
    compression_failure_cooldown_until REAL,
    compression_failure_error TEXT,
    compression_fallback_streak INTEGER NOT NULL DEFAULT 0,
    profile_name TEXT,
    rewind_count INTEGER NOT NULL DEFAULT 0,
    archived INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (parent_session_id) REFERENCES sessions(id)
)""",
    """CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    role TEXT NOT NULL,
    content TEXT,
    tool_call_id TEXT,
    tool_calls TEXT,
    tool_name TEXT,
    effect_disposition TEXT,
    timestamp REAL NOT NULL,
    token_count INTEGER,
    finish_reason TEXT,
    reasoning TEXT,
    reasoning_content TEXT,
    reasoning_details TEXT,
    codex_reasoning_items TEXT,
    codex_message_items TEXT,
    platform_message_id TEXT,
    observed INTEGER DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    compacted INTEGER NOT NULL DEFAULT 0,
    api_content TEXT
)""",
    """CREATE TABLE IF NOT EXISTS session_model_usage (
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    billing_provider TEXT NOT NULL DEFAULT '',
    billing_base_url TEXT NOT NULL DEFAULT '',
    billing_mode TEXT NOT NULL DEFAULT '',
    task TEXT NOT NULL DEFAULT '',
    api_call_count INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    estimated_cost_usd REAL NOT NULL DEFAULT 0,
    actual_cost_usd REAL NOT NULL DEFAULT 0,
    cost_status TEXT,
    cost_source TEXT,
    first_seen REAL,
    last_seen REAL,
    PRIMARY KEY (session_id, model, billing_provider, billing_base_url, billing_mode, task)
)""",
    """CREATE TABLE IF NOT EXISTS state_meta (
    key TEXT PRIMARY KEY,
    value TEXT
)""",
    """CREATE TABLE IF NOT EXISTS gateway_routing (
    scope TEXT NOT NULL DEFAULT '',
    session_key TEXT NOT NULL,
    entry_json TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (scope, session_key)
)""",
    """CREATE TABLE IF NOT EXISTS compression_locks (
    session_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    acquired_at REAL NOT NULL,
    expires_at REAL NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS async_delegations (
    delegation_id TEXT PRIMARY KEY,
    origin_session TEXT NOT NULL,
    origin_ui_session_id TEXT NOT NULL DEFAULT '',
    parent_session_id TEXT,
    state TEXT NOT NULL,
    dispatched_at REAL NOT NULL,
    completed_at REAL,
    updated_at REAL NOT NULL,
    event_json TEXT,
    result_json TEXT,
    delivery_state TEXT NOT NULL DEFAULT 'pending',
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL,
    owner_pid INTEGER,
    owner_started_at INTEGER,
    task_json TEXT,
    delivery_claim TEXT,
    delivery_claimed_at REAL
)""",
    "CREATE INDEX IF NOT EXISTS idx_sessions_source ON sessions(source)",
    "CREATE INDEX IF NOT EXISTS idx_sessions_source_id ON sessions(source, id)",
    "CREATE INDEX IF NOT EXISTS idx_sessions_parent ON sessions(parent_session_id)",
    "CREATE INDEX IF NOT EXISTS idx_sessions_started ON sessions(started_at DESC)",
    "CREATE INDEX IF NOT EXISTS idx_messages_session ON messages(session_id, timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_compression_locks_expires ON compression_locks(expires_at)",
    "CREATE INDEX IF NOT EXISTS idx_session_model_usage_session ON session_model_usage(session_id)",
    "CREATE INDEX IF NOT EXISTS idx_session_model_usage_model ON session_model_usage(model)",
    """CREATE INDEX IF NOT EXISTS idx_async_delegations_delivery
    ON async_delegations(delivery_state, completed_at)""",
    "CREATE INDEX IF NOT EXISTS idx_messages_platform_msg_id ON messages(session_id,"
    " platform_message_id) WHERE platform_message_id IS NOT NULL",
    """CREATE INDEX IF NOT EXISTS idx_messages_session_active
    ON messages(session_id, active, timestamp)""",
    """CREATE INDEX IF NOT EXISTS idx_messages_active_null
    ON messages(active) WHERE active IS NULL""",
    """CREATE INDEX IF NOT EXISTS idx_sessions_session_key
    ON sessions(session_key, started_at DESC)""",
    """CREATE INDEX IF NOT EXISTS idx_sessions_gateway_peer
    ON sessions(source, user_id, chat_id, chat_type, thread_id, started_at DESC)""",
    """CREATE INDEX IF NOT EXISTS idx_sessions_handoff_state
    ON sessions(handoff_state, started_at)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_sessions_title_unique ON sessions(title)"
    " WHERE title IS NOT NULL",
    """CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    content
)""",
    """CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (
        new.id,
        COALESCE(new.content, '') || ' ' || COALESCE(new.tool_name, '') || ' ' || COALESCE(new.tool_calls, '')
    );
END""",  # noqa: E501
    """CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
    DELETE FROM messages_fts WHERE rowid = old.id;
END""",
    """CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE ON messages BEGIN
    DELETE FROM messages_fts WHERE rowid = old.id;
    INSERT INTO messages_fts(rowid, content) VALUES (
        new.id,
        COALESCE(new.content, '') || ' ' || COALESCE(new.tool_name, '') || ' ' || COALESCE(new.tool_calls, '')
    );
END""",  # noqa: E501
    """CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts_trigram USING fts5(
    content,
    tokenize='trigram'
)""",
    """CREATE TRIGGER IF NOT EXISTS messages_fts_trigram_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts_trigram(rowid, content) VALUES (
        new.id,
        COALESCE(new.content, '') || ' ' || COALESCE(new.tool_name, '') || ' ' || COALESCE(new.tool_calls, '')
    );
END""",  # noqa: E501
    """CREATE TRIGGER IF NOT EXISTS messages_fts_trigram_delete AFTER DELETE ON messages BEGIN
    DELETE FROM messages_fts_trigram WHERE rowid = old.id;
END""",
    """CREATE TRIGGER IF NOT EXISTS messages_fts_trigram_update AFTER UPDATE ON messages BEGIN
    DELETE FROM messages_fts_trigram WHERE rowid = old.id;
    INSERT INTO messages_fts_trigram(rowid, content) VALUES (
        new.id,
        COALESCE(new.content, '') || ' ' || COALESCE(new.tool_name, '') || ' ' || COALESCE(new.tool_calls, '')
    );
END""",  # noqa: E501
]

SESSIONS_JSON_README = (
    "LEGACY MIRROR of the gateway routing index (the primary copy lives in the "
    "gateway_routing table in ~/.hermes/state.db). Maps messaging session keys "
    "(agent:main:<platform>:...) to active session IDs. This is NOT the session list. "
    "ALL sessions (CLI, TUI, and gateway) live in ~/.hermes/state.db and are shown by "
    "`hermes sessions list` and `/sessions`. Disable this file with "
    "`gateway.write_sessions_json: false` in config.yaml."
)
JSON_CONTENT_PREFIX = "\x00json:"


def origin(
    platform: str,
    chat_id: str | None,
    *,
    chat_type: str = "dm",
    chat_name: str | None = None,
    user_id: str | None = None,
    user_name: str | None = None,
    thread_id: str | None = None,
    chat_topic: str | None = None,
    **optional: str,
) -> dict[str, Any]:
    """A source dict laid out as Hermes' ``SessionSource.to_dict`` writes it."""
    data: dict[str, Any] = {
        "platform": platform,
        "chat_id": chat_id,
        "chat_name": chat_name,
        "chat_type": chat_type,
        "user_id": user_id,
        "user_name": user_name,
        "thread_id": thread_id,
        "chat_topic": chat_topic,
    }
    data.update(optional)
    return data


def ts(moment: datetime) -> float:
    return moment.timestamp()


class HermesFixture:
    """Writes (or extends) a Hermes home. Every method is one write transaction,
    shaped like the Hermes call it is named after."""

    def __init__(
        self, home: Path, *, routing_table: bool = True, sessions_json: bool = True
    ) -> None:
        self.home = home
        self.sessions_dir = home / "sessions"
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self.routing_table = routing_table
        self.sessions_json = sessions_json
        self.scope = str(self.sessions_dir.resolve())
        db = home / "state.db"
        fresh = not db.exists()
        self.conn = apsw.Connection(str(db))
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA synchronous=OFF")  # test data: speed over durability
        if fresh:
            with self.conn:
                for statement in SCHEMA:
                    self.conn.execute(statement)
                self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (22,))
        self.entries: dict[str, dict[str, Any]] = {}
        for key, entry_json in self.conn.execute(
            "SELECT session_key, entry_json FROM gateway_routing WHERE scope = ?", (self.scope,)
        ):
            self.entries[key] = json.loads(entry_json)
        legacy = self.sessions_dir / "sessions.json"
        if legacy.exists() and not self.entries:
            data = json.loads(legacy.read_text())
            self.entries = {k: v for k, v in data.items() if not k.startswith("_")}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    # -- sessions ----------------------------------------------------------------------

    def create_session(
        self,
        session_id: str,
        source: str,
        *,
        started_at: float,
        session_key: str | None = None,
        origin: Mapping[str, Any] | None = None,
        record_origin: bool = True,
        parent_session_id: str | None = None,
        model: str | None = "anthropic/claude-sonnet-4.5",
        profile_name: str | None = None,
    ) -> str:
        """A session row as the gateway's ``create_session`` plus
        ``record_gateway_session_peer`` leave it (CLI sessions: no key, no origin)."""
        o = dict(origin or {})
        with self.conn:
            self.conn.execute(
                "INSERT INTO sessions (id, source, user_id, session_key, chat_id, chat_type,"
                " thread_id, display_name, origin_json, model, parent_session_id, profile_name,"
                " started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    source,
                    o.get("user_id"),
                    session_key,
                    o.get("chat_id"),
                    o.get("chat_type"),
                    o.get("thread_id"),
                    o.get("chat_name"),
                    json.dumps(o) if o and record_origin else None,
                    model,
                    parent_session_id,
                    profile_name,
                    started_at,
                ),
            )
        return session_id

    def append_message(
        self,
        session_id: str,
        role: str,
        content: Any = None,
        *,
        at: float,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_name: str | None = None,
        tool_call_id: str | None = None,
        token_count: int | None = None,
        finish_reason: str | None = None,
        platform_message_id: str | None = None,
        observed: bool = False,
        active: bool = True,
    ) -> int:
        """One ``messages`` row (list/dict content JSON-encoded with Hermes' prefix);
        the session's message and tool-call counters move as Hermes moves them."""
        stored = content
        if isinstance(content, list | dict):
            stored = JSON_CONTENT_PREFIX + json.dumps(content)
        with self.conn:
            self.conn.execute(
                "INSERT INTO messages (session_id, role, content, tool_call_id, tool_calls,"
                " tool_name, timestamp, token_count, finish_reason, platform_message_id,"
                " observed, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    role,
                    stored,
                    tool_call_id,
                    json.dumps(tool_calls) if tool_calls else None,
                    tool_name,
                    at,
                    token_count,
                    finish_reason,
                    platform_message_id,
                    int(observed),
                    int(active),
                ),
            )
            message_id = self.conn.last_insert_rowid()
            self.conn.execute(
                "UPDATE sessions SET message_count = message_count + ?,"
                " tool_call_count = tool_call_count + ? WHERE id = ?",
                (int(active), len(tool_calls or []), session_id),
            )
        return message_id

    def set_usage(
        self,
        session_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        estimated_cost_usd: float | None = None,
        actual_cost_usd: float | None = None,
        api_call_count: int = 1,
    ) -> None:
        """``update_token_counts(absolute=True)``: the gateway's cumulative totals."""
        with self.conn:
            self.conn.execute(
                "UPDATE sessions SET input_tokens = ?, output_tokens = ?, cache_read_tokens = ?,"
                " cache_write_tokens = ?, reasoning_tokens = ?,"
                " estimated_cost_usd = COALESCE(?, 0),"
                " actual_cost_usd = CASE WHEN ? IS NULL THEN actual_cost_usd ELSE ? END,"
                " cost_status = 'estimated', api_call_count = ? WHERE id = ?",
                (
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_write_tokens,
                    reasoning_tokens,
                    estimated_cost_usd,
                    actual_cost_usd,
                    actual_cost_usd,
                    api_call_count,
                    session_id,
                ),
            )

    def end_session(self, session_id: str, end_reason: str, *, at: float) -> None:
        """``end_session``: first reason wins, an ended session stays as it is."""
        with self.conn:
            self.conn.execute(
                "UPDATE sessions SET ended_at = ?, end_reason = ?"
                " WHERE id = ? AND ended_at IS NULL",
                (at, end_reason, session_id),
            )

    def reopen_session(self, session_id: str) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE sessions SET ended_at = NULL, end_reason = NULL WHERE id = ?",
                (session_id,),
            )

    # -- the routing index ---------------------------------------------------------------

    def route(
        self,
        session_key: str,
        session_id: str,
        *,
        origin: Mapping[str, Any],
        at: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Point ``session_key`` at ``session_id`` and rewrite the whole index, as
        ``SessionStore._save`` does (gateway_routing, then sessions.json)."""
        stamp = datetime.fromtimestamp(at).isoformat()  # Hermes writes naive local times
        self.entries[session_key] = {
            "session_key": session_key,
            "session_id": session_id,
            "created_at": stamp,
            "updated_at": stamp,
            "display_name": origin.get("chat_name"),
            "platform": origin["platform"],
            "chat_type": origin.get("chat_type", "dm"),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "total_tokens": input_tokens + output_tokens,
            "last_prompt_tokens": 0,
            "estimated_cost_usd": 0.0,
            "cost_status": "unknown",
            "expiry_finalized": False,
            "suspended": False,
            "resume_pending": False,
            "resume_reason": None,
            "last_resume_marked_at": None,
            "is_fresh_reset": False,
            "was_auto_reset": False,
            "auto_reset_reason": None,
            "reset_had_activity": False,
            "origin": dict(origin),
        }
        self._save(at)

    def _save(self, at: float) -> None:
        if self.routing_table:
            with self.conn:
                self.conn.execute("DELETE FROM gateway_routing WHERE scope = ?", (self.scope,))
                for key, entry in self.entries.items():
                    self.conn.execute(
                        "INSERT INTO gateway_routing (scope, session_key, entry_json, updated_at)"
                        " VALUES (?, ?, ?, ?)",
                        (self.scope, key, json.dumps(entry), at),
                    )
        if self.sessions_json:
            data = {"_README": SESSIONS_JSON_README, **self.entries}
            (self.sessions_dir / "sessions.json").write_text(json.dumps(data, indent=2))


# -- the standard home --------------------------------------------------------------------

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def sid(moment: datetime, tail: str) -> str:
    """A Hermes session id: ``YYYYMMDD_HHMMSS_<8 hex>``."""
    return f"{moment:%Y%m%d_%H%M%S}_{tail}"


@dataclass
class StandardHome:
    """What ``build_standard_home`` wrote, for the tests to check against."""

    path: Path
    keys: dict[str, str] = field(default_factory=dict)  # session id → expected key
    ends: dict[str, str | None] = field(default_factory=dict)  # session id → end reason
    open_keys: dict[str, str] = field(default_factory=dict)  # key → its open session id
    origins: dict[str, dict[str, Any]] = field(default_factory=dict)  # key → origin

    @property
    def session_ids(self) -> list[str]:
        return list(self.keys)


def _at(delta: timedelta) -> float:
    return ts(T0 + delta)


def _tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def build_standard_home(path: Path) -> StandardHome:
    """Write the standard Hermes home at ``path`` (see the module docstring)."""
    home = StandardHome(path)
    h = HermesFixture(path)
    m = timedelta(minutes=1)
    hour = timedelta(hours=1)
    day = timedelta(days=1)

    def session(
        session_id: str,
        platform: str,
        key: str,
        at: timedelta,
        o: dict[str, Any] | None,
        *,
        record_key: bool = True,
        **kw: Any,
    ) -> str:
        h.create_session(
            session_id,
            platform,
            started_at=_at(at),
            session_key=key if record_key else None,
            origin=o,
            **kw,
        )
        home.keys[session_id] = key
        home.ends[session_id] = None
        if o is not None:
            home.origins[key] = o
        return session_id

    def end(session_id: str, reason: str, at: timedelta) -> None:
        h.end_session(session_id, reason, at=_at(at))
        home.ends[session_id] = reason

    def route(key: str, session_id: str, at: timedelta) -> None:
        h.route(key, session_id, origin=home.origins[key], at=_at(at))
        home.open_keys[key] = session_id

    # Telegram DM: an idle-expired session, then the current one.
    k = "agent:main:telegram:dm:1001"
    ada = origin("telegram", "1001", user_id="1001", user_name="ada")
    s = session(sid(T0, "a1b2c3d4"), "telegram", k, timedelta(0), ada)
    h.append_message(
        s, "user", "What's the weather in Lisbon?", at=_at(m), platform_message_id="5001"
    )
    h.append_message(
        s,
        "assistant",
        None,
        at=_at(2 * m),
        tool_calls=[_tool_call("call_1", "web_search", {"q": "Lisbon weather"})],
        finish_reason="tool_calls",
    )
    h.append_message(
        s, "tool", '{"result": "sunny, 21C"}', at=_at(3 * m), tool_name="web_search",
        tool_call_id="call_1",
    )  # fmt: skip
    h.append_message(s, "assistant", "Sunny, 21°C.", at=_at(4 * m), token_count=9)
    h.set_usage(s, input_tokens=1200, output_tokens=350, cache_read_tokens=800,
                estimated_cost_usd=0.0123)  # fmt: skip
    end(s, "idle", 3 * hour)
    s = session(sid(T0 + day, "b2c3d4e5"), "telegram", k, day, ada)
    h.append_message(s, "user", "Good morning", at=_at(day + m), platform_message_id="5002")
    h.append_message(s, "assistant", "Morning, Ada!", at=_at(day + 2 * m))
    h.set_usage(s, input_tokens=300, output_tokens=90, estimated_cost_usd=0.002)
    route(k, s, day + 2 * m)

    # Telegram group, per-user key; the row has no session_key (routing names it).
    k = "agent:main:telegram:group:-100200:42"
    grp = origin(
        "telegram", "-100200", chat_type="group", chat_name="Family", user_id="42",
        user_name="bob",
    )  # fmt: skip
    s = session(sid(T0 + 2 * hour, "c3d4e5f6"), "telegram", k, 2 * hour, grp, record_key=False)
    h.append_message(s, "user", "(chatter) dinner at 8?", at=_at(2 * hour + m), observed=True)
    h.append_message(s, "user", "@hermes remind me at 7", at=_at(2 * hour + 2 * m))
    h.append_message(s, "assistant", "I will remind you at 7.", at=_at(2 * hour + 3 * m))
    route(k, s, 2 * hour + 3 * m)

    # Discord thread (shared by everyone in it): /reset, then a new session.
    k = "agent:main:discord:thread:555:777"
    thr = origin(
        "discord", "555", chat_type="thread", chat_name="dev", user_id="12", user_name="cy",
        thread_id="777", scope_id="g1", guild_id="g1",
    )  # fmt: skip
    s = session(sid(T0 + hour, "d4e5f6a7"), "discord", k, hour, thr)
    h.append_message(s, "user", "deploy status?", at=_at(hour + m))
    h.append_message(s, "assistant", "Green.", at=_at(hour + 2 * m))
    end(s, "session_reset", 2 * hour)
    s = session(sid(T0 + 2 * hour, "e5f6a7b8"), "discord", k, 2 * hour, thr)
    h.append_message(s, "user", "new topic", at=_at(2 * hour + m))
    h.append_message(s, "assistant", "Go ahead.", at=_at(2 * hour + 2 * m))
    route(k, s, 2 * hour + 2 * m)

    # Slack channel: daily reset, a compression split (child without a key), idle, current.
    k = "agent:main:slack:channel:C01:U7"
    sl = origin(
        "slack", "C01", chat_type="channel", chat_name="ops", user_id="U7", user_name="dee",
        chat_topic="Ops talk",
    )  # fmt: skip
    s = session(sid(T0, "f6a7b8c9"), "slack", k, timedelta(0), sl)
    h.append_message(s, "user", "standup notes", at=_at(m))
    h.append_message(s, "assistant", "Noted.", at=_at(2 * m))
    end(s, "daily", day)
    parent = s = session(sid(T0 + day, "a7b8c9d0"), "slack", k, day, sl)
    h.append_message(s, "user", "summarise this", at=_at(day + m))
    h.append_message(s, "assistant", "draft one", at=_at(day + 2 * m), active=False)  # /undo
    h.append_message(
        s,
        "user",
        [
            {"type": "text", "text": "and this image"},
            {"type": "image_url", "image_url": {"url": "x"}},
        ],
        at=_at(day + 3 * m),
    )
    h.append_message(s, "assistant", "A chart of sales.", at=_at(day + 4 * m))
    h.set_usage(s, input_tokens=5000, output_tokens=700, cache_write_tokens=1200,
                estimated_cost_usd=0.05)  # fmt: skip
    end(s, "compression", day + 5 * m)
    s = session(sid(T0 + day + 5 * m, "b8c9d0e1"), "slack", k, day + 5 * m, None,
                record_key=False, parent_session_id=parent)  # fmt: skip
    h.append_message(s, "user", "[summary of the conversation so far]", at=_at(day + 5 * m))
    h.append_message(s, "assistant", "Continuing.", at=_at(day + 6 * m))
    end(s, "idle", day + 2 * hour)
    s = session(sid(T0 + 2 * day, "c9d0e1f2"), "slack", k, 2 * day, sl)
    h.append_message(s, "user", "hello again", at=_at(2 * day + m))
    route(k, s, 2 * day + m)

    # API server: one session, closed by the agent, with a real (billed) cost.
    k = "agent:main:api_server:dm:client-7"
    api = origin("api_server", "client-7", user_id="client-7")
    s = session(sid(T0 + 3 * hour, "d0e1f2a3"), "api_server", k, 3 * hour, api)
    h.append_message(s, "system", "You are terse.", at=_at(3 * hour))
    h.append_message(s, "user", "2+2?", at=_at(3 * hour + m))
    h.append_message(
        s, "assistant", None, at=_at(3 * hour + 2 * m),
        tool_calls=[_tool_call("c7", "calculator", {"expr": "2+2"}),
                    _tool_call("c8", "calculator", {"expr": "2*2"})],
    )  # fmt: skip
    h.append_message(s, "tool", "4", at=_at(3 * hour + 3 * m), tool_name="calculator",
                     tool_call_id="c7")  # fmt: skip
    h.append_message(s, "tool", "4", at=_at(3 * hour + 3 * m), tool_name="calculator",
                     tool_call_id="c8")  # fmt: skip
    h.append_message(s, "assistant", "4", at=_at(3 * hour + 4 * m))
    h.set_usage(s, input_tokens=400, output_tokens=20, estimated_cost_usd=0.001,
                actual_cost_usd=0.0012)  # fmt: skip
    end(s, "agent_close", 3 * hour + 5 * m)

    # Local CLI: no key, no origin (one key per session), one closed, one open.
    s = sid(T0 + 4 * hour, "e1f2a3b4")
    session(s, "cli", f"agent:main:cli:import:{s}", 4 * hour, None, record_key=False)
    h.append_message(s, "user", "list files", at=_at(4 * hour + m))
    h.append_message(s, "assistant", None, at=_at(4 * hour + 2 * m),
                     tool_calls=[_tool_call("t1", "terminal", {"cmd": "ls"})])  # fmt: skip
    h.append_message(s, "tool", "a.txt\nb.txt", at=_at(4 * hour + 3 * m), tool_name="terminal",
                     tool_call_id="t1")  # fmt: skip
    h.append_message(s, "assistant", "Two files.", at=_at(4 * hour + 4 * m))
    h.set_usage(s, input_tokens=900, output_tokens=60, cache_read_tokens=100,
                cache_write_tokens=50, estimated_cost_usd=0.004)  # fmt: skip
    end(s, "cli_close", 4 * hour + 5 * m)
    s = sid(T0 + 3 * day, "f2a3b4c5")
    session(s, "cli", f"agent:main:cli:import:{s}", 3 * day, None, record_key=False)
    h.append_message(s, "user", "hi from the terminal", at=_at(3 * day + m))

    # WhatsApp, older: no key recorded, not routed; the key comes from origin_json.
    k = "agent:main:whatsapp:dm:15550001"
    wa = origin("whatsapp", "15550001", user_id="15550001", user_name="eve")
    s = session(sid(T0 + 5 * hour, "a3b4c5d6"), "whatsapp", k, 5 * hour, wa, record_key=False)
    h.append_message(s, "user", "ping", at=_at(5 * hour + m))
    h.append_message(s, "assistant", "pong", at=_at(5 * hour + 2 * m))
    end(s, "session_reset", 6 * hour)

    # Signal group, older still: only the chat columns, no origin_json, no key.
    k = "agent:main:signal:group:grp=:u9"
    sg = origin("signal", "grp=", chat_type="group", user_id="u9")
    s = session(sid(T0 + 6 * hour, "b4c5d6e7"), "signal", k, 6 * hour, sg, record_key=False,
                record_origin=False)  # fmt: skip
    h.append_message(s, "user", "hello group", at=_at(6 * hour + m))
    end(s, "idle", 8 * hour)
    h.close()
    return home
