"""Closing a session: the one close sequence, with the memory flush inside it.

A close is cause (``session_reset`` / ``session_expired``) → flush outcome(s) →
``session_ended``; on the message path the replacement's ``session_started``
follows in the same append. ``SessionCloser`` is the only code that writes it,
for both callers:

* the session store (a reset, or a message after the deadline) calls ``close``:
  the flush runs first, then cause, outcome, end and the new session are one
  append;
* the scheduler (idle/daily/cron expiry, shutdown) calls ``begin`` to record the
  cause alone (the session is ``closing`` from then on), then ``finish`` to flush
  and record the outcome and the end. A failed flush is recorded and tried again
  on a later tick, as its ``RetryPolicy`` says, until the policy gives up and the
  session ends with the failure on record.

Whoever finds a session half-closed (status ``closing``: after a crash, or while
a flush waits to be retried) calls ``finish`` too: it reads where the close stands
from the log (``close_progress``) and carries on from there. Every append states
the stream version it expects, and the database allows one ``session_ended`` per
session, so of two writers acting on one key only one succeeds; the other is told
(False, or a ``lost`` step), re-reads and finds the work done.

A flusher is any callable ``flusher(context, transcript)`` (sync or async) that
saves what is worth remembering from a session before it closes. Its outcome
becomes an event — ``memory_flushed``, ``memory_flush_failed`` or, when no
flusher is configured, ``memory_flush_skipped``. A flusher that raises or
outlives its timeout is recorded as failed.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from hermes_ledger.gateway.logs import fields, seconds_text
from hermes_ledger.gateway.sessions.policy import Expiry, ResetPolicy
from hermes_ledger.gateway.sessions.reads import load_transcript
from hermes_ledger.gateway.sessions.sources import SessionSource
from hermes_ledger.gateway.usercode.bounded import CallTimeoutError, call_bounded
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.ledger import ConcurrencyError, Ledger, SessionAlreadyEndedError
from hermes_ledger.ledger.clock import parse_utc
from hermes_ledger.ledger.events import (
    EventModel,
    MemoryFlushed,
    MemoryFlushFailed,
    MemoryFlushSkipped,
    SessionEnded,
    SessionExpired,
    SessionReset,
)

__all__ = [
    "DEFAULT_FLUSH_TIMEOUT",
    "NO_FLUSHER",
    "CloseProgress",
    "CloseStep",
    "FlushContext",
    "FlushOutcome",
    "Flusher",
    "SessionCloser",
    "append_if_unchanged",
    "close_progress",
    "end_reason_for",
    "expiry_cause",
    "provider_name",
    "run_flush",
]

log = logging.getLogger(__name__)

# -- the memory flush ----------------------------------------------------------------

DEFAULT_FLUSH_TIMEOUT = 30.0
"""Seconds a flusher may take before its flush is recorded as failed."""

NO_FLUSHER = "no flusher configured"
"""The ``memory_flush_skipped`` reason when no flusher is configured."""

FlushOutcome = MemoryFlushed | MemoryFlushFailed | MemoryFlushSkipped


@dataclass(frozen=True)
class FlushContext:
    """What a flusher is told about the session it flushes."""

    session_key: str
    session_id: str
    reason: str
    platform: str | None = None
    user_id: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Flusher(Protocol):
    """Save a closing session's memory. Return an optional detail string; raise on failure."""

    def __call__(self, context: FlushContext, transcript: Sequence[dict[str, Any]]) -> Any: ...


def provider_name(flusher: object) -> str:
    """A stable, readable name for the audit trail (``module:qualname``)."""
    name = getattr(flusher, "provider_name", None)
    if isinstance(name, str) and name:
        return name
    target = flusher if inspect.isfunction(flusher) or inspect.ismethod(flusher) else type(flusher)
    module = getattr(target, "__module__", "?")
    return f"{module}:{getattr(target, '__qualname__', type(flusher).__name__)}"


