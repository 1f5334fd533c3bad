"""``hermes-ledger report [NAME] [--param KEY=VALUE]...``: the named audit reports.

The reports, their SQL and their parameters live in ``projections.audits``; this
command parses the options, runs one report (read-only, bounded by --timeout) and
prints its rows as a table, --json or --csv.
"""

from __future__ import annotations

from pathlib import Path

import click

from hermes_ledger.gateway.cli.options import Seconds, db_option, json_option, reports_errors
from hermes_ledger.gateway.cli.output import print_csv, print_json, print_json_rows, print_table
from hermes_ledger.gateway.config.paths import resolve_ledger_path
from hermes_ledger.gateway.sessions.reports import open_existing
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
    db: Path | None,
    as_json: bool,
    as_csv: bool,
    timeout: float,
) -> None:
    """Run a named audit report, or list them.

    \b
    Without NAME (or with --list), lists every report with its description and
    parameters. A report is one read-only SQL query over the ledger's projections:
    --sql prints it, to run it elsewhere. Output is an aligned
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
    if show_sql:
        click.echo(report.sql)
        return
    with open_existing(resolve_ledger_path(db)) as led:
        result = run_report(led, report.name, given, timeout=timeout)
        if as_json:
            print_json_rows(result.columns, result.rows)
        elif as_csv:
            print_csv(result.columns, result.rows)
        else:
            print_table(result.columns, result.rows)
