"""SessionStore: the Hermes-shaped session API, written as events, read from projections.

Every change is an append to the session key's stream with an expected version,
so two processes racing on one key cannot both act on what they read: the loser
gets a ConcurrencyError, re-reads and (usually) finds the work already done.
Nothing about sessions is kept in memory between calls, so any number of threads
may use one store for different keys.

A close is one append: cause (``session_reset`` or ``session_expired``) → flush
outcome → ``session_ended`` → the replacement's ``session_started``, written by
the close sequence the scheduler uses too (``closing.SessionCloser``). The memory
flush runs just before that append (outside the write lock, with a timeout).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.sessions.closing import (
    DEFAULT_FLUSH_TIMEOUT,
    Flusher,
    SessionCloser,
    append_if_unchanged,
    expiry_cause,
)
from hermes_ledger.gateway.sessions.keys import (
    is_shared_multi_user_session,
    validate_session_id,
    validate_session_key,
)
from hermes_ledger.gateway.sessions.reads import (
    KeyState,
    load_transcript,
    read_key_state,
    session_ledger,
)
from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.ledger import ConcurrencyError, Ledger, LedgerError
from hermes_ledger.ledger.clock import Clock, format_utc, parse_utc, system_clock
from hermes_ledger.ledger.events import (
    EventModel,
    MessageAppended,
    SessionExpired,
    SessionReset,
    SessionStarted,
    UsageRecorded,
    parse,
)

if TYPE_CHECKING:
    from hermes_ledger.ledger.postgres import PostgresLog

__all__ = ["SessionClosedError", "SessionEntry", "SessionStore", "UnknownSessionError"]

_RETRIES = 20
"""Re-reads after a ConcurrencyError (another writer on the key) before giving up."""


def _gave_up(what: str) -> LedgerError:
    """What a call raises when all its ``_RETRIES`` appends lost to other writers."""
    return LedgerError(f"gave up on {what} after {_RETRIES} tries: it kept changing under us")


StartReason = Literal["first", "manual_reset", "auto_reset", "resume"]

_ENTRY_COLUMNS = (
    "m.session_key, m.session_id, m.status, m.session_started_at, m.updated_at, m.origin,"
    " m.display_name, m.platform, m.chat_type, h.input_tokens, h.output_tokens,"
    " h.cache_read_tokens, h.cache_write_tokens, h.cost_nano_usd, m.start_reason,"
    " (SELECT coalesce(p.close_detail, p.end_reason) FROM session_history AS p"
    "   WHERE p.session_id = h.previous_session_id)"
)
# The key's stream version and its full entry, in one snapshot (the hot path:
# a message for a session that is already open).
SQL_STATE_AND_ENTRY = (
    f"SELECT (SELECT max(version) FROM events WHERE stream = ?1), {_ENTRY_COLUMNS}"
    " FROM (SELECT 1) AS one LEFT JOIN session_map AS m ON m.session_key = ?1"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id"
)
SQL_ENTRY_BY_ID = (
    f"SELECT {_ENTRY_COLUMNS} FROM session_map AS m"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id WHERE m.session_id = ?"
)
SQL_ACTIVE_ENTRIES = (
    f"SELECT {_ENTRY_COLUMNS} FROM session_map AS m"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id"
    " WHERE m.status = 'open' AND m.updated_at >= ? ORDER BY m.updated_at DESC"
)
SQL_ALL_ENTRIES = (
    f"SELECT {_ENTRY_COLUMNS} FROM session_map AS m"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id"
    " WHERE m.status = 'open' ORDER BY m.updated_at DESC"
)
SQL_SESSION_HOME = "SELECT session_key, ended_at FROM session_history WHERE session_id = ?"
# For a message: the session's key, that stream's version and the key's current
# session, its status and origin, in one snapshot.
SQL_MESSAGE_TARGET = (
    "SELECT h.session_key, (SELECT max(version) FROM events WHERE stream = h.session_key),"
    " m.session_id, m.status, m.origin"
    " FROM session_history AS h LEFT JOIN session_map AS m ON m.session_key = h.session_key"
    " WHERE h.session_id = ?"
)

_MESSAGE_FIELDS = {
    "role",
    "content",
    "tool_calls",
    "tool_name",
    "tool_call_id",
    "input_tokens",
    "output_tokens",
    "platform_message_id",
}


class UnknownSessionError(LedgerError, KeyError):
    """No session with that key or id."""

    hint = "list sessions with `hermes-ledger sessions`"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SessionClosedError(LedgerError):
    """The session has ended (or is closing); messages must go to its key's new session."""

    hint = "call get_or_create_session for the source to get the current session"