def run_flush(
    flusher: Flusher | None,
    context: FlushContext,
    transcript: Sequence[dict[str, Any]],
    *,
    timeout: float = DEFAULT_FLUSH_TIMEOUT,
    attempt: int = 1,
    skipped: str = NO_FLUSHER,
) -> FlushOutcome:
    """Run one flush attempt and return the event that records its outcome.

    The flusher runs through ``call_bounded``: a hung provider cannot stall the
    caller past ``timeout``, and a timed-out one is recorded as failed. Without a
    flusher the outcome is ``memory_flush_skipped`` with reason ``skipped``.
    """
    if flusher is None:
        return MemoryFlushSkipped(session_id=context.session_id, reason=skipped)
    provider = provider_name(flusher)
    try:
        result = call_bounded(
            flusher, context, list(transcript), timeout=timeout, name=f"flush-{context.session_id}"
        )
    except BaseException as exc:  # a timeout, or whatever the provider raised
        return MemoryFlushFailed(
            session_id=context.session_id,
            provider=provider,
            attempt=attempt,
            error=_describe_failure(exc),
        )
    return MemoryFlushed(
        session_id=context.session_id,
        provider=provider,
        attempt=attempt,
        detail=None if result is None else str(result),
    )


def _log_closed(
    key: str, session_id: str, reason: str, outcome: FlushOutcome | None, failures: int = 0
) -> None:
    """``closed KEY session ID reason R; flush ok (provider P)``: info, or a warning
    when the memory flush was given up on."""
    failed = isinstance(outcome, MemoryFlushFailed) or (outcome is None and failures > 0)
    level = logging.WARNING if failed else logging.INFO
    if not log.isEnabledFor(level):
        return
    provider: str | None = None
    error: str | None = None
    if isinstance(outcome, MemoryFlushed):
        provider, flush = outcome.provider, "ok"
        text = f"ok (provider {provider})"
    elif isinstance(outcome, MemoryFlushSkipped):
        flush, text = "skipped", f"skipped ({outcome.reason})"
    elif isinstance(outcome, MemoryFlushFailed):
        provider, error, flush = outcome.provider, outcome.error, "failed"
        text = f"failed after {outcome.attempt} attempt(s) (provider {provider}): {error}"
    elif failures:
        flush, text = "failed", f"failed after {failures} attempt(s), given up"
    else:
        flush, text = "recorded", "recorded earlier"
    log.log(
        level, "closed %s session %s reason %s; flush %s", key, session_id, reason, text,
        extra=fields("session_closed", session_key=key, session_id=session_id, reason=reason,
                     flush=flush, provider=provider, error=error),
    )  # fmt: skip


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, CallTimeoutError) or not str(exc):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


# -- where a close stands ----------------------------------------------------------------

SQL_CLOSE_EVENTS = (
    "SELECT type, data, recorded_at FROM events WHERE session_id = ?"
    " AND type IN ('session_reset', 'session_expired', 'memory_flushed',"
    " 'memory_flush_failed', 'memory_flush_skipped', 'session_ended')"
    " ORDER BY position"
)

_EXPIRY_END = {"idle": "idle_expiry", "daily": "daily_reset", "cron": "cron_reset"}


@dataclass(frozen=True)
class CloseProgress:
    """``cause`` is None when the session has no close in progress."""

    cause: str | None = None
    cause_reason: str | None = None
    deadline: datetime | None = None
    flushed: bool = False
    failures: int = 0
    last_failure_at: datetime | None = None
    ended: bool = False


def end_reason_for(cause: str | None, cause_reason: str | None) -> str:
    """The ``session_ended`` reason that a recorded cause leads to."""
    if cause == "session_expired":
        return _EXPIRY_END.get(cause_reason or "", "idle_expiry")
    if cause_reason == "shutdown":
        return "shutdown"
    return "manual_reset"


def expiry_cause(
    session_id: str, policy: ResetPolicy, expiry: Expiry, now: datetime
) -> SessionExpired:
    """The ``session_expired`` cause of a close ``policy`` said is due (``expiry``),
    evaluated at ``now``, with the policy's snapshot so an auditor can see why."""
    return SessionExpired(
        session_id=session_id,
        reason=expiry.reason,
        deadline=expiry.deadline,
        evaluated_at=now,
        policy=policy.snapshot(),
        occurred_at=now,
    )


