"""Hook deliveries on PostgreSQL: an outbox filled in the append's transaction and
drained by any number of runners on any hosts (migration 4; docs/postgres.md,
"Claims and deliveries across hosts").

* ``HookOutbox`` (an inline projector of ``PostgresLog``) inserts, for every
  ``session_started`` / ``session_reset`` / ``session_ended`` an append writes, one
  ``hook_deliveries`` row per subscribed hook, in the same transaction: a delivery
  exists exactly when its event does (a trigger refuses any other). Its
  ``delivery_id`` is SQLite's (``delivery.delivery_id_for``: hook name and event
  id), and so is its context (``delivery._context``).
* ``PostgresDeliveryQueue.claim`` takes the hook's oldest deliverable row with
  ``FOR UPDATE SKIP LOCKED`` (runners take different rows, none waits) and holds it
  by a lease in the database's clock; a row whose lease expired (its runner died
  mid-call) is claimed again under the same ``delivery_id``, or dead-lettered once
  the retry policy gives up. A session key's deliveries are made in log order (the
  old session's ``session:end`` before the new one's ``session:start``); different
  keys' run in parallel.
* ``finish`` marks the delivery done after the handler returned (or pending again
  with a backoff, or dead); only the lease holder can.

So every event is delivered at least once, always under one ``delivery_id``; in a
run where no runner dies, exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

import psycopg

from hermes_ledger.gateway.hooks.delivery import (
    HOOK_EVENTS,
    Claim,
    DeliveryOutcome,
    HookDeliveryError,
    _context,
    delivery_id_for,
)
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger.events import SessionStarted
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.records import Recorded

__all__ = ["HookOutbox", "PostgresDeliveryQueue", "attach_outbox"]

Connection = psycopg.Connection[Any]

# -- statements (the tables are migration 4's) -------------------------------------------

SQL_SUBSCRIBE = (
    "INSERT INTO hook_subscriptions (hook, hook_events) VALUES (%s, %s)"
    " ON CONFLICT (hook) DO UPDATE SET hook_events = excluded.hook_events"
)
SQL_SUBSCRIBERS = "SELECT hook, hook_events FROM hook_subscriptions"
SQL_ORIGIN = (
    "SELECT position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"
    " FROM event_bodies WHERE session_id = %s AND type = 'session_started'"
    " ORDER BY position LIMIT 1"
)
SQL_ENQUEUE = (
    "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id, hook_event,"
    " session_key, session_id, context, status)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending') ON CONFLICT DO NOTHING"
)
# The hook's oldest owed delivery that is due (pending and past its backoff, or
# claimed with an expired lease) and has no earlier owed delivery of its key;
# locked rows (another runner claiming them) are skipped.
SQL_CLAIMABLE = (
    "SELECT d.delivery_id, d.status, d.attempts, d.claimed_by, d.claim_expires, d.hook_event,"
    " d.context FROM hook_deliveries AS d"
    " WHERE d.hook = %(hook)s AND d.status IN ('pending', 'claimed')"
    " AND CASE d.status WHEN 'pending' THEN d.next_attempt_at <= clock_timestamp()"
    "  ELSE d.claim_expires <= clock_timestamp() END"
    " AND NOT EXISTS (SELECT FROM hook_deliveries AS e WHERE e.hook = d.hook"
    "  AND e.session_key = d.session_key AND e.position < d.position"
    "  AND e.status IN ('pending', 'claimed'))"
    " ORDER BY d.position LIMIT 1 FOR UPDATE OF d SKIP LOCKED"
)
SQL_CLAIM = (
    "UPDATE hook_deliveries SET status = 'claimed', claimed_by = %s,"
    " claim_expires = clock_timestamp() + %s, attempts = attempts + 1,"
    " last_error = coalesce(%s, last_error) WHERE delivery_id = %s"
)
SQL_EXPIRED_TO_DEAD = (
    "UPDATE hook_deliveries SET status = 'dead', claimed_by = NULL, claim_expires = NULL,"
    " last_error = %s WHERE delivery_id = %s"
)
SQL_DONE = (
    "UPDATE hook_deliveries SET status = 'done', delivered_at = clock_timestamp(),"
    " claimed_by = NULL, claim_expires = NULL"
    " WHERE delivery_id = %s AND status = 'claimed' AND claimed_by = %s"
)
SQL_FAILED = (
    "UPDATE hook_deliveries SET status = %s, next_attempt_at = clock_timestamp() + %s,"
    " last_error = %s, claimed_by = NULL, claim_expires = NULL"
    " WHERE delivery_id = %s AND status = 'claimed' AND claimed_by = %s"
)

_EVENT_TYPES = {hook_event: log_type for log_type, hook_event in HOOK_EVENTS.items()}


# -- filling the outbox ----------------------------------------------------------------


class HookOutbox:
    """An inline projector: queues each session event of an append for every hook
    subscribed to its hook event, in the append's transaction."""

    def __call__(self, conn: Connection, records: Sequence[Recorded]) -> None:
        wanted = [r for r in records if r.type in HOOK_EVENTS and r.session_id is not None]
        if not wanted:
            return
        hooks = conn.execute(SQL_SUBSCRIBERS).fetchall()
        if not hooks:
            return
        origins: dict[str, SessionStarted | None] = {}
        rows = []
        for rec in wanted:
            assert rec.session_id is not None
            event = rec.event
            if isinstance(event, SessionStarted):
                origins.setdefault(rec.session_id, event)
            elif rec.session_id not in origins:
                origins[rec.session_id] = _origin(conn, rec.session_id)
            context = _context(rec, origins[rec.session_id])
            for hook, events in hooks:
                if HOOK_EVENTS[rec.type] not in events:
                    continue
                did = delivery_id_for(hook, rec.event_id)
                body = json.dumps({"delivery_id": did, **context}, ensure_ascii=False)
                rows.append((did, hook, rec.position, rec.event_id, HOOK_EVENTS[rec.type],
                             rec.stream, rec.session_id, body))  # fmt: skip
        if rows:
            with conn.cursor() as cur:
                cur.executemany(SQL_ENQUEUE, rows)