@dataclass(frozen=True)
class SessionEntry:
    """One session key's current session, as the Hermes gateway describes it."""

    session_key: str
    session_id: str
    created_at: datetime
    updated_at: datetime
    origin: SessionSource | None
    display_name: str | None
    platform: str | None
    chat_type: str | None
    status: str = "open"
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated_cost_usd: float = 0.0
    was_auto_reset: bool = False
    auto_reset_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _entry(row: Sequence[Any]) -> SessionEntry:
    (key, sid, status, started, updated, origin, display, platform, chat_type,
     tin, tout, tcr, tcw, nano, start_reason, previous_end) = row  # fmt: skip
    return SessionEntry(
        session_key=key,
        session_id=sid,
        created_at=parse_utc(started or updated),
        updated_at=parse_utc(updated),
        origin=SessionSource.from_dict(json.loads(origin)) if origin else None,
        display_name=display,
        platform=platform,
        chat_type=chat_type,
        status=status,
        input_tokens=tin or 0,
        output_tokens=tout or 0,
        cache_read_tokens=tcr or 0,
        cache_write_tokens=tcw or 0,
        estimated_cost_usd=(nano or 0) / 1e9,
        was_auto_reset=start_reason == "auto_reset",
        auto_reset_reason=previous_end if start_reason == "auto_reset" else None,
    )


def new_session_id(now: datetime) -> str:
    """``YYYYMMDD_HHMMSS_<8 hex>`` in UTC."""
    return f"{now.astimezone(UTC):%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


