"""Running hooks: calling a handler with a time limit, and delivering the log's
session events to every subscribed hook, durably (``HookDispatcher``).

The delivery state lives in the ledger (``queue.open_queue``: the file's tables on
SQLite, ``hooks.delivery``; the outbox on PostgreSQL, ``hooks.postgres_delivery``);
what a pass did is a ``DeliveryReport``; ``hooks_overview`` is what ``hermes-ledger
hooks`` shows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from hermes_ledger.gateway.config.files import ledger_plugin_enabled
from hermes_ledger.gateway.config.paths import default_hooks_dir, delivered_hooks_dir, hermes_home
from hermes_ledger.gateway.hooks.delivery import (
    Claim,
    Delivery,
    DeliveryOutcome,
    DeliveryReport,
    HookState,
    PendingDelivery,
    dead_letters,
    hook_states,
    pending_deliveries,
    requeue_dead_letters,
)
from hermes_ledger.gateway.hooks.discovery import (
    Hook,
    HookProblem,
    HookRegistry,
    hook_subscriptions,
    hooks_dir_stamp,
    log_types_of,
)
from hermes_ledger.gateway.hooks.queue import open_queue
from hermes_ledger.gateway.logs import fields, seconds_text
from hermes_ledger.gateway.usercode.bounded import CallTimeoutError, call_bounded
from hermes_ledger.gateway.usercode.retry import RetryPolicy
from hermes_ledger.gateway.workers import worker_name
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.backend import EventLog, is_dsn
from hermes_ledger.ledger.clock import Clock, system_clock

__all__ = [
    "HermesSideHook",
    "HookDispatcher",
    "HookRegistrar",
    "HookTimeoutError",
    "HooksOverview",
    "hermes_side_hooks",
    "hooks_overview",
    "run_handler",
]

log = logging.getLogger(__name__)


# -- running a handler -----------------------------------------------------------


class HookTimeoutError(CallTimeoutError):
    """A handler call outlived its timeout (it is left running in a daemon thread)."""


def run_handler(hook: Hook, event_type: str, context: Mapping[str, Any], *, timeout: float) -> None:
    """Call ``hook.handler(event_type, context)`` (awaiting it if async) in a daemon
    thread; re-raise what it raised, or HookTimeoutError after ``timeout`` seconds.

    A timed-out call is abandoned, not stopped: Python cannot stop a thread, so
    the handler keeps running in the background and its outcome is ignored.
    """
    try:
        call_bounded(
            hook.handler, event_type, dict(context), timeout=timeout, name=f"hook-{hook.name}"
        )
    except CallTimeoutError as exc:
        raise HookTimeoutError(str(exc)) from None
    except Exception:
        raise
    except BaseException as error:
        # SystemExit, KeyboardInterrupt… from a handler fail the call, not the dispatcher.
        raise RuntimeError(f"handler raised {type(error).__name__}: {error}") from error


# -- delivering ---------------------------------------------------------------------

_CLAIM_MARGIN = 60.0  # seconds a claim outlives the call timeout, to record the outcome


class HookDispatcher:
    """Delivers the log's session events to the hooks of ``registry``, durably.

    A ``deliver()`` pass queues new log events after each hook's checkpoint, then
    repeatedly *claims* a hook's oldest undelivered event (and commits), calls
    its handler outside any transaction with ``call_timeout``, and records the
    outcome. Claim-before-call: two dispatchers, in any processes, never call one
    hook twice for one event; a dispatcher that dies mid-call leaves a claim that
    expires, and the event is delivered again with the same ``delivery_id``.

    Each hook gets its events strictly in log order (for one session key, the old
    session's ``session:end`` before the new one's ``session:start``). A failed
    call holds back only its own hook: it is retried after ``backoff_base *
    2**(attempt-1)`` seconds (at most ``backoff_max``) and dead-lettered after
    ``max_attempts`` calls (``retry_policy``). ``clock`` (aware datetimes) dates
    claims, backoffs and deliveries.

    A hook the ledger has not seen before starts at the log's head when the
    dispatcher is created (``new_hooks_from="head"``: it hears about what happens
    from now on) or at the beginning (``"beginning"``: every session event ever
    recorded). Creating a dispatcher registers its hooks.
    """

    def __init__(
        self,
        ledger: EventLog,
        registry: HookRegistry | Iterable[Hook],
        *,
        clock: Clock | None = None,
        max_attempts: int = 5,
        call_timeout: float = 10.0,
        backoff_base: float = 2.0,
        backoff_max: float = 300.0,
        new_hooks_from: Literal["head", "beginning"] = "head",
        worker_id: str | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if call_timeout <= 0 or backoff_base < 0 or backoff_max < 0:
            raise ValueError("call_timeout must be positive and the backoffs not negative")
        if new_hooks_from not in ("head", "beginning"):
            raise ValueError("new_hooks_from is 'head' or 'beginning'")
        self.ledger = ledger
        self.registry = registry if isinstance(registry, HookRegistry) else HookRegistry(registry)
        self.clock = clock or system_clock
        self.max_attempts = max_attempts
        self.call_timeout = call_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_policy = RetryPolicy(
            max_attempts,
            timedelta(seconds=backoff_base),
            backoff=2.0,
            max_delay=timedelta(seconds=backoff_max),
        )
        self.worker_id = worker_id or worker_name()
        self._from_head = new_hooks_from == "head"
        self._queue = open_queue(ledger, self.clock)
        self._hooks: list[Hook] = []
        self._problems: dict[Path, str] = {}  # hook directory -> why it does not load
        self.reload(self.registry)

    def reload(self, registry: HookRegistry | Iterable[Hook]) -> None:
        """Deliver to the hooks of ``registry`` from now on (a hook the ledger has
        not seen is registered as at creation); their problems are logged."""
        self.registry = registry if isinstance(registry, HookRegistry) else HookRegistry(registry)
        self._report_problems(self.registry)
        hooks = [h for h in self.registry if h.log_types]
        self._queue.register({h.name: h.log_types for h in hooks}, from_head=self._from_head)
        self._hooks = hooks

    def _report_problems(self, registry: HookRegistry) -> None:
        """Log each hook that became broken (a warning) or was fixed (info) since
        the last load: once per change, however often the hooks are loaded."""
        now = {_problem_place(p, registry.hooks_dir): p for p in registry.problems}
        for place, problem in now.items():
            if self._problems.get(place) != problem.message:
                log.warning(
                    "hook skipped: %s", problem,
                    extra=fields("hook_broken", path=str(problem.path), error=problem.message),
                )  # fmt: skip
        for place in self._problems.keys() - now.keys():
            loaded = next((h.name for h in registry if h.path == place), None)
            what = "loads again" if loaded else "is gone (it was skipped)"
            log.info(
                "hook %s %s: %s", loaded or place.name, what, place,
                extra=fields("hook_fixed", path=str(place), hook=loaded),
            )  # fmt: skip
        self._problems = {place: p.message for place, p in now.items()}

    def deliver(self, limit: int | None = None) -> DeliveryReport:
        """One pass: queue new log events for every hook, then call each hook for
        its due deliveries, oldest first, until none is due (or ``limit`` calls).

        A handler that raises or times out is logged with the hook's name and
        retried later; it never stops the pass or the other hooks.
        """
        enqueued = self._queue.enqueue({h.name: h.log_types for h in self._hooks})
        hold = timedelta(seconds=self.call_timeout + _CLAIM_MARGIN)
        outcomes: list[DeliveryOutcome] = []
        calls = 0
        active = list(self._hooks)
        while active and (limit is None or calls < limit):
            for hook in list(active):
                if limit is not None and calls >= limit:
                    break
                claim, given_up = self._queue.claim(
                    hook.name, self.worker_id, hold=hold, retry=self.retry_policy
                )
                outcomes.extend(given_up)
                if claim is None:
                    active.remove(hook)
                    continue
                calls += 1
                outcomes.append(self._call(hook, claim))
        return DeliveryReport(enqueued, tuple(outcomes))

    def dead_letters(self) -> list[Delivery]:
        """Deliveries that failed ``max_attempts`` times, in log order."""
        return dead_letters(self.ledger)

    def retry(self, delivery_ids: Iterable[str] | None = None) -> list[str]:
        """Re-queue dead letters (all, or those named); see ``requeue_dead_letters``."""
        return requeue_dead_letters(self.ledger, delivery_ids, clock=self.clock)

    def status(self) -> list[HookState]:
        """Every hook the ledger has seen, with its checkpoint and delivery counts."""
        return hook_states(self.ledger)

    def _call(self, hook: Hook, claim: Claim) -> DeliveryOutcome:
        error: str | None = None
        failure: BaseException | None = None
        try:
            run_handler(hook, claim.event_type, claim.context, timeout=self.call_timeout)
        except HookTimeoutError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            failure = exc
        retry_at = None
        if error is not None:
            retry_at = self.retry_policy.next_attempt(claim.attempt, self.clock())
        if not self._queue.finish(claim, error, retry_at):
            log.warning(
                "hook %s: delivery %s was claimed again while this call ran (it outlived its "
                "claim); the outcome is left to the new claim",
                hook.name, claim.delivery_id,
                extra=fields("hook_claim_lost", hook=hook.name, delivery_id=claim.delivery_id),
            )  # fmt: skip
        else:
            self._log_outcome(hook, claim, error, retry_at, failure)
        status: Literal["done", "retry", "dead"] = (
            "done" if error is None else "retry" if retry_at is not None else "dead"
        )
        return DeliveryOutcome(
            claim.delivery_id, hook.name, claim.event_type, claim.context.get("session_id"),
            claim.attempt, status, error, retry_at,
        )  # fmt: skip

    def _log_outcome(
        self, hook: Hook, claim: Claim, error: str | None, retry_at: datetime | None,
        failure: BaseException | None,
    ) -> None:  # fmt: skip
        """One line per call: delivered (info), failed (warning, with when it is
        tried again), dead-lettered (error); the handler's traceback at debug."""
        level = logging.INFO if error is None else logging.WARNING
        if retry_at is None and error is not None:
            level = logging.ERROR
        if not log.isEnabledFor(level):
            return
        key, sid = claim.context.get("session_key"), claim.context.get("session_id")
        common: dict[str, Any] = {
            "hook": hook.name, "hook_event": claim.event_type, "session_key": key,
            "session_id": sid, "delivery_id": claim.delivery_id, "attempt": claim.attempt,
            "max_attempts": self.max_attempts,
        }  # fmt: skip
        if error is None:
            log.info(
                "hook %s delivered %s %s session %s (attempt %d)",
                hook.name, claim.event_type, key, sid, claim.attempt,
                extra=fields("hook_delivered", **common),
            )  # fmt: skip
            return
        if retry_at is not None:
            wait = self.retry_policy.wait_after(claim.attempt).total_seconds()
            log.warning(
                "hook %s failed on %s %s (attempt %d/%d, retry in %s): %s",
                hook.name, claim.event_type, key, claim.attempt, self.max_attempts,
                seconds_text(wait), error,
                extra=fields("hook_failed", **common, retry_in=wait, error=error),
            )  # fmt: skip
        else:
            log.error(
                "hook %s dead-lettered %s %s after %d attempts: %s; re-queue it with "
                "`hermes-ledger hooks retry %s`",
                hook.name, claim.event_type, key, claim.attempt, error, claim.delivery_id,
                extra=fields("hook_dead_lettered", **common, error=error),
            )  # fmt: skip
        if failure is not None and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "hook %s traceback (delivery %s):", hook.name, claim.delivery_id,
                exc_info=failure, extra=fields("hook_traceback", hook=hook.name,
                                               delivery_id=claim.delivery_id),
            )  # fmt: skip


