"""Session keys and session ids.

A **session key** is the long-lived scope of one conversation (the ledger's
stream name and the scope of long-term memory); a **session id** names one
transcript inside it and changes on every reset. Keys follow the Hermes gateway
layout, so a ledger and a Hermes ``sessions.json`` name the same conversations
the same way::

    agent:<ns>:<platform>:dm[:<chat_id>][:<thread_id>]
    agent:<ns>:<platform>:dm:<participant>[:<thread_id>]       (DM without chat_id)
    agent:<ns>:<platform>:<chat_type>[:<chat_id>][:<thread_id>][:<participant>]

``<participant>`` is ``user_id_alt`` or else ``user_id``. A DM without a chat id
falls back to the participant, then to the thread id, then to the bare ``…:dm``.
A group, channel or thread without a chat id simply has no ``<chat_id>`` slot
(``…:group:<thread_id>``, ``…:group:<participant>``, or the bare ``…:group``),
as in Hermes. In groups, channels and threads the participant is appended when
``group_sessions_per_user`` is on (the default) — inside a thread only when
``thread_sessions_per_user`` is on too (default off: a thread is one shared
conversation). ``<ns>`` is ``main`` for the default profile (no profile,
``""`` or ``"default"``), ``main~`` for a profile literally named ``main`` (as
Hermes does, so it cannot share the default's sessions), otherwise the profile.

**Escaping.** Hermes joins raw ids with ``:``, so ids that contain ``:`` can
make two conversations share a key (chat ``a:b`` vs chat ``a`` in thread ``b``).
Here a component containing ``:`` or ``%`` is percent-encoded — ``%`` becomes
``%25`` and ``:`` becomes ``%3A``, nothing else changes — so the components
can always be read back, and a key whose ids contain neither character is
byte-identical to the Hermes key. The namespace also encodes ``~`` (``%7E``),
which Hermes profile names never contain, so no profile can pose as ``main~``.

**What escaping cannot fix.** The Hermes layout has optional slots, and keys
must stay byte-identical, so a few differently-shaped sources still share a
key as they do in Hermes: a DM's chat id and the participant fallback of a DM
without one (on Telegram they are the same number); within one group, a
thread id equal to a member's id (``group:c:<thread>`` vs ``group:c:<user>``);
and a group without a chat id whose member, or thread, has the id of another
group of that type (``group:<user>`` vs ``group:<chat_id>``).
Sources of the same shape that differ in any keyed component never share a key.
"""

from __future__ import annotations

import re
from typing import Final

from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.text import has_control_chars

__all__ = [
    "InvalidSessionIdError",
    "build_session_key",
    "escape_component",
    "is_shared_multi_user_session",
    "session_namespace",
    "unescape_component",
    "validate_session_id",
    "validate_session_key",
]

_ESCAPES: Final = {"%": "%25", ":": "%3A"}
_NAMESPACE_ESCAPES: Final = {**_ESCAPES, "~": "%7E"}
_UNESCAPE: Final = re.compile(r"%(25|3A|7E)", re.IGNORECASE)
_DRIVE_PREFIX: Final = re.compile(r"[A-Za-z]:")
SESSION_ID_MAX: Final = 255


class InvalidSessionIdError(LedgerError, ValueError):
    """A session id or session key that is empty, has control characters, or
    could escape a directory if used as a file name."""

    hint = "session ids are opaque names such as 20261122_090000_1a2b3c4d"


def _encode(text: str, table: dict[str, str]) -> str:
    if not any(ch in text for ch in table):
        return text
    return "".join(table.get(ch, ch) for ch in text)


def escape_component(text: str) -> str:
    """``text`` with ``%`` and ``:`` percent-encoded (unchanged if it has neither)."""
    return _encode(text, _ESCAPES)


