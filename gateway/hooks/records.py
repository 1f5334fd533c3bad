"""What the hook delivery queues (``delivery`` on SQLite, ``postgres_delivery`` on
PostgreSQL) return: a delivery, a pending one, a hook's state, a claim, a call's
outcome, a pass's report; and the errors they raise. One definition for both
backends."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.clock import format_utc, parse_utc

__all__ = [
    "Claim",
    "Delivery",
    "DeliveryOutcome",
    "DeliveryReport",
    "HookDeliveryError",
    "HookState",
    "PendingDelivery",
    "not_dead_letters",
]


class HookDeliveryError(LedgerError):
    """A request about hook deliveries that cannot be met (nothing was written)."""


def not_dead_letters(problems: Sequence[str]) -> HookDeliveryError:
    """The error of a re-queue that names deliveries that are not dead letters."""
    return HookDeliveryError(
        "not dead letters: " + ", ".join(problems),
        hint="list dead letters with `hermes-ledger hooks`",
    )


# -- what callers get back -------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One hook's delivery of one log event."""

    delivery_id: str
    hook: str
    event_type: str
    position: int
    event_id: str
    session_key: str
    session_id: str | None
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None
    context: dict[str, Any] = field(repr=False)

    @classmethod
    def _from_row(cls, row: Sequence[Any]) -> Delivery:
        (did, hook, event, position, event_id, key, sid, status, attempts, next_at,
         error, delivered, context) = row  # fmt: skip
        return cls(
            did, hook, event, position, event_id, key, sid, status, attempts,
            parse_utc(next_at), error, parse_utc(delivered) if delivered else None,
            json.loads(context),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "hook": self.hook,
            "event_type": self.event_type,
            "position": self.position,
            "event_id": self.event_id,
            "session_key": self.session_key,
            "session_id": self.session_id,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": format_utc(self.next_attempt_at),
            "last_error": self.last_error,
            "delivered_at": None if self.delivered_at is None else format_utc(self.delivered_at),
        }


@dataclass(frozen=True)
class PendingDelivery(Delivery):
    """A delivery still owed: ``pending`` (due at ``next_attempt_at``; after a
    failure, that is its next retry and ``last_error`` says why) or ``claimed``
    (a dispatcher, ``claimed_by``, is calling the handler until ``claimed_until``)."""

    claimed_by: str | None = None
    claimed_until: datetime | None = None

    @classmethod
    def _from_pending_row(cls, row: Sequence[Any]) -> PendingDelivery:
        base, (by, until) = Delivery._from_row(row[:-2]), row[-2:]
        values = {name: getattr(base, name) for name in base.__dataclass_fields__}
        return cls(**values, claimed_by=by, claimed_until=parse_utc(until) if until else None)

    def to_dict(self) -> dict[str, Any]:
        until = None if self.claimed_until is None else format_utc(self.claimed_until)
        return {**super().to_dict(), "claimed_by": self.claimed_by, "claimed_until": until}


@dataclass(frozen=True)
class HookState:
    """A hook's checkpoint and how many of its deliveries are in each status."""

    hook: str
    checkpoint: int
    pending: int = 0
    claimed: int = 0
    done: int = 0
    dead: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "checkpoint": self.checkpoint,
            "pending": self.pending,
            "claimed": self.claimed,
            "done": self.done,
            "dead": self.dead,
        }


@dataclass(frozen=True)
class Claim:
    """A delivery claimed by one dispatcher: call the handler, then ``finish`` it."""

    delivery_id: str
    hook: str
    event_type: str
    context: dict[str, Any]
    attempt: int
    worker_id: str


@dataclass(frozen=True)
class DeliveryOutcome:
    """One handler call (or one expired claim given up on) and what became of it:
    ``done``, ``retry`` (failed; due again at ``next_attempt_at``) or ``dead``."""

    delivery_id: str
    hook: str
    event_type: str
    session_id: str | None
    attempt: int
    status: Literal["done", "retry", "dead"]
    error: str | None = None
    next_attempt_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "hook": self.hook,
            "event_type": self.event_type,
            "session_id": self.session_id,
            "attempt": self.attempt,
            "status": self.status,
            "error": self.error,
            "next_attempt_at": None
            if self.next_attempt_at is None
            else format_utc(self.next_attempt_at),
        }


@dataclass(frozen=True)
class DeliveryReport:
    """What one ``deliver()`` pass did: rows ``enqueued`` and one outcome per call."""

    enqueued: int = 0
    outcomes: tuple[DeliveryOutcome, ...] = ()

    @property
    def delivered(self) -> int:
        """Calls that succeeded."""
        return sum(o.status == "done" for o in self.outcomes)

    @property
    def failed(self) -> int:
        """Calls that failed (to be retried, or dead-lettered)."""
        return sum(o.status != "done" for o in self.outcomes)

    @property
    def dead_lettered(self) -> int:
        """Deliveries given up on in this pass (a subset of ``failed``)."""
        return sum(o.status == "dead" for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enqueued": self.enqueued,
            "delivered": self.delivered,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }
