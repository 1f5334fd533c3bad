"""How a Hermes session maps to ledger events: its origin and source, its session
key, and the events themselves.

``_origin`` and ``_sources`` give a session's source as Hermes recorded it;
``_resolve_keys`` picks each session's key (routing, the recorded key, the parent's,
one built from the source, else ``import_key``); ``_event_id``, ``_start_reason`` and
``_message`` build the events, with deterministic ids (uuid5 over the Hermes session
id, message id and event kind) and Hermes' own times. ``importing`` appends them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

from hermes_ledger.gateway.hermes.reading import _count, _number, _Route, _Session, _text
from hermes_ledger.gateway.sessions.keys import (
    build_session_key,
    escape_component,
    session_namespace,
)
from hermes_ledger.gateway.sessions.keys import validate_session_key as _validate_key
from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.events import MessageAppended, Source

__all__ = ["SUPERSEDED_REASON", "import_key"]

SUPERSEDED_REASON: Final = "superseded"
"""End reason given to a session Hermes left open when a later one started on its key."""

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
        if parent is not None and depth < 100:
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


def _message(session_id: str, row: tuple[Any, ...]) -> MessageAppended:
    (mid, role, content, call_id, calls, tool_name, ts, tokens, platform_id, active) = row
    count = _count(tokens)
    return MessageAppended(
        event_id=_event_id("message", session_id, mid),
        session_id=session_id,
        role=role,
        content=_content(content),
        tool_calls=_tool_calls(calls),
        tool_name=_text(tool_name),
        tool_call_id=_text(call_id),
        input_tokens=0 if role == "assistant" else count,
        output_tokens=count if role == "assistant" else 0,
        platform_message_id=_text(platform_id),
        # Rewound (/undo) or compacted-away rows: kept in the log, out of the transcript.
        synthetic=active == 0,
        occurred_at=_utc(ts) if _number(ts) else None,
    )
