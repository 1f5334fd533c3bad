"""The scheduler: close every session whose reset-policy deadline has passed, once.

Each tick (1) brings the deadline table up to date from the events appended
since the last tick — only keys touched since then are re-evaluated, so the
cost follows activity, not the number of sessions — then (2) takes the due
sessions from an index on the deadline and closes each: ``session_expired``
(with the deadline it missed, the evaluation time and the policy) → flush
outcome → ``session_ended`` (``idle_expiry`` / ``daily_reset`` / ``cron_reset``).

Exactly once: every append carries the stream's expected version and the
database allows one ``session_ended`` per session, so two schedulers (or a
scheduler and a late message) can never close a session twice. A scheduler
claims a deadline row (claimed_by / claimed_until) before it flushes, so a
second scheduler does not flush the same close while the first is at it; a
claim that outlives its scheduler (kill -9) expires and the close is finished
by whoever ticks next. Misfires coalesce: after downtime each session is
closed once, recording the deadline it missed.

Deadlines are derived from the log and the configuration only: dropping the
table (or changing the reset policies) re-derives them from the events. The
tables (``scheduler_state``, ``session_deadlines``) are created by migration 2;
the projections (``session_map``…) are read here, never written.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import apsw

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.sessions.closing import (
    DEFAULT_FLUSH_TIMEOUT,
    CloseStep,
    Flusher,
    SessionCloser,
    expiry_cause,
)
from hermes_ledger.gateway.sessions.reads import read_key_state
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.gateway.workers import worker_name
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import Clock, format_utc, parse_utc, system_clock
from hermes_ledger.ledger.events import SessionReset
from hermes_ledger.ledger.sql import SQL_HEAD_POSITION, scalar
from hermes_ledger.projections import attach

__all__ = ["ClosedSession", "Scheduler", "TickReport", "policy_hash"]

SQL_STATE = "SELECT position, config_hash FROM scheduler_state WHERE id = 1"
SQL_SAVE_STATE = (
    "INSERT INTO scheduler_state (id, position, config_hash) VALUES (1, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET position = excluded.position,"
    " config_hash = excluded.config_hash"
)
SQL_TOUCHED_KEYS = "SELECT DISTINCT stream FROM events WHERE position > ? AND position <= ?"
SQL_UNCLOSED_KEYS = "SELECT session_key FROM session_map WHERE status <> 'closed'"
SQL_KEY_ROW = (
    "SELECT session_id, status, updated_at, platform, chat_type FROM session_map"
    " WHERE session_key = ?"
)
SQL_UPSERT_DEADLINE = (
    "INSERT INTO session_deadlines (session_key, session_id, deadline, reason)"
    " VALUES (?1, ?2, ?3, ?4) ON CONFLICT (session_key) DO UPDATE SET"
    " deadline = excluded.deadline, reason = excluded.reason,"
    " claimed_by = CASE WHEN session_id = excluded.session_id THEN claimed_by END,"
    " claimed_until = CASE WHEN session_id = excluded.session_id THEN claimed_until END,"
    " session_id = excluded.session_id"
)
SQL_DROP_DEADLINE = "DELETE FROM session_deadlines WHERE session_key = ?"
SQL_DUE = (
    "SELECT session_key, session_id, deadline, reason FROM session_deadlines"
    " WHERE deadline <= ?1 AND (claimed_until IS NULL OR claimed_until <= ?1)"
    " ORDER BY deadline LIMIT ?2"
)
SQL_CLAIM = (
    "UPDATE session_deadlines SET claimed_by = ?, claimed_until = ?"
    " WHERE session_key = ? AND session_id = ? AND (claimed_until IS NULL OR claimed_until <= ?)"
)
SQL_RELEASE = (
    "UPDATE session_deadlines SET claimed_by = NULL, claimed_until = NULL, deadline = ?"
    " WHERE session_key = ? AND claimed_by = ?"
)
SQL_DONE = "DELETE FROM session_deadlines WHERE session_key = ? AND session_id = ?"
SQL_OPEN_KEYS = "SELECT session_key FROM session_map WHERE status = 'open' ORDER BY session_key"

_REFRESH_BATCH = 20_000  # events per refresh transaction


def policy_hash(config: GatewayConfig) -> str:
    """The fingerprint of ``config``'s reset policies (the default, per chat type and
    per platform, and the time zone): what every deadline is derived from. Both
    schedulers store it beside their deadlines (``scheduler_state``) and re-derive
    every deadline when it differs."""
    policies = config.model_dump_json(
        include={"default_reset_policy", "reset_by_type", "reset_by_platform", "timezone"}
    )
    return hashlib.sha256(policies.encode()).hexdigest()


@dataclass(frozen=True)
class ClosedSession:
    session_key: str
    session_id: str
    reason: str
    deadline: str | None


@dataclass
class TickReport:
    """What one tick did. ``closed`` lists the sessions it ended."""

    now: str
    refreshed_keys: int = 0
    due: int = 0
    closed: list[ClosedSession] = field(default_factory=list)
    flush_failures: int = 0
    waiting_for_retry: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scheduler:
    """Evaluates reset policies over the log and closes due sessions.

    ``config`` gives the policies; ``flusher`` receives each closing session's
    transcript; a failed flush is retried on later ticks (``flush_retry_delay``
    apart) up to ``max_flush_attempts`` times, then the session is closed with
    the failure recorded. ``clock`` is used when ``tick`` is given no ``now``.
    """

    def __init__(
        self,
        ledger: Ledger,
        config: GatewayConfig | None = None,
        flusher: Flusher | None = None,
        clock: Clock | None = None,
        *,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
        max_flush_attempts: int = 3,
        flush_retry_delay: timedelta = timedelta(minutes=1),
        batch: int = 1000,
        name: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.config = config or GatewayConfig()
        self.clock = clock or system_clock
        self.flush_timeout = flush_timeout
        self.closer = SessionCloser(
            ledger,
            flusher,
            flush_timeout=flush_timeout,
            retry=RetryPolicy(max_flush_attempts, flush_retry_delay),
        )
        self.batch = batch
        self.name = name or worker_name()
        attach(ledger)

    # -- deadlines ---------------------------------------------------------------

    def _deadline_for(self, conn: apsw.Connection, key: str) -> None:
        row: Any = conn.execute(SQL_KEY_ROW, (key,)).fetchone()
        if row is None or row[1] == "closed":
            conn.execute(SQL_DROP_DEADLINE, (key,))
            return
        session_id, status, updated_at, platform, chat_type = row
        if status == "closing":  # a close in progress: finish it as soon as possible
            deadline, reason = updated_at, "finish"
        else:
            policy = self.config.reset_policy(platform, chat_type)
            expiry = policy.next_deadline(parse_utc(updated_at))
            if expiry is None:
                conn.execute(SQL_DROP_DEADLINE, (key,))
                return
            deadline, reason = format_utc(expiry.deadline), expiry.reason
        conn.execute(SQL_UPSERT_DEADLINE, (key, session_id, deadline, reason))

    def refresh(self) -> int:
        """Re-derive the deadlines of keys touched since the last refresh; returns
        how many keys were re-evaluated (all unclosed keys after a config change)."""
        wanted = policy_hash(self.config)
        total = 0
        while True:

            def step(conn: apsw.Connection) -> tuple[int, bool]:
                row: Any = conn.execute(SQL_STATE).fetchone()
                head: int = scalar(conn, SQL_HEAD_POSITION)
                position, config_hash = row if row else (0, "")
                if config_hash != wanted:
                    keys = [r[0] for r in conn.execute(SQL_UNCLOSED_KEYS)]
                    upto = head
                else:
                    upto = min(head, position + _REFRESH_BATCH)
                    keys = [r[0] for r in conn.execute(SQL_TOUCHED_KEYS, (position, upto))]
                for key in keys:
                    self._deadline_for(conn, key)
                conn.execute(SQL_SAVE_STATE, (upto, wanted))
                return len(keys), upto >= head

            count, done = self.ledger.write(step)
            total += count
            if done:
                return total

    def due(self, now: datetime, limit: int | None = None) -> list[tuple[str, str, str, str]]:
        """Unclaimed deadline rows at or before ``now``, earliest first (indexed)."""
        return self.ledger.query(SQL_DUE, (format_utc(now), limit or self.batch))

    # -- closing -----------------------------------------------------------------

    def _claim(self, key: str, session_id: str, now: datetime) -> bool:
        until = format_utc(now + timedelta(seconds=self.flush_timeout + 60))
        stamp = format_utc(now)

        def claim(conn: apsw.Connection) -> bool:
            conn.execute(SQL_CLAIM, (self.name, until, key, session_id, stamp))
            return bool(conn.changes())

        return bool(self.ledger.write(claim))

    def _release(self, key: str, retry_at: datetime) -> None:
        self.ledger.write(
            lambda conn: conn.execute(SQL_RELEASE, (format_utc(retry_at), key, self.name))
        )

    def tick(self, now: datetime | None = None) -> TickReport:
        """One pass: refresh deadlines, then close (or finish closing) every due session."""
        now = now or self.clock()
        report = TickReport(now=format_utc(now), refreshed_keys=self.refresh())
        seen: set[tuple[str, str]] = set()
        while True:
            rows = [r for r in self.due(now) if (r[0], r[1]) not in seen]
            if not rows:
                return report
            report.due += len(rows)
            progressed = False
            for key, session_id, _deadline, _reason in rows:
                seen.add((key, session_id))
                if not self._claim(key, session_id, now):
                    report.skipped += 1
                    continue
                progressed = True
                self._close_one(key, session_id, now, report)
            if not progressed or len(rows) < self.batch:
                return report

    def _close_one(self, key: str, session_id: str, now: datetime, report: TickReport) -> None:
        state = read_key_state(self.ledger, key)
        if state.session_id != session_id or state.status == "closed":
            self.ledger.write(lambda conn: self._deadline_for(conn, key))
            report.skipped += 1
            return
        version, origin = state.version, state.origin
        if state.status == "open":
            policy = self.config.reset_policy(
                origin.platform.value if origin else None, origin.chat_type if origin else None
            )
            assert state.updated_at is not None
            expiry = policy.evaluate(state.updated_at, now)
            if expiry is None:  # activity since the deadline was computed
                self.ledger.write(lambda conn: self._deadline_for(conn, key))
                report.skipped += 1
                return
            cause = expiry_cause(session_id, policy, expiry, now)
            if not self.closer.begin(key, version, cause):
                self.ledger.write(lambda conn: self._deadline_for(conn, key))
                report.skipped += 1
                return
            version += 1
        step = self.closer.finish(key, session_id, version, origin, now)
        self._record(key, session_id, step, report)

    def _record(self, key: str, session_id: str, step: CloseStep, report: TickReport) -> None:
        """Account for one step of a close (flush and end, see ``SessionCloser.finish``):
        release the claim until a retry is due, or drop the finished deadline row."""
        report.flush_failures += step.flush_failed
        if step.status == "waiting":
            assert step.retry_at is not None
            if step.written:
                self._release(key, step.retry_at)
            report.waiting_for_retry += 1
        elif step.status == "lost":
            report.skipped += 1
        else:
            self.ledger.write(lambda conn: conn.execute(SQL_DONE, (key, session_id)))
            if step.status == "ended":
                deadline = format_utc(step.deadline) if step.deadline else None
                report.closed.append(ClosedSession(key, session_id, step.reason, deadline))

    def finalize(self, now: datetime | None = None, trigger: str = "shutdown") -> TickReport:
        """Close every open session now (reset → flush → ended ``shutdown``)."""
        now = now or self.clock()
        report = TickReport(now=format_utc(now), refreshed_keys=self.refresh())
        for (key,) in self.ledger.query(SQL_OPEN_KEYS):
            state = read_key_state(self.ledger, key)
            if state.status != "open" or state.session_id is None:
                continue
            cause = SessionReset(session_id=state.session_id, trigger=trigger, occurred_at=now)
            if self.closer.begin(key, state.version, cause):
                report.due += 1
                step = self.closer.finish(
                    key, cause.session_id, state.version + 1, state.origin, now
                )
                self._record(key, cause.session_id, step, report)
        return report
