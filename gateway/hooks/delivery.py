"""Durable hook delivery state, in the ledger file next to the log (the log is the outbox).

Every ``session_started``, ``session_reset`` and ``session_ended`` of the log is
delivered to each subscribed hook as ``session:start``, ``session:reset`` and
``session:end`` (``HOOK_EVENTS``). Two tables, created by migration 2
(``migrations/0002_gateway_state.sql``):

``hook_checkpoints``
    one row per hook: the log position up to which its deliveries are queued.
``hook_deliveries``
    one row per (hook, event): ``delivery_id`` (stable: derived from the hook's
    name and the event's id), the context the handler gets, and the delivery's
    ``status`` — ``pending``, ``claimed`` (a dispatcher is calling the handler
    until ``claimed_until``), ``done`` or ``dead`` (failed too often; listed by
    ``hermes-ledger hooks``, re-queued by ``hermes-ledger hooks retry``).

A trigger refuses a delivery that does not name a session event of the log, so a
hook is never told about a session end that did not happen. ``DeliveryQueue`` is
the one interface over these tables (every statement is below, with bindings);
``hooks.dispatch.HookDispatcher`` drives it and calls the handlers.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import apsw

from hermes_ledger.gateway.hooks.records import (
    Claim,
    Delivery,
    DeliveryOutcome,
    DeliveryReport,
    HookDeliveryError,
    HookState,
    PendingDelivery,
    not_dead_letters,
)
from hermes_ledger.gateway.logs import fields
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger import Ledger, Recorded
from hermes_ledger.ledger.backend import EventLog
from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.events import SessionEnded, SessionReset, SessionStarted
from hermes_ledger.ledger.sql import SQL_HEAD_POSITION, scalar

__all__ = [
    "HOOK_EVENTS",
    "PENDING_SHOWN",
    "Claim",
    "Delivery",
    "DeliveryOutcome",
    "DeliveryQueue",
    "DeliveryReport",
    "HookDeliveryError",
    "HookState",
    "PendingDelivery",
    "dead_letters",
    "delivery_id_for",
    "hook_states",
    "pending_deliveries",
    "requeue_dead_letters",
]

log = logging.getLogger(__name__)

HOOK_EVENTS: Mapping[str, str] = {
    "session_started": "session:start",
    "session_reset": "session:reset",
    "session_ended": "session:end",
}
"""Log event type → the hook event it is delivered as."""

_NAMESPACE = uuid.UUID("6f1d3c1e-5a0b-4f7e-9a57-1c0de4b00c35")
_BATCH = 1000  # log events queued per pass

# -- statements (the tables are migration 2's) ------------------------------------------

SQL_CHECKPOINTS = "SELECT hook, position FROM hook_checkpoints"
SQL_REGISTER = (
    "INSERT INTO hook_checkpoints (hook, position, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (hook) DO NOTHING"
)
SQL_CHECKPOINT = "SELECT position FROM hook_checkpoints WHERE hook = ?"
SQL_ADVANCE = "UPDATE hook_checkpoints SET position = ?, updated_at = ? WHERE hook = ?"
SQL_ENQUEUE = (
    "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id, hook_event, session_key,"
    " session_id, context, status, next_attempt_at, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT DO NOTHING"
)
SQL_ORIGIN = (
    "SELECT position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"
    " FROM events WHERE session_id = ? AND type = 'session_started' ORDER BY position LIMIT 1"
)
SQL_QUEUE_HEAD = (
    "SELECT delivery_id, status, attempts, claimed_by, claimed_until, next_attempt_at,"
    " hook_event, context FROM hook_deliveries"
    " WHERE hook = ? AND status IN ('pending', 'claimed') ORDER BY position LIMIT 1"
)
SQL_CLAIM = (
    "UPDATE hook_deliveries SET status = 'claimed', claimed_by = ?, claimed_until = ?,"
    " attempts = attempts + 1, last_error = coalesce(?, last_error) WHERE delivery_id = ?"
)
SQL_EXPIRED_TO_DEAD = (
    "UPDATE hook_deliveries SET status = 'dead', claimed_by = NULL, claimed_until = NULL,"
    " last_error = ? WHERE delivery_id = ?"
)
SQL_DONE = (
    "UPDATE hook_deliveries SET status = 'done', delivered_at = ?, claimed_by = NULL,"
    " claimed_until = NULL WHERE delivery_id = ? AND status = 'claimed' AND claimed_by = ?"
)
SQL_FAILED = (
    "UPDATE hook_deliveries SET status = ?, next_attempt_at = ?, last_error = ?,"
    " claimed_by = NULL, claimed_until = NULL"
    " WHERE delivery_id = ? AND status = 'claimed' AND claimed_by = ?"
)
_DELIVERY_COLUMNS = (
    "delivery_id, hook, hook_event, position, event_id, session_key, session_id, status,"
    " attempts, next_attempt_at, last_error, delivered_at, context"
)
SQL_DEAD = (
    f"SELECT {_DELIVERY_COLUMNS} FROM hook_deliveries WHERE status = 'dead' ORDER BY position"
)
SQL_DELIVERY = f"SELECT {_DELIVERY_COLUMNS} FROM hook_deliveries WHERE delivery_id = ?"
# The first ? pending or claimed deliveries of each hook, in delivery order (the
# partial index hook_deliveries_queue serves it).
SQL_PENDING = (
    f"SELECT {_DELIVERY_COLUMNS}, claimed_by, claimed_until FROM ("
    f" SELECT {_DELIVERY_COLUMNS}, claimed_by, claimed_until,"
    " row_number() OVER (PARTITION BY hook ORDER BY position) AS n"
    " FROM hook_deliveries WHERE status IN ('pending', 'claimed'))"
    " WHERE n <= ? ORDER BY hook, position"
)
SQL_REQUEUE = (
    "UPDATE hook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?"
    " WHERE delivery_id = ? AND status = 'dead'"
)
SQL_STATES = (
    "SELECT c.hook, c.position,"
    " count(*) FILTER (WHERE d.status = 'pending'),"
    " count(*) FILTER (WHERE d.status = 'claimed'),"
    " count(*) FILTER (WHERE d.status = 'done'),"
    " count(*) FILTER (WHERE d.status = 'dead')"
    " FROM hook_checkpoints AS c LEFT JOIN hook_deliveries AS d ON d.hook = c.hook"
    " GROUP BY c.hook ORDER BY c.hook"
)


def delivery_id_for(hook: str, event_id: str) -> str:
    """The stable id of ``hook``'s delivery of the event ``event_id`` (a UUID5)."""
    return str(uuid.uuid5(_NAMESPACE, f"{hook}\x00{event_id}"))