def _problem_place(problem: HookProblem, hooks_dir: Path | None) -> Path:
    """The hook directory a problem is about (its HOOK.yaml, handler.py or the
    directory itself), or the problem's path when it lies outside ``hooks_dir``."""
    if hooks_dir is not None:
        try:
            parts = problem.path.relative_to(hooks_dir).parts
        except ValueError:
            return problem.path
        return hooks_dir / parts[0] if parts else hooks_dir
    return problem.path


class HookRegistrar:
    """Registers the hooks installed in a registry's hooks directory that the
    ledger has not seen yet, at the log's head, without running them.

    A new hook's deliveries start at its checkpoint, set when a process first sees
    it; so every process holding a hooks directory calls this before it appends a
    session event (the store before a start or a close, the runner before its
    tick): a hook installed before a close always gets that close, whichever
    process makes it and whenever a dispatcher first loads the hook. A call costs
    a few ``stat`` calls while the directory is unchanged (``hooks_dir_stamp``),
    and writes only when it finds a hook new to this process. ``version`` counts
    the changes seen, so a runner knows when to load its hooks again.
    """

    def __init__(
        self, ledger: EventLog, registry: HookRegistry, *, clock: Clock | None = None
    ) -> None:
        self.hooks_dir = registry.hooks_dir
        self.version = 0
        self._queue = open_queue(ledger, clock or system_clock)
        known = {h.name: h.log_types for h in registry if h.log_types}
        self._known = set(known)
        self._stamp = registry.stamp
        self._lock = threading.Lock()
        if known:
            self._queue.register(dict(sorted(known.items())), from_head=True)
        self()

    def __call__(self) -> list[str]:
        """Register the hooks new to this process; returns their names."""
        if self.hooks_dir is None:
            return []
        stamp = hooks_dir_stamp(self.hooks_dir)
        with self._lock:
            if stamp == self._stamp:
                return []
            found = {
                name: types for name, events in hook_subscriptions(self.hooks_dir).items()
                if (types := log_types_of(events))
            }  # fmt: skip
            new = sorted(found.keys() - self._known)
            if new:
                self._queue.register({name: found[name] for name in new}, from_head=True)
                self._known.update(new)
            self._stamp = stamp
            self.version += 1
            return new


