"""``hermes-ledger report [NAME] [--param KEY=VALUE]...``: the named audit reports.

The reports, their SQL and their parameters live in ``projections.audits``; this
command parses the options, runs one report (read-only, bounded by --timeout) and
prints its rows as a table, --json or --csv.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hermes_ledger.gateway.cli.options import (
    Seconds,
    db_option,
    json_option,
    postgres_ready,
    reports_errors,
)
from hermes_ledger.gateway.cli.output import print_csv, print_json, print_json_rows, print_table
from hermes_ledger.gateway.config.paths import resolve_ledger
from hermes_ledger.gateway.sessions.reports import open_existing
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.query import DEFAULT_SQL_TIMEOUT
from hermes_ledger.projections.audits import (
    REPORTS,
    Report,
    ReportUsageError,
    bind_params,
    describe_reports,
    get_report,
    run_report,
)

if TYPE_CHECKING:
    from hermes_ledger.ledger.postgres import PostgresLog

__all__ = ["report_cmd"]


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` texts as a mapping (a malformed or repeated one is a usage error)."""
    given: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.UsageError(f"--param takes KEY=VALUE (e.g. --param since=7d), not {pair!r}")
        if key in given:
            raise click.UsageError(f"--param {key} is given twice")
        given[key] = value
    return given


def _usage(exc: ReportUsageError, report: Report | None) -> click.UsageError:
    """The error, then what is valid: the report's parameters, or every report."""
    if report is None:
        valid = ["Reports:", *(f"  {r.name}  {r.description}" for r in REPORTS.values())]
    else:
        valid = [f"Parameters of {report.name}:"]
        valid += [f"  --param {p.describe()}" for p in report.params] or ["  (none)"]
    return click.UsageError("\n".join([str(exc), *valid]))


@click.command("report")
@postgres_ready
@click.argument("name", required=False)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A report parameter, e.g. --param since=7d --param platform=telegram (repeat).",
)
@click.option("--list", "list_only", is_flag=True, help="List the reports and their parameters.")
@click.option("--sql", "show_sql", is_flag=True, help="Print the report's SQL instead of its rows.")
@db_option
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@click.option(
    "--timeout",
    type=Seconds(min=0),
    default=DEFAULT_SQL_TIMEOUT,
    show_default=True,
    help="Stop the report after this many seconds, output included (0: no limit).",
)
@reports_errors
def report_cmd(
    name: str | None,
    params: tuple[str, ...],
    list_only: bool,
    show_sql: bool,
    db: Path | str | None,
    as_json: bool,
    as_csv: bool,
    timeout: float,
) -> None:
    """Run a named audit report, or list them.

    \b
    Without NAME (or with --list), lists every report with its description and
    parameters. A report is one read-only SQL query over the ledger's projections:
    --sql prints it, to run it elsewhere (with --db postgresql://… its PostgreSQL
    form: the same columns and rows). Output is an aligned
    table, --json (a list of objects) or --csv. Examples:
      hermes-ledger report unflushed-ends --param since=7d
      hermes-ledger report usage-by-platform-day --param platform=telegram --csv
    """
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    given = _params(params)
    if list_only or name is None:
        if given:
            raise click.UsageError("--param needs a report NAME (see hermes-ledger report --list)")
        if as_json:
            print_json([r.to_dict() for r in REPORTS.values()])
        else:
            for line in describe_reports():
                click.echo(line)
        return
    try:
        report = get_report(name)
    except ReportUsageError as exc:
        raise _usage(exc, None) from None
    try:
        bind_params(report, given)  # usage errors before the ledger is opened
    except ReportUsageError as exc:
        raise _usage(exc, report) from None
    target = resolve_ledger(db)
    if show_sql:
        click.echo(report.sql_for("postgresql" if isinstance(target, str) else "sqlite"))
        return
    with _open(target) as led:
        result = run_report(led, report.name, given, timeout=timeout)
        if as_json:
            print_json_rows(result.columns, result.rows)
        elif as_csv:
            print_csv(result.columns, result.rows)
        else:
            print_table(result.columns, result.rows)


def _open(target: Path | str) -> AbstractContextManager[Ledger | PostgresLog]:
    """The ledger to report on: a SQLite file with its projections brought up to date,
    or a PostgreSQL ledger with its projections caught up when it has them."""
    if isinstance(target, str):
        from hermes_ledger.gateway.sessions import postgres

        return postgres.open_postgres(target)
    return open_existing(target)
