"""``hermes-ledger tick / run / demo``: the background work, once, forever, or simulated."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

from hermes_ledger.gateway.bootstrap import Gateway, open_gateway
from hermes_ledger.gateway.cli.options import (
    LedgerCommandError,
    LedgerTarget,
    Seconds,
    db_option,
    hooks_dir_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_json, print_table
from hermes_ledger.gateway.config.paths import (
    default_demo_ledger_path,
    hermes_home,
    resolve_ledger,
)
from hermes_ledger.gateway.demo.day import (
    describe_query,
    describe_target,
    prepare_demo_ledger,
    run_demo,
)
from hermes_ledger.gateway.logs import configured_logging, fields
from hermes_ledger.gateway.scheduler.reconnect import run_reconnecting, where
from hermes_ledger.gateway.scheduler.runner import describe
from hermes_ledger.ledger.clock import parse_utc

__all__ = ["config_option", "demo_cmd", "resolve_home", "run_cmd", "tick_cmd"]

log = logging.getLogger("hermes_ledger.gateway.cli.run")

config_option = click.option(
    "--config",
    "config_home",
    type=click.Path(path_type=Path),
    help="A Hermes home (or its config.yaml) to read reset policies and the ledger: section"
    " from. Default: $HERMES_HOME.",
)


def resolve_home(config_home: Path | None) -> Path:
    """The Hermes home of ``--config`` (a home or its config.yaml), else $HERMES_HOME."""
    if config_home is None:
        return hermes_home()
    if not config_home.exists():
        raise LedgerCommandError(
            f"--config {config_home} does not exist",
            "pass a Hermes home (the directory that holds config.yaml) or its config.yaml",
        )
    if config_home.is_file():
        if config_home.name != "config.yaml":
            raise LedgerCommandError(
                f"--config {config_home} is not a Hermes home or its config.yaml",
                "pass the directory that holds config.yaml and gateway.json",
            )
        return config_home.parent
    return config_home


@contextmanager
def _gateway(
    db: Path | str | None, config_home: Path | None, hooks_dir: Path | None
) -> Iterator[Gateway]:
    """The gateway of the command's options (``--db`` a file or a PostgreSQL URI);
    hooks that do not load are logged (warnings) as the dispatcher loads them."""
    with open_gateway(
        resolve_ledger(db), home=resolve_home(config_home), hooks_dir=hooks_dir
    ) as gw:
        yield gw


def _log_level(quiet: bool, verbose: bool) -> int:
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose cannot be used together")
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines on stderr: text (time, level, what happened) or json (one object a line).",
)
quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="Log warnings and errors only (no line per close)."
)
verbose_option = click.option(
    "-v", "--verbose", is_flag=True, help="Log debug records too (each pass, handler tracebacks)."
)


@click.command("tick")
@postgres_ready
@db_option
@config_option
@hooks_dir_option
@click.option("--now", "now_text", metavar="ISO-8601", help="Evaluate deadlines at this time.")
@json_option
@log_format_option
@verbose_option
@reports_errors
def tick_cmd(
    db: Path | str | None,
    config_home: Path | None,
    hooks_dir: Path | None,
    now_text: str | None,
    as_json: bool,
    log_format: str,
    verbose: bool,
) -> None:
    """One pass: close due sessions, deliver hooks.

    --db may be a postgresql:// URI: runners on several hosts share one database
    (each due session and each hook delivery is claimed by one of them).
    What the pass did is printed on stdout; warnings and errors (a hook that does
    not load or fails, a failed flush) are logged on stderr, as `run` logs them.
    """
    try:
        now = parse_utc(now_text) if now_text else None
    except ValueError:
        raise LedgerCommandError(
            f"--now {now_text!r} is not an ISO-8601 time", "e.g. --now 2026-11-22T09:30:00Z"
        ) from None
    level = logging.DEBUG if verbose else logging.WARNING
    with (
        configured_logging("json" if log_format == "json" else "text", level),
        _gateway(db, config_home, hooks_dir) as gateway,
    ):
        report = gateway.runner.once(now)
    if as_json:
        print_json(report.to_dict())
    else:
        for line in describe(report):
            click.echo(line)


@click.command("run")
@postgres_ready
@db_option
@config_option
@hooks_dir_option
@click.option("--interval", type=Seconds(), help="Seconds between passes (0.01 to 86400).")
@log_format_option
@quiet_option
@verbose_option
@reports_errors
def run_cmd(
    db: Path | str | None,
    config_home: Path | None,
    hooks_dir: Path | None,
    interval: float | None,
    log_format: str,
    quiet: bool,
    verbose: bool,
) -> None:
    """Tick and deliver hooks until SIGTERM or Ctrl-C.

    \b
    The pass in progress is finished before exiting (status 0). Logs on stderr:
    one line per close (with its flush outcome), per hook delivery or failure,
    per anchor; a hook that does not load once when it breaks and once when it
    is fixed. --log-format json writes each as one JSON object. On a PostgreSQL
    ledger (--db postgresql://…) any number of runners, on any hosts, may run at
    once: each close and each hook delivery is made by one of them, and a
    lost connection (a server restart or failover) is ridden out: a warning,
    then a new connection after 1, 2, 4 … 30 s, and a line when it is back.
    """
    level = _log_level(quiet, verbose)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        log.info("%s: finishing the current pass", name, extra=fields("stopping", signal=name))
        stop.set()

    def started(gateway: Gateway) -> None:
        every = interval if interval is not None else gateway.settings.tick_interval
        click.echo(
            f"Running on {where(gateway.ledger)}: a pass every {every:g}s (SIGTERM/Ctrl-C stops)"
        )

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with configured_logging("json" if log_format == "json" else "text", level):
            passes = run_reconnecting(
                lambda: _gateway(db, config_home, hooks_dir), stop, interval, started=started
            )
        click.echo(f"Stopped after {passes} passes.")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("demo")
@postgres_ready
@click.option(
    "--db",
    "db",
    type=LedgerTarget(),  # no envvar: HERMES_LEDGER_DB is the real ledger
    help="The demo's own ledger, replaced on each run: a file, or a postgresql:// URI"
    " of a database of its own. Default: $HERMES_HOME/ledger-demo.db (never"
    " HERMES_LEDGER_DB, the real ledger).",
)
@json_option
@reports_errors
def demo_cmd(db: Path | str | None, as_json: bool) -> None:
    """Simulate a gateway day into a demo ledger and show it.

    \b
    Writes a ledger of its own (replaced on each run; the real ledger, hooks and
    configuration are never touched): sessions under the `demo` profile (keys
    agent:demo:…) across several platforms, a simulated clock through idle
    expiries, a daily reset, an auto-reset on a late message and a manual /new,
    delivered to an example hook in a temporary folder; then the session map, an
    audit query and where an export went. The same story on every run.

    \b
    On PostgreSQL (--db postgresql://…) the ledger is the database's
    hermes_ledger schema: created when missing, dropped and re-created when it
    holds only the demo's sessions, otherwise refused untouched; the export goes
    to $HERMES_HOME/ledger-demo-export.jsonl.
    """
    if isinstance(db, Path):
        target: Path | str = db.expanduser()
    else:
        target = db if db is not None else default_demo_ledger_path()
    prepare_demo_ledger(target)  # refuse a ledger that is not the demo's before any output
    say = (lambda _: None) if as_json else (lambda line: click.echo(f"  {line}"))
    if not as_json:
        click.echo(f"Simulating a gateway day into {describe_target(target)} …")
    report = run_demo(target, say=say)
    if as_json:
        print_json(
            {
                "ledger": report.ledger,
                "events": report.events,
                "export": report.export_path,
                "hook_calls": report.hook_calls,
                "session_map": [
                    {"session_key": k, "session_id": s, "status": st}
                    for k, s, st in report.sessions_map
                ],
                "closed": [{"session_key": k, "reason": r} for k, r in report.closed],
                "audit": [
                    dict(zip(report.audit_columns, r, strict=True)) for r in report.audit_rows
                ],
            },
        )
        return
    click.echo("\nSession map (demo profile):")
    print_table(["session_key", "session_id", "status"], report.sessions_map)
    click.echo("\nAudit query — how the demo's sessions ended:")
    for line in describe_query().splitlines():
        click.echo(f"  {line}")
    print_table(report.audit_columns, report.audit_rows)
    click.echo(f"\nThe example hook was called {report.hook_calls} times.")
    click.echo(f"Exported {report.events} events to {report.export_path}")
    click.echo(
        f"Next, on the demo ledger (--db {_db_hint(target)}):"
        " hermes-ledger sessions --all, history KEY, sql 'SELECT …', verify"
    )


def _db_hint(target: Path | str) -> str:
    """The ``--db`` that names the demo's ledger again: the file, or the database's
    ``postgresql://host:port/dbname`` (user and password left for the reader to add)."""
    if isinstance(target, Path):
        return str(target)
    from hermes_ledger.ledger.postgres import describe_dsn

    return "postgresql://" + describe_dsn(target, user=False)
