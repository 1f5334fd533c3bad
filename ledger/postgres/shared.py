"""What an append and a verify do whatever the database: preparing the rows of an
append, and walking the hash chain.

These mirror ``Ledger.append``'s preparation and ``Ledger.verify``'s walk in
``ledger/store.py``, which has them inline; they live here, apart from any driver,
until the backend interface (issue 14) moves them up to ``ledger/`` and the SQLite
store uses them too. Everything they decide with is imported from the SQLite code:
``check_name``, the event models, ``check_expected``, ``row_hash``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hermes_ledger.ledger.chain import GENESIS, row_hash
from hermes_ledger.ledger.errors import (
    EventValidationError,
    ExpectedVersionError,
    IdempotencyError,
)
from hermes_ledger.ledger.events import EventModel, check_json, parse, storable_body
from hermes_ledger.ledger.records import Recorded, VerifyReport
from hermes_ledger.ledger.store import check_name
from hermes_ledger.ledger.versions import ExpectedVersion, validate_expected

__all__ = ["Prepared", "PreparedEvent", "chain_rows", "prepare_append", "walk_chain"]

PreparedEvent = tuple[str, str, str | None, str, str]
"""(event_id, type, session_id, data JSON, meta JSON) of one event to append."""

Row = tuple[int, str, str, int, str, str | None, str, str, str, str]
"""An events row: position, event_id, stream, version, type, session_id, data, meta,
recorded_at, hash."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """An append checked and encoded, before any database is asked."""

    stream: str
    expected: ExpectedVersion
    events: tuple[PreparedEvent, ...]


def _coerce(event: object) -> EventModel:
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
) -> Prepared:
    """Check an append's arguments as ``Ledger.append`` does and encode its events
    (``storable_body``; meta as ``{"schema_version":N,…}``)."""
    check_name("stream", stream)
    try:
        expected = validate_expected(expected_version)
    except TypeError as exc:
        raise ExpectedVersionError(str(exc)) from None
    models = [_coerce(e) for e in events]
    if not models:
        raise EventValidationError("append needs at least one event")
    ids = [m.event_id for m in models]
    if len(ids) > 1 and len(set(ids)) != len(ids):
        raise IdempotencyError("the same event_id appears twice in one append")
    extra = _meta_json(meta)
    prepared = []
    for model in models:
        session_id = getattr(model, "session_id", None)
        if session_id is not None:
            check_name("session_id", session_id)
        check_name("event_id", model.event_id)
        tag = f'{{"schema_version":{model.schema_version}'
        meta_json = tag + ("}" if extra == "{}" else "," + extra[1:])
        prepared.append((model.event_id, model.type, session_id, storable_body(model), meta_json))
    return Prepared(stream, expected, tuple(prepared))


def chain_rows(
    prepared: Prepared, version: int, position: int, previous: str, recorded_at: str
) -> list[Row]:
    """The rows of ``prepared`` after a stream at ``version`` and a head at
    (``position``, ``previous`` hash), each hash chained from the one before."""
    rows: list[Row] = []
    stream = prepared.stream
    for event_id, event_type, session_id, data, meta_json in prepared.events:
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
    return rows


def walk_chain(
    records: Iterable[Recorded],
    head: int,
    *,
    after: tuple[int, str] = (0, GENESIS),
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """``Ledger.verify``'s walk over ``records`` (the rows after ``after``'s position,
    in position order): gap-free positions, versions 1..n per stream (only for
    streams that start after a trusted ``after``), every hash against its content
    and the previous row's hash."""
    previous_position, previous_hash = after
    partial = previous_position > 0
    versions: dict[str, int] = {}
    checked = 0
    for rec in records:
        problem = None
        if rec.position != previous_position + 1:
            problem = f"gap: position {previous_position} is followed by {rec.position}"
        elif not (partial and rec.stream not in versions) and (
            rec.version != versions.get(rec.stream, 0) + 1
        ):
            problem = (
                f"stream {rec.stream!r} jumps from version {versions.get(rec.stream, 0)} "
                f"to {rec.version}"
            )
        else:
            expected = row_hash(
                previous_hash, rec.position, rec.event_id, rec.stream, rec.version, rec.type,
                rec.session_id, rec.data_json, rec.meta_json, rec.recorded_at_text,
            )  # fmt: skip
            if expected != rec.hash:
                problem = "hash does not match the row's content and the previous hash"
        if problem is not None:
            return VerifyReport(False, checked, head, rec.position, problem)
        versions[rec.stream] = rec.version
        previous_hash = rec.hash
        previous_position = rec.position
        checked += 1
        if progress is not None and checked % 10_000 == 0:
            progress(checked, head)
    if progress is not None:
        progress(checked, head)
    return VerifyReport(True, checked, previous_position)
