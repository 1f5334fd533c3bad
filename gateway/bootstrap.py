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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hermes_ledger.gateway.config.gateway import GatewayConfig
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.config.paths import default_hooks_dir, hermes_home
from hermes_ledger.gateway.hooks import HookDispatcher, HookRegistry
from hermes_ledger.gateway.scheduler.runner import Runner
from hermes_ledger.gateway.scheduler.ticks import Scheduler
from hermes_ledger.gateway.sessions.closing import Flusher
from hermes_ledger.gateway.sessions.store import SessionStore
from hermes_ledger.gateway.usercode.flushers import load_flusher
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.clock import Clock, system_clock

__all__ = ["Gateway", "build_gateway", "open_gateway"]


@dataclass
class Gateway:
    """The gateway side over one open ledger. ``scheduler`` and ``dispatcher`` are
    the runner's own; closing the gateway closes the ledger if it opened it."""

    ledger: Ledger
    config: GatewayConfig
    settings: RunnerSettings
    hooks: HookRegistry
    store: SessionStore
    runner: Runner
    _owns_ledger: bool = False

    @property
    def scheduler(self) -> Scheduler:
        return self.runner.scheduler

    @property
    def dispatcher(self) -> HookDispatcher:
        return self.runner.dispatcher

    def close(self) -> None:
        if self._owns_ledger:
            self.ledger.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def build_gateway(
    ledger: Ledger,
    *,
    home: str | os.PathLike[str] | None = None,
    hooks_dir: str | os.PathLike[str] | None = None,
    config: GatewayConfig | None = None,
    settings: RunnerSettings | None = None,
    hooks: HookRegistry | None = None,
    clock: Clock | None = None,
    flusher: Flusher | None = None,
) -> Gateway:
    """Wire store, scheduler, hooks and runner over an open ``ledger``.

    ``home`` is the Hermes home to read (default ``$HERMES_HOME``); its hooks live
    in ``hooks_dir`` (default ``<home>/hooks``). What is passed explicitly is used
    as given and not read from the home.
    """
    root = hermes_home() if home is None else Path(home)
    clock = clock or system_clock
    if config is None:
        config = GatewayConfig.load(root)
    if settings is None:
        settings = RunnerSettings.load(root)
    if hooks is None:
        hooks = HookRegistry.discover(default_hooks_dir(root) if hooks_dir is None else hooks_dir)
    if flusher is None and settings.flusher:
        flusher = load_flusher(settings.flusher)
    store = SessionStore(
        ledger, config, clock, flusher=flusher, flush_timeout=settings.flush_timeout
    )
    runner = Runner(ledger, config, settings, hooks, clock=clock, flusher=flusher)
    return Gateway(ledger, config, settings, hooks, store, runner)


def open_gateway(
    db: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    hooks_dir: str | os.PathLike[str] | None = None,
    config: GatewayConfig | None = None,
    settings: RunnerSettings | None = None,
    hooks: HookRegistry | None = None,
    clock: Clock | None = None,
    flusher: Flusher | None = None,
) -> Gateway:
    """Open the ledger at ``db`` and build the gateway over it (see ``build_gateway``);
    use it as a context manager so the ledger is closed."""
    ledger = Ledger.open(db, clock=clock)
    try:
        gateway = build_gateway(
            ledger, home=home, hooks_dir=hooks_dir, config=config, settings=settings,
            hooks=hooks, clock=clock, flusher=flusher,
        )  # fmt: skip
    except BaseException:
        ledger.close()
        raise
    gateway._owns_ledger = True
    return gateway
