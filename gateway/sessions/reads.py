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
from hermes_ledger.ledger.transcript import TRANSCRIPT_KEY, transcript_column, transcript_names
from hermes_ledger.projections.tables import MESSAGES

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


# The transcript handed out: role, content and time always, the tool fields only
# when set (Hermes' message shape), read from the ``messages`` projection's
# columns as ``ledger.transcript`` declares them.
_ALWAYS = ("role", "content")
_WHEN_SET = ("tool_calls", "tool_name", "tool_call_id")
_SPEAKER = ("user_id", "user_name")
_READ = (*_ALWAYS, "ts", *_WHEN_SET, *_SPEAKER)
_JSON = frozenset(name for name in _READ if transcript_column(name).json)
SQL_TRANSCRIPT = (
    f"SELECT {transcript_names(_READ)} FROM {MESSAGES.name}"
    f" WHERE session_id = ? ORDER BY {TRANSCRIPT_KEY}"
)


def load_transcript(
    ledger: Ledger, session_id: str, *, speakers: bool = False
) -> list[dict[str, Any]]:
    """The session's messages in order, synthetic flush turns excluded (Hermes shape:
    role, content, timestamp, and tool_calls / tool_name / tool_call_id when set;
    with ``speakers``, who spoke too: user_id / user_name when set)."""
    shown = (*_WHEN_SET, *_SPEAKER) if speakers else _WHEN_SET
    out = []
    for row in ledger.query(SQL_TRANSCRIPT, (session_id,)):
        values = dict(zip(_READ, row, strict=True))
        message: dict[str, Any] = {name: values[name] for name in _ALWAYS}
        message["timestamp"] = values["ts"]
        for name in shown:
            value = values[name]
            if value is not None:
                message[name] = json.loads(value) if name in _JSON else value
        out.append(message)
    return out