def _origin(conn: Connection, session_id: str) -> SessionStarted | None:
    """The session's ``session_started`` (its platform and user), if recorded."""
    row = conn.execute(SQL_ORIGIN, (session_id,)).fetchone()
    event = Recorded(*row).event if row else None
    return event if isinstance(event, SessionStarted) else None


def attach_outbox(log: PostgresLog) -> None:
    """Queue hook deliveries inside every later append of ``log`` (every writer of
    the database should: an append without it queues nothing)."""
    log.add_inline_projector(HookOutbox())


# -- draining it -------------------------------------------------------------------------


class PostgresDeliveryQueue:
    """The hook delivery tables of a PostgreSQL ledger: subscribe, claim, finish.

    ``hold`` is a claim's lease: long enough for a handler call and recording its
    outcome (a call that outlives it may be made again by another runner).
    """

    def __init__(self, log: PostgresLog, *, hold: timedelta = timedelta(seconds=70)) -> None:
        self.log = log
        self.hold = hold

    @property
    def _conn(self) -> Connection:
        return self.log.connection

    def subscribe(self, hook: str, hook_events: Iterable[str]) -> None:
        """Deliver ``hook_events`` (``session:start`` / ``:reset`` / ``:end``) of the
        events appended from now on to ``hook``."""
        events = sorted(set(hook_events))
        unknown = [e for e in events if e not in _EVENT_TYPES]
        if not hook or unknown:
            raise HookDeliveryError(
                f"cannot subscribe {hook!r} to {', '.join(unknown) or 'nothing'}",
                hint="name a hook and some of " + ", ".join(sorted(_EVENT_TYPES)),
            )
        self._conn.execute(SQL_SUBSCRIBE, (hook, events))

    def claim(
        self, hook: str, worker_id: str, *, retry: RetryPolicy
    ) -> tuple[Claim | None, list[DeliveryOutcome]]:
        """Claim ``hook``'s oldest deliverable event for ``hold`` and commit; None when
        nothing is due (or all of it is claimed). An expired claim is claimed again,
        or dead-lettered once ``retry`` gave up on its attempts (returned)."""
        given_up: list[DeliveryOutcome] = []
        conn = self._conn
        while True:
            with conn.transaction():
                row = conn.execute(SQL_CLAIMABLE, {"hook": hook}).fetchone()
                if row is None:
                    return None, given_up
                did, status, attempts, owner, until, hook_event, body = row
                note = None
                if status == "claimed":
                    note = f"the claim of {owner} expired at {until} without an outcome"
                    if retry.gave_up(attempts):
                        conn.execute(SQL_EXPIRED_TO_DEAD, (note, did))
                        sid = json.loads(body).get("session_id")
                        given_up.append(
                            DeliveryOutcome(did, hook, hook_event, sid, attempts, "dead", note)
                        )
                        continue
                conn.execute(SQL_CLAIM, (worker_id, self.hold, note, did))
            return Claim(did, hook, hook_event, json.loads(body), attempts + 1, worker_id), given_up

    def finish(self, claim: Claim, error: str | None, retry: RetryPolicy) -> DeliveryOutcome | None:
        """Record a call's outcome: done (``error`` None), pending again after
        ``retry``'s backoff, or dead once it gave up. None if the claim was lost
        (its lease expired and another runner claimed the delivery)."""
        sid = claim.context.get("session_id")
        if error is None:
            cur = self._conn.execute(SQL_DONE, (claim.delivery_id, claim.worker_id))
            outcome = DeliveryOutcome(claim.delivery_id, claim.hook, claim.event_type, sid,
                                      claim.attempt, "done")  # fmt: skip
        else:
            dead = retry.gave_up(claim.attempt)
            wait = timedelta(0) if dead else retry.wait_after(claim.attempt)
            status = "dead" if dead else "pending"
            cur = self._conn.execute(
                SQL_FAILED, (status, wait, error, claim.delivery_id, claim.worker_id)
            )
            verdict: Literal["dead", "retry"] = "dead" if dead else "retry"
            outcome = DeliveryOutcome(claim.delivery_id, claim.hook, claim.event_type, sid,
                                      claim.attempt, verdict, error)  # fmt: skip
        return outcome if cur.rowcount == 1 else None

    def deliver(
        self,
        hook: str,
        handler: Callable[[str, Mapping[str, Any]], Any],
        worker_id: str,
        *,
        retry: RetryPolicy,
        limit: int | None = None,
    ) -> list[DeliveryOutcome]:
        """Claim, call ``handler(hook_event, context)``, finish; until nothing is
        claimable (or ``limit`` calls). A handler that raises fails its attempt."""
        outcomes: list[DeliveryOutcome] = []
        calls = 0
        while limit is None or calls < limit:
            claim, given_up = self.claim(hook, worker_id, retry=retry)
            outcomes += given_up
            if claim is None:
                return outcomes
            calls += 1
            try:
                handler(claim.event_type, claim.context)
            except Exception as exc:  # the handler's failure is this attempt's outcome
                error: str | None = f"{type(exc).__name__}: {exc}"
            else:
                error = None
            outcome = self.finish(claim, error, retry)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes
