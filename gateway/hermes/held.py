"""What a ledger holds of Hermes sessions, on either backend: the reads the import,
the live recorder and the plugin's status make.

The import and the recorder ask the ledger a few questions before they append:
which stream a Hermes session is in and which of its events are there
(``recorded``), whether another writer keeps sessions in a key (``foreign``), a
key's sessions and which have ended (``stream_sessions``), when a session started
and why it ended (``session_times``), and when the plugin's first event happened
(``first_plugin_event``). They are written once here, for both backends, and run
through what ``reads_of`` gives: a SQLite ``Ledger`` itself, a ``PostgresLog``
through ``gateway.sessions.postgres_reads.LogReads`` (``?`` placeholders as
``%s``). Only JSON access is spelled per backend (``_Dialect``): SQLite reads
``meta ->> '$.actor'``; PostgreSQL casts the TEXT columns to ``json`` first, with
``\\u0000`` escapes blanked as the erasure scopes do (``ledger.postgres.payloads``),
since PostgreSQL cannot extract text from a document that holds one.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

from hermes_ledger.gateway.hermes.mapping import HERMES_ACTORS, PLUGIN_ACTOR, _Usage
from hermes_ledger.ledger import EventLog, Ledger

__all__ = [
    "first_plugin_event",
    "foreign",
    "has_session",
    "home_identity",
    "ledger_name",
    "reads_of",
    "recorded",
    "session_home",
    "session_stream",
    "session_times",
    "stream_sessions",
]


@dataclass(frozen=True)
class _Dialect:
    """How a backend reads a member of the ``meta`` or ``data`` JSON text."""

    actor: str  # meta's actor, as text
    home: str  # meta's home (the Hermes home that recorded it), as text
    synthetic: str  # data's synthetic flag, as something truthy or not


_SQLITE = _Dialect(
    actor="meta ->> '$.actor'", home="meta ->> '$.home'", synthetic="data ->> '$.synthetic'"
)
_POSTGRES = _Dialect(
    actor="replace(meta, '\\u0000', '\\u0020')::json ->> 'actor'",
    home="replace(meta, '\\u0000', '\\u0020')::json ->> 'home'",
    synthetic="(replace(data, '\\u0000', '\\u0020')::json ->> 'synthetic')::boolean",
)

SQL_SESSION_STREAM = "SELECT stream FROM events WHERE session_id = ? ORDER BY position LIMIT 1"
SQL_SESSION_EVENTS = (
    "SELECT event_id, type, {actor}, {synthetic},"
    " CASE type WHEN 'usage_recorded' THEN data END"
    " FROM events WHERE session_id = ? ORDER BY position"
)
# A stream is foreign when another writer (the ledger's own gateway…) put sessions,
# messages or usage in it; closes by the ledger's scheduler do not make it foreign.
SQL_STREAM_FOREIGN = (
    "SELECT EXISTS (SELECT 1 FROM events WHERE stream = ?"
    " AND type IN ('session_started', 'message_appended', 'usage_recorded')"
    " AND coalesce({actor}, '') NOT IN (?, ?))"
)
SQL_STREAM_SESSIONS = (
    "SELECT session_id, max(CASE WHEN type = 'session_ended' THEN 1 ELSE 0 END) FROM events"
    " WHERE stream = ? AND type IN ('session_started', 'session_ended')"
    " GROUP BY session_id ORDER BY min(version)"
)
SQL_SESSION_TIMES = "SELECT started_at, end_reason FROM session_history WHERE session_id = ?"
# when the plugin's first event happened (business time: a start is the session's
# start), not when it was written
SQL_FIRST_PLUGIN_EVENT = (
    "SELECT occurred_at FROM events WHERE {actor} = ? ORDER BY position LIMIT 1"
)
SQL_HAS_SESSION = "SELECT 1 FROM events WHERE session_id = ? LIMIT 1"
SQL_SESSION_HOME = (
    "SELECT {home} FROM events WHERE session_id = ? AND type = 'session_started'"
    " ORDER BY position LIMIT 1"
)


def reads_of(ledger: EventLog | Ledger, *, projections: bool = False) -> Ledger:
    """What the reads here (and the session code) run through for ``ledger``'s
    backend: a SQLite ``Ledger`` itself, a ``PostgresLog`` as ``LogReads``; with
    ``projections``, the live projections attached first (``reads.session_ledger``)."""
    from hermes_ledger.gateway.sessions.reads import session_ledger

    if projections:
        return session_ledger(ledger)  # type: ignore[arg-type]
    if isinstance(ledger, Ledger):
        return ledger
    from hermes_ledger.gateway.sessions.postgres_reads import LogReads, over_postgres

    if isinstance(ledger, LogReads):
        return over_postgres(ledger)
    return LogReads(ledger)  # type: ignore[arg-type,return-value]


def ledger_name(ledger: EventLog | Ledger) -> str:
    """How reports name ``ledger``: a SQLite file's path; ``host:port/dbname as
    user`` for PostgreSQL (never the password)."""
    if isinstance(ledger, Ledger):
        return str(ledger.path)
    log = getattr(ledger, "log", ledger)  # LogReads → its PostgresLog
    return str(getattr(log, "where", log.identity))


def _dialect(reads: Ledger) -> _Dialect:
    return _SQLITE if isinstance(reads, Ledger) else _POSTGRES


def _sql(reads: Ledger, statement: str) -> str:
    d = _dialect(reads)
    return statement.format(actor=d.actor, home=d.home, synthetic=d.synthetic)


@dataclass
class Recorded:
    """What the ledger holds of one Hermes session (``recorded``)."""

    stream: str | None = None
    event_ids: set[str] = field(default_factory=set)
    messages: dict[str, bool] = field(default_factory=dict)  # event_id → synthetic
    used: _Usage = field(default_factory=_Usage)
    ended: bool = False


def recorded(reads: Ledger, session_id: str) -> Recorded:
    """The session's events in the ledger (one indexed read): their ids, the
    messages and the usage a Hermes import or the live recorder wrote, whether it
    has ended (by whoever), and its stream. ``reads`` as ``reads_of`` gives it."""
    found = Recorded()
    rows = reads.query(_sql(reads, SQL_SESSION_EVENTS), (session_id,))
    for event_id, kind, actor, synthetic, usage_data in rows:
        found.event_ids.add(event_id)
        found.ended = found.ended or kind == "session_ended"
        if actor not in HERMES_ACTORS:
            continue
        if kind == "message_appended":
            found.messages[event_id] = bool(synthetic)
        elif kind == "usage_recorded":
            found.used.add(json.loads(usage_data))
    if found.event_ids:
        found.stream = session_stream(reads, session_id)
    return found


def session_stream(reads: Ledger, session_id: str) -> str | None:
    """The stream (session key) the session's first event is in; None if none."""
    rows = reads.query(SQL_SESSION_STREAM, (session_id,))
    return rows[0][0] if rows else None


