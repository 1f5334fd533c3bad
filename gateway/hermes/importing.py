"""Importing a Hermes home: ``state.db`` sessions and messages become ledger events.

A Hermes 0.19 home keeps every session (CLI, TUI and gateway) in ``state.db``
and the gateway's key → session mapping in its ``gateway_routing`` table (mirrored
in the legacy ``sessions/sessions.json``); ``reading`` reads them.
``import_hermes_home`` turns that into the events the live gateway would have
written, one stream per session key:

    session_started → message_appended … → usage_recorded → session_ended → next session_started

Everything is read from one read-only snapshot of ``state.db``; the Hermes files
are never written. Events carry Hermes' own times in ``occurred_at`` and
deterministic ``event_id``s (uuid5 over the Hermes session id, message id and
event kind), so importing again appends only what Hermes has gained since: new
sessions, new messages, more usage, an end. Every appended event has
``{"actor": "hermes-import"}`` in its meta. docs/hermes-import.md has the full
mapping and its limits. ``reading`` reads the home; ``mapping`` turns its sessions
into keys and events; this module appends them and reports.

Streams the Hermes plugin's live recorder (``hermes.live``, actor
``hermes-plugin``) wrote are not foreign: it builds the same events with the same
ids (``mapping``), so an import appends only what it did not record, and counts
its usage and its ends as already there.

``HermesHome``, ``open_hermes_home``, ``HermesImportError`` and
``SUPPORTED_SCHEMA_VERSIONS`` come from ``reading``, ``SUPERSEDED_REASON`` and
``import_key`` from ``mapping``; all are importable from here as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hermes_ledger.gateway.hermes.held import (
    foreign,
    home_identity,
    ledger_name,
    reads_of,
    recorded,
    session_home,
    session_stream,
    stream_sessions,
)
from hermes_ledger.gateway.hermes.mapping import (
    IMPORT_ACTOR,
    SUPERSEDED_REASON,
    ToolRedaction,
    _continues,
    _event_id,
    _message_events,
    _origin,
    _resolve_keys,
    _sources,
    _speaker,
    _start_reason,
    _Usage,
    _usage_event,
    _utc,
    import_key,
)
from hermes_ledger.gateway.hermes.reading import (
    SUPPORTED_SCHEMA_VERSIONS,
    HermesHome,
    HermesImportError,
    _Session,
    open_hermes_home,
)
from hermes_ledger.ledger import ConcurrencyError, EventLog, IdempotencyError, Ledger
from hermes_ledger.ledger.events import (
    EventModel,
    MessageAppended,
    SessionEnded,
    SessionStarted,
    Source,
    UsageRecorded,
)

__all__ = [
    "IMPORT_ACTOR",
    "SUPERSEDED_REASON",
    "SUPPORTED_SCHEMA_VERSIONS",
    "HermesHome",
    "HermesImportError",
    "HermesImportReport",
    "import_hermes_home",
    "import_key",
    "open_hermes_home",
]

# -- the import -----------------------------------------------------------------------


@dataclass
class HermesImportReport:
    """What one import read and appended."""

    home: str
    ledger: str
    sessions_read: int = 0
    sessions: int = 0  # session_started appended (sessions new to the ledger)
    updated: int = 0  # sessions already in the ledger that gained events
    skipped: int = 0  # sessions already fully imported: nothing appended
    messages: int = 0
    usage: int = 0
    ended: int = 0
    events: int = 0
    first_position: int | None = None
    last_position: int | None = None
    keys: int = 0  # session keys (streams) appended to
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> list[str]:
        """The report for people, one line each (warnings are not included)."""
        if not self.events:
            return [
                f"Nothing new to import from {self.home}: all {self.sessions_read} sessions "
                f"are already in {self.ledger}"
                if self.skipped == self.sessions_read
                else f"Imported nothing from {self.home} into {self.ledger}"
            ]
        return [
            f"Imported {self.events} event{'s' * (self.events != 1)} from {self.home} into "
            f"{self.ledger} (positions {self.first_position}-{self.last_position})",
            f"  sessions  {self.sessions} new, {self.updated} updated, {self.skipped} already "
            f"imported ({self.sessions_read} in state.db)",
            f"  messages  {self.messages}",
            f"  usage     {self.usage} records",
            f"  ended     {self.ended} sessions",
        ]


@dataclass
class _KeyState:
    """What the ledger holds for one key, kept current as the import appends."""

    version: int
    foreign: bool
    started: set[str]
    ended: set[str]
    open_session: str | None
    order: dict[str, int]  # the key's Hermes sessions → their place, oldest first
    last_imported: int  # index in ``order`` of the newest session already in the ledger
    touched: bool = False


class _Importer:
    def __init__(
        self,
        ledger: Ledger,
        home: HermesHome,
        progress: Callable[[int, int], None] | None,
        redact: ToolRedaction,
    ) -> None:
        self.ledger = ledger
        self.home = home
        self.progress = progress
        self.redact = redact
        self.report = HermesImportReport(home=str(home.path), ledger=ledger_name(ledger))
        self.keys: dict[str, _KeyState] = {}

    def warn(self, text: str) -> None:
        self.report.warnings.append(text)

    def run(self) -> HermesImportReport:
        sessions = self.home.sessions()
        routes = self.home.routes()
        self.report.warnings.extend(self.home.warnings)
        self.report.sessions_read = len(sessions)
        by_id = {s.id: s for s in sessions}
        raw: dict[str, dict[str, Any]] = {}  # oldest first: a parent comes before its children
        for s in sessions:
            parent = by_id.get(s.parent_id or "")
            inherited = raw.get(parent.id) if parent and _continues(s, parent) else None
            raw[s.id] = _origin(s, routes.get(s.id), inherited, self.warn)
        origins = {s.id: _sources(s, raw[s.id], self.warn) for s in sessions}
        keys = _resolve_keys(sessions, routes, origins, self.warn)
        for s in sessions:  # a session already imported stays in its stream
            stream = session_stream(self.ledger, s.id)
            if stream is not None and stream != keys[s.id]:
                keys[s.id] = stream
        by_key: dict[str, list[_Session]] = {}
        for s in sessions:
            by_key.setdefault(keys[s.id], []).append(s)
        previous: dict[str, _Session | None] = {}
        for members in by_key.values():
            for before, s in zip([None, *members], members, strict=False):
                previous[s.id] = before
        total = len(sessions)
        if self.progress is not None:
            self.progress(0, total)
        for done, s in enumerate(sessions, 1):
            key = keys[s.id]
            state = self._key_state(key, [m.id for m in by_key[key]])
            self._import_session(s, key, state, previous[s.id], origins[s.id][1])
            if self.progress is not None:
                self.progress(done, total)
        self.report.keys = sum(1 for state in self.keys.values() if state.touched)
        return self.report

    def _key_state(self, key: str, order: list[str]) -> _KeyState:
        state = self.keys.get(key)
        if state is None:
            rows = stream_sessions(self.ledger, key)
            started = {sid for sid, _ in rows}
            ended = {sid for sid, has_end in rows if has_end}
            open_ids = [sid for sid, has_end in rows if not has_end]
            imported = [i for i, sid in enumerate(order) if sid in started]
            state = _KeyState(
                version=self.ledger.stream_version(key),
                foreign=foreign(self.ledger, key),
                started=started,
                ended=ended,
                open_session=open_ids[-1] if open_ids else None,
                order={sid: i for i, sid in enumerate(order)},
                last_imported=max(imported, default=-1),
            )
            self.keys[key] = state
        return state

    def _import_session(
        self, s: _Session, key: str, state: _KeyState, previous: _Session | None, source: Source
    ) -> None:
        held = recorded(self.ledger, s.id)
        desired = self._desired(s, previous, source, held.used)
        self._check_vanished(s, desired, held.messages)
        # An end the live recorder wrote (with its own cause, reason and id) is this end.
        present = [
            e.event_id in held.event_ids or (isinstance(e, SessionEnded) and held.ended)
            for e in desired
        ]
        if all(present):
            self.report.skipped += 1
            return
        # Only a tail can be appended: what belongs before events already in the log
        # (a session Hermes reopened, one that appeared late) is left out.
        last_present = max((i for i, p in enumerate(present) if p), default=-1)
        if s.id in state.ended or (
            s.id not in state.started and state.order[s.id] < state.last_imported
        ):
            last_present = len(desired)
        late = sum(1 for i, p in enumerate(present) if not p and i < last_present)
        if late:
            self.warn(
                f"session {s.id}: {late} event(s) Hermes recorded after later events of "
                f"{key} were imported (a reopened or late session) are left out"
            )
        missing = [e for i, e in enumerate(desired) if not present[i] and i > last_present]
        if not missing:
            return
        if state.foreign:
            self.warn(
                f"session {s.id}: {key} also has events not written by a Hermes import; "
                f"{len(missing)} event(s) left out"
            )
            return
        batch: list[EventModel] = []
        if isinstance(missing[0], SessionStarted) and state.open_session not in (None, s.id):
            assert state.open_session is not None
            other = self._other_home(state.open_session)
            if other is not None:  # as the live recorder does (hermes.live)
                self.warn(
                    f"session {s.id}: {key} holds the open session {state.open_session} of"
                    f" another Hermes home ({other}); {len(missing)} event(s) left out (give"
                    " each host its own Hermes profile so that their session keys differ)"
                )
                return
            self.warn(
                f"session {state.open_session}: still open in Hermes when {s.id} started on "
                f"{key}; ended with reason {SUPERSEDED_REASON!r}"
            )
            batch.append(
                SessionEnded(
                    event_id=_event_id("ended", state.open_session),
                    session_id=state.open_session,
                    reason=SUPERSEDED_REASON,
                    occurred_at=_utc(s.started_at),
                )
            )
        batch.extend(missing)
        try:
            result = self.ledger.append(
                key, batch, expected_version=state.version, meta={"actor": IMPORT_ACTOR}
            )
        except (ConcurrencyError, IdempotencyError) as exc:
            raise HermesImportError(
                f"something else appended to {key} while {self.home.path} was being imported",
                hint="run the import again: it appends what is still missing",
            ) from exc
        if result.duplicate:  # another import appended these very events just now
            self.report.skipped += 1
            state.version = self.ledger.stream_version(key)
        else:
            self._count(batch, result.positions, s.id in state.started)
            state.version = result.version
            state.touched = True
        for event in batch:
            if isinstance(event, SessionStarted):
                state.started.add(event.session_id)
                state.open_session = event.session_id
            elif isinstance(event, SessionEnded):
                state.ended.add(event.session_id)
                if state.open_session == event.session_id:
                    state.open_session = None

    def _other_home(self, session_id: str) -> str | None:
        """The other Hermes home whose plugin recorded ``session_id``, which is not in
        this home's state.db; None if it is this home's, or no plugin's."""
        if self.home.session(session_id) is not None:
            return None
        other = session_home(self.ledger, session_id)
        mine = home_identity(self.home.state_db.parent)
        return other if other is not None and other != mine else None

    def _desired(
        self, s: _Session, previous: _Session | None, source: Source, used: _Usage
    ) -> list[EventModel]:
        """Every event the session stands for now, in log order."""
        events: list[EventModel] = [
            SessionStarted(
                event_id=_event_id("started", s.id),
                session_id=s.id,
                source=source,
                reason=_start_reason(previous),
                previous_session_id=previous.id if previous else None,
                occurred_at=_utc(s.started_at),
            )
        ]
        speaker = _speaker(s, source)  # Hermes keeps no sender per message
        messages, latest = _message_events(
            s.id, self.home.messages(s.id), self.warn, self.redact, speaker
        )
        events.extend(messages)
        last_at = max(s.started_at, latest or s.started_at)
        usage = _usage_event(s, used, min(last_at, s.ended_at or last_at), self.warn)
        if usage is not None:
            events.append(usage)
        if s.ended_at is not None:
            events.append(
                SessionEnded(
                    event_id=_event_id("ended", s.id),
                    session_id=s.id,
                    reason=s.end_reason or "unknown",
                    occurred_at=_utc(s.ended_at),
                )
            )
        return events

    def _check_vanished(
        self, s: _Session, desired: list[EventModel], imported: Mapping[str, bool]
    ) -> None:
        if not imported:
            return
        now = {e.event_id: e.synthetic for e in desired if isinstance(e, MessageAppended)}
        gone = sum(1 for event_id in imported if event_id not in now)
        hidden = sum(1 for event_id, syn in imported.items() if not syn and now.get(event_id))
        if gone or hidden:
            self.warn(
                f"session {s.id}: Hermes has since rewritten or hidden {gone + hidden} "
                "imported message(s) (/undo, /retry, compression); the ledger keeps them"
            )

    def _count(self, batch: list[EventModel], positions: tuple[int, ...], known: bool) -> None:
        report = self.report
        for event in batch:
            if isinstance(event, SessionStarted):
                report.sessions += 1
            elif isinstance(event, MessageAppended):
                report.messages += 1
            elif isinstance(event, UsageRecorded):
                report.usage += 1
            elif isinstance(event, SessionEnded):
                report.ended += 1
        if known:
            report.updated += 1
        report.events += len(positions)
        if report.first_position is None:
            report.first_position = positions[0]
        report.last_position = positions[-1]


