"""Hooks: discovery from ``$HERMES_HOME/hooks/<name>/``, matching, and running a handler.

A hook is a directory holding ``HOOK.yaml``::

    name: session-logger
    description: Write every closed session to a file
    events: [session:end, "session:*"]

and ``handler.py`` defining ``handle(event_type, context)``, plain or ``async``.
Existing Hermes hooks run unchanged. A subscription is an exact event type or a
``prefix:*`` wildcard. The ledger produces ``session:start``, ``session:reset``
and ``session:end`` (see ``HOOK_EVENTS``); ``HookDispatcher`` delivers them
durably from the log, keeping its state in the ledger file (``gateway.hook_delivery``).

Hooks run as code with the gateway's rights, so discovery refuses a hooks
directory, hook directory, ``HOOK.yaml`` or ``handler.py`` that other users could
change (group- or world-writable, or owned by another user). A refused or broken
hook (invalid YAML, missing fields, an import error, no ``handle``) is reported
as a ``HookProblem`` with its path and skipped; the other hooks still load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import socket
import stat
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.bounded import CallTimeoutError, call_bounded
from gateway.home import hermes_home
from gateway.hook_delivery import (
    HOOK_EVENTS,
    Claim,
    Delivery,
    DeliveryOutcome,
    DeliveryQueue,
    DeliveryReport,
    HookState,
    dead_letters,
    hook_states,
    requeue_dead_letters,
)
from ledger import Ledger
from ledger.clock import Clock, system_clock

__all__ = [
    "HOOK_EVENTS",
    "Hook",
    "HookDispatcher",
    "HookProblem",
    "HookRegistry",
    "HookTimeoutError",
    "HooksOverview",
    "default_hooks_dir",
    "discover_hooks",
    "hooks_overview",
    "load_hook",
    "run_handler",
]

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Any]

_PATTERN = re.compile(r"^[^*\s]+(:\*)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 200


@dataclass(frozen=True)
class HookProblem:
    """A hook (or the hooks directory) that was skipped, and why."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "message": self.message}


@dataclass(frozen=True)
class Hook:
    """One loaded hook: its ``HOOK.yaml`` fields, its directory and its ``handle``."""

    name: str
    events: tuple[str, ...]
    handler: Handler = field(repr=False, compare=False)
    description: str = ""
    path: Path | None = None

    def subscribes(self, event_type: str) -> bool:
        """True for an exact subscription or a matching ``prefix:*`` wildcard."""
        for pattern in self.events:
            if pattern == event_type:
                return True
            if pattern.endswith(":*") and event_type.startswith(pattern[:-1]):
                return True
        return False

    @property
    def log_types(self) -> frozenset[str]:
        """The log event types this hook is delivered (see ``HOOK_EVENTS``)."""
        return frozenset(t for t, name in HOOK_EVENTS.items() if self.subscribes(name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "events": list(self.events),
            "path": None if self.path is None else str(self.path),
        }


class HookRegistry:
    """The loaded hooks (by name) and the problems met while discovering them."""

    def __init__(self, hooks: Iterable[Hook] = (), problems: Iterable[HookProblem] = ()) -> None:
        self._hooks: dict[str, Hook] = {}
        for hook in hooks:
            if hook.name in self._hooks:
                raise ValueError(f"two hooks are named {hook.name!r}")
            self._hooks[hook.name] = hook
        self.problems: tuple[HookProblem, ...] = tuple(problems)

    @classmethod
    def discover(cls, hooks_dir: str | os.PathLike[str] | None = None) -> HookRegistry:
        """Load every hook under ``hooks_dir`` (default ``$HERMES_HOME/hooks``)."""
        hooks, problems = discover_hooks(default_hooks_dir() if hooks_dir is None else hooks_dir)
        return cls(hooks, problems)

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return tuple(self._hooks.values())

    def get(self, name: str) -> Hook | None:
        return self._hooks.get(name)

    def matching(self, event_type: str) -> list[Hook]:
        """The hooks subscribed to ``event_type``, in name order."""
        return [h for h in self._hooks.values() if h.subscribes(event_type)]

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks.values())

    def __len__(self) -> int:
        return len(self._hooks)


def default_hooks_dir() -> Path:
    """``$HERMES_HOME/hooks``."""
    return hermes_home() / "hooks"


# -- discovery -----------------------------------------------------------------


