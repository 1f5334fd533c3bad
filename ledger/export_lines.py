"""One line of a JSONL export, read and checked: parsed without duplicate keys, its
fields and their types checked, its hash recomputed over the verbatim ``data`` and
``meta`` text, and its body validated against its event model (upcast first when it
is an older version) — so a line that ``Ledger.append`` could never have written is
refused with its line number before anything is imported.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

import pydantic

from hermes_ledger.ledger.appending import check_name
from hermes_ledger.ledger.chain import row_hash
from hermes_ledger.ledger.errors import EventValidationError, LedgerError
from hermes_ledger.ledger.events import EVENT_TYPES, from_stored, parse, seal
from hermes_ledger.ledger.personal import split, split_model

__all__ = [
    "BODY_HINT",
    "DuplicateKey",
    "RestoreError",
    "check_event",
    "check_fields",
    "check_payload",
    "load_line",
    "verbatim",
]

_FIELDS = (
    "position", "event_id", "stream", "version", "type", "session_id", "data", "meta",
    "recorded_at", "hash",
)  # fmt: skip
_OPTIONAL = ("data_text", "meta_text", "occurred_at", "payload")
"""Keys an export line may have besides ``_FIELDS``: the exact texts of ``data`` and
``meta`` when they hold line breaks, and the business time (derived from ``data``
and ``recorded_at``; exports before schema v3 have none)."""
_KNOWN = frozenset(_FIELDS + _OPTIONAL)
_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()
_RECORDED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_COLUMN_KEYS = ("type", "event_id", "schema_version")  # never inside a stored body
BODY_HINT = (
    "the file holds an event this hermes-ledger would never write (edited, or made by "
    "something else); nothing was imported. Export the ledger again"
)


class RestoreError(LedgerError):
    """The input cannot be restored; ``line`` is the 1-based line at fault (if any)."""

    hint = "nothing was imported; export the ledger again and import the new file"

    def __init__(self, message: str, *, line: int | None = None, hint: str | None = None) -> None:
        self.line = line
        super().__init__(message if line is None else f"line {line}: {message}", hint=hint)


class DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def load_line(text: str) -> Any:
    """``json.loads``, refusing an object with a key twice (readers disagree on
    which one counts: Python the last, SQLite's ``->>`` the first)."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


def _member_spans(text: str, *, padded: bool) -> dict[str, tuple[int, int]]:
    """Where each top-level member's value is in the object ``text``: the value
    alone, or (``padded``) with the whitespace written around it. ``text`` is
    known to be valid JSON."""
    spans: dict[str, tuple[int, int]] = {}
    i = _skip(text, _skip(text, 0) + 1)  # past "{"
    while i < len(text) and text[i] == '"':
        key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
        colon = _skip(text, i)
        start = _skip(text, colon + 1)
        _value, end = _DECODER.raw_decode(text, start)
        after = _skip(text, end)
        spans[key] = (colon + 1, after) if padded else (start, end)
        i = _skip(text, after + 1)  # past "," (or "}": then the loop ends)
    return spans


def _quick_spans(text: str) -> dict[str, tuple[int, int]]:
    """The spans of ``data`` and ``meta`` in a line as ``export`` writes it (they
    follow each other, with nothing around them); ``{}`` if the line is laid out
    otherwise. A wrong guess only costs a second look (see ``verbatim``)."""
    spans: dict[str, tuple[int, int]] = {}
    at = 0
    for key, marker in (("data", ',"data":'), ("meta", ',"meta":')):
        found = text.find(marker, at)
        if found < 0:
            return {}
        start = found + len(marker)
        try:
            _value, end = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            return {}
        spans[key] = (start, end)
        at = end
    return spans


def _field_text(obj: dict[str, Any], text: str, spans: dict[str, tuple[int, int]], key: str) -> str:
    """The exact stored text of ``data`` or ``meta``: ``<key>_text`` when the export
    had to give it that way, else the member's verbatim span in the line."""
    exact = obj.get(f"{key}_text")
    if exact is not None:
        return cast(str, exact)
    start, end = spans[key]
    return text[start:end]


def check_fields(obj: dict[str, Any], n: int) -> None:
    missing = [f for f in _FIELDS if f not in obj]
    if missing:
        raise RestoreError(f"the event has no {missing[0]!r}", line=n)
    extra = sorted(set(obj) - _KNOWN)
    if extra:
        raise RestoreError(f"unexpected key {extra[0]!r} in an event", line=n)
    for name in ("position", "version"):
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RestoreError(f"{name!r} must be an integer >= 1, not {value!r}", line=n)
    for name in ("event_id", "stream", "type", "recorded_at", "hash"):
        if not isinstance(obj[name], str):
            raise RestoreError(f"{name!r} must be a string, not {obj[name]!r}", line=n)
    if "occurred_at" in obj and not isinstance(obj["occurred_at"], str):
        raise RestoreError(f"'occurred_at' must be a string, not {obj['occurred_at']!r}", line=n)
    if obj["session_id"] is not None and not isinstance(obj["session_id"], str):
        raise RestoreError(
            f"'session_id' must be a string or null, not {obj['session_id']!r}", line=n
        )
    for key in ("data", "meta"):
        exact = obj.get(f"{key}_text")
        if exact is None:
            continue
        try:
            same = isinstance(exact, str) and load_line(exact) == obj[key]
        except (json.JSONDecodeError, DuplicateKey):
            same = False
        if not same:
            raise RestoreError(f"'{key}_text' does not hold the same JSON as {key!r}", line=n)


def _hash(obj: dict[str, Any], previous: str, data: str, meta: str) -> str:
    return row_hash(
        previous, obj["position"], obj["event_id"], obj["stream"], obj["version"], obj["type"],
        obj["session_id"], data, meta, obj["recorded_at"],
    )  # fmt: skip


def _stored(obj: dict[str, Any], whole: str, meta: str) -> tuple[str, str | None]:
    """(data column, payload body) of the whole body ``whole``, as ``Ledger.append``
    split it: from the event model when the body is one (``split_model``), else by
    its JSON (``split``; the hash or the body check then refuses the line)."""
    try:
        version = json.loads(meta).get("schema_version")
        model = EVENT_TYPES.get(obj["type"])
        if model is not None and version == model.schema_version:
            event = seal(from_stored(obj["type"], obj["event_id"], whole, version))
            data, _whole, body = split_model(event)
            return data, body
    except (EventValidationError, ValueError, AttributeError, TypeError):
        pass
    return split(obj["type"], whole)


def verbatim(obj: dict[str, Any], text: str, previous: str, n: int) -> tuple[str, str, str]:
    """The exact stored ``data`` and ``meta`` texts of the line, checked against its
    hash, and the line's ``data`` text. A line with a ``payload`` holds the body
    whole: the stored ``data`` is its split (``ledger.personal.split``).

    A line as ``export`` writes it is read by position (``_quick_spans``); any
    other layout member by member, with and then without the whitespace around
    each value. The hash decides which reading is the stored text.
    """
    readings = (
        lambda: _quick_spans(text),
        lambda: _member_spans(text, padded=False),
        lambda: _member_spans(text, padded=True),
    )
    for reading in readings:
        spans = reading()
        if not spans:
            continue
        whole = _field_text(obj, text, spans, "data")
        meta = _field_text(obj, text, spans, "meta")
        data = _stored(obj, whole, meta)[0] if "payload" in obj else whole
        if _hash(obj, previous, data, meta) == obj["hash"]:
            return data, meta, whole
    raise RestoreError(
        f"position {obj['position']}: the hash does not match the event's content "
        "and the previous event's hash",
        line=n,
        hint="the file was edited or damaged after it was exported; nothing was imported. "
        "Export the ledger again",
    )


class _BadEvent(Exception):
    """What ``check_event`` found; the caller adds the line and position."""

    def __init__(self, message: str, hint: str = BODY_HINT) -> None:
        super().__init__(message)
        self.hint = hint


def check_event(obj: dict[str, Any], data: str, n: int) -> None:
    """Refuse a row ``Ledger.append`` could not have written: an unknown type, a
    name it refuses, a malformed ``recorded_at``, a body (upcast from its stored
    version) that its model rejects or that holds other JSON types than the model
    writes, or a ``session_id`` column that is not the body's. ``data`` is the
    body's stored text (``obj["data"]`` is its value)."""
    try:
        _check_row(obj, data)
    except _BadEvent as bad:
        raise RestoreError(f"position {obj['position']}: {bad}", line=n, hint=bad.hint) from None


def _check_row(obj: dict[str, Any], data: str) -> None:
    event_type, event_id, session_id = obj["type"], obj["event_id"], obj["session_id"]
    model = EVENT_TYPES.get(event_type)
    if model is None:
        known = ", ".join(sorted(EVENT_TYPES))
        raise _BadEvent(f"unknown event type {event_type!r} (known types: {known})")
    try:
        check_name("event_id", event_id)
        check_name("stream", obj["stream"])
        if session_id is not None:
            check_name("session_id", session_id)
    except EventValidationError as exc:
        raise _BadEvent(str(exc)) from None
    if not _RECORDED_AT.fullmatch(obj["recorded_at"]):
        raise _BadEvent(
            f"recorded_at {obj['recorded_at']!r} is not a UTC time as the ledger writes it "
            "(YYYY-MM-DDTHH:MM:SS.ffffffZ)"
        )
    body, meta = obj["data"], obj["meta"]
    for key, value in (("data", body), ("meta", meta)):
        if type(value) is not dict:
            raise _BadEvent(f"{key!r} must be a JSON object, not {type(value).__name__}")
    for key in _COLUMN_KEYS:
        if key in body:
            raise _BadEvent(f"'data' may not hold {key!r} (it is kept outside the body)")
    version = meta.get("schema_version")
    if type(version) is not int or version < 1:
        raise _BadEvent(f"meta.schema_version must be an integer >= 1, not {version!r}")
    try:
        if version == model.schema_version:
            # The model, strictly: JSON types exactly as the model writes them
            # ("true" is no boolean to SQL, where the read models read bodies, nor
            # "5" a number). The stored text with type and event_id spliced in, as
            # events.from_stored does (no key is twice, and neither is in the body).
            head = f'{{"type":{json.dumps(event_type)},"event_id":{json.dumps(event_id)}'
            text = head + ("," + data.lstrip()[1:] if body else "}")
            event = model.model_validate_json(text, strict=True)
        else:
            # An older shape: upcast, then the model, as every reader does.
            event = parse(
                {"type": event_type, "event_id": event_id, **body}, schema_version=version
            )
    except EventValidationError as exc:
        raise _BadEvent(str(exc), exc.hint if "newer than" in str(exc) else BODY_HINT) from None
    except pydantic.ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        raise _BadEvent(f"invalid {event_type} event: {problems}") from None
    except Exception as exc:  # an upcaster meeting a body it cannot read
        raise _BadEvent(f"invalid {event_type} event: {type(exc).__name__}: {exc}") from None
    if getattr(event, "session_id", None) != session_id:
        raise _BadEvent(
            f"the session_id column is {session_id!r} but the body says "
            f"{getattr(event, 'session_id', None)!r}"
        )


def check_payload(obj: dict[str, Any], data: str, meta: str, n: int) -> tuple[bytes, str] | None:
    """The line's payload (``ledger.personal``) as (salt, body text), checked against
    the digest in its ``meta`` (which the hash covers); None when it has none (an
    event without personal fields, or one whose content was erased). ``data`` is the
    line's whole body text (``verbatim`` read it)."""
    from hermes_ledger.ledger.personal import SALT_BYTES, digest

    payload = obj.get("payload")
    if payload is None:
        return None
    expected = json.loads(meta).get("payload")
    salt_hex = payload.get("salt") if isinstance(payload, dict) else None
    try:
        salt = bytes.fromhex(salt_hex) if isinstance(salt_hex, str) else b""
    except ValueError:
        salt = b""
    if len(salt) != SALT_BYTES or expected is None:
        raise RestoreError(
            f"position {obj['position']}: the payload is not a salt its meta has a digest for",
            line=n,
            hint=BODY_HINT,
        )
    body = _stored(obj, data, meta)[1]
    if body is None or digest(salt, body) != expected:
        raise RestoreError(
            f"position {obj['position']}: the personal fields do not match the digest in meta",
            line=n,
            hint="the file was edited or damaged after it was exported; nothing was imported. "
            "Export the ledger again",
        )
    return salt, body
