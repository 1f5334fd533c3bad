"""How a Hermes session maps to ledger events: its origin and source, its session
key, and the events themselves.

``_origin`` and ``_sources`` give a session's source as Hermes recorded it, and
``_speaker`` the person its user-role messages are attributed to;
``_resolve_keys`` picks each session's key (routing, the recorded key, the parent's,
one built from the source, else ``import_key``); ``_event_id``, ``_start_reason``,
``_message_events`` and ``_usage_event`` build the events, with deterministic ids
(uuid5 over the Hermes session id, message id and event kind) and Hermes' own times.
``importing`` (a whole home) and ``live`` (the plugin's recorder, session by session)
append them: both build a session's events here, so they write the same events
with the same ids, and neither writes what the other already has.
"""

from __future__ import annotations

import fnmatch
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from hermes_ledger.gateway.hermes.reading import _count, _number, _Route, _Session, _text
from hermes_ledger.gateway.sessions.keys import (
    build_session_key,
    escape_component,
    session_namespace,
)
from hermes_ledger.gateway.sessions.keys import validate_session_key as _validate_key
from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.events import MessageAppended, Source, UsageRecorded

__all__ = [
    "HERMES_ACTORS",
    "IMPORT_ACTOR",
    "PLUGIN_ACTOR",
    "REDACTED",
    "SUPERSEDED_REASON",
    "ToolRedaction",
    "import_key",
]

IMPORT_ACTOR: Final = "hermes-import"
"""``meta.actor`` of every event an import appends."""
PLUGIN_ACTOR: Final = "hermes-plugin"
"""``meta.actor`` of every event the Hermes plugin's live recorder appends."""
HERMES_ACTORS: Final = (IMPORT_ACTOR, PLUGIN_ACTOR)
"""The writers of events built here: each appends only what the other has not."""

SUPERSEDED_REASON: Final = "superseded"
"""End reason given to a session Hermes left open when a later one started on its key."""

REDACTED: Final = "[redacted]"
"""What a redacted tool call's arguments and a redacted tool result are stored as."""

_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "hermes-ledger:hermes-import")
_JSON_CONTENT: Final = "\x00json:"  # Hermes' prefix for list/dict message content
_ROLES: Final = frozenset({"user", "assistant", "tool", "system"})
# The previous session's Hermes end reason → the next session's start reason.
_AUTO_ENDS: Final = frozenset(
    {"idle", "daily", "suspended", "resume_pending_expired", "compression", SUPERSEDED_REASON}
)
_RESUME_ENDS: Final = frozenset({"session_switch", "resumed_other", "branched"})
_StartReason = Literal["first", "manual_reset", "auto_reset", "resume"]


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


# -- keys and sources -----------------------------------------------------------------


def import_key(platform: str, session_id: str, profile: str | None = None) -> str:
    """The key of a session Hermes gave no key and no chat to derive one from (CLI,
    cron…): ``agent:<ns>:<platform>:import:<session_id>``, one key per session."""
    ns = session_namespace(profile)
    return f"agent:{ns}:{escape_component(platform)}:import:{escape_component(session_id)}"


