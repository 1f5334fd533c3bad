"""Which ledger the plugin records a Hermes home into.

One answer for the worker in the gateway, ``hermes ledger sync``, ``hermes ledger
backfill`` and the other ``hermes ledger …`` commands (``plugin.cli``), so they all
see the same ledger:

1. ``HERMES_LEDGER_DB``, when set (not blank): a ledger file or a
   ``postgresql://`` URI, as for every ``hermes-ledger`` command;
2. else ``ledger.db`` in the home's ``config.yaml`` (``RunnerSettings.db``): a
   URI, or a file path, relative to the home unless absolute (``~`` expanded);
3. else ``<home>/ledger.db``.

Several gateway hosts share one ledger by giving each host's Hermes the same
PostgreSQL URI (in its ``config.yaml`` or its service's environment). The URI is
passed on unchanged (it may hold a password: it is never printed, only
``describe_dsn``'s ``host:port/dbname as user``).
"""

from __future__ import annotations

import os
from pathlib import Path

from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.ledger.backend import is_dsn

__all__ = ["ENV", "describe_ledger", "plugin_ledger"]

ENV = "HERMES_LEDGER_DB"


def plugin_ledger(home: str | os.PathLike[str]) -> Path | str:
    """The ledger for ``home`` (see the module docstring): a SQLite file's ``Path``
    or a PostgreSQL URI (``str``). Raises ``ConfigError`` for a bad ``config.yaml``."""
    home = Path(home)
    value = os.environ.get(ENV, "").strip()
    if value:
        return value if is_dsn(value) else Path(value).expanduser()
    configured = RunnerSettings.load(home).db
    if configured:
        if is_dsn(configured):
            return configured
        path = Path(configured).expanduser()
        return path if path.is_absolute() else home / path
    return home / "ledger.db"


def describe_ledger(target: Path | str) -> str:
    """How messages name ``target``: a file's path; ``host:port/dbname as user`` for
    a URI (never its password)."""
    if isinstance(target, Path):
        return str(target)
    try:
        from hermes_ledger.ledger.postgres.log import describe_dsn
    except ImportError:  # without psycopg: the scheme alone, never the URI itself
        return "a PostgreSQL ledger"
    return describe_dsn(target)