# -- reading and re-queuing (no hooks needed: the CLI uses these) -------------------


def _postgres(ledger: EventLog) -> Any:
    """The PostgreSQL queue's reads for a log that is not a SQLite ``Ledger``."""
    from hermes_ledger.gateway.hooks.postgres_delivery import PostgresDeliveryQueue

    return PostgresDeliveryQueue(ledger)  # type: ignore[arg-type]


def dead_letters(ledger: EventLog) -> list[Delivery]:
    """Deliveries that failed too often, in log order (either backend)."""
    if not isinstance(ledger, Ledger):
        return list(_postgres(ledger).dead_letters())
    return [Delivery._from_row(r) for r in ledger.query(SQL_DEAD)]


PENDING_SHOWN = 20
"""How many pending deliveries per hook ``pending_deliveries`` returns by default."""


def pending_deliveries(ledger: EventLog, *, per_hook: int = PENDING_SHOWN) -> list[PendingDelivery]:
    """The deliveries still owed (pending or claimed): the first ``per_hook`` of each
    hook, in the order they will be made, by hook name (``HookState`` has the counts)."""
    if not isinstance(ledger, Ledger):
        return list(_postgres(ledger).pending(per_hook))
    return [PendingDelivery._from_pending_row(r) for r in ledger.query(SQL_PENDING, (per_hook,))]


def hook_states(ledger: EventLog) -> list[HookState]:
    """Every hook the ledger has seen: its checkpoint and delivery counts."""
    if not isinstance(ledger, Ledger):
        return list(_postgres(ledger).states())
    return [HookState(*row) for row in ledger.query(SQL_STATES)]


def requeue_dead_letters(
    ledger: EventLog, delivery_ids: Iterable[str] | None = None, *, clock: Clock = system_clock
) -> list[str]:
    """Make dead letters pending again (attempts reset, due now); all of them, or
    only ``delivery_ids``, which must all be dead letters (else nothing is written
    and HookDeliveryError says which are not). Returns the re-queued ids."""
    wanted = None if delivery_ids is None else list(dict.fromkeys(delivery_ids))
    if not isinstance(ledger, Ledger):
        return list(_postgres(ledger).requeue(wanted, clock()))
    now = format_utc(clock())

    def work(conn: apsw.Connection) -> list[str]:
        if wanted is None:
            ids = [row[0] for row in conn.execute(SQL_DEAD)]
        else:
            ids = wanted
            problems = []
            for did in ids:
                row = conn.execute(SQL_DELIVERY, (did,)).fetchone()
                if row is None:
                    problems.append(f"{did} (no such delivery)")
                elif row[7] != "dead":
                    problems.append(f"{did} ({row[7]}, not dead)")
            if problems:
                raise not_dead_letters(problems)
        for did in ids:
            conn.execute(SQL_REQUEUE, (now, did))
        return ids

    result: list[str] = ledger.write(work)
    return result


