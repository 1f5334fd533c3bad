"""The Hermes Agent plugin (entry point ``hermes_agent.plugins`` → ``ledger``).

Placeholder until the capture side lands: ``register(ctx)`` registers ``hermes
ledger …`` and, once ``capture`` exists, the hook callbacks. The capture engineer
owns this file from then on.
"""

from __future__ import annotations

from typing import Any

from hermes_ledger.gateway.plugin.cli import register_cli

__all__ = ["register"]


def register(ctx: Any) -> None:
    register_cli(ctx)
    try:
        from hermes_ledger.gateway.plugin.capture import install_capture
    except ImportError:  # capture.py is not there yet
        return
    install_capture(ctx)
