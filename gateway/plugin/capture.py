"""The plugin's hook callbacks: what Hermes tells the plugin, spooled as records.

``install_capture(ctx)`` registers one callback per Hermes hook below. Each turns
its keyword arguments into one record (the contract with the recorder,
``gateway.hermes.live``), appends it to this process's spool
(``plugin.spool``: one ``os.write``, no fsync, no ledger, no lock held for
more than that write) and wakes the worker (``plugin.worker``), starting it if
this process is a gateway and it is not running yet. Every record has ``kind``
and ``at`` (UTC ISO-8601 with ``Z``: when the callback ran):

=====================  =====================================================
``dispatch``           ``pre_gateway_dispatch`` (the gateway's loop thread):
                       ``session_key``, ``session_id`` (``None`` before the
                       key's first session), ``source`` (``SessionSource.to_dict()``),
                       ``message_id``. Internal events are skipped.
``activity``           ``pre_llm_call``, ``post_llm_call``, ``post_tool_call``,
                       ``post_api_request``, ``on_session_start``,
                       ``on_session_end`` (agent worker threads): ``session_id``,
                       ``session_key`` (the gateway's ``HERMES_SESSION_KEY`` for
                       this turn, else ``None``), ``platform``, ``hook``. One
                       record per call. ``on_session_end`` is not a close: Hermes
                       fires it at the end of every turn, after the turn's
                       messages are persisted, interrupted turns included (which
                       skip ``post_llm_call``).
``finalize``           ``on_session_finalize``: ``session_id``, ``platform``,
                       ``reason``, ``old_session_id``, ``new_session_id``.
``reset``              ``on_session_reset``: ``session_id``, ``old_session_id``,
                       ``new_session_id``, ``platform``.
``subagent``           ``subagent_start``: ``parent_session_id``, ``child_session_id``.
=====================  =====================================================

No message text, tool argument or result is spooled: only ids, the source and
times. A call that names no session (no key, session id or child id: Hermes's
shutdown finalize of an agent without a session, or garbage) is not spooled.
A callback takes ``**kwargs``, returns ``None`` and never raises into Hermes:
anything that goes wrong (garbage arguments included) is caught and logged
once per incident on ``hermes_plugins.ledger`` (so it lands in Hermes's
gateway.log). ``KeyboardInterrupt``/``SystemExit`` are Hermes's own signals and
are not swallowed. There is no "current session" state: each record is built
from its own call's arguments and context variables only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hermes_ledger.gateway.config.paths import hermes_home
from hermes_ledger.gateway.plugin.spool import SpoolWriter
from hermes_ledger.gateway.plugin.worker import (
    ApplyFactory,
    Incidents,
    SpoolWorker,
    live_recorder,
)
from hermes_ledger.ledger.clock import format_utc

__all__ = ["ACTIVITY_HOOKS", "HOOKS", "Capture", "in_gateway_process", "install_capture"]

ACTIVITY_HOOKS = (
    "on_session_start",
    "pre_llm_call",
    "post_llm_call",
    "post_tool_call",
    "post_api_request",
    "on_session_end",  # the end of every turn (not of the session), interrupted ones too
)
HOOKS = (
    "pre_gateway_dispatch",
    *ACTIVITY_HOOKS,
    "on_session_finalize",
    "on_session_reset",
    "subagent_start",
)
_MAX_ID = 4096  # longer "ids" are garbage, not ids
_IDS = ("session_key", "session_id", "old_session_id", "new_session_id", "child_session_id")
_HOMES_KEPT = 64  # distinct (override, HERMES_HOME, HOME) combinations remembered


def in_gateway_process() -> bool:
    """Whether this process runs Hermes's gateway: its ``GatewayRunner`` exists.

    Reads ``gateway.run._gateway_runner_ref`` (a weak reference Hermes sets in
    ``GatewayRunner.__init__``) only if Hermes has imported that module; never
    imports anything.
    """
    run = sys.modules.get("gateway.run")
    ref = getattr(run, "_gateway_runner_ref", None)
    if ref is None:
        return False
    try:
        return ref() is not None
    except Exception:
        return False


def _now() -> str:
    return format_utc(datetime.now(UTC))


def _id(value: object) -> str | None:
    """A session/message id as text, or ``None`` for nothing or garbage."""
    if isinstance(value, str):
        return value if value and len(value) <= _MAX_ID else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _session_env(name: str) -> str | None:
    """The gateway's per-turn context variable ``name`` (``HERMES_SESSION_KEY``…),
    if Hermes's session context module is loaded (never imported from here)."""
    module = sys.modules.get("gateway.session_context")
    get = getattr(module, "get_session_env", None)
    if get is None:
        return None
    value = get(name, "")
    return value if isinstance(value, str) and value else None