class SessionStore:
    """Sessions over a ledger: ``get_or_create_session``, ``append_to_transcript``, …

    ``ledger`` is a SQLite ``Ledger`` or a ``PostgresLog`` (the same semantics on
    both: expected versions on the key's stream, reads from the projections, which
    the store attaches). On PostgreSQL every writer should also keep the deadlines
    and the hook outbox (``PostgresScheduler`` attaches the first,
    ``postgres_delivery.attach_outbox`` the second). ``config`` (a GatewayConfig;
    defaults: reset mode ``none``) decides keys and reset policies; ``clock``
    returns an aware datetime (default: the system clock); ``flusher`` receives a
    closing session's transcript.
    """

    def __init__(
        self,
        ledger: Ledger | PostgresLog,
        config: GatewayConfig | None = None,
        clock: Clock | None = None,
        *,
        flusher: Flusher | None = None,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
        session_ids: Callable[[datetime], str] = new_session_id,
        before_session_event: Callable[[], object] | None = None,
    ) -> None:
        self.log = ledger
        """The ledger the store was given (a ``Ledger`` or a ``PostgresLog``)."""
        self.ledger = session_ledger(ledger)
        """What the store reads and appends through (``reads.session_ledger``)."""
        self.config = config or GatewayConfig()
        self.clock = clock or system_clock
        self._closer = SessionCloser(self.ledger, flusher, flush_timeout=flush_timeout)
        self._new_id = session_ids
        # called before a start or a close is appended (the composition root
        # registers newly installed hooks there: hooks.HookRegistrar)
        self._before_session_event = before_session_event or (lambda: None)

    # -- reading ---------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return self.ledger.query(sql, args)

    def _state(self, key: str) -> KeyState:
        return read_key_state(self.ledger, key)

    def _state_and_entry(self, key: str) -> tuple[KeyState, SessionEntry | None]:
        version, *row = self._query(SQL_STATE_AND_ENTRY, (key,))[0]
        if row[0] is None:  # no session_map row for this key
            return KeyState(version or 0, None, None, None, None), None
        _key, sid, status, _started, updated, origin = row[:6]
        state = KeyState(version or 0, sid, status, parse_utc(updated), origin)
        return state, _entry(row)

    def get_session(self, session_key: str) -> SessionEntry | None:
        """The key's current session (open or not), or None for an unknown key."""
        return self._state_and_entry(session_key)[1]

    def lookup_by_session_id(self, session_id: str) -> SessionEntry | None:
        """The entry whose *current* session is ``session_id`` (None otherwise)."""
        rows = self._query(SQL_ENTRY_BY_ID, (session_id,))
        return _entry(rows[0]) if rows else None

    def list_sessions(self, active_minutes: float | None = None) -> list[SessionEntry]:
        """Open sessions, most recently active first; only those active within
        ``active_minutes`` when given."""
        if active_minutes is None:
            rows = self._query(SQL_ALL_ENTRIES, ())
        else:
            since = self.clock() - timedelta(minutes=active_minutes)
            rows = self._query(SQL_ACTIVE_ENTRIES, (format_utc(since),))
        return [_entry(r) for r in rows]

    def load_transcript(self, session_id: str) -> list[dict[str, Any]]:
        """The session's messages in order (synthetic flush turns excluded)."""
        return load_transcript(self.ledger, session_id)

    # -- sessions ----------------------------------------------------------------

    def get_or_create_session(self, source: SessionSource, force_new: bool = False) -> SessionEntry:
        """The current session for ``source``, starting one if there is none.

        If the open session's reset policy deadline has passed it is closed
        (expired → flush → ended ``auto_reset``) and a new one started, in one
        append; ``force_new`` does the same as a manual ``/new``.
        """
        key = self.config.session_key(source)
        policy = self.config.policy_for(source)
        for _ in range(_RETRIES):
            state, current = self._state_and_entry(key)
            now = self.clock()
            if state.status == "open" and state.session_id is not None:
                if force_new:
                    closed = self._close_and_restart(
                        key, state, source, SessionReset(session_id=state.session_id,
                                                         trigger="/new", occurred_at=now),
                        "manual_reset", "manual_reset",
                    )  # fmt: skip
                else:
                    assert state.updated_at is not None
                    expiry = policy.evaluate(state.updated_at, now)
                    if expiry is None:
                        assert current is not None
                        return current
                    cause = expiry_cause(state.session_id, policy, expiry, now)
                    closed = self._close_and_restart(
                        key, state, source, cause, "auto_reset", "auto_reset"
                    )
                if closed:
                    return self._entry_after_write(key)
                continue
            if state.status == "closing":
                if self._finish_and_restart(key, state, source, now):
                    return self._entry_after_write(key)
                continue
            if self._start(key, state, source, now):
                return self._entry_after_write(key)
        raise _gave_up(f"session key {key!r}")

    def open_api_session(
        self,
        session_key: str,
        session_id: str | None = None,
        source: SessionSource | None = None,
    ) -> SessionEntry:
        """For API callers with their own stable key (X-Hermes-Session-Key) and an
        optional transcript id (X-Hermes-Session-Id): the key's current session, or
        a new transcript when ``session_id`` names one that is not current (the
        current one is closed with reason ``resume_switch``)."""
        key = validate_session_key(session_key)
        if session_id is not None:
            validate_session_id(session_id)
        src = source or SessionSource(platform="api_server", chat_type="dm", chat_id=key)
        for _ in range(_RETRIES):
            state = self._state(key)
            now = self.clock()
            if session_id is not None and state.session_id == session_id:
                if state.status == "open":
                    return self._entry_after_write(key)
                raise SessionClosedError(f"session {session_id!r} of {key!r} has ended")
            if session_id is not None:
                self._refuse_used_id(session_id)
            if state.status == "open" and state.session_id is not None:
                if session_id is None:
                    return self._entry_after_write(key)
                cause = SessionReset(session_id=state.session_id, trigger="api", occurred_at=now)
                if self._close_and_restart(
                    key, state, state.origin or src, cause, "resume_switch", "resume",
                    new_id=session_id,
                ):  # fmt: skip
                    return self._entry_after_write(key)
                continue
            if self._start(key, state, src, now, new_id=session_id):
                return self._entry_after_write(key)
        raise _gave_up(f"session key {key!r}")

    def reset_session(self, session_key: str, trigger: str = "/new") -> SessionEntry:
        """Close the key's open session (reset → flush → ended ``manual_reset``) and
        start a new one; returns the new session. Only the session id rotates."""
        for _ in range(_RETRIES):
            state = self._state(session_key)
            if state.session_id is None:
                raise UnknownSessionError(f"no session with key {session_key!r}")
            now = self.clock()
            source = state.origin or SessionSource(platform="local")
            if state.status == "closing":
                if self._finish_and_restart(session_key, state, source, now):
                    return self._entry_after_write(session_key)
                continue
            if state.status != "open":
                if self._start(session_key, state, source, now):
                    return self._entry_after_write(session_key)
                continue
            cause = SessionReset(session_id=state.session_id, trigger=trigger, occurred_at=now)
            if self._close_and_restart(
                session_key, state, source, cause, "manual_reset", "manual_reset"
            ):
                return self._entry_after_write(session_key)
        raise _gave_up(f"session key {session_key!r}")

    def update_session(
        self,
        session_key: str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cost_usd: float | None = None,
        model: str | None = None,
    ) -> SessionEntry:
        """Record one turn's token usage (and cost) on the key's open session."""
        event = None
        for _ in range(_RETRIES):
            state = self._state(session_key)
            if state.session_id is None:
                raise UnknownSessionError(f"no session with key {session_key!r}")
            if state.status != "open":
                raise SessionClosedError(f"session {state.session_id!r} has ended")
            if event is None or event.session_id != state.session_id:
                event = UsageRecorded(
                    session_id=state.session_id,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cache_read_tokens=cache_read_tokens,
                    cache_write_tokens=cache_write_tokens,
                    cost_usd=cost_usd,
                    model=model,
                    occurred_at=self.clock(),
                )
            if self._append(session_key, [event], state.version):
                return self._entry_after_write(session_key)
        raise _gave_up(f"session key {session_key!r}")

    def append_to_transcript(
        self,
        session_id: str,
        message: Mapping[str, Any],
        *,
        source: SessionSource | None = None,
    ) -> int:
        """Append one message (a Hermes message dict) to an open session; returns
        its position. Raises SessionClosedError once the session's close has begun.

        A user-role message names who spoke (``user_id``, ``user_name``): the user
        of ``source``, where this very message came from (in a group session
        several people share, its sender, not the session's opener). Without
        ``source`` it names the session's user, unless the session is shared
        (``keys.is_shared_multi_user_session``): then who spoke is not known and
        left empty. The agent's messages name nobody.
        """
        now = self.clock()
        event = None
        for _ in range(_RETRIES):
            rows = self._query(SQL_MESSAGE_TARGET, (session_id,))
            if not rows:
                raise UnknownSessionError(f"no session with id {session_id!r}")
            key, version, current, status, origin = rows[0]
            if current != session_id or status != "open":
                raise SessionClosedError(
                    f"session {session_id!r} of {key!r} has ended or is closing"
                )
            if event is None:  # the origin cannot change while the session is open
                speaker = self._speaker(message.get("role"), source, origin)
                event = _message_event(session_id, message, now, speaker)
            try:
                result = self.ledger.append(key, [event], expected_version=version or 0)
            except ConcurrencyError:
                continue
            return result.positions[0]
        raise _gave_up(f"the key of session {session_id!r}")

    def _speaker(
        self, role: object, source: SessionSource | None, origin: str | None
    ) -> tuple[str | None, str | None]:
        """Who spoke a message of ``role`` (see ``append_to_transcript``), given the
        session's origin (``session_map.origin`` JSON)."""
        if role != "user":
            return None, None
        if source is None:
            try:
                source = SessionSource.from_dict(json.loads(origin)) if origin else None
            except (LedgerError, ValueError):
                source = None
            if source is None or is_shared_multi_user_session(
                source,
                group_sessions_per_user=self.config.group_sessions_per_user,
                thread_sessions_per_user=self.config.thread_sessions_per_user,
            ):
                return None, None
        return source.user_id, source.user_name

    # -- writing -------------------------------------------------------------------

    def _append(self, key: str, events: Sequence[EventModel], version: int) -> bool:
        return append_if_unchanged(self.ledger, key, events, version)

    def _entry_after_write(self, key: str) -> SessionEntry:
        entry = self.get_session(key)
        assert entry is not None
        return entry

    def _refuse_used_id(self, session_id: str) -> None:
        rows = self._query(SQL_SESSION_HOME, (session_id,))
        if rows:
            raise SessionClosedError(
                f"session id {session_id!r} already belongs to {rows[0][0]!r}"
                + (" and has ended" if rows[0][1] else ""),
                hint="give a new X-Hermes-Session-Id, or omit it to continue the current one",
            )

    def _start(
        self,
        key: str,
        state: KeyState,
        source: SessionSource,
        now: datetime,
        *,
        new_id: str | None = None,
    ) -> bool:
        """Start a session on a key with no open session (new, or closed by the scheduler)."""
        reason: StartReason = "first" if state.session_id is None else "auto_reset"
        started = self._started(state.session_id, source, reason, now, new_id)
        self._before_session_event()
        return self._append(key, [started], state.version)

    def _started(
        self,
        previous: str | None,
        source: SessionSource,
        reason: StartReason,
        now: datetime,
        new_id: str | None = None,
    ) -> SessionStarted:
        """A new session for ``source``, replacing ``previous`` (None: the key's first)."""
        return SessionStarted(
            session_id=new_id or self._new_id(now),
            source=source.to_event_source(),
            reason=reason,
            previous_session_id=previous,
            occurred_at=now,
        )

    def _finish_and_restart(
        self, key: str, state: KeyState, source: SessionSource, now: datetime
    ) -> bool:
        """A message arrived while a close was in progress (a scheduler crashed, or
        is retrying a flush): finish that close now, then start the new session."""
        assert state.session_id is not None
        started = self._started(state.session_id, source, "auto_reset", now)
        self._before_session_event()
        step = self._closer.finish(
            key, state.session_id, state.version, state.origin or source, now, then=[started]
        )
        return step.status == "ended"

    def _close_and_restart(
        self,
        key: str,
        state: KeyState,
        source: SessionSource,
        cause: SessionReset | SessionExpired,
        end_reason: str,
        start_reason: StartReason,
        *,
        new_id: str | None = None,
    ) -> bool:
        """Flush, then append cause → outcome → ended → started in one transaction."""
        assert state.session_id is not None
        now = cause.occurred_at or self.clock()
        started = self._started(state.session_id, source, start_reason, now, new_id)
        self._before_session_event()
        return self._closer.close(
            key, state.version, state.origin or source, cause,
            reason=end_reason, now=now, then=[started],
        )  # fmt: skip


def _message_event(
    session_id: str,
    message: Mapping[str, Any],
    now: datetime,
    speaker: tuple[str | None, str | None] = (None, None),
) -> MessageAppended:
    unknown = set(message) - _MESSAGE_FIELDS - {"timestamp", "synthetic"}
    if unknown:
        raise LedgerError(
            f"message has fields the ledger does not keep: {', '.join(sorted(unknown))}",
            hint=f"a message may have: {', '.join(sorted(_MESSAGE_FIELDS))}",
        )
    fields = {k: v for k, v in message.items() if k in _MESSAGE_FIELDS}
    fields.setdefault("content", None)
    event = parse(
        {
            "type": "message_appended",
            "session_id": session_id,
            "synthetic": bool(message.get("synthetic", False)),
            "occurred_at": now,
            "user_id": speaker[0],
            "user_name": speaker[1],
            **fields,
        }
    )
    assert isinstance(event, MessageAppended)
    return event