def unescape_component(text: str) -> str:
    """Inverse of ``escape_component`` (and of the namespace's ``~`` encoding)."""
    if "%" not in text:
        return text
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def session_namespace(profile: str | None) -> str:
    """The ``<ns>`` slot for a profile: ``main``, ``main~`` or the (escaped) profile."""
    if not profile or profile == "default":
        return "main"
    if profile == "main":
        return "main~"
    return _encode(profile, _NAMESPACE_ESCAPES)


def _participant(source: SessionSource) -> str | None:
    return source.user_id_alt or source.user_id


def is_shared_multi_user_session(
    source: SessionSource,
    *,
    group_sessions_per_user: bool = True,
    thread_sessions_per_user: bool = False,
) -> bool:
    """True when several people write into this source's session (same rules as keys)."""
    if source.is_dm:
        return False
    per_user = thread_sessions_per_user if source.thread_id else group_sessions_per_user
    return not per_user


def _components(
    source: SessionSource, group_sessions_per_user: bool, thread_sessions_per_user: bool
) -> list[str]:
    """The raw ids after ``<platform>:<chat_type>``, in key order."""
    chat_id, thread_id = source.chat_id, source.thread_id
    if source.is_dm:
        # Without a chat id the sender isolates the DM (else every such DM on
        # the platform would share one session); DMs never add the sender otherwise.
        anchor = chat_id or _participant(source)
        return [part for part in (anchor, thread_id) if part]
    parts = [part for part in (chat_id, thread_id) if part]
    per_user = group_sessions_per_user and (thread_sessions_per_user or not thread_id)
    participant = _participant(source)
    if per_user and participant:
        parts.append(participant)
    return parts


def build_session_key(
    source: SessionSource,
    group_sessions_per_user: bool = True,
    thread_sessions_per_user: bool = False,
    profile: str | None = None,
) -> str:
    """The session key of ``source`` (see the module docstring for the layout).

    ``profile`` names the namespace; when it is ``None`` the source's own
    ``profile`` is used.
    """
    namespace = session_namespace(profile if profile is not None else source.profile)
    head = ["agent", namespace, escape_component(source.platform.value), source.chat_type]
    tail = _components(source, group_sessions_per_user, thread_sessions_per_user)
    return ":".join(head + [escape_component(part) for part in tail])


def validate_session_id(session_id: object) -> str:
    """``session_id`` if it is safe to use as a transcript name, else InvalidSessionIdError.

    Session ids become file names in Hermes (``sessions/<id>.jsonl``), so they may
    not contain ``/``, ``\\`` or ``..``, start with a drive letter, or hold
    control characters.
    """
    if not isinstance(session_id, str) or not session_id:
        raise InvalidSessionIdError("a session id must be a non-empty string")
    if len(session_id) > SESSION_ID_MAX:
        raise InvalidSessionIdError(
            f"session id is {len(session_id)} characters long (at most {SESSION_ID_MAX})"
        )
    if has_control_chars(session_id):
        raise InvalidSessionIdError(f"session id {session_id!r} contains control characters")
    if (
        "/" in session_id
        or "\\" in session_id
        or ".." in session_id
        or _DRIVE_PREFIX.match(session_id)
    ):
        raise InvalidSessionIdError(
            f"session id {session_id!r} looks like a path (no '/', '\\', '..' or drive letter)"
        )
    return session_id


def validate_session_key(session_key: object) -> str:
    """``session_key`` if it can name a session scope, else InvalidSessionIdError.

    Keys are logical names, never file names, and may contain ``/`` (Google Chat
    ids do); they must not be empty, hold control characters, or start like an
    absolute or parent path.
    """
    if not isinstance(session_key, str) or not session_key:
        raise InvalidSessionIdError("a session key must be a non-empty string")
    if has_control_chars(session_key):
        raise InvalidSessionIdError(f"session key {session_key!r} contains control characters")
    if session_key.startswith(("/", "\\", ".")) or _DRIVE_PREFIX.match(session_key):
        raise InvalidSessionIdError(
            f"session key {session_key!r} looks like a path; keys start like 'agent:main:…'"
        )
    return session_key