class Capture:
    """The callbacks, this process's spool writers and workers (one per home).

    ``home`` gives the Hermes home of a call (default ``config.paths.hermes_home``,
    which asks Hermes, so a profile's home is used); ``apply_factory`` and
    ``worker_options`` go to each ``SpoolWorker``. ``workers``: ``None`` (the
    default) runs a worker where ``is_gateway()`` (default ``in_gateway_process``)
    says this is a gateway, or a ``pre_gateway_dispatch`` call proves it;
    ``False`` never runs one (capture only); ``True`` always does.
    """

    def __init__(
        self,
        *,
        home: Callable[[], Path] = hermes_home,
        apply_factory: ApplyFactory = live_recorder,
        worker_options: Mapping[str, Any] | None = None,
        is_gateway: Callable[[], bool] = in_gateway_process,
        workers: bool | None = None,
    ) -> None:
        self._home = home
        self.workers = workers
        self.apply_factory = apply_factory
        self.worker_options = dict(worker_options or {})
        self._is_gateway = is_gateway
        self._writers: dict[Path, SpoolWriter] = {}
        self._workers: dict[Path, SpoolWorker] = {}
        self._homes: dict[tuple[str | None, ...], Path] = {}
        self._lock = threading.Lock()
        self._forked = False
        self.incidents = Incidents()

    # -- wiring -----------------------------------------------------------------------

    def callbacks(self) -> dict[str, Callable[..., None]]:
        """Hook name → callback, for ``ctx.register_hook``."""
        found: dict[str, Callable[..., None]] = {
            "pre_gateway_dispatch": self.pre_gateway_dispatch,
            "on_session_finalize": self.on_session_finalize,
            "on_session_reset": self.on_session_reset,
            "subagent_start": self.subagent_start,
        }
        for hook in ACTIVITY_HOOKS:
            found[hook] = self._activity_callback(hook)
        return {hook: found[hook] for hook in HOOKS}

    def worker(self, home: Path | None = None) -> SpoolWorker | None:
        """The running worker for ``home`` (default: the current home), if any."""
        return self._workers.get(self._home() if home is None else home)

    def writer(self, home: Path | None = None) -> SpoolWriter:
        """This process's spool writer for ``home`` (default: the current home)."""
        home = self._home() if home is None else home
        writer = self._writers.get(home)
        if writer is None:
            with self._lock:
                writer = self._writers.get(home)
                if writer is None:
                    writer = self._writers[home] = SpoolWriter(home)
        return writer

    def ensure_worker(
        self, home: Path | None = None, *, gateway: bool = False
    ) -> SpoolWorker | None:
        """Start ``home``'s worker if this process is a gateway (or ``gateway`` says
        so) and none runs; return the running one (None where none may run)."""
        home = self._home() if home is None else home
        worker = self._workers.get(home)
        if worker is not None or self._forked or self.workers is False:
            return worker
        if self.workers is None and not (gateway or self._is_gateway()):
            return None
        writer = self.writer(home)  # no I/O until its first append
        with self._lock:
            worker = self._workers.get(home)
            if worker is None:
                worker = SpoolWorker(
                    home,
                    apply_factory=self.apply_factory,
                    writer=writer,
                    incidents=self.incidents,
                    **self.worker_options,
                )
                self._workers[home] = worker
                worker.start()
        return worker

    def after_fork_in_child(self) -> None:
        """A forked child keeps none of its parent's files, locks or threads, and
        never runs a worker (it is not the gateway, whatever it inherited)."""
        self._lock = threading.Lock()
        self._writers = {}
        self._workers = {}
        self._homes = {}
        self._forked = True
        self.incidents = Incidents()

    # -- spooling ---------------------------------------------------------------------

    def _call_home(self) -> Path:
        """This call's home: Hermes's answer (``config.paths.hermes_home``), asked
        once per combination of what Hermes 0.19 resolves it from — the
        context-local override (``hermes_constants.get_hermes_home_override()``,
        read on every call, so a task scoped to another home gets that home),
        ``HERMES_HOME``, and ``HOME`` (the default ``~/.hermes``) — and then
        remembered: building the answer's ``Path`` and hashing a fresh one for
        the writer and worker lookups were about a third of a callback's cost
        (bench/plugin.py). The same ``Path`` object comes back each time, so
        those lookups hit at once. An
        injected ``home`` (tests, embedders) is called every time, and so is
        Hermes where it has no override function.
        """
        if self._home is not hermes_home:
            return self._home()
        override = getattr(sys.modules.get("hermes_constants"), "get_hermes_home_override", None)
        if override is None:
            return hermes_home()
        environ = os.environ
        key = (override(), environ.get("HERMES_HOME"), environ.get("HOME"))
        home = self._homes.get(key)
        if home is None:
            home = hermes_home()
            if len(self._homes) >= _HOMES_KEPT:
                self._homes.clear()
            self._homes[key] = home
        return home

    def _spool(self, record: dict[str, Any], *, gateway: bool = False) -> None:
        if not any(record.get(name) for name in _IDS):
            return  # no session, key or child named: nothing anyone could record
        home = self._call_home()
        writer = self.writer(home)
        writer.append(record)
        worker = self._workers.get(home) or self.ensure_worker(home, gateway=gateway)
        if worker is not None:
            worker.wake()

    def _failed(self, hook: str, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            self.incidents.fail(f"the {hook} callback", exc, action="that call is not recorded")

    def _succeeded(self, hook: str) -> None:
        self.incidents.ok(f"the {hook} callback")

    # -- the callbacks ----------------------------------------------------------------

    def pre_gateway_dispatch(
        self, event: Any = None, gateway: Any = None, session_store: Any = None, **_: Any
    ) -> None:
        """A message reached the gateway (before auth, commands and its session)."""
        try:
            if event is None or getattr(event, "internal", False):
                return None
            source = getattr(event, "source", None)
            key = self._session_key(source, gateway, session_store)
            session_id = None
            if key is not None and session_store is not None:
                session_id = _id(_plain(session_store.peek_session_id(key)))
            to_dict = getattr(source, "to_dict", None)
            data = to_dict() if callable(to_dict) else None
            self._spool(
                {
                    "kind": "dispatch",
                    "at": _now(),
                    "session_key": key,
                    "session_id": session_id,
                    "source": data if isinstance(data, dict) else None,
                    "message_id": _id(getattr(event, "message_id", None)),
                },
                gateway=gateway is not None,
            )
            self._succeeded("pre_gateway_dispatch")
        except Exception as exc:
            self._failed("pre_gateway_dispatch", exc)
        return None

    @staticmethod
    def _session_key(source: Any, gateway: Any, session_store: Any) -> str | None:
        if source is None:
            return None
        for owner, method in ((session_store, "_generate_session_key"),
                              (gateway, "_session_key_for_source")):  # fmt: skip
            generate = getattr(owner, method, None)
            if generate is None:
                continue
            try:
                key = _id(_plain(generate(source)))
            except Exception:
                continue
            if key is not None:
                return key
        return None

    def _activity_callback(self, hook: str) -> Callable[..., None]:
        def callback(**kwargs: Any) -> None:
            try:
                self._spool(
                    {
                        "kind": "activity",
                        "at": _now(),
                        "session_id": _id(kwargs.get("session_id"))
                        or _session_env("HERMES_SESSION_ID"),
                        "session_key": _session_env("HERMES_SESSION_KEY"),
                        "platform": _id(kwargs.get("platform"))
                        or _session_env("HERMES_SESSION_PLATFORM"),
                        "hook": hook,
                    }
                )
                self._succeeded(hook)
            except Exception as exc:
                self._failed(hook, exc)
            return None

        callback.__name__ = callback.__qualname__ = f"ledger_{hook}"
        return callback

    def on_session_finalize(self, **kwargs: Any) -> None:
        """A session is over for Hermes (expiry, ``/new``, shutdown)."""
        try:
            self._spool(
                {
                    "kind": "finalize",
                    "at": _now(),
                    "session_id": _id(kwargs.get("session_id")),
                    "platform": _id(kwargs.get("platform")),
                    "reason": _id(kwargs.get("reason")),
                    "old_session_id": _id(kwargs.get("old_session_id")),
                    "new_session_id": _id(kwargs.get("new_session_id")),
                }
            )
            self._succeeded("on_session_finalize")
        except Exception as exc:
            self._failed("on_session_finalize", exc)
        return None

    def on_session_reset(self, **kwargs: Any) -> None:
        """``/new`` or ``/reset`` gave a key a new session."""
        try:
            self._spool(
                {
                    "kind": "reset",
                    "at": _now(),
                    "session_id": _id(kwargs.get("session_id")),
                    "old_session_id": _id(kwargs.get("old_session_id")),
                    "new_session_id": _id(kwargs.get("new_session_id")),
                    "platform": _id(kwargs.get("platform")),
                }
            )
            self._succeeded("on_session_reset")
        except Exception as exc:
            self._failed("on_session_reset", exc)
        return None

    def subagent_start(self, **kwargs: Any) -> None:
        """A delegated child agent started under a parent session."""
        try:
            self._spool(
                {
                    "kind": "subagent",
                    "at": _now(),
                    "parent_session_id": _id(kwargs.get("parent_session_id")),
                    "child_session_id": _id(kwargs.get("child_session_id")),
                }
            )
            self._succeeded("subagent_start")
        except Exception as exc:
            self._failed("subagent_start", exc)
        return None


def _plain(value: Any) -> Any:
    """``value``, unless it is an awaitable (an async facade's method): then None,
    closing the coroutine so that it is not reported as never awaited."""
    close = getattr(value, "close", None)
    if hasattr(value, "__await__"):
        if callable(close):
            close()
        return None
    return value


_installed: Capture | None = None
_install_lock = threading.Lock()


def _after_fork_in_child() -> None:
    if _installed is not None:
        _installed.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def install_capture(
    ctx: Any,
    *,
    apply_factory: ApplyFactory | None = None,
    worker_options: Mapping[str, Any] | None = None,
    workers: bool | None = None,
) -> Capture:
    """Register the callbacks with Hermes (``ctx.register_hook``) and, if this
    process already is a gateway, start the worker (see ``plugin.worker``).

    One ``Capture`` per process: installing again (a new plugin context)
    registers the same callbacks with it. ``apply_factory``, ``worker_options``
    and ``workers`` replace the recorder, the worker's settings and where workers
    run (see ``Capture``; for tests and embedders).
    """
    global _installed
    custom = apply_factory is not None or worker_options is not None or workers is not None
    with _install_lock:
        if _installed is None or custom:
            _installed = Capture(
                apply_factory=apply_factory or live_recorder,
                worker_options=worker_options,
                workers=workers,
            )
        capture = _installed
    for hook, callback in capture.callbacks().items():
        ctx.register_hook(hook, callback)
    try:
        capture.ensure_worker()
    except Exception as exc:
        capture.incidents.fail("starting the worker", exc, action="the records stay spooled")
    return capture
