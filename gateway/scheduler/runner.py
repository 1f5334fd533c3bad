"""Running the ledger's background work: scheduler ticks and hook deliveries.

``Runner.once()`` is one pass (what ``hermes-ledger tick`` does): the tick, hook
deliveries, an anchor when one is due, and the retention policy
(``ledger.retention``) every ``retention.interval`` seconds; ``Runner.run()``
repeats it every ``interval`` seconds until asked to stop, finishing the pass in
progress (what ``hermes-ledger run`` does until SIGTERM/SIGINT).

Its settings are the ``ledger:`` section of ``config.yaml``
(``config.ledger_section.RunnerSettings``); the composition root
(``gateway.bootstrap``) builds it from a Hermes home.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistrar, HookRegistry
from hermes_ledger.gateway.logs import fields
from hermes_ledger.gateway.scheduler.ticks import Scheduler, TickReport
from hermes_ledger.gateway.sessions.closing import DEFAULT_FLUSH_TIMEOUT, Flusher
from hermes_ledger.gateway.sessions.retention import apply_retention
from hermes_ledger.gateway.usercode.flushers import load_flusher
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.anchors import Witness
from hermes_ledger.ledger.backend import EventLog
from hermes_ledger.ledger.clock import Clock, format_utc, parse_utc, system_clock

if TYPE_CHECKING:
    from hermes_ledger.gateway.scheduler.postgres import PostgresScheduler

__all__ = ["PassReport", "Runner", "describe", "scheduler_for"]

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    """One pass: what the scheduler closed and what the hooks were given."""

    tick: TickReport
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    anchored: dict[str, Any] | None = None  # the anchor this pass wrote, if it was due
    anchor_error: str | None = None  # why an anchor that was due was refused
    retained: list[dict[str, Any]] = field(default_factory=list)  # retention's erasures
    retention_error: str | None = None  # why a due application of retention failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "tick": self.tick.to_dict(),
            "delivered": self.delivered,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "deliveries": self.deliveries,
            "anchored": self.anchored,
            "anchor_error": self.anchor_error,
            "retained": self.retained,
            "retention_error": self.retention_error,
        }


def scheduler_for(
    log: EventLog,
    config: GatewayConfig | None = None,
    flusher: Flusher | None = None,
    clock: Clock | None = None,
    *,
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
    max_flush_attempts: int = 3,
    flush_retry_delay: timedelta = timedelta(minutes=1),
) -> Scheduler | PostgresScheduler:
    """The scheduler of ``log``'s backend (``ticks.Scheduler``'s parameters): SQLite's
    ``ticks.Scheduler``, or on PostgreSQL ``postgres.PostgresScheduler`` (which keeps
    the deadlines inside every append of ``log``), its deadlines first brought up to
    date (``sync_deadlines``: all of them re-derived when the reset policies are not
    those they were derived under, else those that appends made without the
    projector left missing)."""
    if isinstance(log, Ledger):
        return Scheduler(
            log, config, flusher, clock, flush_timeout=flush_timeout,
            max_flush_attempts=max_flush_attempts, flush_retry_delay=flush_retry_delay,
        )  # fmt: skip
    from hermes_ledger.gateway.scheduler.postgres import PostgresScheduler, sync_deadlines
    from hermes_ledger.ledger.postgres import PostgresLog

    assert isinstance(log, PostgresLog)
    scheduler = PostgresScheduler(
        log, config, flusher, clock, flush_timeout=flush_timeout,
        max_flush_attempts=max_flush_attempts, flush_retry_delay=flush_retry_delay,
    )  # fmt: skip
    sync_deadlines(log, scheduler.config)
    return scheduler


class Runner:
    """Scheduler + hook dispatcher over one ledger (SQLite or PostgreSQL: an
    ``EventLog``); with a ``witness``, also anchors the chain's head every
    ``settings.anchor_interval`` seconds of its clock."""

    def __init__(
        self,
        ledger: EventLog,
        config: GatewayConfig,
        settings: RunnerSettings,
        registry: HookRegistry,
        *,
        clock: Clock | None = None,
        flusher: Flusher | None = None,
        witness: Witness | None = None,
        registrar: HookRegistrar | None = None,
    ) -> None:
        self._ledger = ledger
        self.witness = witness
        self._next_anchor: datetime | None = None
        self._next_retention: datetime | None = None
        self._base_clock = clock or system_clock
        self._fixed: datetime | None = None
        if flusher is None and settings.flusher:
            flusher = load_flusher(settings.flusher)
        self.settings = settings
        self.scheduler = scheduler_for(
            ledger, config, flusher, self.clock, flush_timeout=settings.flush_timeout,
            max_flush_attempts=settings.flush_attempts,
            flush_retry_delay=timedelta(seconds=settings.flush_retry_seconds),
        )  # fmt: skip
        self.dispatcher = HookDispatcher(
            ledger,
            registry,
            clock=self.clock,
            max_attempts=settings.hook_attempts,
            call_timeout=settings.hook_timeout,
        )
        self.registrar = registrar or HookRegistrar(ledger, registry, clock=self.clock)
        self._hooks_version = self.registrar.version
        self.passes = 0  # the passes ``run`` made

    def clock(self) -> datetime:
        """The pass's fixed ``now`` while a pass with one runs, else the clock."""
        return self._fixed or self._base_clock()

    def once(self, now: datetime | None = None) -> PassReport:
        """Tick the scheduler at ``now`` (default: the clock), then deliver hooks
        (backoff and claims measured against the same ``now``)."""
        self._fixed = now
        try:
            self.refresh_hooks()  # before the tick: a hook installed before a close gets it
            tick = self.scheduler.tick(now)
            delivery = self.dispatcher.deliver()
            anchored, anchor_error = self.anchor_if_due(now or self.clock())
            retained, retention_error = self.retain_if_due(now or self.clock())
        finally:
            self._fixed = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "pass at %s: %d due, %d closed, %d waiting for a flush retry; hooks: %d"
                " delivered, %d failed", tick.now, tick.due, len(tick.closed),
                tick.waiting_for_retry, delivery.delivered, delivery.failed,
                extra=fields("pass"),
            )  # fmt: skip
        return PassReport(
            tick=tick,
            delivered=delivery.delivered,
            failed=delivery.failed,
            dead_lettered=delivery.dead_lettered,
            deliveries=[_outcome(o) for o in delivery.outcomes],
            anchored=anchored,
            anchor_error=anchor_error,
            retained=retained,
            retention_error=retention_error,
        )

    def anchor_if_due(self, now: datetime) -> tuple[dict[str, Any] | None, str | None]:
        """Anchor the head when ``anchor_interval`` has passed since the last anchor
        of this ledger (at once if it has none) and the head moved since. A refused
        anchor (a chain that no longer verifies, a key others can read) is reported
        in the pass and retried an interval later; it never stops the runner."""
        interval = self.settings.anchor_interval
        if self.witness is None or interval <= 0:
            return None, None
        try:
            step = timedelta(seconds=interval)
            if self._next_anchor is None:
                last = self.witness.last(self._ledger)
                self._next_anchor = now if last is None else parse_utc(last.at) + step
            if now < self._next_anchor:
                return None, None
            self._next_anchor = now + step
            last = self.witness.last(self._ledger)
            if self._ledger.head() == (last.position if last else 0):
                return None, None
            anchor = self.witness.anchor(self._ledger, at=now)
        except LedgerError as exc:
            log.warning(
                "anchor refused: %s", exc,
                extra=fields("anchor_refused", error=str(exc), path=str(self.witness.path)),
            )  # fmt: skip
            return None, str(exc)
        log.info(
            "anchored position %d in %s", anchor.position, self.witness.path,
            extra=fields("anchored", position=anchor.position, path=str(self.witness.path)),
        )  # fmt: skip
        return anchor.to_dict(), None

    def retain_if_due(self, now: datetime) -> tuple[list[dict[str, Any]], str | None]:
        """Apply the retention policy (``settings.retention``) when its interval has
        passed since this runner last applied it (at once on its first pass), and
        log one line per erasure it made. A failure (a busy or damaged ledger) is
        reported in the pass and retried an interval later; it never stops the runner."""
        policy = self.settings.retention
        if not policy.enabled:
            return [], None
        if self._next_retention is not None and now < self._next_retention:
            return [], None
        self._next_retention = now + timedelta(seconds=policy.interval)
        try:
            reports = apply_retention(self._ledger, policy, now)
        except LedgerError as exc:
            log.warning(
                "retention not applied: %s", exc,
                extra=fields("retention_failed", error=str(exc)),
            )  # fmt: skip
            return [], str(exc)
        for report in reports:
            scope = report.scope
            log.info(
                "retention: forgot the content of %d session(s), %d message(s), on %s %s"
                " from before %s (event %s)", len(report.sessions), report.messages,
                scope.platform, scope.chat_type, format_utc(scope.before or now), report.position,
                extra=fields(
                    "retention_applied", platform=scope.platform, chat_type=scope.chat_type,
                    before=format_utc(scope.before or now), sessions=len(report.sessions),
                    messages=report.messages, position=report.position,
                ),
            )  # fmt: skip
        return [r.to_dict() for r in reports], None

    def refresh_hooks(self) -> None:
        """Register hooks installed since the last look (``HookRegistrar``) and,
        when the hooks directory changed, load its hooks again for delivery."""
        self.registrar()
        if self.registrar.version != self._hooks_version and self.registrar.hooks_dir:
            self._hooks_version = self.registrar.version
            self.dispatcher.reload(HookRegistry.discover(self.registrar.hooks_dir))

    def run(self, stop: threading.Event, interval: float | None = None) -> int:
        """Pass after pass until ``stop`` is set; the pass in progress is finished.
        Returns the number of passes ``run`` made (also ``passes``, counted as they
        end, so a caller whose pass failed knows how many went before)."""
        wait = self.settings.tick_interval if interval is None else interval
        while not stop.is_set():
            self.once()
            self.passes += 1
            stop.wait(wait)
        return self.passes


