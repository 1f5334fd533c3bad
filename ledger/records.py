"""What the ledger hands back: recorded events, append results, verify reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from hermes_ledger.ledger.clock import parse_utc
from hermes_ledger.ledger.events import EventModel, from_stored

__all__ = ["AppendResult", "FileReport", "Recorded", "VerifyReport"]


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
        if self.first_bad_position is None:
            return f"FAILED: {self.problem}"
        return f"FAILED at position {self.first_bad_position}: {self.problem}"


_GUARDS = {
    "events_refuse_update": "events can be updated",
    "events_refuse_delete": "events can be deleted",
    "events_one_end_per_session": "a session can end twice",
}


def _allows(name: str) -> str:
    guard = _GUARDS.get(name.partition(" ")[2])
    return f" ({guard})" if guard else ""


@dataclass(frozen=True, slots=True)
class FileReport:
    """What ``Ledger.check_file`` found: the triggers and indexes the migrations
    create (``expected``) against the file's (``missing``, ``changed``: names with
    what that allows), and SQLite's own check of the file's pages (``integrity_mode``
    is ``integrity_check`` or ``quick_check``; ``integrity`` its messages, empty
    when the file is sound)."""

    expected: tuple[str, ...]
    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    integrity_mode: str = "integrity_check"
    integrity: tuple[str, ...] = ()

    @property
    def schema_ok(self) -> bool:
        return not self.missing and not self.changed

    @property
    def integrity_ok(self) -> bool:
        return not self.integrity

    @property
    def ok(self) -> bool:
        return self.schema_ok and self.integrity_ok

    def schema_text(self) -> str:
        if self.schema_ok:
            return (
                f"ok: {len(self.expected)} triggers and indexes as the migrations create them"
                " (append-only triggers, one end per session)"
            )
        parts = [f"{name} is missing{_allows(name)}" for name in self.missing]
        parts += [f"{name} differs from its migration{_allows(name)}" for name in self.changed]
        return "FAILED: " + "; ".join(parts)

    def integrity_text(self) -> str:
        if self.integrity_ok:
            return f"ok (PRAGMA {self.integrity_mode})"
        shown = "; ".join(self.integrity[:3])
        more = f" … and {len(self.integrity) - 3} more" if len(self.integrity) > 3 else ""
        return f"FAILED (PRAGMA {self.integrity_mode}): the file is damaged: {shown}{more}"
