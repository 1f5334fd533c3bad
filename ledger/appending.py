"""What an append does whatever the database: checking its arguments and preparing
its rows (each body split into data and payload by ``personal.prepare``), then
chaining them (``row_hash``). Both backends (``ledger.store.Ledger`` and
``ledger.postgres.PostgresLog``) append through these, so the rules an append is
held to are written once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hermes_ledger.ledger.chain import row_hash
from hermes_ledger.ledger.errors import (
    EventValidationError,
    ExpectedVersionError,
    IdempotencyError,
)
from hermes_ledger.ledger.events import EventModel, check_json, parse
from hermes_ledger.ledger.personal import prepare
from hermes_ledger.ledger.text import has_id_breaking_chars
from hermes_ledger.ledger.versions import ExpectedVersion, validate_expected

__all__ = [
    "MAX_NAME",
    "PayloadRow",
    "Prepared",
    "PreparedEvent",
    "Row",
    "chain_rows",
    "check_name",
    "coerce_event",
    "prepare_append",
    "prepare_models",
    "row_checks",
]

MAX_NAME = 1024
"""The longest stream name, event id or session id the ledger takes."""

PreparedEvent = tuple[str, str, str | None, str, str, str, tuple[bytes, str] | None]
"""(event_id, type, session_id, data JSON, meta JSON, whole body JSON, payload
(salt, body) or None) of one event to append: ``personal.prepare``'s tuple."""

PayloadRow = tuple[int, bytes, str]
"""A payloads row: position, salt, body."""

Row = tuple[int, str, str, int, str, str | None, str, str, str, str]
"""An events row: position, event_id, stream, version, type, session_id, data, meta,
recorded_at, hash."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """An append checked and encoded, before any database is asked."""

    stream: str
    expected: ExpectedVersion
    events: tuple[PreparedEvent, ...]


def check_name(kind: str, value: object) -> str:
    """``value`` if it can be a stream, event id or session id (``kind`` names which in
    the error): a non-empty string within the length limit, without the characters the
    ledger's id rule refuses (``ledger.text``); else EventValidationError."""
    if not isinstance(value, str) or not value:
        raise EventValidationError(f"{kind} must be a non-empty string, not {value!r}")
    if len(value) > MAX_NAME:
        raise EventValidationError(f"{kind} is longer than {MAX_NAME} characters")
    if has_id_breaking_chars(value):  # stream names, event ids, session ids (ledger.text)
        raise EventValidationError(
            f"{kind} {value!r} contains control characters, line breaks or lone surrogates"
        )
    return value


def coerce_event(event: object) -> EventModel:
    """An event model, or the model a plain dict (type + body) parses to."""
    if isinstance(event, EventModel):
        return event
    if isinstance(event, Mapping):
        return parse(event)
    raise EventValidationError(f"append takes event models or dicts, not {type(event).__name__}")


def _meta_json(meta: Mapping[str, Any] | None) -> str:
    """The caller's meta as compact JSON ("{}" for none); schema_version is the model's."""
    if not meta:
        return "{}"
    if "schema_version" in meta:
        raise EventValidationError("meta may not set schema_version; the event model does")
    try:
        return json.dumps(
            check_json(dict(meta), "meta"), ensure_ascii=False, separators=(",", ":"),
            allow_nan=False,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise EventValidationError(f"meta is not JSON-serialisable: {exc}") from None


def prepare_append(
    stream: str,
    events: Iterable[EventModel | Mapping[str, Any]],
    expected_version: object,
    meta: Mapping[str, Any] | None,
    *,
    forgettable: bool = True,
) -> Prepared:
    """Check an append's arguments as ``Ledger.append`` does and encode its events
    as it does (``personal.prepare``: data without the personal fields, the payload,
    meta as ``{"schema_version":N,"payload":digest,…}``)."""
    check_name("stream", stream)
    try:
        expected = validate_expected(expected_version)
    except TypeError as exc:
        raise ExpectedVersionError(str(exc)) from None
    models = [coerce_event(e) for e in events]
    if not models:
        raise EventValidationError("append needs at least one event")
    ids = [m.event_id for m in models]
    if len(ids) > 1 and len(set(ids)) != len(ids):
        raise IdempotencyError("the same event_id appears twice in one append")
    return Prepared(stream, expected, tuple(prepare_models(models, _meta_json(meta), forgettable)))


def prepare_models(
    models: Sequence[EventModel], extra_json: str = "{}", forgettable: bool = True
) -> list[PreparedEvent]:
    """Per event: (event_id, type, session_id, data, meta, whole body, payload), its
    ids checked; ``forgettable`` False (a schema before payloads) keeps bodies whole."""
    for model in models:
        session_id = getattr(model, "session_id", None)
        if session_id is not None:
            check_name("session_id", session_id)
        check_name("event_id", model.event_id)
    return prepare(models, extra_json, forgettable=forgettable)


def chain_rows(
    prepared: Prepared, version: int, position: int, previous: str, recorded_at: str
) -> tuple[list[Row], list[PayloadRow]]:
    """The rows of ``prepared`` after a stream at ``version`` and a head at
    (``position``, ``previous`` hash), each hash chained from the one before, and
    their payload rows."""
    rows: list[Row] = []
    payloads: list[PayloadRow] = []
    stream = prepared.stream
    for event_id, event_type, session_id, data, meta_json, _whole, payload in prepared.events:
        position += 1
        version += 1
        previous = row_hash(
            previous, position, event_id, stream, version, event_type, session_id, data,
            meta_json, recorded_at,
        )  # fmt: skip
        rows.append(
            (position, event_id, stream, version, event_type, session_id, data, meta_json,
             recorded_at, previous)
        )  # fmt: skip
        if payload is not None:
            payloads.append((position, *payload))
    return rows, payloads


def row_checks(row: Row, previous: str) -> bool:
    """True if ``row``'s hash is its content's chained from ``previous`` (the hash
    of the row before it): a copied row (``ledger.postgres.migrate``) is checked so,
    never re-hashed."""
    position, event_id, stream, version, event_type, session_id, data, meta, at, digest = row
    expected = row_hash(
        previous, position, event_id, stream, version, event_type, session_id, data, meta, at
    )
    return expected == digest
