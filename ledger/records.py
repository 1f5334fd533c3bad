"""What the ledger hands back: recorded events, append results, verify reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from hermes_ledger.ledger.clock import parse_utc
from hermes_ledger.ledger.events import EventModel, from_stored

__all__ = ["AppendResult", "Recorded", "VerifyReport"]


@dataclass(frozen=True)
class Recorded:
    """One row of the log. ``event`` (the model, upcast to the current shape),
    ``data`` and ``meta`` (dicts) are decoded on first use."""

    position: int
    event_id: str
    stream: str
    version: int
    type: str
    session_id: str | None
    data_json: str = field(repr=False)
    meta_json: str = field(repr=False)
    recorded_at_text: str = field(repr=False)
    hash: str = field(repr=False)

    @cached_property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_json)  # type: ignore[no-any-return]

    @cached_property
    def data(self) -> dict[str, Any]:
        return json.loads(self.data_json)  # type: ignore[no-any-return]

    @cached_property
    def schema_version(self) -> int:
        return int(self.meta.get("schema_version", 1))

    @cached_property
    def event(self) -> EventModel:
        return from_stored(self.type, self.event_id, self.data_json, self.schema_version)

    @cached_property
    def recorded_at(self) -> datetime:
        return parse_utc(self.recorded_at_text)

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values (data and meta decoded)."""
        return {
            "position": self.position,
            "event_id": self.event_id,
            "stream": self.stream,
            "version": self.version,
            "type": self.type,
            "session_id": self.session_id,
            "data": self.data,
            "meta": self.meta,
            "recorded_at": self.recorded_at_text,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class AppendResult:
    """``positions`` of the events (in order), the stream's ``version`` after them,
    and ``duplicate`` when every event was already in the log (nothing was written)."""

    positions: tuple[int, ...]
    version: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of walking the hash chain. ``first_bad_position`` is None when ``ok``."""

    ok: bool
    checked: int
    head: int
    first_bad_position: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.checked} events, hash chain intact up to position {self.head}"
        return f"FAILED at position {self.first_bad_position}: {self.problem}"