# -- the queue -----------------------------------------------------------------------


def _context(rec: Recorded, origin: SessionStarted | None) -> dict[str, Any]:
    """A log event's hook context (without the delivery id)."""
    event = rec.event
    reason: str | None = None
    extra: dict[str, Any] = {}
    if isinstance(event, SessionStarted):
        origin = event
        reason = event.reason
        extra["previous_session_id"] = event.previous_session_id
    elif isinstance(event, SessionReset):
        reason = event.trigger
    elif isinstance(event, SessionEnded):
        reason = event.reason
    source = origin.source if origin is not None else None
    return {
        "platform": source.platform if source else None,
        "user_id": source.user_id if source else None,
        "session_key": rec.stream,
        "session_id": rec.session_id,
        "reason": reason,
        **extra,
        "event_type": HOOK_EVENTS[rec.type],
        "event_id": rec.event_id,
        "event_position": rec.position,
        "occurred_at": format_utc(event.occurred_at or rec.recorded_at),
    }


def expired_claim(
    hook: str, did: str, event_type: str, body: str, attempts: int, note: str, *, dead: bool
) -> DeliveryOutcome:
    """Log a claim that expired without an outcome: claimed again (a warning) or,
    ``dead``, dead-lettered (an error); the outcome of the latter (either queue)."""
    context = json.loads(body)
    if dead:
        log.error(
            "hook %s dead-lettered %s %s after %d attempts: %s", hook, event_type,
            context.get("session_key"), attempts, note,
            extra=fields("hook_dead_lettered", hook=hook, hook_event=event_type,
                         delivery_id=did, attempt=attempts, error=note),
        )  # fmt: skip
    else:
        log.warning(
            "hook %s: delivery %s: %s; delivering again", hook, did, note,
            extra=fields("hook_claim_expired", hook=hook, delivery_id=did, attempt=attempts,
                         error=note),
        )  # fmt: skip
    session_id = context.get("session_id")
    return DeliveryOutcome(did, hook, event_type, session_id, attempts, "dead", note)


def _due(queue_head: Sequence[Any], stamp: str) -> bool:
    """Is this row of SQL_QUEUE_HEAD claimable at ``stamp``?"""
    _did, status, _attempts, _owner, until, next_at, _event, _body = queue_head
    return bool(until <= stamp if status == "claimed" else next_at <= stamp)