def _origin(
    session: _Session,
    route: _Route | None,
    parent: dict[str, Any] | None,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """The session's origin as Hermes stored it (``origin_json``), else the routing
    entry's, else rebuilt from the row's columns; a continuation (compression,
    branch) whose row names no chat has its parent's."""
    if session.origin_json:
        try:
            stored = json.loads(session.origin_json)
            if isinstance(stored, dict) and stored.get("platform"):
                return stored
        except ValueError:
            pass
        warn(f"session {session.id}: origin_json is not a source; using the row's columns")
    if route is not None and route.origin and route.origin.get("platform"):
        return dict(route.origin)
    if parent is not None and not (session.chat_id or session.user_id):
        return parent
    return {
        "platform": session.platform,
        "chat_id": session.chat_id,
        "chat_name": session.display_name,
        "chat_type": session.chat_type,
        "user_id": session.user_id,
        "thread_id": session.thread_id,
        "profile": session.profile,
    }


def _sources(
    session: _Session, origin: dict[str, Any], warn: Callable[[str], None]
) -> tuple[SessionSource | None, Source]:
    """(the validated source, if it validates; the event's source)."""
    try:
        source = SessionSource.from_dict(origin)
    except LedgerError as exc:
        warn(f"session {session.id}: its origin is not a valid source ({exc}); kept as stored")
        chat_type = origin.get("chat_type")
        return None, Source(
            platform=str(origin.get("platform") or session.platform),
            chat_type=chat_type if isinstance(chat_type, str) and chat_type else "dm",
            chat_id=_text(origin.get("chat_id")),
            user_id=_text(origin.get("user_id")),
            thread_id=_text(origin.get("thread_id")),
        )
    return source, source.to_event_source()


Speaker: TypeAlias = tuple[str | None, str | None]
"""Who spoke: ``(user_id, user_name)``."""
NO_SPEAKER: Final[Speaker] = (None, None)


def _speaker(session: _Session, source: Source) -> Speaker:
    """Who a session's user-role messages are attributed to when nothing better is
    known: the session's user (its ``user_id`` column, else its source's), with its
    source's ``user_name`` if that source is the same user. Hermes keeps no sender
    per message, so in a group session several people share, every user message
    gets the session's user (docs/hermes-import.md)."""
    user_id = session.user_id or source.user_id
    same = source.user_id is None or source.user_id == user_id
    return user_id, source.user_name if same else None


def _resolve_keys(
    sessions: list[_Session],
    routes: Mapping[str, _Route],
    origins: Mapping[str, tuple[SessionSource | None, Source]],
    warn: Callable[[str], None],
) -> dict[str, str]:
    """session_id → key: routing, the recorded ``session_key``, the parent's key (a
    compression or branch continuation), a key built from the source, or ``import_key``."""
    by_id = {s.id: s for s in sessions}
    keys: dict[str, str] = {}

    def candidates(session: _Session, depth: int) -> Iterator[str | None]:
        route = routes.get(session.id)
        yield route.key if route else None
        yield session.session_key
        parent = by_id.get(session.parent_id or "")
        if parent is not None and depth < 100 and _continues(session, parent):
            yield resolve(parent, depth + 1)
        source = origins[session.id][0]
        if source is not None and (source.chat_id or source.user_id):
            yield build_session_key(source, profile=session.profile)

    def resolve(session: _Session, depth: int) -> str:
        key = keys.get(session.id)
        if key is not None:
            return key
        for candidate in candidates(session, depth):
            if candidate is None:
                continue
            try:
                key = _validate_key(candidate)
                break
            except LedgerError as exc:
                warn(f"session {session.id}: its key cannot name a stream ({exc})")
        keys[session.id] = key or import_key(session.platform, session.id, session.profile)
        return keys[session.id]

    for session in sessions:
        resolve(session, 0)
    return keys


def _continues(child: _Session, parent: _Session) -> bool:
    """Does ``child`` carry ``parent``'s conversation on (a compression or ``/branch``
    continuation: Hermes ended the parent first), rather than run beside it (a
    subagent's session: its parent is still open)? Only a continuation takes its
    parent's key; a session beside its parent gets its own."""
    return parent.ended_at is not None and parent.ended_at <= child.started_at + 1.0


# -- events -----------------------------------------------------------------------------


def _event_id(kind: str, session_id: str, *detail: object) -> str:
    name = "|".join(["hermes-import", kind, session_id, *(str(d) for d in detail)])
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def _start_reason(previous: _Session | None) -> _StartReason:
    if previous is None:
        return "first"
    reason = previous.end_reason if previous.ended_at is not None else SUPERSEDED_REASON
    if reason in _AUTO_ENDS:
        return "auto_reset"
    if reason in _RESUME_ENDS:
        return "resume"
    return "manual_reset"


def _content(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.startswith(_JSON_CONTENT):
            return value
        # list/dict content (multimodal parts): kept as JSON text
        try:
            return json.dumps(json.loads(value[len(_JSON_CONTENT) :]), ensure_ascii=False)
        except ValueError:
            return value[len(_JSON_CONTENT) :]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _tool_calls(value: object) -> list[dict[str, Any]] | None:
    if value is None or value == "":
        return None
    parsed = json.loads(value) if isinstance(value, str) else value
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list) or not all(isinstance(c, dict) for c in parsed):
        raise ValueError("not a list of objects")
    return parsed or None


class ToolRedaction:
    """Which tools' call arguments and results are stored as ``[redacted]``: those
    whose name matches any of ``patterns`` (``fnmatch``, case-sensitive). A tool
    result Hermes recorded without a tool name is redacted whenever any pattern is
    given: what it came from cannot be told from the row alone. The rule looks at
    one row at a time, so the import and the live recorder redact alike."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, name: object) -> bool:
        return isinstance(name, str) and any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def calls(self, calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """The calls (OpenAI's nested ``function`` form or Hermes' flat one), with
        the arguments of matching tools replaced."""
        if not self or not calls:
            return calls
        out = []
        for call in calls:
            function = call.get("function")
            if isinstance(function, dict) and self.matches(function.get("name")):
                out.append({**call, "function": {**function, "arguments": REDACTED}})
            elif not isinstance(function, dict) and self.matches(call.get("name")):
                out.append({**call, "arguments": REDACTED})
            else:
                out.append(call)
        return out

    def result(self, tool_name: str | None) -> bool:
        """Is a tool result of ``tool_name`` (None: unnamed) to be redacted?"""
        return bool(self) and (tool_name is None or self.matches(tool_name))


_NO_REDACTION: Final = ToolRedaction()


def _message(
    session_id: str,
    row: tuple[Any, ...],
    redact: ToolRedaction = _NO_REDACTION,
    speaker: Speaker = NO_SPEAKER,
    sender: Callable[[str], Speaker | None] | None = None,
) -> MessageAppended:
    (mid, role, content, call_id, calls, tool_name, ts, tokens, platform_id, active) = row
    count = _count(tokens)
    text = _content(content)
    if role == "tool" and redact.result(_text(tool_name)):
        text = REDACTED
    platform_message_id = _text(platform_id)
    user_id, user_name = NO_SPEAKER
    if role == "user":
        known = sender(platform_message_id) if sender and platform_message_id else None
        user_id, user_name = known if known is not None else speaker
    return MessageAppended(
        event_id=_event_id("message", session_id, mid),
        session_id=session_id,
        role=role,
        content=text,
        user_id=user_id,
        user_name=user_name,
        tool_calls=redact.calls(_tool_calls(calls)),
        tool_name=_text(tool_name),
        tool_call_id=_text(call_id),
        input_tokens=0 if role == "assistant" else count,
        output_tokens=count if role == "assistant" else 0,
        platform_message_id=platform_message_id,
        # Rewound (/undo) or compacted-away rows: kept in the log, out of the transcript.
        synthetic=active == 0,
        occurred_at=_utc(ts) if _number(ts) else None,
    )


def _message_events(
    session_id: str,
    rows: Iterable[tuple[Any, ...]],
    warn: Callable[[str], None],
    redact: ToolRedaction = _NO_REDACTION,
    speaker: Speaker = NO_SPEAKER,
    sender: Callable[[str], Speaker | None] | None = None,
) -> tuple[list[MessageAppended], float | None]:
    """The ``message_appended`` events of message rows (rows the events cannot hold
    are left out with a warning), and the time of the latest row.

    A user-role message names who sent it: ``sender(platform_message_id)`` (the
    live recorder's record of that message's dispatch) if that knows, else
    ``speaker`` (``_speaker``); the agent's messages name nobody."""
    events: list[MessageAppended] = []
    last_at: float | None = None
    skipped_roles: dict[str, int] = {}
    for row in rows:
        role = row[1]
        if role not in _ROLES:
            skipped_roles[str(role)] = skipped_roles.get(str(role), 0) + 1
            continue
        try:
            events.append(_message(session_id, row, redact, speaker, sender))
        except (ValueError, LedgerError) as exc:
            warn(f"session {session_id}: message {row[0]} left out ({exc})")
            continue
        if _number(row[6]):
            last_at = float(row[6]) if last_at is None else max(last_at, float(row[6]))
    for role, n in sorted(skipped_roles.items()):
        warn(f"session {session_id}: {n} message(s) with role {role!r} left out")
    return events, last_at


@dataclass
class _Usage:
    """Token totals (and cost) a session's ``usage_recorded`` events add up to."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: float = 0.0

    def add(self, body: Mapping[str, Any]) -> None:
        self.input_tokens += body.get("input_tokens", 0)
        self.output_tokens += body.get("output_tokens", 0)
        self.cache_read_tokens += body.get("cache_read_tokens", 0)
        self.cache_write_tokens += body.get("cache_write_tokens", 0)
        self.cost += body.get("cost_usd") or 0.0


def _usage_event(
    s: _Session, used: _Usage, at: float, warn: Callable[[str], None]
) -> UsageRecorded | None:
    """The usage Hermes' totals hold beyond what the ledger has recorded (``used``);
    its id names the totals it brings the session to."""
    cost = s.actual_cost if s.actual_cost is not None else s.estimated_cost
    totals = (s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens)
    before = (used.input_tokens, used.output_tokens, used.cache_read_tokens,
              used.cache_write_tokens)  # fmt: skip
    deltas = [now - then for now, then in zip(totals, before, strict=True)]
    cost_delta = None if cost is None else round(cost - used.cost, 9)
    if any(d < 0 for d in deltas) or (cost_delta is not None and cost_delta < 0):
        warn(
            f"session {s.id}: Hermes' token counts or cost are below what was already "
            "imported; no usage recorded"
        )
        return None
    if not any(deltas) and not cost_delta:
        return None
    return UsageRecorded(
        event_id=_event_id("usage", s.id, *totals, None if cost is None else round(cost, 9)),
        session_id=s.id,
        input_tokens=deltas[0],
        output_tokens=deltas[1],
        cache_read_tokens=deltas[2],
        cache_write_tokens=deltas[3],
        cost_usd=cost_delta,
        model=s.model,
        occurred_at=_utc(at),
    )


def _chain(session: _Session, lookup: Callable[[str], _Session | None]) -> list[_Session]:
    """The session and the ancestors it continues (``_continues``), oldest first:
    what ``_resolve_keys`` and ``_origin`` need to place one session."""
    chain = [session]
    seen = {session.id}
    while len(chain) < 100 and chain[-1].parent_id and chain[-1].parent_id not in seen:
        parent = lookup(chain[-1].parent_id)
        if parent is None or not _continues(chain[-1], parent):
            break
        chain.append(parent)
        seen.add(parent.id)
    return chain[::-1]


def _placed(
    chain: Sequence[_Session],
    routes: Mapping[str, _Route],
    warn: Callable[[str], None],
) -> tuple[str, SessionSource | None, Source]:
    """The key and source of the last session of ``chain`` (``_chain``), by the
    import's rules."""
    raw: dict[str, dict[str, Any]] = {}
    for s in chain:
        raw[s.id] = _origin(s, routes.get(s.id), raw.get(s.parent_id or ""), warn)
    origins = {s.id: _sources(s, raw[s.id], warn) for s in chain}
    keys = _resolve_keys(list(chain), routes, origins, warn)
    last = chain[-1]
    return keys[last.id], *origins[last.id]
