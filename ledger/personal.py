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

import functools
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from hermes_ledger.ledger.errors import EventValidationError, IdempotencyError
from hermes_ledger.ledger.events import (
    check_storable,
    is_sealed,
    partial_body,
    storable_body,
)
from hermes_ledger.ledger.records import AppendResult

if TYPE_CHECKING:
    from hermes_ledger.ledger.events import EventModel

__all__ = [
    "ERASED",
    "PERSONAL",
    "PERSONAL_TYPES",
    "digest",
    "dumps",
    "held_in_log_sql",
    "judge_payloads",
    "merged_sql",
    "new_salt",
    "original_result",
    "personal_sql",
    "prepare",
    "split",
    "split_model",
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


_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """A payload body as the ledger writes it (compact, UTF-8, finite numbers)."""
    return _ENCODER.encode(value)


def digest(salt: bytes, body: str) -> str:
    """HMAC-SHA256 of the payload ``body`` (JSON text) under its ``salt``, as hex."""
    return hmac.digest(salt, body.encode(), "sha256").hex()


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


_TOP_LEVEL: Final = {
    event_type: tuple(path[0] for path in paths)
    for event_type, paths in PERSONAL.items()
    if all(len(path) == 1 for path in paths)
}
"""Types whose personal fields are all top-level: split on the model (the hot path)."""


def split_model(event: EventModel) -> tuple[str, str, str | None]:
    """``(data column, whole body, payload body or None)`` for ``event``, validated as
    ``events.storable_body`` validates. For a type whose personal fields are all
    top-level (messages, flushes: the append hot path) and a model that needs no
    re-validation, the body is serialised once without them and they are added as
    text (personal keys last); otherwise the whole body is split as ``split`` does.
    Deterministic: the same event gives the same data (a retried append, an import,
    compare it)."""
    fields = _TOP_LEVEL.get(event.type)
    if fields is None or not is_sealed(event):
        # Nested fields, or lists and dicts (tool calls) that must be re-validated
        # from the whole body: split by its JSON.
        whole = storable_body(event)
        data, body = split(event.type, whole)
        return data, whole, body
    values = {f: getattr(event, f) for f in fields}
    present = {f: v for f, v in values.items() if v is not None and v != []}
    if not present:
        whole = storable_body(event)
        return whole, whole, None
    without, markers = _markers(tuple(present))
    rest = partial_body(event, without)
    try:
        body = dumps(present)
    except (TypeError, ValueError) as exc:
        raise EventValidationError(f"{event.type} event cannot be stored as JSON: {exc}") from None
    whole = rest[:-1] + "," + body[1:] if rest != "{}" else body
    check_storable(event, whole)
    data = rest[:-1] + "," + markers[1:] if rest != "{}" else markers
    return data, whole, body


@functools.cache
def _markers(fields: tuple[str, ...]) -> tuple[frozenset[str], str]:
    """The fields as an exclude set, and their markers as a JSON object's text."""
    return frozenset(fields), dumps({f: _placeholder((f,)) for f in fields})


def prepare(
    models: Sequence[EventModel], extra_json: str, *, forgettable: bool = True
) -> list[tuple[Any, ...]]:
    """What ``Ledger.append`` writes per event: (event_id, type, session_id, data,
    meta, whole body, payload (salt, body) or None). ``meta`` is the schema version,
    the payload's digest and ``extra_json``'s keys; without ``forgettable`` (a
    schema before migration 4) events are stored whole."""
    prepared = []
    for model in models:
        if forgettable:
            data, whole, body = split_model(model)
        else:
            data = whole = storable_body(model)
            body = None
        meta = f'{{"schema_version":{model.schema_version}'
        payload = None
        if body is not None:
            salt = new_salt()
            payload = (salt, body)
            meta += f',"payload":"{digest(salt, body)}"'
        meta += "}" if extra_json == "{}" else "," + extra_json[1:]
        session_id = getattr(model, "session_id", None)
        prepared.append((model.event_id, model.type, session_id, data, meta, whole, payload))
    return prepared


class _Connection(Protocol):
    """What ``original_result`` reads through: an apsw or a psycopg connection."""

    def execute(self, sql: Any, args: Any = ..., /) -> Any: ...


def original_result(
    conn: _Connection, by_event_id: str, stream: str, prepared: Sequence[tuple[Any, ...]]
) -> AppendResult | None:
    """The result of the earlier append of these exact events, if there was one."""
    found: list[tuple[str, int, int]] = []
    for event_id, event_type, _sid, data, _meta, full, _payload in prepared:
        row = conn.execute(by_event_id, (event_id,)).fetchone()
        if row is None:
            if found:
                raise IdempotencyError(
                    f"event_id {found[0][0]!r} is already in the log but {event_id!r} is not: "
                    "this is not a retry of an earlier append",
                    hint="give new events new event_ids",
                )
            return None
        position, row_stream, version, row_type, row_data, bare, whole = row
        # The same event: the same body, or (its content erased) the same rest.
        same = whole == full or (bare and row_data == data)
        if row_stream != stream or row_type != event_type or not same:
            raise IdempotencyError(
                f"event_id {event_id!r} is already recorded at position {position} "
                f"({row_type} in stream {row_stream!r}) with different content",
                hint="give each new event its own event_id",
            )
        found.append((event_id, position, version))
    return AppendResult(tuple(p for _, p, _ in found), max(v for _, _, v in found), True)


def judge_payloads(
    rows: Iterable[tuple[int | None, str | None, bytes | None, str | None]], head: int
) -> tuple[tuple[int, str] | None, list[int]]:
    """``verify``'s check of the content, whatever the database: ``rows`` are
    (event position or None, the digest its meta holds or None, payload salt, payload
    body) for every event with a digest or a payload, in position order. Returns the
    first problem (position, text) or None, and the positions whose payload is
    missing (an erasure must cover each). A payload past the end of the log (left by
    a truncation, which anchors detect) is not the chain's to judge."""
    missing: list[int] = []
    for position, expected, salt, body in rows:
        if position is None or position > head:
            continue
        if expected is None:
            return (
                (position, "the event has a payload but no digest in its meta: content was added"),
                missing,
            )
        if body is None or salt is None:
            missing.append(position)
        elif digest(bytes(salt), body) != expected:
            return (position, "the event's payload does not match the digest in its meta"), missing
    return None, missing


UNCOVERED: Final = "the event's payload is missing and no recorded erasure covers it"
"""``verify``'s problem for a payload deleted outside an erasure."""


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def held_in_log_sql(data: str, meta: str, event_type: str) -> str:
    """SQL: true for an event that holds personal content in the log itself (one
    recorded before schema v4, with no payload digest in ``meta``): that content is
    part of the hash chain, and no erasure can remove it."""
    cases = []
    for kind, paths in PERSONAL.items():
        tests = []
        for path in paths:
            where = "$." + ".".join(path)
            if path in _LISTS:
                tests.append(f"coalesce(json_array_length({data}, '{where}'), 0) > 0")
            else:
                tests.append(f"coalesce({data} ->> '{where}', '{ERASED}') <> '{ERASED}'")
        cases.append(f"WHEN '{kind}' THEN {' OR '.join(tests)}")
    return f"(({meta} ->> '$.payload') IS NULL AND CASE {event_type} {' '.join(cases)} ELSE 0 END)"


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