def _outcome(outcome: Any) -> dict[str, Any]:
    data = asdict(outcome)
    if data.get("next_attempt_at") is not None:
        data["next_attempt_at"] = format_utc(data["next_attempt_at"])
    return data


def describe(report: PassReport) -> list[str]:
    """Human lines for a pass (used by the CLI)."""
    lines = [f"tick at {report.tick.now}"]
    for closed in report.tick.closed:
        missed = f", deadline {closed.deadline}" if closed.deadline else ""
        lines.append(
            f"  closed {closed.session_id} ({closed.session_key}): {closed.reason}{missed}"
        )
    if report.tick.waiting_for_retry:
        lines.append(f"  {report.tick.waiting_for_retry} close(s) waiting to retry a failed flush")
    lines.append(
        f"  hooks: {report.delivered} delivered, {report.failed} failed,"
        f" {report.dead_lettered} dead-lettered"
    )
    if report.anchored is not None:
        lines.append(f"  anchored position {report.anchored['position']}")
    if report.anchor_error is not None:
        lines.append(f"  anchor refused: {report.anchor_error}")
    for erased in report.retained:
        scope = erased["scope"]
        lines.append(
            f"  retention: forgot {len(erased['sessions'])} session(s) on {scope['platform']}"
            f" {scope['chat_type']} from before {scope['before']}"
        )
    if report.retention_error is not None:
        lines.append(f"  retention not applied: {report.retention_error}")
    return lines