class _Refused(Exception):
    """Internal: a hook that is skipped; the message says why."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.problem = HookProblem(path, message)


def _check_private(path: Path) -> None:
    """Refuse a file or directory that a user other than us (or root) could change."""
    if os.name != "posix":
        return
    st = os.stat(path)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "everyone" if st.st_mode & stat.S_IWOTH else "its group"
        raise _Refused(
            path,
            f"refused: writable by {who} (mode {stat.S_IMODE(st.st_mode):o}); hooks run as "
            f"code with the gateway's rights, so only their owner may change them "
            f"(chmod go-w {path})",
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise _Refused(
            path,
            f"refused: owned by uid {st.st_uid}, not by this user or root; hooks run as code "
            "with the gateway's rights",
        )


def _read_manifest(path: Path) -> tuple[str, str, tuple[str, ...]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Refused(path, f"cannot read: {exc}") from None
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise _Refused(path, f"invalid YAML: {detail}") from None
    if not isinstance(manifest, dict):
        raise _Refused(path, "must be a mapping with name, description and events")
    name = manifest.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Refused(path, "'name' is missing or not a non-empty string")
    if len(name) > _MAX_NAME or _CONTROL.search(name):
        raise _Refused(path, f"'name' {name!r} is too long or contains control characters")
    description = manifest.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise _Refused(path, "'description' must be a string")
    events = manifest.get("events")
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not events:
        raise _Refused(path, "'events' is missing or not a non-empty list of event types")
    for pattern in events:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise _Refused(
                path,
                f"'events' entry {pattern!r} is neither an event type (session:end) "
                "nor a prefix wildcard (session:*)",
            )
    return name, description, tuple(dict.fromkeys(events))


def _load_handler(path: Path, hook_name: str) -> Handler:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"hermes_hook_{re.sub(r'[^0-9A-Za-z_]', '_', hook_name)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise _Refused(path, "cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickle look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if not isinstance(exc, Exception):
            raise
        raise _Refused(path, f"import failed: {type(exc).__name__}: {exc}") from None
    handle = getattr(module, "handle", None)
    if not callable(handle):
        sys.modules.pop(module_name, None)
        raise _Refused(path, "defines no handle(event_type, context) function")
    return handle  # type: ignore[no-any-return]


def load_hook(hook_dir: str | os.PathLike[str]) -> Hook:
    """Load one hook directory; raises ValueError (with the path) if it is refused."""
    try:
        return _load(Path(hook_dir))
    except _Refused as exc:
        raise ValueError(str(exc.problem)) from None


def _load(hook_dir: Path) -> Hook:
    _check_private(hook_dir)
    manifest = hook_dir / "HOOK.yaml"
    handler = hook_dir / "handler.py"
    for required in (manifest, handler):
        if not required.is_file():
            raise _Refused(required, "missing")
        _check_private(required)
    name, description, events = _read_manifest(manifest)
    return Hook(
        name=name,
        description=description,
        events=events,
        handler=_load_handler(handler, name),
        path=hook_dir,
    )


def discover_hooks(
    hooks_dir: str | os.PathLike[str],
) -> tuple[list[Hook], list[HookProblem]]:
    """Load every hook in ``hooks_dir`` (one subdirectory each, in name order).

    Returns the hooks that loaded and the problems (each with its path) of those
    that did not (a dispatcher logs them as warnings; the CLI lists them). A
    missing ``hooks_dir`` means no hooks. Loading a hook imports its ``handler.py``.
    """
    root = Path(hooks_dir)
    hooks: list[Hook] = []
    problems: list[HookProblem] = []
    if not root.is_dir():
        return hooks, problems
    try:
        _check_private(root)
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except _Refused as exc:
        problems.append(exc.problem)
        entries = []
    except OSError as exc:
        problems.append(HookProblem(root, f"cannot list: {exc}"))
        entries = []
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.name.startswith((".", "__")) or not entry.is_dir():
            continue
        try:
            hook = _load(entry)
        except _Refused as exc:
            problems.append(exc.problem)
            continue
        except OSError as exc:
            problems.append(HookProblem(entry, f"cannot read: {exc}"))
            continue
        if hook.name in seen:
            problems.append(
                HookProblem(entry, f"the name {hook.name!r} is already used by {seen[hook.name]}")
            )
            continue
        seen[hook.name] = entry
        hooks.append(hook)
    return hooks, problems


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
    ``max_attempts`` calls. ``clock`` (aware datetimes) dates claims, backoffs and
    deliveries.

    A hook the ledger has not seen before starts at the log's head when the
    dispatcher is created (``new_hooks_from="head"``: it hears about what happens
    from now on) or at the beginning (``"beginning"``: every session event ever
    recorded). Creating a dispatcher creates the tables and registers its hooks.
    """

    def __init__(
        self,
        ledger: Ledger,
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
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._hooks = [h for h in self.registry if h.log_types]
        for problem in self.registry.problems:
            log.warning("hook skipped: %s", problem)
        self._queue = DeliveryQueue(ledger, self.clock)
        self._queue.register([h.name for h in self._hooks], from_head=new_hooks_from == "head")

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
                    hook.name, self.worker_id, hold=hold, max_attempts=self.max_attempts
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
        try:
            run_handler(hook, claim.event_type, claim.context, timeout=self.call_timeout)
        except HookTimeoutError as exc:
            error = str(exc)
            log.error(
                "hook %s: %s on %s, delivery %s (attempt %d of %d)",
                hook.name, error, claim.event_type, claim.delivery_id, claim.attempt,
                self.max_attempts,
            )  # fmt: skip
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.error(
                "hook %s failed on %s, delivery %s (attempt %d of %d)",
                hook.name, claim.event_type, claim.delivery_id, claim.attempt, self.max_attempts,
                exc_info=exc,
            )  # fmt: skip
        retry_at = None
        if error is not None and claim.attempt < self.max_attempts:
            delay = min(self.backoff_base * 2 ** (claim.attempt - 1), self.backoff_max)
            retry_at = self.clock() + timedelta(seconds=delay)
        if not self._queue.finish(claim, error, retry_at):
            log.warning(
                "hook %s: delivery %s was claimed again while this call ran (it outlived its "
                "claim); the outcome is left to the new claim",
                hook.name, claim.delivery_id,
            )  # fmt: skip
        elif error is not None and retry_at is None:
            log.error(
                "hook %s: delivery %s dead-lettered after %d attempts; re-queue it with "
                "`hermes ledger hooks retry %s`",
                hook.name, claim.delivery_id, claim.attempt, claim.delivery_id,
            )  # fmt: skip
        status: Literal["done", "retry", "dead"] = (
            "done" if error is None else "retry" if retry_at is not None else "dead"
        )
        return DeliveryOutcome(
            claim.delivery_id, hook.name, claim.event_type, claim.context.get("session_id"),
            claim.attempt, status, error, retry_at,
        )  # fmt: skip


@dataclass(frozen=True)
class HooksOverview:
    """What ``hermes ledger hooks`` shows: the hooks found and the problems met in
    ``hooks_dir``, each known hook's checkpoint and counts, and the dead letters."""

    hooks_dir: Path
    hooks: tuple[Hook, ...]
    problems: tuple[HookProblem, ...]
    states: dict[str, HookState]
    dead_letters: tuple[Delivery, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hooks_dir": str(self.hooks_dir),
            "hooks": [
                {**h.to_dict(), "state": s.to_dict() if (s := self.states.get(h.name)) else None}
                for h in self.hooks
            ],
            "problems": [p.to_dict() for p in self.problems],
            "dead_letters": [d.to_dict() for d in self.dead_letters],
        }


def hooks_overview(
    hooks_dir: str | os.PathLike[str] | None, ledger_path: str | os.PathLike[str] | None
) -> HooksOverview:
    """Discover the hooks in ``hooks_dir`` (default ``$HERMES_HOME/hooks``; this
    imports their handlers) and read their delivery state from the ledger at
    ``ledger_path``, opened read-only (a missing file means no state yet)."""
    root = default_hooks_dir() if hooks_dir is None else Path(hooks_dir)
    registry = HookRegistry.discover(root)
    states: list[HookState] = []
    dead: list[Delivery] = []
    if ledger_path is not None and Path(ledger_path).exists():
        with Ledger.open(ledger_path, readonly=True) as ledger:
            states = hook_states(ledger)
            dead = dead_letters(ledger)
    return HooksOverview(
        root, registry.hooks, registry.problems, {s.hook: s for s in states}, tuple(dead)
    )