@dataclass(frozen=True)
class HermesSideHook:
    """A hook in Hermes's own hooks directory, which Hermes's gateway delivers
    (listed from its HOOK.yaml the way Hermes reads it; its handler is not imported)."""

    name: str
    events: tuple[str, ...]
    description: str
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": list(self.events),
            "description": self.description,
            "path": str(self.path),
        }


def hermes_side_hooks(hooks_dir: Path) -> tuple[HermesSideHook, ...]:
    """The hooks Hermes's gateway would load from ``hooks_dir``: each subdirectory
    with HOOK.yaml and handler.py whose manifest is a mapping declaring events
    (``name`` defaults to the directory's), in name order; others are left out,
    as Hermes skips them."""
    found: list[HermesSideHook] = []
    if not hooks_dir.is_dir():
        return ()
    try:
        entries = sorted(p for p in hooks_dir.iterdir() if p.is_dir())
    except OSError:
        return ()
    for entry in entries:
        manifest_path, handler = entry / "HOOK.yaml", entry / "handler.py"
        if not (manifest_path.is_file() and handler.is_file()):
            continue
        try:
            manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if not isinstance(manifest, dict) or not manifest.get("events"):
            continue
        events = manifest["events"]
        events = [events] if isinstance(events, str) else list(events)
        found.append(
            HermesSideHook(
                name=str(manifest.get("name", entry.name)),
                events=tuple(str(e) for e in events),
                description=str(manifest.get("description") or ""),
                path=entry,
            )
        )
    return tuple(found)


