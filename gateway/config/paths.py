"""Where things live: ``$HERMES_HOME`` (default ``~/.hermes``), the default ledger
and the default hooks directories. ``HERMES_HOME`` is read here and nowhere else."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hermes_ledger.gateway.config.files import ledger_plugin_enabled

__all__ = [
    "default_demo_ledger_path",
    "default_hooks_dir",
    "default_ledger_hooks_dir",
    "default_ledger_path",
    "delivered_hooks_dir",
    "hermes_home",
    "resolve_ledger",
    "resolve_ledger_path",
]


def hermes_home() -> Path:
    """``$HERMES_HOME``, or ``~/.hermes``.

    Inside a Hermes process (``hermes ledger …``, the plugin in the gateway) this
    is Hermes's own answer, ``hermes_constants.get_hermes_home()``: Hermes applies
    ``-p PROFILE`` by setting ``HERMES_HOME`` before anything runs, and may also
    scope a task to another home with a context-local override that only its
    function sees. Hermes is consulted only when it is already imported, so the
    standalone ``hermes-ledger`` never imports it (its function logs a warning to
    Hermes's errors.log in some cases); both read a blank ``HERMES_HOME`` as unset.
    """
    hermes = sys.modules.get("hermes_constants")
    get_home = getattr(hermes, "get_hermes_home", None)
    if get_home is not None:
        try:
            return Path(get_home())  # exactly where Hermes keeps state.db
        except Exception:  # an older or broken Hermes: fall back to the variable
            pass
    value = os.environ.get("HERMES_HOME", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".hermes"


def default_ledger_path() -> Path:
    """``$HERMES_HOME/ledger.db``."""
    return hermes_home() / "ledger.db"


def default_demo_ledger_path() -> Path:
    """``$HERMES_HOME/ledger-demo.db``: the demo's own ledger, apart from the real one.
    The home is created (owner-only) on first use, as for the real ledger."""
    home = hermes_home()
    _make_home(home)
    return home / "ledger-demo.db"


def default_hooks_dir(home: Path | None = None) -> Path:
    """``<home>/hooks``, by default ``$HERMES_HOME/hooks``."""
    return (hermes_home() if home is None else home) / "hooks"


def default_ledger_hooks_dir(home: Path | None = None) -> Path:
    """``<home>/ledger-hooks``, by default ``$HERMES_HOME/ledger-hooks``: the hooks
    the ledger delivers when it runs as a plugin inside Hermes, whose gateway
    delivers ``<home>/hooks`` itself."""
    return (hermes_home() if home is None else home) / "ledger-hooks"


def delivered_hooks_dir(home: Path | None = None) -> Path:
    """The hooks directory the ledger delivers for ``home`` (default
    ``$HERMES_HOME``): ``ledger-hooks`` when the ledger plugin is enabled there,
    since Hermes's gateway then delivers ``hooks`` itself; else ``hooks``."""
    root = hermes_home() if home is None else home
    return (
        default_ledger_hooks_dir(root) if ledger_plugin_enabled(root) else default_hooks_dir(root)
    )


def resolve_ledger_path(db: str | os.PathLike[str] | None) -> Path:
    """``db`` if given (``--db`` / ``HERMES_LEDGER_DB``), else ``$HERMES_HOME/ledger.db``.

    The default home is created (owner-only) on first use; an explicit path's
    directory must already exist. A PostgreSQL URI is refused (a LedgerError, before
    anything is created): a caller that handles one uses ``resolve_ledger``.
    """
    if db:
        if _is_dsn(db):
            from hermes_ledger.ledger.errors import LedgerError

            raise LedgerError(
                "this needs a SQLite ledger file, not a PostgreSQL connection string",
                hint="pass --db with the path of a ledger file",
            )
        return Path(db).expanduser()
    path = default_ledger_path()
    _make_home(path.parent)
    return path


def resolve_ledger(db: str | os.PathLike[str] | None) -> Path | str:
    """What ``--db`` names: a PostgreSQL connection URI unchanged (a ``str``), else the
    SQLite ledger's path as ``resolve_ledger_path`` gives it."""
    if db and _is_dsn(db):
        return str(db)
    return resolve_ledger_path(db)


def _is_dsn(db: str | os.PathLike[str]) -> bool:
    from hermes_ledger.ledger.backend import is_dsn

    return is_dsn(db)


def _make_home(home: Path) -> None:
    """Create the home (owner-only) if needed; a LedgerError if it cannot be one."""
    from hermes_ledger.ledger.errors import LedgerError

    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LedgerError(
            f"HERMES_HOME {home} is not a directory",
            hint="point HERMES_HOME at a directory (unset, it is ~/.hermes), or pass --db",
        ) from None
    except OSError as exc:
        raise LedgerError(
            f"cannot create HERMES_HOME {home}: {exc.strerror or exc}",
            hint="point HERMES_HOME at a directory you can write to, or pass --db",
        ) from None
