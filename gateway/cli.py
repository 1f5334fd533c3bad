"""The ``hermes`` / ``hermes-ledger`` command line: a thin shell over library calls.

Each command parses its options, calls one library function, and prints the
result (``--json`` for scripts). A ``LedgerError`` becomes ``Error: …`` plus a
``Try: …`` hint and exit code 1; usage errors exit with 2.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.home import resolve_ledger_path
from ledger import LedgerError, admin

__all__ = ["hermes", "ledger_group"]

F = TypeVar("F", bound=Callable[..., Any])


class LedgerCommandError(click.ClickException):
    """``Error: what happened`` then ``Try: what to do next``."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def format_message(self) -> str:
        return self.message if not self.hint else f"{self.message}\nTry: {self.hint}"


def reports_errors(fn: F) -> F:
    """Turn LedgerErrors raised by the library into LedgerCommandError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LedgerError as exc:
            raise LedgerCommandError(str(exc), exc.hint) from exc

    return wrapper  # type: ignore[return-value]


db_option = click.option(
    "--db",
    "db",
    envvar="HERMES_LEDGER_DB",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ledger file. Default: $HERMES_HOME/ledger.db (env HERMES_LEDGER_DB).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _print_status(st: admin.LedgerStatus) -> None:
    schema = f"v{st.schema_version}"
    if st.schema_version == st.latest_schema_version:
        schema += " (up to date)"
    rows = [
        ("ledger", st.path),
        ("schema", schema),
        ("events", f"{st.events} (head position {st.head})"),
        ("streams", str(st.streams)),
        ("sessions", str(st.sessions)),
        ("first event", st.first_recorded_at or "-"),
        ("last event", st.last_recorded_at or "-"),
        ("size", _size(st.size_bytes)),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        click.echo(f"{key + ':':<{width}} {value}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hermes-ledger")
def hermes() -> None:
    """Hermes gateway tools."""


@hermes.group("ledger")
def ledger_group() -> None:
    """The session ledger: an append-only event log of every chat session.

    \b
    The ledger lives in $HERMES_HOME/ledger.db (HERMES_HOME defaults to ~/.hermes);
    every command takes --db, or the HERMES_LEDGER_DB environment variable, to use
    another file. `hermes-ledger X` is the same as `hermes ledger X`.
    """


@ledger_group.command("init")
@db_option
@json_option
@reports_errors
def init_cmd(db: Path | None, as_json: bool) -> None:
    """Create the ledger file (or migrate an older one)."""
    st = admin.init(resolve_ledger_path(db))
    if as_json:
        _print_json(st.to_dict())
        return
    if st.created:
        click.echo(f"Created ledger {st.path} (schema v{st.schema_version})")
    else:
        click.echo(
            f"Ledger {st.path} already exists (schema v{st.schema_version}, {st.events} events)"
        )


@ledger_group.command("status")
@db_option
@json_option
@reports_errors
def status_cmd(db: Path | None, as_json: bool) -> None:
    """Show where the ledger is and what it holds."""
    st = admin.status(resolve_ledger_path(db))
    if as_json:
        _print_json(st.to_dict())
    else:
        _print_status(st)


def main() -> None:  # pragma: no cover - console entry point
    hermes()


# Commands that live in their own modules register themselves on ledger_group.
from gateway import cli_hooks, cli_log, cli_run, cli_sessions  # noqa: E402, F401