def close_progress(ledger: Ledger, session_id: str) -> CloseProgress:
    """Read the close events of one session (an indexed lookup by session_id)."""
    cause = reason = None
    deadline = last_failure = None
    flushed = ended = False
    failures = 0
    for event_type, data, recorded_at in ledger.query(SQL_CLOSE_EVENTS, (session_id,)):
        body = json.loads(data)
        when = parse_utc(body.get("occurred_at") or recorded_at)
        if event_type in ("session_reset", "session_expired") and cause is None:
            cause = event_type
            reason = body.get("reason") if event_type == "session_expired" else body.get("trigger")
            if event_type == "session_expired":
                deadline = parse_utc(body["deadline"])
        elif event_type in ("memory_flushed", "memory_flush_skipped"):
            flushed = True
        elif event_type == "memory_flush_failed":
            failures += 1
            last_failure = when
        elif event_type == "session_ended":
            ended = True
    return CloseProgress(cause, reason, deadline, flushed, failures, last_failure, ended)


# -- the close sequence ----------------------------------------------------------------


def append_if_unchanged(
    ledger: Ledger,
    key: str,
    events: Sequence[EventModel],
    version: int,
    *,
    meta: Mapping[str, Any] | None = None,
) -> bool:
    """Append ``events`` (with ``meta``) if ``key``'s stream is still at ``version``;
    False (nothing written) if another writer got there first — re-read and decide again."""
    try:
        ledger.append(key, events, expected_version=version, meta=meta)
    except (ConcurrencyError, SessionAlreadyEndedError):
        return False
    return True


@dataclass(frozen=True)
class CloseStep:
    """What one ``finish`` did.

    ``status``: ``ended`` (this call appended ``session_ended``), ``already_ended``
    (someone else did), ``waiting`` (a failed flush is to be tried again at
    ``retry_at``; ``written`` says whether this call's failure is on record), or
    ``lost`` (another writer changed the key first; nothing was written).
    """

    status: Literal["ended", "already_ended", "waiting", "lost"]
    reason: str
    deadline: datetime | None = None
    flush_failed: bool = False
    retry_at: datetime | None = None
    written: bool = True


