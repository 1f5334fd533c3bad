"""Running the ledger's background work: scheduler ticks and hook deliveries.

``Runner.once()`` is one pass (what ``hermes ledger tick`` does); ``Runner.run()``
repeats it every ``interval`` seconds until asked to stop, finishing the pass in
progress (what ``hermes ledger run`` does until SIGTERM/SIGINT).

Settings come from the Hermes home: reset policies from ``config.yaml`` /
``gateway.json`` (``GatewayConfig.load``) and the ledger's own section of
``config.yaml``::

    ledger:
      flusher: mypackage.memory:flush   # import path, or an entry point name
      flush_timeout: 30                 # seconds
      flush_attempts: 3                 # failed flushes retried on later ticks
      flush_retry_seconds: 60
      hook_attempts: 5                  # then dead-lettered
      hook_timeout: 10                  # seconds per hook call
      tick_interval: 30                 # seconds between passes of `run`
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import ConfigError, GatewayConfig
from gateway.flush import Flusher
from gateway.hooks import HookDispatcher, HookRegistry
from gateway.scheduler import Scheduler, TickReport
from ledger import Ledger
from ledger.clock import Clock, format_utc, system_clock

__all__ = ["FLUSHER_ENTRY_POINTS", "PassReport", "Runner", "RunnerSettings", "load_flusher"]

FLUSHER_ENTRY_POINTS = "hermes_ledger.flushers"
"""Entry-point group where installed packages may publish flushers by name."""


class RunnerSettings(BaseModel):
    """The ``ledger:`` section of a Hermes ``config.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flusher: str | None = None
    flush_timeout: float = Field(default=30.0, gt=0, le=3600)
    flush_attempts: int = Field(default=3, ge=1, le=100)
    flush_retry_seconds: float = Field(default=60.0, ge=0, le=86_400)
    hook_attempts: int = Field(default=5, ge=1, le=100)
    hook_timeout: float = Field(default=10.0, gt=0, le=3600)
    tick_interval: float = Field(default=30.0, gt=0, le=86_400)

    @classmethod
    def load(cls, hermes_home: Path) -> RunnerSettings:
        """Read ``ledger:`` from ``<home>/config.yaml``; defaults when absent."""
        path = hermes_home / "config.yaml"
        if not path.exists():
            return cls()
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        section = data.get("ledger") if isinstance(data, dict) else None
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: ledger: must be a mapping")
        try:
            return cls.model_validate(section)
        except ValidationError as exc:
            problems = "; ".join(
                f"ledger.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ConfigError(f"{path}: {problems}") from None


def load_flusher(spec: str) -> Flusher:
    """A flusher from ``module:callable`` (dotted attribute path allowed) or the name
    of an entry point in the ``hermes_ledger.flushers`` group."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"flusher {spec!r}: cannot import {module_name!r}: {exc}",
                key="ledger.flusher",
            ) from None
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ConfigError(
                    f"flusher {spec!r}: {module_name!r} has no attribute {attr!r}",
                    key="ledger.flusher",
                ) from None
    else:
        found = [ep for ep in entry_points(group=FLUSHER_ENTRY_POINTS) if ep.name == spec]
        if not found:
            raise ConfigError(
                f"flusher {spec!r}: no such entry point in {FLUSHER_ENTRY_POINTS!r}"
                " (use module:callable for an import path)",
                key="ledger.flusher",
            )
        target = found[0].load()
    if not callable(target):
        raise ConfigError(f"flusher {spec!r} is not callable", key="ledger.flusher")
    return target  # type: ignore[no-any-return]


@dataclass
class PassReport:
    """One pass: what the scheduler closed and what the hooks were given."""

    tick: TickReport
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tick": self.tick.to_dict(),
            "delivered": self.delivered,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "deliveries": self.deliveries,
        }


class Runner:
    """Scheduler + hook dispatcher over one ledger."""

    def __init__(
        self,
        ledger: Ledger,
        config: GatewayConfig,
        settings: RunnerSettings,
        registry: HookRegistry,
        *,
        clock: Clock | None = None,
        flusher: Flusher | None = None,
    ) -> None:
        self._base_clock = clock or system_clock
        self._fixed: datetime | None = None
        if flusher is None and settings.flusher:
            flusher = load_flusher(settings.flusher)
        self.settings = settings
        self.scheduler = Scheduler(
            ledger,
            config,
            flusher=flusher,
            clock=self.clock,
            flush_timeout=settings.flush_timeout,
            max_flush_attempts=settings.flush_attempts,
            flush_retry_delay=timedelta(seconds=settings.flush_retry_seconds),
        )
        self.dispatcher = HookDispatcher(
            ledger,
            registry,
            clock=self.clock,
            max_attempts=settings.hook_attempts,
            call_timeout=settings.hook_timeout,
        )

    def clock(self) -> datetime:
        """The pass's fixed ``now`` while a pass with one runs, else the clock."""
        return self._fixed or self._base_clock()

    def once(self, now: datetime | None = None) -> PassReport:
        """Tick the scheduler at ``now`` (default: the clock), then deliver hooks
        (backoff and claims measured against the same ``now``)."""
        self._fixed = now
        try:
            tick = self.scheduler.tick(now)
            delivery = self.dispatcher.deliver()
        finally:
            self._fixed = None
        return PassReport(
            tick=tick,
            delivered=delivery.delivered,
            failed=delivery.failed,
            dead_lettered=delivery.dead_lettered,
            deliveries=[_outcome(o) for o in delivery.outcomes],
        )

    def run(self, stop: threading.Event, interval: float | None = None) -> int:
        """Pass after pass until ``stop`` is set; the pass in progress is finished.
        Returns the number of passes."""
        wait = self.settings.tick_interval if interval is None else interval
        passes = 0
        while not stop.is_set():
            self.once()
            passes += 1
            stop.wait(wait)
        return passes


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
    return lines
