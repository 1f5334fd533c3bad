"""A session key's state as writers need it: stream version and current session.

Read in one statement (one snapshot), so the version is the one the status was
read at: an append with that expected version fails if anything changed since.
Shared by the session store and the scheduler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from gateway.sources import SessionSource
from ledger import Ledger
from ledger.clock import parse_utc

__all__ = ["KeyState", "read_key_state"]

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
