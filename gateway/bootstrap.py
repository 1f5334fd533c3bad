"""The composition root: one function builds the gateway side over one ledger.

``open_gateway(db, home=…)`` opens the ledger — a SQLite file or a PostgreSQL
URI (``ledger.backend.open_log``) — with its projections attached,
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

On PostgreSQL (``build_gateway`` given a ``PostgresLog``) the same parts are the
backend's: the projections, the scheduler's ``DeadlineProjector`` and the hook
``HookOutbox`` are attached to the log (in that order: every append of this
process keeps them), the scheduler is ``PostgresScheduler`` (claims and leases,
for runners on several hosts) and the hook queue ``PostgresDeliveryQueue``; the
dispatcher, the registrar, the runner and the store are the same classes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

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
from hermes_ledger.ledger.backend import EventLog, open_log
from hermes_ledger.ledger.clock import Clock, system_clock

if TYPE_CHECKING:
    from hermes_ledger.gateway.scheduler.postgres import PostgresScheduler

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
    """The gateway side over one open ledger (either backend); ``scheduler`` and
    ``dispatcher`` are the runner's own."""

    ledger: EventLog
    config: GatewayConfig
    settings: RunnerSettings
    hooks: HookRegistry
    store: SessionStore
    runner: Runner

    @property
    def scheduler(self) -> Scheduler | PostgresScheduler:
        return self.runner.scheduler

    @property
    def dispatcher(self) -> HookDispatcher:
        return self.runner.dispatcher


def build_gateway(log: EventLog, **parts: Unpack[GatewayParts]) -> Gateway:
    """Wire store, scheduler, hooks and runner over an open ``log``: a SQLite
    ``Ledger`` or a ``PostgresLog`` (see the module docstring).

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
    if not isinstance(log, Ledger):
        _attach_postgres(log, config)
    # Hooks new to the ledger are registered (checkpoint: the head) before anything
    # is appended, and again before each start or close and each tick.
    registrar = HookRegistrar(log, hooks, clock=clock)
    store = SessionStore(
        log,  # type: ignore[arg-type]
        config,
        clock,
        flusher=flusher,
        flush_timeout=settings.flush_timeout,
        session_ids=parts.get("session_ids") or new_session_id,
        before_session_event=registrar,
    )
    witness = Witness.in_directory(root) if settings.anchor_interval > 0 else None
    runner = Runner(
        log, config, settings, hooks, clock=clock, flusher=flusher, witness=witness,
        registrar=registrar,
    )  # fmt: skip
    return Gateway(log, config, settings, hooks, store, runner)


def _attach_postgres(log: EventLog, config: GatewayConfig) -> None:
    """The projections, then the deadlines (they read ``session_map``), then the
    hook outbox, inside every later append of ``log``."""
    from hermes_ledger.gateway.hooks.postgres_delivery import attach_outbox
    from hermes_ledger.gateway.scheduler.postgres import attach_deadlines
    from hermes_ledger.ledger.postgres import PostgresLog
    from hermes_ledger.projections import postgres as pg_projections

    assert isinstance(log, PostgresLog)
    pg_projections.attach(log)
    attach_deadlines(log, config)
    attach_outbox(log)


@contextmanager
def open_gateway(db: str | os.PathLike[str], **parts: Unpack[GatewayParts]) -> Iterator[Gateway]:
    """Open the ledger at ``db`` (a file, or a ``postgresql://`` URI), build the
    gateway over it (see ``build_gateway``), and close it when the ``with`` block ends."""
    with open_log(db, clock=parts.get("clock")) as log:
        yield build_gateway(log, **parts)
