"""The composition root: one function builds the gateway side over one ledger.

``open_gateway(db, home=…)`` opens the ledger (with its projections attached),
reads the configuration of a Hermes home — reset policies from ``config.yaml`` /
``gateway.json``, the ``ledger:`` section — discovers its hooks, and wires the
session store, the scheduler, the hook dispatcher and the runner. The CLI, the
demo and the tests all build them here, so there is one answer to "what does a
running gateway consist of"::

    with open_gateway("ledger.db", home=Path("~/.hermes").expanduser()) as gw:
        entry = gw.store.get_or_create_session(source)
        gw.runner.once()

Each part may be given instead of read (``config=``, ``settings=``, ``hooks=``),
which is how the demo runs under its own policies and hooks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypedDict, Unpack

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.config.paths import delivered_hooks_dir, hermes_home
from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistrar, HookRegistry
from hermes_ledger.gateway.scheduler.runner import Runner
from hermes_ledger.gateway.scheduler.ticks import Scheduler
from hermes_ledger.gateway.sessions.closing import Flusher
from hermes_ledger.gateway.sessions.store import SessionStore, new_session_id
from hermes_ledger.gateway.usercode.flushers import load_flusher
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.anchors import Witness
from hermes_ledger.ledger.clock import Clock, system_clock

__all__ = ["Gateway", "GatewayParts", "build_gateway", "open_gateway"]


class GatewayParts(TypedDict, total=False):
    """What ``build_gateway`` / ``open_gateway`` may be given instead of reading it."""

    home: str | os.PathLike[str] | None
    hooks_dir: str | os.PathLike[str] | None
    config: GatewayConfig | None
    settings: RunnerSettings | None
    hooks: HookRegistry | None
    clock: Clock | None
    flusher: Flusher | None
    session_ids: Callable[[datetime], str] | None


@dataclass(frozen=True)
class Gateway:
    """The gateway side over one open ledger; ``scheduler`` and ``dispatcher`` are
    the runner's own."""

    ledger: Ledger
    config: GatewayConfig
    settings: RunnerSettings
    hooks: HookRegistry
    store: SessionStore
    runner: Runner

    @property
    def scheduler(self) -> Scheduler:
        return self.runner.scheduler

    @property
    def dispatcher(self) -> HookDispatcher:
        return self.runner.dispatcher


def build_gateway(ledger: Ledger, **parts: Unpack[GatewayParts]) -> Gateway:
    """Wire store, scheduler, hooks and runner over an open ``ledger``.

    ``home`` is the Hermes home to read (default ``$HERMES_HOME``); its hooks live
    in ``hooks_dir`` (default ``<home>/hooks``, or ``<home>/ledger-hooks`` when the
    Hermes plugin is enabled there, as Hermes's gateway then delivers ``hooks``).
    ``config``, ``settings``, ``hooks`` and ``flusher`` that are passed are used as
    given, not read from the home.
    """
    home = parts.get("home")
    root = hermes_home() if home is None else Path(home)
    clock = parts.get("clock") or system_clock
    config = parts.get("config") or GatewayConfig.load(root)
    settings = parts.get("settings") or RunnerSettings.load(root)
    hooks = parts.get("hooks")
    if hooks is None:
        hooks_dir = parts.get("hooks_dir")
        hooks = HookRegistry.discover(delivered_hooks_dir(root) if hooks_dir is None else hooks_dir)
    flusher = parts.get("flusher")
    if flusher is None and settings.flusher:
        flusher = load_flusher(settings.flusher)
    # Hooks new to the ledger are registered (checkpoint: the head) before anything
    # is appended, and again before each start or close and each tick.
    registrar = HookRegistrar(ledger, hooks, clock=clock)
    store = SessionStore(
        ledger,
        config,
        clock,
        flusher=flusher,
        flush_timeout=settings.flush_timeout,
        session_ids=parts.get("session_ids") or new_session_id,
        before_session_event=registrar,
    )
    witness = Witness.in_directory(root) if settings.anchor_interval > 0 else None
    runner = Runner(
        ledger, config, settings, hooks, clock=clock, flusher=flusher, witness=witness,
        registrar=registrar,
    )  # fmt: skip
    return Gateway(ledger, config, settings, hooks, store, runner)


@contextmanager
def open_gateway(db: str | os.PathLike[str], **parts: Unpack[GatewayParts]) -> Iterator[Gateway]:
    """Open the ledger at ``db``, build the gateway over it (see ``build_gateway``),
    and close the ledger when the ``with`` block ends."""
    with Ledger.open(db, clock=parts.get("clock")) as ledger:
        yield build_gateway(ledger, **parts)
