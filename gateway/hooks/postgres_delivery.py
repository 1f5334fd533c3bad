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
  until the retry time the dispatcher gives, or dead); only the lease holder can.
  Backoffs are in the dispatcher's clock (``retry_at``; a delivery not tried yet
  is due at once), leases in the database's.
* ``PostgresDeliveryQueue`` is a ``queue.HookQueue``: ``dispatch.HookDispatcher``
  drives it as it drives SQLite's. The reads of ``hermes-ledger hooks`` (states,
  pending deliveries, dead letters) and the re-queue of dead letters are here too,
  with the same rows as SQLite's (``delivery.hook_states`` … choose by backend).

So every event is delivered at least once, always under one ``delivery_id``; in a
run where no runner dies, exactly once.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg

from hermes_ledger.gateway.hooks.delivery import (
    _DELIVERY_COLUMNS,
    HOOK_EVENTS,
    _context,
    delivery_id_for,
    expired_claim,
)
from hermes_ledger.gateway.hooks.records import (
    Claim,
    Delivery,
    DeliveryOutcome,
    HookDeliveryError,
    HookState,
    PendingDelivery,
    not_dead_letters,
)
from hermes_ledger.gateway.scheduler.postgres import translated
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.events import SessionStarted
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.schema import SCHEMA
from hermes_ledger.ledger.records import Recorded

__all__ = ["HookOutbox", "PostgresDeliveryQueue", "attach_outbox"]

Connection = psycopg.Connection[Any]

# -- statements (the tables are migration 4's) -------------------------------------------

SQL_SUBSCRIBE = (
    "INSERT INTO hook_subscriptions (hook, hook_events) VALUES (%s, %s)"
    " ON CONFLICT (hook) DO UPDATE SET hook_events = excluded.hook_events"
    " RETURNING (xmax = 0) AS created"
)
SQL_SUBSCRIBERS = "SELECT hook, hook_events FROM hook_subscriptions"
SQL_LOCK_LOG = f"SELECT head_position FROM {SCHEMA}.hl_append_state('')"
_RECORD_COLUMNS = (
    "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"
)
SQL_ORIGIN = (
    f"SELECT {_RECORD_COLUMNS} FROM event_bodies WHERE session_id = %s"
    " AND type = 'session_started' ORDER BY position LIMIT 1"
)
SQL_SESSION_EVENTS = (
    f"SELECT {_RECORD_COLUMNS} FROM event_bodies WHERE type = ANY(%s) AND position <= %s"
    " ORDER BY position"
)
# A delivery is due from when its event was recorded (the log's clock, as on SQLite).
SQL_ENQUEUE = (
    "INSERT INTO hook_deliveries (delivery_id, hook, position, event_id, hook_event,"
    " session_key, session_id, context, status, next_attempt_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s) ON CONFLICT DO NOTHING"
)
# The hook's oldest owed delivery that is due (pending and never tried or past its
# retry time in the dispatcher's clock, or claimed with an expired lease) and has no
# earlier owed delivery of its key; locked rows (another runner claiming them) are
# skipped.
SQL_CLAIMABLE = (
    "SELECT d.delivery_id, d.status, d.attempts, d.claimed_by, d.claim_expires, d.hook_event,"
    " d.context FROM hook_deliveries AS d"
    " WHERE d.hook = %(hook)s AND d.status IN ('pending', 'claimed')"
    " AND CASE d.status WHEN 'pending' THEN d.attempts = 0 OR d.next_attempt_at <= %(now)s"
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
    "UPDATE hook_deliveries SET status = 'done', delivered_at = %s,"
    " claimed_by = NULL, claim_expires = NULL"
    " WHERE delivery_id = %s AND status = 'claimed' AND claimed_by = %s"
)
SQL_FAILED = (
    "UPDATE hook_deliveries SET status = %s, next_attempt_at = %s,"
    " last_error = %s, claimed_by = NULL, claim_expires = NULL"
    " WHERE delivery_id = %s AND status = 'claimed' AND claimed_by = %s"
)
SQL_DEAD = (
    f"SELECT {_DELIVERY_COLUMNS} FROM hook_deliveries WHERE status = 'dead' ORDER BY position"
)
SQL_DELIVERY_STATUS = "SELECT status FROM hook_deliveries WHERE delivery_id = %s"
# The first n owed deliveries of each hook, in delivery order (as SQLite's SQL_PENDING).
SQL_PENDING = (
    f"SELECT {_DELIVERY_COLUMNS}, claimed_by, claim_expires FROM ("
    f" SELECT {_DELIVERY_COLUMNS}, claimed_by, claim_expires,"
    " row_number() OVER (PARTITION BY hook ORDER BY position) AS n"
    " FROM hook_deliveries WHERE status IN ('pending', 'claimed')) AS owed"
    ' WHERE n <= %s ORDER BY hook COLLATE "C", position'
)
SQL_REQUEUE = (
    "UPDATE hook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = %s"
    " WHERE delivery_id = %s AND status = 'dead'"
)
# Every subscribed hook with its delivery counts; its checkpoint is the log's head
# (appends queue their deliveries in their own transaction: nothing is left to queue).
SQL_STATES = (
    "SELECT s.hook, (SELECT coalesce(max(position), 0) FROM events),"
    " count(*) FILTER (WHERE d.status = 'pending'),"
    " count(*) FILTER (WHERE d.status = 'claimed'),"
    " count(*) FILTER (WHERE d.status = 'done'),"
    " count(*) FILTER (WHERE d.status = 'dead')"
    " FROM hook_subscriptions AS s LEFT JOIN hook_deliveries AS d ON d.hook = s.hook"
    ' GROUP BY s.hook ORDER BY s.hook COLLATE "C"'
)

