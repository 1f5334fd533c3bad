"""The ``hermes-ledger`` command line: the root group and every command on it.

Each command parses its options, calls one library function, and prints the
result (``--json`` for scripts). A ``LedgerError`` becomes ``Error: …`` plus a
``Try: …`` hint and exit code 1; usage errors exit with 2. Commands are listed
here, explicitly; importing a command module registers nothing.
"""

from __future__ import annotations

import click

from hermes_ledger.gateway.cli import (
    admin,
    anchor,
    doctor,
    erase,
    hooks,
    imports,
    log,
    migrate,
    plugin,
    prune,
    report,
    run,
    search,
    serve,
    sessions,
)

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The session ledger: an append-only event log of every chat session.

    \b
    The ledger lives in $HERMES_HOME/ledger.db (HERMES_HOME defaults to ~/.hermes);
    every command takes --db, or the HERMES_LEDGER_DB environment variable, to use
    another file (or a postgresql:// ledger, for the commands that say so).
    """


for _command in (
    admin.init_cmd,
    admin.status_cmd,
    admin.vacuum_cmd,
    log.events_cmd,
    log.export_cmd,
    imports.import_cmd,
    imports.backfill_cmd,
    plugin.sync_cmd,
    log.sql_cmd,
    log.schema_cmd,
    sessions.sessions_cmd,
    search.search_cmd,
    sessions.history_cmd,
    sessions.transcript_cmd,
    sessions.replay_cmd,
    sessions.verify_cmd,
    anchor.anchor_cmd,
    doctor.doctor_cmd,
    run.tick_cmd,
    run.run_cmd,
    run.demo_cmd,
    serve.serve_cmd,
    hooks.hooks_group,
    report.report_cmd,
    prune.prune_cmd,
    erase.erase_cmd,
    migrate.migrate_cmd,
):
    cli.add_command(_command)


def _add_version_options(command: click.Command) -> None:
    """``--version`` on ``command`` and every command under it (``hermes-ledger hooks
    --version`` too, and so ``hermes ledger … --version``), added here once rather
    than by each command."""
    if not any("--version" in param.opts for param in command.params):
        click.version_option(package_name="hermes-ledger")(command)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_version_options(sub)


_add_version_options(cli)


def main() -> None:  # pragma: no cover - console entry point
    """Run the command; output that cannot be written (a full disk, say) is an
    ``Error:`` on stderr with exit status 1, not a traceback."""
    import errno
    import os
    import sys

    try:
        try:
            cli(standalone_mode=True)
        finally:
            sys.stdout.flush()
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            raise SystemExit(1) from None
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        click.echo(f"Error: cannot write the output: {exc.strerror or exc}", err=True)
        click.echo(
            "Try: check the free space where the output goes (or pipe it elsewhere)", err=True
        )
        raise SystemExit(1) from None
