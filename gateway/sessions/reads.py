"""What the session store and the scheduler read back: a key's state, a transcript.

A key's state (stream version and current session) is read in one statement (one
snapshot), so the version is the one the status was read at: an append with that
expected version fails if anything changed since. Transcripts are the message
dicts the gateway hands out, read from the ``messages`` projection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import parse_utc

__all__ = ["KeyState", "load_transcript", "read_key_state"]

SQL_KEY_STATE = (
    "SELECT (SELECT max(version) FROM events WHERE stream = ?1), m.session_id, m.status,"
    " m.updated_at, m.origin"
    " FROM (SELECT 1) LEFT JOIN session_map AS m ON m.session_key = ?1"
)


@dataclass(frozen=True)
class KeyState:
    """``version`` 0 and the rest None for a key that has no session yet."""

    version: int
    session_id: str | None
    status: str | None
    updated_at: datetime | None
    origin_json: str | None

    @property
    def origin(self) -> SessionSource | None:
        return SessionSource.from_dict(json.loads(self.origin_json)) if self.origin_json else None


def read_key_state(ledger: Ledger, key: str) -> KeyState:
    version, sid, status, updated, origin = ledger.query(SQL_KEY_STATE, (key,))[0]
    return KeyState(version or 0, sid, status, parse_utc(updated) if updated else None, origin)


SQL_TRANSCRIPT = (
    "SELECT role, content, tool_calls, tool_name, tool_call_id, ts FROM messages"
    " WHERE session_id = ? ORDER BY position"
)


def load_transcript(ledger: Ledger, session_id: str) -> list[dict[str, Any]]:
    """The session's messages in order, synthetic flush turns excluded (Hermes shape:
    role, content, timestamp, and tool_calls / tool_name / tool_call_id when set)."""
    out = []
    for role, content, tool_calls, tool_name, tool_call_id, ts in ledger.query(
        SQL_TRANSCRIPT, (session_id,)
    ):
        message: dict[str, Any] = {"role": role, "content": content, "timestamp": ts}
        if tool_calls is not None:
            message["tool_calls"] = json.loads(tool_calls)
        if tool_name is not None:
            message["tool_name"] = tool_name
        if tool_call_id is not None:
            message["tool_call_id"] = tool_call_id
        out.append(message)
    return out
