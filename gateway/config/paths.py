"""Where things live: ``$HERMES_HOME`` (default ``~/.hermes``), the default ledger
and the default hooks directory. ``HERMES_HOME`` is read here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_hooks_dir", "default_ledger_path", "hermes_home", "resolve_ledger_path"]


def hermes_home() -> Path:
    """``$HERMES_HOME``, or ``~/.hermes``."""
    value = os.environ.get("HERMES_HOME")
    return Path(value).expanduser() if value else Path.home() / ".hermes"


def default_ledger_path() -> Path:
    """``$HERMES_HOME/ledger.db``."""
    return hermes_home() / "ledger.db"


def default_hooks_dir(home: Path | None = None) -> Path:
    """``<home>/hooks``, by default ``$HERMES_HOME/hooks``."""
    return (hermes_home() if home is None else home) / "hooks"


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