def import_hermes_home(
    ledger: EventLog | Ledger,
    path: str | os.PathLike[str] | HermesHome,
    progress: Callable[[int, int], None] | None = None,
    *,
    redact_tools: Sequence[str] = (),
) -> HermesImportReport:
    """Import a Hermes home's sessions into ``ledger`` and bring its projections up to date.

    ``path`` is the home directory (or its ``state.db``), or a ``HermesHome``
    already opened with ``open_hermes_home``. Sessions are imported oldest first,
    each as one append to its key's stream with the expected version. Events
    already in the ledger (same deterministic event_id) are not appended again,
    so a second import appends only what Hermes gained since. ``progress(done,
    total)`` is called per session. Tool calls and results of tools matching a
    ``redact_tools`` pattern (``fnmatch``) are stored as ``[redacted]``, as the live
    recorder stores them. Raises HermesImportError (before anything is written)
    for a path that is not a readable Hermes 0.19 home.

    ``ledger`` is either backend (an ``EventLog``: a SQLite ``Ledger`` or a
    ``PostgresLog``); the projections are attached (created or caught up) after
    the import, not during it, so the appends are plain ones.
    """
    redact = ToolRedaction(redact_tools)
    reads = reads_of(ledger)
    if isinstance(path, HermesHome):
        report = _Importer(reads, path, progress, redact).run()
    else:
        with open_hermes_home(path) as home:
            report = _Importer(reads, home, progress, redact).run()
    reads_of(ledger, projections=True)
    return report