def foreign(reads: Ledger, key: str) -> bool:
    """Does another writer than a Hermes import or the live recorder keep sessions
    in ``key``'s stream? Then neither of them appends to it."""
    return bool(reads.query(_sql(reads, SQL_STREAM_FOREIGN), (key, *HERMES_ACTORS))[0][0])


def stream_sessions(reads: Ledger, key: str) -> list[tuple[str, bool]]:
    """The sessions started or ended in ``key``'s stream, oldest first: (session id,
    whether it has ended)."""
    return [(sid, bool(ended)) for sid, ended in reads.query(SQL_STREAM_SESSIONS, (key,))]


def session_times(reads: Ledger, session_id: str) -> tuple[str | None, str | None] | None:
    """(started_at, end_reason) of a session from ``session_history``; None if the
    projection has no row for it."""
    rows = reads.query(SQL_SESSION_TIMES, (session_id,))
    return (rows[0][0], rows[0][1]) if rows else None


def first_plugin_event(reads: Ledger) -> str | None:
    """When the plugin's first event happened (its business time), None if it has
    recorded nothing."""
    rows = reads.query(_sql(reads, SQL_FIRST_PLUGIN_EVENT), (PLUGIN_ACTOR,))
    return str(rows[0][0]) if rows else None


def home_identity(home: Path) -> str:
    """``<host name>:<home's resolved path>``: which Hermes home's plugin recorded an
    event (its ``meta.home``)."""
    try:
        where = home.resolve()
    except OSError:
        where = home
    return f"{socket.gethostname()}:{where}"


def session_home(reads: Ledger, session_id: str) -> str | None:
    """The Hermes home whose plugin recorded the session's start (its ``meta.home``:
    ``host:path``); None if the start names none (an import, an older plugin)."""
    rows = reads.query(_sql(reads, SQL_SESSION_HOME), (session_id,))
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


def has_session(reads: Ledger, session_id: str) -> bool:
    """Does the ledger hold any event of ``session_id``?"""
    return bool(reads.query(SQL_HAS_SESSION, (session_id,)))
