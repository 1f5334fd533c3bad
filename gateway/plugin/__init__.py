"""The Hermes Agent plugin (entry point ``hermes_agent.plugins`` → ``ledger``).

Hermes loads this module in every process that discovers plugins and calls
``register(ctx)`` once there. It registers

* ``hermes ledger …``, the ledger's command line (``plugin.cli``), and
* the hook callbacks that spool what the gateway does (``plugin.capture``), whose
  records a worker thread drains into ``$HERMES_HOME/ledger.db`` — in the
  gateway process only (``plugin.worker`` says why).

Registering starts no thread outside a gateway: ``hermes ledger …`` and
``hermes chat`` only get callbacks that append to the spool when they fire
(``hermes ledger sync`` records such a home's spool without a gateway).
Each half is registered even if the other fails, and neither failure reaches
Hermes (which would mark the whole plugin as not loaded): it is logged on
``hermes_plugins.ledger``.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["register"]

log = logging.getLogger("hermes_plugins.ledger")


def register(ctx: Any) -> None:
    """Hermes's plugin entry point: register the command and the capture hooks."""
    try:
        from hermes_ledger.gateway.plugin.cli import register_cli

        register_cli(ctx)
    except Exception as exc:
        log.warning("ledger plugin: `hermes ledger` is not available: %s: %s",
                    type(exc).__name__, exc)  # fmt: skip
    try:
        from hermes_ledger.gateway.plugin.capture import install_capture

        install_capture(ctx)
    except Exception as exc:
        log.warning("ledger plugin: session capture is not available: %s: %s",
                    type(exc).__name__, exc)  # fmt: skip