class SessionCloser:
    """Writes every close: cause → flush outcome → ``session_ended``.

    ``retry`` is how a failed flush is retried on later calls (the scheduler's
    ticks). Without one the close cannot wait (the message path): it makes one
    flush attempt now and ends the session whatever the outcome. ``meta`` is
    stored with every event it appends (e.g. the writer's ``actor``);
    ``skipped`` is the ``memory_flush_skipped`` reason when there is no flusher.
    """

    def __init__(
        self,
        ledger: Ledger,
        flusher: Flusher | None,
        *,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
        retry: RetryPolicy | None = None,
        meta: Mapping[str, Any] | None = None,
        skipped: str = NO_FLUSHER,
    ) -> None:
        self.ledger = ledger
        self.flusher = flusher
        self.flush_timeout = flush_timeout
        self.retry = retry
        self.meta = dict(meta) if meta else None
        self.skipped = skipped

    def _append(self, key: str, events: Sequence[EventModel], version: int) -> bool:
        return append_if_unchanged(self.ledger, key, events, version, meta=self.meta)

    def close(
        self,
        key: str,
        version: int,
        origin: SessionSource | None,
        cause: SessionReset | SessionExpired,
        *,
        reason: str,
        now: datetime,
        then: Sequence[EventModel] = (),
    ) -> bool:
        """Flush, then append cause → outcome → ``session_ended`` (``reason``) →
        ``then`` in one transaction at ``version``. False if the key changed."""
        outcome = self._flush(key, cause.session_id, origin, reason, 1, now)
        ended = SessionEnded(session_id=cause.session_id, reason=reason, occurred_at=now)
        done = self._append(key, [cause, outcome, ended, *then], version)
        if done:
            _log_closed(key, cause.session_id, reason, outcome)
        return done

    def begin(self, key: str, version: int, cause: SessionReset | SessionExpired) -> bool:
        """Record the cause alone (``finish`` does the rest). False if the key changed."""
        return self._append(key, [cause], version)

    def finish(
        self,
        key: str,
        session_id: str,
        version: int,
        origin: SessionSource | None,
        now: datetime,
        *,
        then: Sequence[EventModel] = (),
    ) -> CloseStep:
        """Carry a close whose cause is recorded on from where the log says it
        stands: flush (unless done, given up on, or not yet due), then append the
        outcome and ``session_ended`` (and ``then``) at ``version``."""
        progress = close_progress(self.ledger, session_id)
        reason = end_reason_for(progress.cause, progress.cause_reason)
        step = CloseStep("already_ended", reason, progress.deadline)
        if progress.ended:
            return step
        events: list[EventModel] = []
        if not progress.flushed:
            due = self._due(progress, now)
            if due is not None and due > now:
                return replace(step, status="waiting", retry_at=due)
            if due is not None:
                attempt = progress.failures + 1
                outcome = self._flush(key, session_id, origin, reason, attempt, now)
                events.append(outcome)
                if isinstance(outcome, MemoryFlushFailed):
                    step = replace(step, flush_failed=True)
                    retry_at = None if self.retry is None else self.retry.next_attempt(attempt, now)
                    if retry_at is not None:
                        written = self._append(key, events, version)
                        if written:
                            self._log_retry(key, session_id, outcome, retry_at, now)
                        return replace(step, status="waiting", retry_at=retry_at, written=written)
        events += [SessionEnded(session_id=session_id, reason=reason, occurred_at=now), *then]
        ended = self._append(key, events, version)
        if ended:
            flushed = events[0] if isinstance(events[0], FlushOutcome) else None
            _log_closed(key, session_id, reason, flushed, progress.failures)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug(
                "close of %s session %s: another writer changed the key first", key, session_id,
                extra=fields("close_lost", session_key=key, session_id=session_id),
            )  # fmt: skip
        return replace(step, status="ended" if ended else "lost")

    def _log_retry(
        self, key: str, session_id: str, outcome: MemoryFlushFailed, retry_at: datetime,
        now: datetime,
    ) -> None:  # fmt: skip
        if not log.isEnabledFor(logging.WARNING):
            return
        assert self.retry is not None
        wait = self.retry.wait_after(outcome.attempt).total_seconds()
        log.warning(
            "flush failed for %s session %s (attempt %d/%d, retry in %s): %s",
            key, session_id, outcome.attempt, self.retry.max_attempts, seconds_text(wait),
            outcome.error,
            extra=fields(
                "flush_failed", session_key=key, session_id=session_id, provider=outcome.provider,
                attempt=outcome.attempt, max_attempts=self.retry.max_attempts, retry_in=wait,
                error=outcome.error,
            ),
        )  # fmt: skip

    def _due(self, progress: CloseProgress, now: datetime) -> datetime | None:
        """When the next flush attempt is due (None: the policy gave up on it)."""
        if self.retry is None or not progress.failures:
            return now
        assert progress.last_failure_at is not None
        return self.retry.next_attempt(progress.failures, progress.last_failure_at)

    def _flush(
        self,
        key: str,
        session_id: str,
        origin: SessionSource | None,
        reason: str,
        attempt: int,
        now: datetime,
    ) -> FlushOutcome:
        context = FlushContext(
            session_key=key,
            session_id=session_id,
            reason=reason,
            platform=origin.platform.value if origin else None,
            user_id=origin.user_id if origin else None,
            origin=origin.to_dict() if origin else {},
        )
        outcome = run_flush(
            self.flusher,
            context,
            load_transcript(self.ledger, session_id),
            timeout=self.flush_timeout,
            attempt=attempt,
            skipped=self.skipped,
        )
        return outcome.model_copy(update={"occurred_at": now})
