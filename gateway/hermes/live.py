"""The Hermes plugin's recorder: the records its hook callbacks spool become events.

The plugin's callbacks (``gateway.plugin``) only write small records, triggers
with a little metadata, into a durable spool; a background thread hands them,
in order, to ``LiveRecorder.apply``. The recorder reads what a session has gained
(messages, usage, its start) from Hermes' own ``state.db``, read-only, and builds
its events with the batch import's code and event ids (``mapping``), so the
ledger holds exactly what Hermes persisted, and a live capture and a later
``import --from-hermes`` of the same home never write an event twice. Closes
come from the records alone, through the one close sequence
(``sessions.closing.SessionCloser``): cause → flush outcome → ``session_ended``.

The record kinds are described in ``records``; ``apply`` takes them as the
plugin spools them.

Who spoke: a user message names the sender of its ``dispatch`` record (matched
by key and platform message id: in a group session several people share, each
message its own sender); one whose dispatch was not seen (applied by an earlier
process, or none) names the session's user, as the import does
(``mapping._speaker``).

The closes (cause → ``session_ended.reason``):

- a new session on a key whose session is open (an auto-reset): ``session_expired``
  if the home's reset policy says so, else ``session_reset`` with trigger
  ``hermes:<the old session's Hermes end reason>`` → ``auto_reset``;
- finalize ``session_expired`` (Hermes' expiry watcher): ``session_expired`` →
  ``idle_expiry`` / ``daily_reset`` / ``cron_reset`` (Hermes keeps the session id
  until the next message; that one's new id then starts a session, reason
  ``auto_reset``, without a second close);
- finalize ``new_session`` (``/new``, ``/reset``): ``session_reset`` (``/new or
  /reset``) → ``manual_reset``, and the new session starts in the same append;
- finalize ``shutdown``: ``session_reset`` (``shutdown``) → ``shutdown`` when Hermes
  ended the session in state.db; a session the shutdown leaves open there is kept
  for Hermes's resume after the restart, so it is no close (the record is skipped);
- finalize for any other reason: ``session_reset`` (``hermes:<reason>``) →
  ``manual_reset``.

Hermes 0.19 does not report whether a memory flush ran, so every close's flush
outcome is ``memory_flush_skipped`` saying exactly that. Every event appended
here has ``{"actor": "hermes-plugin", "home": "<host>:<home>"}`` in its meta.

Several homes, one ledger (gateways on several hosts sharing a PostgreSQL ledger):
each home's sessions are recorded under their own Hermes keys. When two homes
produce the same key (the same chat on two gateways of one profile name), a key
cannot hold both homes' sessions at once: a session new to the key while it holds
an open session of *another* home (not in this home's state.db, started by that
home's plugin) is not recorded (the record is skipped, saying so), rather than
closing that home's session on its behalf — a close that did not happen — and
then leaving out what it still says. Give each host its own Hermes profile (its
keys then start ``agent:<profile>:``) when their chats may overlap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.hermes.batch import Batch as _Batch
from hermes_ledger.gateway.hermes.held import (
    Recorded,
    foreign,
    home_identity,
    reads_of,
    recorded,
    session_home,
    session_times,
)
from hermes_ledger.gateway.hermes.mapping import (
    PLUGIN_ACTOR,
    Speaker,
    ToolRedaction,
    _chain,
    _continues,
    _event_id,
    _message_events,
    _placed,
    _speaker,
    _usage_event,
    _utc,
)
from hermes_ledger.gateway.hermes.reading import (
    HermesHome,
    _Session,
)
from hermes_ledger.gateway.hermes.records import (
    LiveReport,
    Record,
    RecordedClose,
    RecordError,
    SkippedRecord,
    parse_record,
)
from hermes_ledger.gateway.sessions.closing import SessionCloser, end_reason_for, expiry_cause
from hermes_ledger.gateway.sessions.keys import validate_session_key
from hermes_ledger.gateway.sessions.reads import KeyState, read_key_state
from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.ledger import (
    ConcurrencyError,
    EventLog,
    IdempotencyError,
    Ledger,
    LedgerError,
    SessionAlreadyEndedError,
)
from hermes_ledger.ledger.clock import parse_utc
from hermes_ledger.ledger.events import (
    EventModel,
    SessionExpired,
    SessionReset,
    SessionStarted,
    Source,
)

__all__ = [
    "FLUSH_NOT_REPORTED",
    "PLUGIN_ACTOR",
    "RESET_TRIGGER",
    "LiveRecorder",
    "LiveReport",
    "RecordedClose",
    "SkippedRecord",
]

FLUSH_NOT_REPORTED: Final = (
    "Hermes did not report whether a memory flush ran for this close (Hermes 0.19 has no"
    " flush outcome for plugins)"
)
"""The ``memory_flush_skipped`` reason of every close the recorder writes."""
RESET_TRIGGER: Final = "/new or /reset"
"""The ``session_reset`` trigger of a ``/new``: Hermes does not say which command it was."""

log = logging.getLogger("hermes_plugins.ledger")
_RETRIES: Final = 20  # re-reads after another writer changed a key first
_REMEMBERED: Final = 4096  # dispatch sources, senders, speakers, subagent ids kept


class LiveRecorder:
    """Turns spooled hook records into ledger events (see the module docstring).

    ``home`` is the Hermes home whose ``state.db`` the records are about;
    ``config`` its gateway configuration (default ``GatewayConfig.load(home)``,
    which reads ``config.yaml`` as Hermes does; it decides whether an auto-reset
    was an expiry); ``redact_tools`` are ``fnmatch`` patterns of tool names whose
    call arguments and results are stored as ``[redacted]``. One recorder may be
    used from any thread; ``apply`` calls run one at a time.
    """

    def __init__(
        self,
        ledger: EventLog | Ledger,
        home: Path,
        *,
        config: GatewayConfig | None = None,
        redact_tools: Sequence[str] = (),
    ) -> None:
        # what it reads and appends through, its projections attached (either backend)
        self.ledger = reads_of(ledger, projections=True)
        self.home = Path(home).expanduser()
        self.config = config if config is not None else GatewayConfig.load(self.home)
        self.redact = ToolRedaction(redact_tools)
        self.meta = {"actor": PLUGIN_ACTOR, "home": home_identity(self.home)}
        self.closer = SessionCloser(self.ledger, None, meta=self.meta, skipped=FLUSH_NOT_REPORTED)
        self._sources: OrderedDict[str, Source] = OrderedDict()  # key → latest dispatch
        self._side: OrderedDict[str, None] = OrderedDict()  # subagent sessions seen
        # (key, platform message id) → who sent it, from its dispatch
        self._senders: OrderedDict[tuple[str, str], Speaker] = OrderedDict()
        self._speakers: OrderedDict[str, Speaker] = OrderedDict()  # session → its user
        self._lock = threading.Lock()
        self._shared_keys: set[str] = set()  # keys seen shared with another home

    # -- applying a batch ------------------------------------------------------------

    def apply(self, records: Sequence[Mapping[str, Any]]) -> LiveReport:
        """Apply ``records`` in order and report what was appended.

        Idempotent: records applied before (after a crash, say) find their events
        in the ledger and append nothing. A record that cannot be applied is
        skipped with its reason; nothing else is raised for it. Raises a
        LedgerError when the ledger cannot be written (busy, locked, corrupt) or
        ``state.db`` cannot be read (HermesImportError): keep the records and
        apply them again later.
        """
        report = LiveReport()
        with self._lock, _Batch(self, report) as batch:
            for index, raw in enumerate(records):
                try:
                    record = parse_record(raw)
                except RecordError as exc:
                    kind = raw.get("kind") if isinstance(raw, Mapping) else None
                    report.skipped.append(SkippedRecord(index, str(kind), str(exc)))
                    continue
                batch.add(index, record)
        return report

    # -- what state.db has of one session ----------------------------------------------

    def _sync(
        self,
        batch: _Batch,
        session_id: str,
        hint: str | None,
        *,
        start_reason: str | None = None,
        side: bool = False,
    ) -> str:
        """Append what ``state.db`` has of the session that the ledger lacks: its
        start (closing the key's open session first: an auto-reset), then its new
        messages and usage. Returns the session's key."""
        hermes = batch.hermes()
        for _ in range(_RETRIES):
            held = recorded(self.ledger, session_id)
            s = hermes.session(session_id)
            if s is None:
                if held.stream is not None:
                    return held.stream
                raise RecordError(f"session {session_id} is not in {hermes.state_db}")
            if held.stream is not None:
                key = held.stream
                content = self._content(batch, key, s, held)
                if held.ended:
                    if content:
                        batch.warn(
                            f"session {s.id}: {len(content)} event(s) Hermes recorded after the"
                            " session ended in the ledger are left out"
                        )
                    return key
                version = self.ledger.stream_version(key)
                if not content or self._append(batch, key, content, version):
                    return key
                continue
            key, source = self._place(hermes, s, hint, side)
            if foreign(self.ledger, key):
                raise RecordError(f"{key} holds sessions another writer recorded; left alone")
            state = read_key_state(self.ledger, key)
            if state.status == "open" and state.session_id != s.id:
                assert state.session_id is not None
                self._check_not_anothers(hermes, key, state.session_id, s.id)
                times = session_times(self.ledger, state.session_id)
                if times and times[0] and parse_utc(times[0]) > _utc(s.started_at):
                    raise RecordError(
                        f"session {s.id} started before {state.session_id}, the open session"
                        f" of {key}: not recorded after it"
                    )
                if self._catch_up(batch, state.session_id, key, state.version):
                    continue  # the key moved on: read it again
                if not self._auto_reset(batch, key, state, s, source):
                    continue
                return key
            started = self._started(s, source, state, start_reason)
            events = [started, *self._content(batch, key, s, held)]
            if state.status == "closing":  # another writer's close, half done
                assert state.session_id is not None
                if self._finish(batch, key, state, _utc(s.started_at), events):
                    return key
                continue
            if self._append(batch, key, events, state.version):
                return key
        raise RecordError(f"gave up on session {session_id} after {_RETRIES} tries: its key moved")

    def _check_not_anothers(self, hermes: HermesHome, key: str, open_id: str, new: str) -> None:
        """RecordError if ``key``'s open session belongs to another Hermes home: not in
        this home's state.db, and started by another home's plugin (module docstring)."""
        if hermes.session(open_id) is not None:
            return
        other = session_home(self.ledger, open_id)
        if other is not None and other != self.meta["home"]:
            why = (
                f"{key} holds the open session {open_id} of another Hermes home ({other}):"
                f" {new} is not recorded beside it, nor is that session closed; give each"
                " host its own Hermes profile so that their session keys differ"
            )
            if key not in self._shared_keys:  # the gateway's log says so once per key
                self._shared_keys.add(key)
                log.warning("ledger plugin: %s", why)
            raise RecordError(why)

    def _place(
        self, hermes: HermesHome, s: _Session, hint: str | None, side: bool
    ) -> tuple[str, Source]:
        """A session new to the ledger: its key (the record's, unless the session runs
        beside its parent; else the import's rules) and its start's source (the
        key's latest dispatch, else what state.db knows)."""
        key, source = self._placed(hermes, s)
        parent = hermes.session(s.parent_id) if s.parent_id else None
        beside = side or s.id in self._side or (parent is not None and not _continues(s, parent))
        if hint is not None and not beside:
            with contextlib.suppress(LedgerError):
                key = validate_session_key(hint)
        return key, self._sources.get(key, source)

    @staticmethod
    def _placed(hermes: HermesHome, s: _Session) -> tuple[str, Source]:
        """The key and source the import's rules give ``s`` (``mapping._placed``)."""
        chain = _chain(s, hermes.session)
        routes = {}
        for member in chain:
            routes.update(hermes.routes(only=member.id))
        key, _valid, source = _placed(chain, routes, lambda _text: None)
        return key, source

    def _speaker(self, hermes: HermesHome, s: _Session) -> Speaker:
        """Who ``s``'s user messages are attributed to when their dispatch was not
        seen: the import's answer (``mapping._speaker``), so both write one body."""
        speaker = self._speakers.get(s.id)
        if speaker is None:
            speaker = _speaker(s, self._placed(hermes, s)[1])
            self._remember(self._speakers, s.id, speaker)
        return speaker

    def _content(self, batch: _Batch, key: str, s: _Session, held: Recorded) -> list[EventModel]:
        """The session's messages after the last one the ledger has, and its usage
        beyond what the ledger has recorded (the import's events and ids). A user
        message whose dispatch was seen on ``key`` names the dispatch's sender."""
        hermes = batch.hermes()
        have = [
            mid
            for mid in hermes.message_ids(s.id)
            if _event_id("message", s.id, mid) in held.event_ids
        ]
        messages, latest = _message_events(
            s.id,
            hermes.messages(s.id, after=max(have, default=0)),
            batch.warn,
            self.redact,
            self._speaker(hermes, s),
            lambda message_id: self._senders.get((key, message_id)),
        )
        events: list[EventModel] = list(messages)
        at = latest if latest is not None else max(s.started_at, batch.at.timestamp())
        usage = _usage_event(s, held.used, min(at, s.ended_at or at), batch.warn)
        if usage is not None and usage.event_id not in held.event_ids:
            events.append(usage)
        return events

    def _catch_up(self, batch: _Batch, session_id: str, key: str, version: int) -> bool:
        """Before a session is closed, append what state.db still has of it; True if
        something was appended (the key's version moved)."""
        s = batch.hermes().session(session_id)
        if s is None:
            return False
        content = self._content(batch, key, s, recorded(self.ledger, session_id))
        if not content:
            return False
        self._append(batch, key, content, version)
        return True

    def _started(
        self, s: _Session, source: Source, state: KeyState, reason: str | None
    ) -> SessionStarted:
        """``s``'s start on a key whose previous session (if any) has ended."""
        previous = state.session_id
        if previous is None:
            why = "first"
        elif reason is not None:
            why = reason
        else:  # the key's last session ended (an expiry, a shutdown…): Hermes auto-reset it
            times = session_times(self.ledger, previous)
            why = {"manual_reset": "manual_reset", "resume_switch": "resume"}.get(
                (times[1] if times else None) or "", "auto_reset"
            )
        return SessionStarted(
            event_id=_event_id("started", s.id),
            session_id=s.id,
            source=source,
            reason=why,  # type: ignore[arg-type]
            previous_session_id=previous,
            occurred_at=_utc(s.started_at),
        )

    # -- closes ---------------------------------------------------------------------

    def _auto_reset(
        self, batch: _Batch, key: str, state: KeyState, s: _Session, source: Source
    ) -> bool:
        """Hermes gave ``key`` the new session ``s`` while its current one is open
        in the ledger: close that one (``auto_reset``), then start ``s``, in one
        append. False if the key changed first."""
        old = state.session_id
        assert old is not None
        now = _utc(s.started_at)
        expiry = self._expiry(state, now)
        cause: SessionExpired | SessionReset
        if expiry is not None:
            cause = expiry
        else:  # not an expiry as the policy has it: say what Hermes recorded
            row = batch.hermes().session(old)
            told = row.end_reason if row is not None and row.end_reason else "auto_reset"
            cause = SessionReset(session_id=old, trigger=f"hermes:{told}", occurred_at=now)
        started = SessionStarted(
            event_id=_event_id("started", s.id),
            session_id=s.id,
            source=source,
            reason="auto_reset",
            previous_session_id=old,
            occurred_at=now,
        )
        then = [started, *self._content(batch, key, s, recorded(self.ledger, s.id))]
        return self._close(batch, key, state, cause, "auto_reset", now, then)

    def _expiry(self, state: KeyState, now: datetime) -> SessionExpired | None:
        """``session_expired`` for the key's open session if its reset policy (from
        the home's configuration) says it has expired by ``now``."""
        assert state.session_id is not None and state.updated_at is not None
        try:
            origin = state.origin
        except LedgerError:
            origin = None
        policy = self.config.reset_policy(
            origin.platform if origin else None, origin.chat_type if origin else None
        )
        expiry = policy.evaluate(state.updated_at, now)
        if expiry is None:
            return None
        return expiry_cause(state.session_id, policy, expiry, now)

    def _finalize(self, batch: _Batch, record: Record) -> None:
        """Hermes closed a session (``on_session_finalize``, or the ``reset`` half of
        a ``/new``): record that close once, after what state.db still has of it."""
        reason = "new_session" if record.kind == "reset" else record.reason
        old = record.old_session_id or (None if record.kind == "reset" else record.session_id)
        new = record.new_session_id
        if old is None:
            started = new or record.session_id
            if record.kind == "reset" and started is not None:  # the CLI's: no old session
                self._sync(batch, started, None, start_reason="manual_reset")
                return
            raise RecordError("the record names no session")
        if batch.hermes().session(old) is None and recorded(self.ledger, old).stream is None:
            where = batch.hermes().state_db
            raise RecordError(f"session {old} is in neither {where} nor the ledger")
        key = self._sync(batch, old, None)
        if reason == "shutdown" and _resumable(batch.hermes().session(old)):
            # Hermes keeps the session for a resume after the restart (resume_pending):
            # its transcript goes on under the same id, so this is not a close.
            raise RecordError(f"session {old} stays open in state.db across the shutdown")
        for _ in range(_RETRIES):
            state = read_key_state(self.ledger, key)
            if recorded(self.ledger, old).ended:
                break
            if state.session_id != old:
                raise RecordError(f"session {old} is open but not the current session of {key}")
            if state.status == "closing":
                if self._finish(batch, key, state, record.at, []):
                    break
                continue
            cause, end = self._cause(state, old, reason, record.at)
            then: list[EventModel] = []
            if new is not None and new != old and recorded(self.ledger, new).stream is None:
                then = self._successor(batch, key, state, old, new)
            if self._close(batch, key, state, cause, end, record.at, then):
                break
        else:
            raise RecordError(f"gave up closing session {old} after {_RETRIES} tries")
        if new is not None and new != old:
            self._sync(batch, new, key, start_reason="manual_reset")

    def _cause(
        self, state: KeyState, old: str, reason: str | None, at: datetime
    ) -> tuple[SessionExpired | SessionReset, str]:
        """The cause and end reason of a close Hermes finalized for ``reason``."""
        if reason == "session_expired":
            expiry = self._expiry(state, at)
            if expiry is not None:
                return expiry, end_reason_for("session_expired", expiry.reason)
            # Hermes' watcher saw an expiry the policy read here does not (yet) see
            cause = SessionReset(session_id=old, trigger="hermes:session_expired", occurred_at=at)
            return cause, "session_expired"
        trigger = {"new_session": RESET_TRIGGER, "shutdown": "shutdown"}.get(
            reason or "", f"hermes:{reason or 'unknown'}"
        )
        return SessionReset(session_id=old, trigger=trigger, occurred_at=at), end_reason_for(
            "session_reset", trigger
        )

    def _successor(
        self, batch: _Batch, key: str, state: KeyState, old: str, new: str
    ) -> list[EventModel]:
        """The start (and content) of the session a ``/new`` gave ``key``, to follow
        the old one's end in the same append; none if state.db has no such row."""
        s = batch.hermes().session(new)
        if s is None:
            return []
        source = self._place(batch.hermes(), s, key, False)[1]
        closed = KeyState(state.version, old, "closed", state.updated_at, state.origin_json)
        started = self._started(s, source, closed, "manual_reset")
        return [started, *self._content(batch, key, s, recorded(self.ledger, new))]

    def _close(
        self,
        batch: _Batch,
        key: str,
        state: KeyState,
        cause: SessionExpired | SessionReset,
        reason: str,
        now: datetime,
        then: Sequence[EventModel],
    ) -> bool:
        try:
            origin = state.origin
        except LedgerError:
            origin = None
        if not self.closer.close(key, state.version, origin, cause, reason=reason, now=now,
                                 then=then):  # fmt: skip
            return False
        batch.report.events += 3 + len(then)
        batch.report.closes.append(RecordedClose(key, cause.session_id, cause.type, reason))
        return True

    def _finish(
        self, batch: _Batch, key: str, state: KeyState, now: datetime, then: list[EventModel]
    ) -> bool:
        """Finish a close another writer began (its cause is in the log)."""
        assert state.session_id is not None
        try:
            origin = state.origin
        except LedgerError:
            origin = None
        step = self.closer.finish(key, state.session_id, state.version, origin, now, then=then)
        if step.status == "ended":
            batch.report.events += self.ledger.stream_version(key) - state.version
            batch.report.closes.append(
                RecordedClose(key, state.session_id, "(recorded before)", step.reason)
            )
        return step.status == "ended"

    def _append(self, batch: _Batch, key: str, events: Sequence[EventModel], version: int) -> bool:
        """Append at ``version``; False (nothing written) if another writer got there
        first (re-read and decide again)."""
        try:
            result = self.ledger.append(key, events, expected_version=version, meta=self.meta)
        except (ConcurrencyError, SessionAlreadyEndedError, IdempotencyError):
            return False
        if not result.duplicate:
            batch.report.events += len(result.positions)
        return True

    # -- the other records ---------------------------------------------------------

    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > _REMEMBERED:
            table.popitem(last=False)

    def _dispatch(self, record: Record) -> None:
        if record.session_key is None or record.source is None:
            raise RecordError("a dispatch record needs a session_key and a source")
        try:
            key = validate_session_key(record.session_key)
            source = SessionSource.from_dict(record.source).to_event_source()
        except LedgerError as exc:
            raise RecordError(f"dispatch: {exc}") from None
        self._remember(self._sources, key, source)
        if record.message_id is not None:  # who sent it, for its user message
            sender = (source.user_id, source.user_name)
            self._remember(self._senders, (key, record.message_id), sender)


def _resumable(session: _Session | None) -> bool:
    """A Hermes session that a gateway shutdown left open (no end in state.db)."""
    return session is not None and session.ended_at is None