@dataclass(frozen=True)
class HooksOverview:
    """What ``hermes-ledger hooks`` shows: the hooks found and the problems met in
    ``hooks_dir`` (the ones the ledger delivers), each known hook's checkpoint and
    counts, the dead letters, and the deliveries still ``pending`` (the first few
    of each hook: see ``pending_deliveries``; the counts are in ``states``). When
    the ledger plugin is enabled in the home (``plugin_enabled``), ``hermes_hooks``
    are the hooks in ``hermes_hooks_dir`` (``$HERMES_HOME/hooks``), which Hermes's
    gateway delivers, not the ledger."""

    hooks_dir: Path
    hooks: tuple[Hook, ...]
    problems: tuple[HookProblem, ...]
    states: dict[str, HookState]
    dead_letters: tuple[Delivery, ...]
    plugin_enabled: bool = False
    hermes_hooks_dir: Path | None = None
    hermes_hooks: tuple[HermesSideHook, ...] = ()
    pending: tuple[PendingDelivery, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "hooks_dir": str(self.hooks_dir),
            "hooks": [
                {**h.to_dict(), "state": s.to_dict() if (s := self.states.get(h.name)) else None}
                for h in self.hooks
            ],
            "problems": [p.to_dict() for p in self.problems],
            "dead_letters": [d.to_dict() for d in self.dead_letters],
            "pending": [d.to_dict() for d in self.pending],
            "plugin_enabled": self.plugin_enabled,
            "hermes_hooks_dir": None
            if self.hermes_hooks_dir is None
            else str(self.hermes_hooks_dir),
            "hermes_hooks": [h.to_dict() for h in self.hermes_hooks],
        }


