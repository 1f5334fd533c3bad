"""The scheduler on PostgreSQL: due sessions claimed across hosts, each closed once.

The SQLite scheduler (``ticks.Scheduler``) relies on the file's single writer; here
any number of runners, on any hosts, each with its own connection, share one
database (migration 4, ``session_deadlines``; docs/postgres.md, "Claims and
deliveries across hosts"):

* ``DeadlineProjector`` keeps one row per unclosed session key with a deadline,
  inside every append's transaction (after the projections: it reads the
  ``session_map`` row the append just wrote), with the SQLite scheduler's rule
  (``ticks.Scheduler._deadline_for``): the reset policy's next deadline after the
  key's last activity, ``finish`` (due at once) while a close is in progress, no
  row once the session has ended. ``refresh_deadlines`` re-derives every row (a
  new configuration, or a log that had no projector) and stores the fingerprint
  of the policies it used (``ticks.policy_hash``, migration 7's
  ``scheduler_state``); ``sync_deadlines``, run when a scheduler is made
  (``runner.scheduler_for``), re-derives every row when that fingerprint is not
  the configuration's (a shortened ``idle_minutes`` closes idle sessions at the
  next tick, as on SQLite), and otherwise only derives the missing ones.
* ``PostgresScheduler.tick`` claims due rows (``deadline <= now``, earliest first,
  limited) with ``FOR UPDATE SKIP LOCKED``: concurrent runners take disjoint rows
  without waiting for each other. A claim is a lease (``claimed_by``,
  ``claim_expires`` in the database's clock, so hosts' clocks do not matter): a
  runner killed mid-close leaves a claim that expires, and another finishes the
  close from where the log says it stands.
* The close is ``closing.SessionCloser``'s, unchanged: cause → flush outcome →
  ``session_ended``, every append through ``PostgresLog`` with the stream's
  expected version, so two runners racing on one session produce one close (the
  log's ``events_one_end_per_session`` index is the last line of defence).
* ``PostgresScheduler.finalize`` (shutdown: every open session reset → flush →
  ended) claims each open key the same way, due or not (``SQL_CLAIM_KEY``), so
  finalizers and tickers on several hosts never close a session twice.

``SessionCloser`` and the key's state (``reads.read_key_state``) are the session
code's, written once for both backends: they run over the ``PostgresLog`` through
``gateway.sessions.postgres_reads.LogReads`` (what they use of a ``Ledger``), as
the session store does on PostgreSQL.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import psycopg

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.logs import fields
from hermes_ledger.gateway.scheduler.ticks import ClosedSession, TickReport, policy_hash
from hermes_ledger.gateway.sessions.closing import (
    DEFAULT_FLUSH_TIMEOUT,
    CloseStep,
    Flusher,
    SessionCloser,
    expiry_cause,
)
from hermes_ledger.gateway.sessions.postgres_reads import over_postgres
from hermes_ledger.gateway.sessions.reads import read_key_state
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.gateway.workers import worker_name
from hermes_ledger.ledger.clock import Clock, format_utc, parse_utc, system_clock
from hermes_ledger.ledger.events import SessionReset
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.schema import SCHEMA
from hermes_ledger.ledger.records import Recorded

__all__ = [
    "DeadlineProjector",
    "DeadlineSync",
    "PostgresScheduler",
    "attach_deadlines",
    "catch_up_deadlines",
    "claim_due",
    "refresh_deadlines",
    "sync_deadlines",
    "translated",
]

logger = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

# -- statements (the tables are migration 4's and 7's) ---------------------------------

SQL_KEY_ROW = (
    "SELECT session_id, status, updated_at, platform, chat_type FROM session_map"
    " WHERE session_key = %s"
)
SQL_UNCLOSED_KEYS = "SELECT session_key FROM session_map WHERE status <> 'closed'"
# Unclosed keys with no deadline row: appended by a writer without the projector, or
# whose policy sets no deadline (those are evaluated again, and stay without a row).
SQL_KEYS_WITHOUT_DEADLINE = (
    "SELECT m.session_key FROM session_map AS m WHERE m.status <> 'closed'"
    " AND NOT EXISTS (SELECT FROM session_deadlines AS d WHERE d.session_key = m.session_key)"
)
SQL_UPSERT_DEADLINE = (
    "INSERT INTO session_deadlines (session_key, session_id, deadline, reason)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT (session_key) DO UPDATE SET"
    " deadline = excluded.deadline, reason = excluded.reason,"
    " claimed_by = CASE WHEN session_deadlines.session_id = excluded.session_id"
    "  THEN session_deadlines.claimed_by END,"
    " claim_expires = CASE WHEN session_deadlines.session_id = excluded.session_id"
    "  THEN session_deadlines.claim_expires END,"
    " session_id = excluded.session_id"
)
SQL_DROP_DEADLINE = "DELETE FROM session_deadlines WHERE session_key = %s"
# The rows of keys that have no unclosed session (a re-derivation upserts the others,
# which keeps the lease of a runner closing one).
SQL_DROP_STALE_DEADLINES = (
    "DELETE FROM session_deadlines AS d WHERE NOT EXISTS (SELECT FROM session_map AS m"
    " WHERE m.session_key = d.session_key AND m.status <> 'closed')"
)
# The fingerprint of the policies the deadline rows were derived under.
STATE_DEADLINES = "deadlines"
SQL_DEADLINES_HASH = "SELECT config_hash FROM scheduler_state WHERE name = %s"
SQL_SAVE_DEADLINES_HASH = (
    "INSERT INTO scheduler_state (name, config_hash) VALUES (%s, %s)"
    " ON CONFLICT (name) DO UPDATE SET config_hash = excluded.config_hash, updated_at = now()"
)
SQL_LOCK_LOG = f"SELECT head_position FROM {SCHEMA}.hl_append_state('')"
# The due query: earliest deadlines first through session_deadlines_due; rows another
# runner is claiming right now are skipped, not waited for; a lease is taken in the
# database's clock, and an expired one is taken over.
SQL_CLAIM_DUE = (
    "WITH due AS (SELECT session_key FROM session_deadlines"
    " WHERE deadline <= %(now)s AND (claim_expires IS NULL OR claim_expires <= clock_timestamp())"
    " ORDER BY deadline LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " UPDATE session_deadlines AS d SET claimed_by = %(runner)s,"
    " claim_expires = clock_timestamp() + %(lease)s"
    " FROM due WHERE d.session_key = due.session_key"
    " RETURNING d.session_key, d.session_id, d.deadline, d.reason"
)
SQL_RELEASE = (
    "UPDATE session_deadlines SET claimed_by = NULL, claim_expires = NULL,"
    " deadline = coalesce(%s, deadline) WHERE session_key = %s AND claimed_by = %s"
)
SQL_DONE = "DELETE FROM session_deadlines WHERE session_key = %s AND session_id = %s"
SQL_OPEN_SESSIONS = (
    "SELECT session_key, session_id FROM session_map WHERE status = 'open' ORDER BY session_key"
)
# finalize's claim of one open key, due or not, with or without a deadline row (a
# policy that never expires leaves none): the row is made due at once and leased,
# unless another runner holds an unexpired lease on it (then nothing is returned).
SQL_CLAIM_KEY = (
    "INSERT INTO session_deadlines AS d"
    " (session_key, session_id, deadline, reason, claimed_by, claim_expires)"
    " VALUES (%(key)s, %(session_id)s, %(now)s, 'finish', %(runner)s,"
    " clock_timestamp() + %(lease)s)"
    " ON CONFLICT (session_key) DO UPDATE SET claimed_by = excluded.claimed_by,"
    " claim_expires = excluded.claim_expires"
    " WHERE d.claim_expires IS NULL OR d.claim_expires <= clock_timestamp()"
    " RETURNING d.session_id"
)


@contextmanager
def translated(log: PostgresLog) -> Iterator[None]:
    """Driver errors of the statements run here (a lost connection, a refused
    privilege) raised as the log's LedgerErrors, as its own calls raise them."""
    try:
        yield
    except psycopg.Error as exc:
        log._translate(exc)