class DeliveryQueue:
    """The hook delivery tables of one ledger: queue, claim, finish.

    Every write is one ``BEGIN IMMEDIATE`` transaction (``Ledger.write``), so any
    number of queues, in any processes, may share the file. Times come from
    ``clock``.
    """

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.clock = clock

    def register(self, subscriptions: Mapping[str, Iterable[str]], *, from_head: bool) -> None:
        """Give each new hook (``subscriptions``: hook name → the log event types it
        takes) a checkpoint: the log's head (``from_head``: only later events) or 0."""
        names = list(subscriptions)

        def work(conn: apsw.Connection) -> None:
            start = scalar(conn, SQL_HEAD_POSITION) if from_head else 0
            now = format_utc(self.clock())
            for name in names:
                conn.execute(SQL_REGISTER, (name, start, now))

        self.ledger.write(work)

    def enqueue(self, subscriptions: Mapping[str, Iterable[str]]) -> int:
        """Queue the next batch of log events after each registered hook's
        checkpoint; ``subscriptions`` maps hook names to the log event types they
        take. Rows and checkpoints commit together; returns the rows queued."""
        wanted = {name: frozenset(types) for name, types in subscriptions.items() if types}
        if not wanted:
            return 0
        head = self.ledger.head()  # every event up to here is committed
        checkpoints = dict(self.ledger.query(SQL_CHECKPOINTS))
        start = {name: checkpoints[name] for name in wanted if name in checkpoints}
        if not start or min(start.values()) >= head:
            return 0
        records = [
            r for r in self.ledger.read_all(after=min(start.values()), types=HOOK_EVENTS,
                                            limit=_BATCH)
            if r.position <= head
        ]  # fmt: skip
        upto = records[-1].position if len(records) == _BATCH else head
        rows = self._rows(records, {name: (start[name], wanted[name]) for name in start})
        now = format_utc(self.clock())

        def work(conn: apsw.Connection) -> int:
            count = 0
            for name, first in start.items():
                current = scalar(conn, SQL_CHECKPOINT, (name,))
                if current < first or current >= upto:
                    continue  # another dispatcher moved it; the next pass starts there
                for position, row in rows[name]:
                    if current < position <= upto:
                        conn.execute(SQL_ENQUEUE, (*row, now, now))
                        count += conn.changes()
                conn.execute(SQL_ADVANCE, (upto, now, name))
            return count

        result: int = self.ledger.write(work)
        return result

    def _rows(
        self, records: list[Recorded], hooks: Mapping[str, tuple[int, frozenset[str]]]
    ) -> dict[str, list[tuple[int, tuple[Any, ...]]]]:
        """Each hook's delivery rows for ``records`` (after its checkpoint, of its types)."""
        origins: dict[str, SessionStarted | None] = {}
        rows: dict[str, list[tuple[int, tuple[Any, ...]]]] = {name: [] for name in hooks}
        for rec in records:
            if rec.session_id is None:
                continue
            if rec.type == "session_started":
                event = rec.event
                assert isinstance(event, SessionStarted)
                origins.setdefault(rec.session_id, event)
            takers = [
                n for n, (cp, types) in hooks.items() if rec.position > cp and rec.type in types
            ]
            if not takers:
                continue
            if rec.session_id not in origins:
                origins[rec.session_id] = self._origin(rec.session_id)
            context = _context(rec, origins[rec.session_id])
            for name in takers:
                did = delivery_id_for(name, rec.event_id)
                body = json.dumps({"delivery_id": did, **context}, ensure_ascii=False)
                rows[name].append(
                    (rec.position, (did, name, rec.position, rec.event_id, HOOK_EVENTS[rec.type],
                                    rec.stream, rec.session_id, body))
                )  # fmt: skip
        return rows

    def _origin(self, session_id: str) -> SessionStarted | None:
        """The session's ``session_started`` (its platform and user), if recorded."""
        rows = self.ledger.query(SQL_ORIGIN, (session_id,))
        event = Recorded(*rows[0]).event if rows else None
        return event if isinstance(event, SessionStarted) else None

    def claim(
        self, hook: str, worker_id: str, *, hold: timedelta, retry: RetryPolicy
    ) -> tuple[Claim | None, list[DeliveryOutcome]]:
        """Claim the hook's oldest undelivered event for ``hold`` if it is due, and
        commit; None while it is backing off or another worker holds it.

        An expired claim (its worker stopped mid-call) is claimed again, or, when
        ``retry`` has given up on its attempts, dead-lettered (returned as outcomes).
        """
        given_up: list[DeliveryOutcome] = []
        now = self.clock()
        stamp = format_utc(now)
        peek = self.ledger.query(SQL_QUEUE_HEAD, (hook,))
        if not peek or not _due(peek[0], stamp):
            return None, given_up  # nothing to do: no write transaction

        def work(conn: apsw.Connection) -> Claim | None:
            while True:
                row = conn.execute(SQL_QUEUE_HEAD, (hook,)).fetchone()
                if row is None:
                    return None
                did, status, attempts, owner, until, _next_at, event_type, body = row
                if not _due(row, stamp):
                    return None  # backing off, or another worker is calling the handler
                note = None
                if status == "claimed":
                    note = (
                        f"the claim of {owner} expired at {until} without an outcome "
                        "(its dispatcher stopped during the call?)"
                    )
                    if retry.gave_up(attempts):
                        conn.execute(SQL_EXPIRED_TO_DEAD, (note, did))
                        given_up.append(expired_claim(hook, did, event_type, body, attempts,
                                                      note, dead=True))  # fmt: skip
                        continue
                    expired_claim(hook, did, event_type, body, attempts, note, dead=False)
                conn.execute(SQL_CLAIM, (worker_id, format_utc(now + hold), note, did))
                return Claim(did, hook, event_type, json.loads(body), attempts + 1, worker_id)

        claim: Claim | None = self.ledger.write(work)
        return claim, given_up

    def finish(self, claim: Claim, error: str | None, retry_at: datetime | None) -> bool:
        """Record a call's outcome: done (``error`` None), pending again from
        ``retry_at``, or dead (``retry_at`` None). False if the claim was lost (it
        expired and another worker claimed the delivery)."""
        now = format_utc(self.clock())
        args: tuple[Any, ...]
        if error is None:
            sql, args = SQL_DONE, (now, claim.delivery_id, claim.worker_id)
        else:
            status = "dead" if retry_at is None else "pending"
            next_at = now if retry_at is None else format_utc(retry_at)
            sql = SQL_FAILED
            args = (status, next_at, error, claim.delivery_id, claim.worker_id)

        def work(conn: apsw.Connection) -> bool:
            conn.execute(sql, args)
            return conn.changes() == 1

        done: bool = self.ledger.write(work)
        return done