def hooks_overview(
    hooks_dir: str | os.PathLike[str] | None,
    ledger_path: str | os.PathLike[str] | None,
    *,
    home: Path | None = None,
) -> HooksOverview:
    """Discover the hooks the ledger delivers in ``hooks_dir`` (this imports their
    handlers) and read their delivery state from the ledger at ``ledger_path``: a
    file opened read-only (a missing file means no state yet), or a PostgreSQL URI.

    ``hooks_dir`` defaults to the home's ``delivered_hooks_dir``: ``hooks`` or,
    with the ledger plugin enabled in ``home`` (default ``$HERMES_HOME``),
    ``ledger-hooks``; the home's ``hooks`` are then listed as Hermes's.
    """
    root_home = hermes_home() if home is None else home
    enabled = ledger_plugin_enabled(root_home)
    root = delivered_hooks_dir(root_home) if hooks_dir is None else Path(hooks_dir)
    registry = HookRegistry.discover(root)
    states: list[HookState] = []
    dead: list[Delivery] = []
    pending: list[PendingDelivery] = []
    if ledger_path is not None and is_dsn(ledger_path):
        from hermes_ledger.gateway.sessions.postgres import open_postgres

        with open_postgres(str(ledger_path), projections=False) as log:
            states, dead, pending = hook_states(log), dead_letters(log), pending_deliveries(log)
    elif ledger_path is not None and Path(ledger_path).exists():
        with Ledger.open(ledger_path, readonly=True) as ledger:
            states = hook_states(ledger)
            dead = dead_letters(ledger)
            pending = pending_deliveries(ledger)
    hermes_dir = default_hooks_dir(root_home) if enabled else None
    return HooksOverview(
        root,
        registry.hooks,
        registry.problems,
        {s.hook: s for s in states},
        tuple(dead),
        plugin_enabled=enabled,
        hermes_hooks_dir=hermes_dir,
        hermes_hooks=() if hermes_dir is None else hermes_side_hooks(hermes_dir),
        pending=tuple(pending),
    )
