"""The one interface the hook dispatcher drives: ``HookQueue``, which the SQLite
``delivery.DeliveryQueue`` and the PostgreSQL ``postgres_delivery.PostgresDeliveryQueue``
both are, and ``open_queue``, which picks the one of a log's backend.

The dispatcher (``dispatch.HookDispatcher``) owns what is the same on both: the
handler call and its timeout, the retry policy (when a failed call is tried
again, when it is given up), the logging. A queue owns where the deliveries are
kept and how a claim is made safe: SQLite's single writer and ``claimed_until``
in the ledger's clock; PostgreSQL's ``FOR UPDATE SKIP LOCKED`` and a lease in the
database's clock, so runners on several hosts share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from hermes_ledger.gateway.hooks.records import Claim, DeliveryOutcome
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.backend import EventLog
from hermes_ledger.ledger.clock import Clock, system_clock

__all__ = ["HookQueue", "open_queue"]


class HookQueue(Protocol):
    """A hook delivery queue over one log (see the module docstring)."""

    def register(self, subscriptions: Mapping[str, Iterable[str]], *, from_head: bool) -> None:
        """Make sure each hook of ``subscriptions`` (hook name → the log event types
        it takes, ``HOOK_EVENTS``' keys) is delivered the events appended from now
        on (``from_head``) or every event of the log; a hook already known keeps
        where it is."""
        ...

    def enqueue(self, subscriptions: Mapping[str, Iterable[str]]) -> int:
        """Queue what the log holds for each hook and is not queued yet; returns the
        deliveries queued (0 where appends queue them themselves)."""
        ...

    def claim(
        self, hook: str, worker_id: str, *, hold: timedelta, retry: RetryPolicy
    ) -> tuple[Claim | None, list[DeliveryOutcome]]:
        """Claim ``hook``'s next due delivery for ``hold`` and commit (None when
        none is due). A claim that expired without an outcome is claimed again, or
        dead-lettered once ``retry`` gave up on its attempts (those are returned)."""
        ...

    def finish(self, claim: Claim, error: str | None, retry_at: datetime | None) -> bool:
        """Record a call's outcome: done (``error`` None), due again at ``retry_at``,
        or dead (``retry_at`` None). False if the claim was lost (it expired and
        another worker claimed the delivery)."""
        ...


def open_queue(log: EventLog, clock: Clock | None = None) -> HookQueue:
    """The hook delivery queue of ``log``'s backend; times (backoffs, and claims on
    SQLite) come from ``clock``. On PostgreSQL the log's appends fill the queue
    (``postgres_delivery.attach_outbox``, attached here)."""
    if isinstance(log, Ledger):
        from hermes_ledger.gateway.hooks.delivery import DeliveryQueue

        return DeliveryQueue(log, clock or system_clock)
    from hermes_ledger.gateway.hooks.postgres_delivery import PostgresDeliveryQueue, attach_outbox
    from hermes_ledger.ledger.postgres import PostgresLog

    assert isinstance(log, PostgresLog)
    attach_outbox(log)  # this process's appends queue their deliveries (once per log)
    return PostgresDeliveryQueue(log, clock=clock)