# -- the deadline rows -------------------------------------------------------------------


def _deadline_for(conn: Connection, config: GatewayConfig, key: str) -> None:
    """Bring ``key``'s deadline row up to date from its ``session_map`` row (the rule
    of ``ticks.Scheduler._deadline_for``)."""
    row = conn.execute(SQL_KEY_ROW, (key,)).fetchone()
    if row is None or row[1] == "closed":
        conn.execute(SQL_DROP_DEADLINE, (key,))
        return
    session_id, status, updated_at, platform, chat_type = row
    if status == "closing":  # a close in progress: finish it as soon as possible
        deadline, reason = parse_utc(updated_at), "finish"
    else:
        expiry = config.reset_policy(platform, chat_type).next_deadline(parse_utc(updated_at))
        if expiry is None:
            conn.execute(SQL_DROP_DEADLINE, (key,))
            return
        deadline, reason = expiry.deadline, expiry.reason
    conn.execute(SQL_UPSERT_DEADLINE, (key, session_id, deadline, reason))


class DeadlineProjector:
    """An inline projector (``PostgresLog.add_inline_projector``): re-derives the
    deadline row of every key an append touched, in the append's transaction.
    Attach it after the projections (``projections.postgres.attach``)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config

    def __call__(self, conn: Connection, records: Sequence[Recorded]) -> None:
        for key in dict.fromkeys(r.stream for r in records if r.session_id is not None):
            _deadline_for(conn, self.config, key)


_PROJECTORS: weakref.WeakKeyDictionary[PostgresLog, DeadlineProjector] = weakref.WeakKeyDictionary()


def attach_deadlines(log: PostgresLog, config: GatewayConfig) -> DeadlineProjector:
    """Keep the deadlines inside every later append of ``log`` under ``config``'s
    policies (after the projections: attach those first). Once per log: a second
    call gives the projector the newer ``config``."""
    projector = _PROJECTORS.get(log)
    if projector is None:
        projector = _PROJECTORS[log] = DeadlineProjector(config)
        log.add_inline_projector(projector)
    projector.config = config
    return projector


class DeadlineSync(NamedTuple):
    """What ``sync_deadlines`` did: ``rederived`` every deadline (the policies had
    changed) or only derived the missing ones; ``keys``: the unclosed keys evaluated."""

    rederived: bool
    keys: int


def _expires(config: GatewayConfig) -> bool:
    """Whether any policy of ``config`` ever expires a session."""
    policies = [config.default_reset_policy, *config.reset_by_type.values(),
                *config.reset_by_platform.values()]  # fmt: skip
    return any(p.mode != "none" for p in policies)


def _stored_hash(conn: Connection) -> str | None:
    row = conn.execute(SQL_DEADLINES_HASH, (STATE_DEADLINES,)).fetchone()
    return None if row is None else str(row[0])


def _rederive_all(conn: Connection, config: GatewayConfig) -> int:
    """Every deadline row from ``session_map`` and ``config``, and ``config``'s
    fingerprint stored (inside the caller's transaction, under the append lock)."""
    conn.execute(SQL_DROP_STALE_DEADLINES)
    keys = [row[0] for row in conn.execute(SQL_UNCLOSED_KEYS).fetchall()]
    for key in keys:
        _deadline_for(conn, config, key)
    conn.execute(SQL_SAVE_DEADLINES_HASH, (STATE_DEADLINES, policy_hash(config)))
    return len(keys)


def _derive_missing(conn: Connection, config: GatewayConfig) -> int:
    keys = [row[0] for row in conn.execute(SQL_KEYS_WITHOUT_DEADLINE).fetchall()]
    for key in keys:
        _deadline_for(conn, config, key)
    return len(keys)


def refresh_deadlines(log: PostgresLog, config: GatewayConfig) -> int:
    """Re-derive every deadline row from ``session_map`` and ``config`` under the
    log's append lock (no append in between) and store ``config``'s fingerprint;
    returns the unclosed keys evaluated. A runner's lease on a row is kept while
    the row names the same session."""
    conn = log.connection
    with translated(log), log._lock, conn.transaction():
        conn.execute(SQL_LOCK_LOG)
        return _rederive_all(conn, config)


def catch_up_deadlines(log: PostgresLog, config: GatewayConfig) -> int:
    """Derive the deadline rows missing for unclosed keys (appends by a writer that
    had no ``DeadlineProjector``) under the log's append lock; returns the keys
    evaluated. Cheap when nothing is missing (one indexed anti-join), and nothing
    at all when no policy of ``config`` ever expires a session. Rows that exist
    are kept: after a change of policies, ``refresh_deadlines`` (or
    ``sync_deadlines``, which sees the change) brings every row up to date."""
    if not _expires(config):
        return 0
    conn = log.connection
    with translated(log), log._lock, conn.transaction():
        conn.execute(SQL_LOCK_LOG)
        return _derive_missing(conn, config)


def sync_deadlines(log: PostgresLog, config: GatewayConfig) -> DeadlineSync:
    """Bring the deadline rows up to date for ``config`` (what a scheduler does when
    it is made): when the stored fingerprint of the policies is not ``config``'s (or
    none is stored), re-derive every row and store the fingerprint, in one
    transaction under the append lock; otherwise derive only the missing rows, as
    ``catch_up_deadlines``. The fingerprint is read again once the lock is held, so
    runners starting together with a new configuration re-derive once: the first
    to take the lock does it, the others find its fingerprint."""
    wanted = policy_hash(config)
    conn = log.connection
    with translated(log), log._lock, conn.transaction():
        if _stored_hash(conn) == wanted and not _expires(config):
            return DeadlineSync(rederived=False, keys=0)  # no row to derive: no lock
        conn.execute(SQL_LOCK_LOG)
        # Read again under the lock (READ COMMITTED: each statement sees what was
        # committed before it): a runner we waited for may have re-derived already.
        if _stored_hash(conn) == wanted:  # the cheap path: one indexed anti-join
            return DeadlineSync(rederived=False, keys=_derive_missing(conn, config))
        done = DeadlineSync(rederived=True, keys=_rederive_all(conn, config))
    logger.info(
        "reset policies changed since the deadlines were derived: re-derived the"
        " deadlines of %d unclosed session key(s)", done.keys,
        extra=fields("deadlines_rederived", sessions=done.keys),
    )  # fmt: skip
    return done


def claim_due(
    conn: Connection, runner: str, now: datetime, limit: int, lease: timedelta
) -> list[tuple[str, str, datetime, str]]:
    """Claim up to ``limit`` due rows (``deadline <= now``, earliest first) for
    ``runner`` for ``lease`` and commit: (key, session id, deadline, reason) each."""
    args = {"now": now, "limit": limit, "runner": runner, "lease": lease}
    with conn.transaction():
        rows = conn.execute(SQL_CLAIM_DUE, args).fetchall()
    return sorted(((r[0], r[1], r[2], r[3]) for r in rows), key=lambda r: (r[2], r[0]))


# -- the close, on the PostgreSQL log -------------------------------------------------


class PostgresScheduler:
    """Closes the due sessions of a PostgreSQL ledger; any number of them, on any
    hosts, may tick at once (``ticks.Scheduler``'s parameters, plus ``lease``: how
    long a claim holds, default the flush timeout + 60 s).

    Attaches ``projections.postgres`` and a ``DeadlineProjector`` to ``log`` (every
    writer of the database should attach the projector too, so its appends keep
    the deadlines; ``refresh_deadlines`` catches a database up).
    """

    def __init__(
        self,
        log: PostgresLog,
        config: GatewayConfig | None = None,
        flusher: Flusher | None = None,
        clock: Clock | None = None,
        *,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
        max_flush_attempts: int = 3,
        flush_retry_delay: timedelta = timedelta(minutes=1),
        batch: int = 100,
        lease: timedelta | None = None,
        name: str | None = None,
    ) -> None:
        self.log = log
        self.config = config or GatewayConfig()
        self.clock = clock or system_clock
        self.batch = batch
        self.lease = lease or timedelta(seconds=flush_timeout + 60)
        self.name = name or worker_name()
        self.reads = over_postgres(log)  # what the session code uses of a Ledger
        self.closer = SessionCloser(
            self.reads,
            flusher,
            flush_timeout=flush_timeout,
            retry=RetryPolicy(max_flush_attempts, flush_retry_delay),
        )
        attach_deadlines(log, self.config)  # after the projections (over_postgres)

    @property
    def _conn(self) -> Connection:
        return self.log.connection

    def _rederive(self, key: str) -> None:
        with self.log._lock, self._conn.transaction():
            _deadline_for(self._conn, self.config, key)

    def _release(self, key: str, retry_at: datetime | None) -> None:
        with self.log._lock:
            self._conn.execute(SQL_RELEASE, (retry_at, key, self.name))

    def tick(self, now: datetime | None = None) -> TickReport:
        """One pass: claim due rows a batch at a time and close (or finish closing)
        each, until none is due or every due row is another runner's."""
        now = now or self.clock()
        report = TickReport(now=format_utc(now))
        with translated(self.log):
            while True:
                with self.log._lock:  # one connection: take turns with appends
                    rows = claim_due(self._conn, self.name, now, self.batch, self.lease)
                report.due += len(rows)
                for key, session_id, _deadline, _reason in rows:
                    self._close_one(key, session_id, now, report)
                if len(rows) < self.batch:
                    return report

    def _close_one(self, key: str, session_id: str, now: datetime, report: TickReport) -> None:
        state = read_key_state(self.reads, key)
        if state.session_id != session_id or state.status == "closed":
            self._rederive(key)
            report.skipped += 1
            return
        version, origin = state.version, state.origin
        if state.status == "open":
            policy = self.config.reset_policy(
                origin.platform.value if origin else None, origin.chat_type if origin else None
            )
            assert state.updated_at is not None
            expiry = policy.evaluate(state.updated_at, now)
            if expiry is None:  # activity since the deadline was derived
                self._rederive(key)
                report.skipped += 1
                return
            if not self.closer.begin(key, version, expiry_cause(session_id, policy, expiry, now)):
                self._release(key, None)
                report.skipped += 1
                return
            version += 1
        step = self.closer.finish(key, session_id, version, origin, now)
        self._record(key, session_id, step, report)

    def _record(self, key: str, session_id: str, step: CloseStep, report: TickReport) -> None:
        report.flush_failures += step.flush_failed
        if step.status == "waiting":
            self._release(key, step.retry_at)
            report.waiting_for_retry += 1
        elif step.status == "lost":
            self._release(key, None)
            report.skipped += 1
        else:
            with self.log._lock:
                self._conn.execute(SQL_DONE, (key, session_id))
            if step.status == "ended":
                deadline = format_utc(step.deadline) if step.deadline else None
                report.closed.append(ClosedSession(key, session_id, step.reason, deadline))

    def finalize(self, now: datetime | None = None, trigger: str = "shutdown") -> TickReport:
        """Close every open session now (reset → flush → ended ``shutdown``), as
        ``ticks.Scheduler.finalize`` does. Each key is claimed first, as ``tick``
        claims a due one (a lease, skipped while another runner's is unexpired), so
        finalizers and tickers on other hosts never close a session twice; a close
        in progress is left to the tick that finishes it."""
        now = now or self.clock()
        report = TickReport(now=format_utc(now))
        with translated(self.log):
            with self.log._lock:
                keys = self._conn.execute(SQL_OPEN_SESSIONS).fetchall()
            for key, _session_id in keys:
                if not self._claim_key(key, _session_id, now):
                    report.skipped += 1  # another runner is closing it
                    continue
                state = read_key_state(self.reads, key)
                if state.status != "open" or state.session_id is None:
                    self._rederive(key)  # closed or closing since the list was read
                    self._release(key, None)
                    report.skipped += 1
                    continue
                cause = SessionReset(session_id=state.session_id, trigger=trigger, occurred_at=now)
                if not self.closer.begin(key, state.version, cause):  # an append came first
                    self._rederive(key)
                    self._release(key, None)
                    report.skipped += 1
                    continue
                report.due += 1
                step = self.closer.finish(
                    key, state.session_id, state.version + 1, state.origin, now
                )
                self._record(key, state.session_id, step, report)
        return report

    def _claim_key(self, key: str, session_id: str, now: datetime) -> bool:
        args = {"key": key, "session_id": session_id, "now": now, "runner": self.name,
                "lease": self.lease}  # fmt: skip
        with self.log._lock:
            return self._conn.execute(SQL_CLAIM_KEY, args).fetchone() is not None
