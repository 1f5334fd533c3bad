"""The records the Hermes plugin's callbacks spool, and what applying them did.

Record kinds (JSON objects; each has ``kind`` and ``at``, the UTC time the
callback ran; unknown fields are ignored):

``dispatch``  (``pre_gateway_dispatch``) ``session_key``, ``source``,
              ``message_id``: the source of the next session started on that
              key, and who sent the inbound message ``message_id`` (Hermes
              stores it as that user message's ``platform_message_id``).
``activity``  (``pre_llm_call``, ``post_llm_call``, ``post_tool_call``,
              ``post_api_request``, ``on_session_start`` …) ``session_id``,
              ``session_key`` (may be null), ``platform``: record what ``state.db``
              has of that session that the ledger lacks. A session new on its
              key while the key's previous session is still open means Hermes
              auto-reset the key (it calls no hook for that): the previous one is
              closed first (``auto_reset``).
``finalize``  (``on_session_finalize``) ``session_id``, ``reason``
              (``session_expired``, ``new_session``, ``shutdown`` …),
              ``old_session_id``, ``new_session_id``: Hermes closed that session.
``reset``     (``on_session_reset``) ``old_session_id``, ``new_session_id``: the
              second half of a ``/new``; adds nothing if its finalize was applied.
``subagent``  ``parent_session_id``, ``child_session_id``: the child runs beside
              its parent, in a stream of its own (never as its parent's successor).

``parse_record`` checks one record (raising ``RecordError`` for one that cannot
be applied); ``LiveReport`` is what ``LiveRecorder.apply`` (``hermes.live``)
returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final

from hermes_ledger.gateway.hermes.reading import _usable_id
from hermes_ledger.ledger.clock import parse_utc

__all__ = [
    "KINDS",
    "LiveReport",
    "Record",
    "RecordError",
    "RecordedClose",
    "SkippedRecord",
    "parse_record",
]

KINDS: Final = ("dispatch", "activity", "finalize", "reset", "subagent")


@dataclass(frozen=True)
class SkippedRecord:
    """A record ``apply`` could not apply: its place in the batch, its kind, and why."""

    index: int
    kind: str | None
    reason: str


@dataclass(frozen=True)
class RecordedClose:
    """A close ``apply`` wrote: the session, the cause's type and the end reason."""

    session_key: str
    session_id: str
    cause: str
    reason: str


@dataclass
class LiveReport:
    """What one ``apply`` did: events appended, records applied (including those
    that found their work already done) and skipped (with reasons), closes written,
    and warnings (``state.db`` rows the events cannot hold…)."""

    events: int = 0
    applied: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)
    closes: list[RecordedClose] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecordError(Exception):
    """This record cannot be applied (the message says why); the next one can."""


@dataclass(frozen=True)
class Record:
    kind: str
    at: datetime
    session_id: str | None = None
    session_key: str | None = None
    platform: str | None = None
    reason: str | None = None
    old_session_id: str | None = None
    new_session_id: str | None = None
    source: Mapping[str, Any] | None = None
    message_id: str | None = None


_ID_FIELDS: Final = (
    "session_id", "old_session_id", "new_session_id", "parent_session_id", "child_session_id",
)  # fmt: skip


def parse_record(raw: object) -> Record:
    if not isinstance(raw, Mapping):
        raise RecordError(f"a record must be a JSON object, not {type(raw).__name__}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise RecordError(f"unknown record kind {kind!r}")
    try:
        at = parse_utc(raw["at"])
    except (KeyError, TypeError, ValueError):
        raise RecordError(f"'at' is not an ISO-8601 time: {raw.get('at')!r}") from None
    ids: dict[str, str | None] = {}
    for name in _ID_FIELDS:
        value = raw.get(name)
        if value is not None and not _usable_id(value):
            raise RecordError(f"{name} {value!r} cannot name a session")
        ids[name] = value
    text = {n: v if isinstance(v := raw.get(n), str) and v else None
            for n in ("session_key", "platform", "reason", "message_id")}  # fmt: skip
    source = raw.get("source")
    if kind == "subagent":  # the child is the session the record is about
        ids["session_id"], ids["old_session_id"] = ids["child_session_id"], None
    return Record(
        kind=kind,
        at=at,
        session_id=ids["session_id"],
        old_session_id=ids["old_session_id"],
        new_session_id=ids["new_session_id"],
        source=source if isinstance(source, Mapping) else None,
        **text,
    )
