"""What the session store and the scheduler read back: a key's state, a transcript.

A key's state (stream version and current session) is read in one statement (one
snapshot), so the version is the one the status was read at: an append with that
expected version fails if anything changed since. Transcripts are the message
dicts the gateway hands out, read from the ``messages`` projection.

The statements are standard SQL over tables both backends have (``events`` and
the projections), so they are written once: ``session_ledger`` gives the session
code what it reads and appends through for the backend it was given (a SQLite
``Ledger`` itself; a ``PostgresLog`` through ``postgres_reads.LogReads``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import parse_utc
from hermes_ledger.ledger.transcript import TRANSCRIPT_KEY, transcript_column, transcript_names
from hermes_ledger.projections.tables import MESSAGES

if TYPE_CHECKING:
    from hermes_ledger.gateway.sessions.postgres_reads import LogReads
    from hermes_ledger.ledger.postgres import PostgresLog

__all__ = ["KeyState", "load_transcript", "read_key_state", "session_ledger"]

SQL_KEY_STATE = (
    "SELECT (SELECT max(version) FROM events WHERE stream = ?1), m.session_id, m.status,"
    " m.updated_at, m.origin"
    " FROM (SELECT 1) AS one LEFT JOIN session_map AS m ON m.session_key = ?1"
)


def session_ledger(ledger: Ledger | PostgresLog | LogReads) -> Ledger:
    """What the session code (store, closer, these reads) uses for ``ledger``'s
    backend, its projections attached: a SQLite ``Ledger`` itself, a ``PostgresLog``
    as ``postgres_reads.LogReads`` (psycopg is imported only then)."""
    if isinstance(ledger, Ledger):
        from hermes_ledger.projections import attach

        attach(ledger)
        return ledger
    from hermes_ledger.gateway.sessions.postgres_reads import over_postgres

    return over_postgres(ledger)


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