_EVENT_TYPES = {hook_event: log_type for log_type, hook_event in HOOK_EVENTS.items()}


# -- filling the outbox ----------------------------------------------------------------


def _delivery_rows(
    conn: Connection, records: Sequence[Recorded], hooks: Sequence[tuple[str, Sequence[str]]]
) -> list[tuple[Any, ...]]:
    """The ``hook_deliveries`` rows of ``records`` for ``hooks`` ((name, hook events))."""
    origins: dict[str, SessionStarted | None] = {}
    rows = []
    for rec in records:
        if rec.type not in HOOK_EVENTS or rec.session_id is None:
            continue
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
                         rec.stream, rec.session_id, body, rec.recorded_at))  # fmt: skip
    return rows


def _insert(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.executemany(SQL_ENQUEUE, rows)
        return max(cur.rowcount, 0)


class HookOutbox:
    """An inline projector: queues each session event of an append for every hook
    subscribed to its hook event, in the append's transaction."""

    def __call__(self, conn: Connection, records: Sequence[Recorded]) -> None:
        if not any(r.type in HOOK_EVENTS and r.session_id is not None for r in records):
            return
        hooks = conn.execute(SQL_SUBSCRIBERS).fetchall()
        if hooks:
            _insert(conn, _delivery_rows(conn, records, hooks))


def _origin(conn: Connection, session_id: str) -> SessionStarted | None:
    """The session's ``session_started`` (its platform and user), if recorded."""
    row = conn.execute(SQL_ORIGIN, (session_id,)).fetchone()
    event = Recorded(*row).event if row else None
    return event if isinstance(event, SessionStarted) else None


_OUTBOXES: weakref.WeakSet[PostgresLog] = weakref.WeakSet()


def attach_outbox(log: PostgresLog) -> None:
    """Queue hook deliveries inside every later append of ``log`` (every writer of
    the database should: an append without it queues nothing). Idempotent."""
    if log in _OUTBOXES:
        return
    _OUTBOXES.add(log)
    log.add_inline_projector(HookOutbox())


# -- draining it -------------------------------------------------------------------------


def _as_text(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row with its times as ledger time text (what ``Delivery._from_row`` reads)."""
    return tuple(format_utc(v) if isinstance(v, datetime) else v for v in row)


class PostgresDeliveryQueue:
    """The hook delivery tables of a PostgreSQL ledger: subscribe, claim, finish
    (a ``queue.HookQueue``), and the reads of ``hermes-ledger hooks``.

    ``hold`` is a claim's default lease: long enough for a handler call and
    recording its outcome (a call that outlives it may be made again by another
    runner). ``clock`` dates retries and deliveries (default: the system clock).
    """

    def __init__(
        self,
        log: PostgresLog,
        *,
        hold: timedelta = timedelta(seconds=70),
        clock: Clock | None = None,
    ) -> None:
        self.log = log
        self.hold = hold
        self.clock = clock or system_clock

    @property
    def _conn(self) -> Connection:
        return self.log.connection

    def subscribe(self, hook: str, hook_events: Iterable[str], *, from_head: bool = True) -> None:
        """Deliver ``hook_events`` (``session:start`` / ``:reset`` / ``:end``) of the
        events appended from now on to ``hook``; a hook subscribed for the first
        time without ``from_head`` gets every such event already in the log too."""
        events = sorted(set(hook_events))
        unknown = [e for e in events if e not in _EVENT_TYPES]
        if not hook or unknown:
            raise HookDeliveryError(
                f"cannot subscribe {hook!r} to {', '.join(unknown) or 'nothing'}",
                hint="name a hook and some of " + ", ".join(sorted(_EVENT_TYPES)),
            )
        conn = self._conn
        with (
            translated(self.log),
            self.log._lock,
            conn.transaction(),
        ):  # one connection: take turns with appends
            head = conn.execute(SQL_LOCK_LOG).fetchone()
            row = conn.execute(SQL_SUBSCRIBE, (hook, events)).fetchone()
            if from_head or not (row and row[0]) or not head:
                return
            types = [_EVENT_TYPES[e] for e in events]
            records = [Recorded(*r) for r in conn.execute(SQL_SESSION_EVENTS, (types, head[0]))]
            _insert(conn, _delivery_rows(conn, records, [(hook, events)]))

    def register(self, subscriptions: Mapping[str, Iterable[str]], *, from_head: bool) -> None:
        """See ``queue.HookQueue.register``: a subscription per hook (log event
        types as hook events)."""
        for hook, types in subscriptions.items():
            events = [HOOK_EVENTS[t] for t in types if t in HOOK_EVENTS]
            if events:
                self.subscribe(hook, events, from_head=from_head)

    def enqueue(self, subscriptions: Mapping[str, Iterable[str]]) -> int:
        """Nothing to do: appends queue their deliveries (``HookOutbox``)."""
        return 0

    def claim(
        self,
        hook: str,
        worker_id: str,
        *,
        retry: RetryPolicy,
        hold: timedelta | None = None,
    ) -> tuple[Claim | None, list[DeliveryOutcome]]:
        """Claim ``hook``'s oldest deliverable event for ``hold`` (default: the
        queue's) and commit; None when nothing is due (or all of it is claimed).
        An expired claim is claimed again, or dead-lettered once ``retry`` gave up
        on its attempts (returned)."""
        given_up: list[DeliveryOutcome] = []
        conn = self._conn
        args = {"hook": hook, "now": self.clock()}
        while True:
            with translated(self.log), self.log._lock, conn.transaction():
                row = conn.execute(SQL_CLAIMABLE, args).fetchone()
                if row is None:
                    return None, given_up
                did, status, attempts, owner, until, hook_event, body = row
                note = None
                if status == "claimed":
                    note = (
                        f"the claim of {owner} expired at {format_utc(until)} without an"
                        " outcome (its dispatcher stopped during the call?)"
                    )
                    if retry.gave_up(attempts):
                        conn.execute(SQL_EXPIRED_TO_DEAD, (note, did))
                        given_up.append(expired_claim(hook, did, hook_event, body, attempts,
                                                      note, dead=True))  # fmt: skip
                        continue
                    expired_claim(hook, did, hook_event, body, attempts, note, dead=False)
                conn.execute(SQL_CLAIM, (worker_id, self.hold if hold is None else hold, note, did))
            return Claim(did, hook, hook_event, json.loads(body), attempts + 1, worker_id), given_up

    def finish(self, claim: Claim, error: str | None, retry_at: datetime | None) -> bool:
        """See ``queue.HookQueue.finish``."""
        now = self.clock()
        args: tuple[Any, ...]
        if error is None:
            sql, args = SQL_DONE, (now, claim.delivery_id, claim.worker_id)
        else:
            status = "dead" if retry_at is None else "pending"
            sql = SQL_FAILED
            args = (status, retry_at or now, error, claim.delivery_id, claim.worker_id)
        with translated(self.log), self.log._lock:
            cur = self._conn.execute(sql, args)
        return cur.rowcount == 1

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
        claimable (or ``limit`` calls). A handler that raises fails its attempt
        (a bare loop for workers and tests; ``HookDispatcher`` is the gateway's)."""
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
            retry_at = None if error is None else retry.next_attempt(claim.attempt, self.clock())
            if self.finish(claim, error, retry_at):
                status: Literal["done", "retry", "dead"] = (
                    "done" if error is None else "retry" if retry_at else "dead"
                )
                outcomes.append(
                    DeliveryOutcome(claim.delivery_id, claim.hook, claim.event_type,
                                    claim.context.get("session_id"), claim.attempt, status,
                                    error, retry_at)
                )  # fmt: skip
        return outcomes

    # -- what `hermes-ledger hooks` reads, and re-queuing --------------------------

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with translated(self.log), self.log._lock:
            return [_as_text(r) for r in self._conn.execute(sql, args).fetchall()]

    def dead_letters(self) -> list[Delivery]:
        """See ``delivery.dead_letters``."""
        return [Delivery._from_row(r) for r in self._rows(SQL_DEAD)]

    def pending(self, per_hook: int) -> list[PendingDelivery]:
        """See ``delivery.pending_deliveries``."""
        return [PendingDelivery._from_pending_row(r) for r in self._rows(SQL_PENDING, (per_hook,))]

    def states(self) -> list[HookState]:
        """See ``delivery.hook_states``: the checkpoint is the log's head."""
        return [HookState(*row) for row in self._rows(SQL_STATES)]

    def requeue(self, delivery_ids: Sequence[str] | None, now: datetime) -> list[str]:
        """See ``delivery.requeue_dead_letters``."""
        conn = self._conn
        with translated(self.log), self.log._lock, conn.transaction():
            if delivery_ids is None:
                ids = [row[0] for row in conn.execute(SQL_DEAD).fetchall()]
            else:
                ids = list(delivery_ids)
                problems = []
                for did in ids:
                    row = conn.execute(SQL_DELIVERY_STATUS, (did,)).fetchone()
                    if row is None:
                        problems.append(f"{did} (no such delivery)")
                    elif row[0] != "dead":
                        problems.append(f"{did} ({row[0]}, not dead)")
                if problems:
                    raise not_dead_letters(problems)
            for did in ids:
                conn.execute(SQL_REQUEUE, (now, did))
        return ids
