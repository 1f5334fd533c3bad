"""Forgettable content: which fields of an event are personal, and how they are kept.

An event's personal fields (what a person wrote or is called, and free text that
can quote them) are stored apart from the log so that an erasure can destroy them
while the log stays append-only and its hash chain verifies (docs/design.md,
"Erasure"). At append, ``split`` turns an event body into

* the ``data`` column: the body with each personal field that is set replaced by
  ``ERASED`` (``"[erased]"``; an empty list for ``tool_calls``), a valid body of the
  same model: it is exactly what every reader sees once the content is erased;
* a payload row (``payloads``: position, a random 16-byte salt, the personal
  fields as a JSON object), merged back over ``data`` when read
  (``json_patch(data, body)``: the payload holds only fields that are set, so the
  merge never meets a JSON null);
* ``"payload": HMAC-SHA256(salt, body)`` in the event's ``meta``: the chain covers
  meta, so it covers the content by this digest. It is salted so that once the
  salt is gone nobody can confirm a guess ("yes") by hashing it.

``user_id`` is not personal here: it is the pseudonymous key an erasure of a user
is scoped by, and it stays in the log. ``PERSONAL`` is the one list; adding a
field to it changes only how later events are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any, Final

__all__ = [
    "ERASED",
    "PERSONAL",
    "PERSONAL_TYPES",
    "digest",
    "dumps",
    "merged_sql",
    "new_salt",
    "personal_sql",
    "split",
]

ERASED: Final = "[erased]"
"""What an erased (or not yet merged) personal text field reads."""

PERSONAL: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "message_appended": (("content",), ("user_name",), ("tool_calls",)),
    "session_started": (("source", "user_name"), ("source", "chat_name"), ("source", "chat_topic")),
    "memory_flushed": (("detail",),),
    "memory_flush_failed": (("error",),),
}
"""Per event type, the JSON paths of its personal fields."""

PERSONAL_TYPES: Final = frozenset(PERSONAL)

_LISTS: Final = frozenset({("tool_calls",)})
"""Personal fields that hold a list: erased, they are an empty list."""

SALT_BYTES: Final = 16
"""The length of a payload's random salt."""


def _placeholder(path: tuple[str, ...]) -> Any:
    return [] if path in _LISTS else ERASED


def dumps(value: Any) -> str:
    """A payload body as the ledger writes it (compact, UTF-8, finite numbers)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def digest(salt: bytes, body: str) -> str:
    """HMAC-SHA256 of the payload ``body`` (JSON text) under its ``salt``, as hex."""
    return hmac.new(salt, body.encode(), hashlib.sha256).hexdigest()


def split(event_type: str, data: str) -> tuple[str, str | None]:
    """``(data column, payload body or None)`` for the stored body ``data`` of an
    event of ``event_type``: the payload holds the personal fields that are set
    (not None, not an empty list), ``data`` the marker in their place. An event
    without any gets no payload and is stored as it is."""
    paths = PERSONAL.get(event_type)
    if paths is None:
        return data, None
    body: Any = json.loads(data)
    if not isinstance(body, dict):
        return data, None
    private: dict[str, Any] = {}
    for path in paths:
        holder: Any = body
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue
        value = holder.get(path[-1])
        if value is None or value == []:
            continue
        target = private
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
        holder[path[-1]] = _placeholder(path)
    if not private:
        return data, None
    return dumps(body), dumps(private)


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def merged_sql(data: str, body: str) -> str:
    """SQL: the event body with its payload merged in, from the SQL of its ``data``
    and of its payload ``body`` (NULL when there is none or it was erased)."""
    return f"(CASE WHEN {body} IS NULL THEN {data} ELSE json_patch({data}, {body}) END)"


def personal_sql(data: str, body: str, path: str, *, as_json: bool = False) -> str:
    """SQL: one personal field (``path``: ``$.content``) of an event, from its payload
    ``body`` if it is there, else from ``data`` (the marker, or NULL if unset). Cheaper
    than extracting from ``merged_sql`` when a statement reads a field or two."""
    arrow = "->" if as_json else "->>"
    return f"coalesce({body} {arrow} '{path}', {data} {arrow} '{path}')"
