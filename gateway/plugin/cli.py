"""``hermes ledger …``: every ``hermes-ledger`` command as a Hermes subcommand.

``register_cli(ctx)`` (called by the plugin's ``register``) registers ``ledger``
with Hermes's ``ctx.register_cli_command``. Hermes builds an argparse subparser
for it and calls the handler with the parsed namespace; we want click, not
argparse, to read the arguments, so that ``hermes ledger <command> [options]``
behaves exactly like ``hermes-ledger <command> [options]``:

* ``setup`` replaces the subparser's ``parse_known_args`` so that *everything*
  after ``ledger`` is kept as it is — also leading options (``--json``,
  ``--help``, ``--version``) that argparse's ``REMAINDER`` would reject;
* ``handle`` runs the click group on those arguments with ``prog_name`` ``hermes
  ledger`` and leaves through ``sys.exit`` with click's exit code (Hermes
  discards a handler's return value: without the exit every error would exit 0).

Hermes has already handled its own options when the handler runs: ``-p
PROFILE`` (anywhere before a literal ``--``) has chosen the home by setting
``HERMES_HOME``, and ``config.paths.hermes_home`` asks Hermes for the home when it
runs inside Hermes, so the default ledger is that home's: the plugin's
(``plugin.location``), so that ``hermes ledger status`` reads the ledger the
gateway records into also when config.yaml names it (``ledger: {db: URI}``,
passed on as ``HERMES_LEDGER_DB`` for the command). Because
Hermes takes ``-p`` for itself, ``hermes-ledger sql -p NAME VALUE`` is written
``hermes ledger sql --param NAME VALUE`` here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["COMMAND", "PROG_NAME", "handle", "register_cli", "run", "setup"]

ENV = "HERMES_LEDGER_DB"  # as plugin.location reads it (imported late: this module is light)

COMMAND = "ledger"
PROG_NAME = f"hermes {COMMAND}"
_REST = "ledger_args"  # the namespace attribute that carries the forwarded arguments

HELP = "The session ledger: an append-only event log of every chat session"
DESCRIPTION = (
    "Runs hermes-ledger on this Hermes home's ledger ($HERMES_HOME/ledger.db, or\n"
    "config.yaml's ledger.db, or HERMES_LEDGER_DB; with -p PROFILE, the profile's).\n"
    "Everything after `ledger` goes to it: `hermes ledger --help` lists its commands."
)


def setup(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` (Hermes's subparser for ``ledger``) keep every argument.

    argparse's subparsers action calls ``parser.parse_known_args(rest, None)``
    on the subparser; this replacement takes the defaults (among them Hermes's
    ``func``, the handler) and puts the arguments, unparsed, in ``ledger_args``.
    """

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns = namespace if namespace is not None else argparse.Namespace()
        for key, value in parser._defaults.items():
            setattr(ns, key, value)
        setattr(ns, _REST, list(args or []))
        return ns, []

    parser.parse_known_args = parse_known_args  # type: ignore[assignment,method-assign]


def run(args: Sequence[str]) -> int:
    """Run the ``hermes-ledger`` group on ``args`` as ``hermes ledger``; return
    the exit code. Output and codes are the standalone command's: 0, 1 with
    ``Error: …`` / ``Try: …``, 2 for usage errors. An unexpected exception is
    one ``Error:`` line and 1, never a traceback."""
    import click

    configured = _configured_ledger()
    try:
        from hermes_ledger.gateway.cli import cli

        if configured is not None:
            os.environ[ENV] = configured
        cli.main(args=list(args), prog_name=PROG_NAME, standalone_mode=True)
    except SystemExit as done:
        return _code(done.code)
    except Exception as exc:  # a bug of ours must not become a traceback in Hermes
        click.echo(f"Error: hermes ledger failed: {type(exc).__name__}: {exc}", err=True)
        click.echo("Try: run the same command as `hermes-ledger …` to see where", err=True)
        return 1
    finally:
        if configured is not None:
            os.environ.pop(ENV, None)
    return 0  # pragma: no cover - standalone mode always exits


def _configured_ledger() -> str | None:
    """The ledger config.yaml's ``ledger.db`` names, when HERMES_LEDGER_DB is not set
    (it wins); None otherwise, and when config.yaml cannot be read (the command
    then reports that itself, or works on the home's ledger.db)."""
    from hermes_ledger.gateway.config.paths import hermes_home
    from hermes_ledger.gateway.plugin.location import plugin_ledger

    if os.environ.get(ENV, "").strip():
        return None
    try:
        home = hermes_home()
        target = plugin_ledger(home)
    except Exception:
        return None
    return None if target == home / "ledger.db" else str(target)


def _code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits with 1
    return 1


def handle(args: argparse.Namespace) -> NoReturn:
    """Hermes's handler for ``hermes ledger …``: run it and exit with its code."""
    sys.stdout.flush()
    code = run(getattr(args, _REST, None) or [])
    sys.exit(code)


def register_cli(ctx: Any) -> None:
    """Register ``hermes ledger`` with a Hermes plugin context."""
    ctx.register_cli_command(
        name=COMMAND,
        help=HELP,
        setup_fn=setup,
        handler_fn=handle,
        description=DESCRIPTION,
    )
