"""Where things live: ``$HERMES_HOME`` (default ``~/.hermes``) and the default ledger."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_ledger_path", "hermes_home", "resolve_ledger_path"]


def hermes_home() -> Path:
    """``$HERMES_HOME``, or ``~/.hermes``."""
    value = os.environ.get("HERMES_HOME")
    return Path(value).expanduser() if value else Path.home() / ".hermes"


def default_ledger_path() -> Path:
    return hermes_home() / "ledger.db"


def resolve_ledger_path(db: str | os.PathLike[str] | None) -> Path:
    """``db`` if given (``--db`` / ``HERMES_LEDGER_DB``), else ``$HERMES_HOME/ledger.db``.

    The default home is created (owner-only) on first use; an explicit path's
    directory must already exist.
    """
    if db:
        return Path(db).expanduser()
    path = default_ledger_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
