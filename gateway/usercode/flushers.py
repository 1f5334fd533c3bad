"""Loading the operator's memory flusher named by ``ledger.flusher``: an import
path (``module:callable``, dotted attributes allowed) or the name of an entry
point in the ``hermes_ledger.flushers`` group."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from hermes_ledger.gateway.config.files import ConfigError
from hermes_ledger.gateway.sessions.closing import Flusher

__all__ = ["FLUSHER_ENTRY_POINTS", "load_flusher"]

FLUSHER_ENTRY_POINTS = "hermes_ledger.flushers"
"""Entry-point group where installed packages may publish flushers by name."""


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
