"""Bad input through the public interfaces is refused clearly (issue 11, items 9 and 10).

The Python API raises a LedgerError (never a raw ValueError, pydantic error,
RecursionError or OverflowError) and stores nothing; the command line's options
that take seconds refuse what is not a finite number in range, as a usage error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import Result

from hermes_ledger.gateway.cli.log import events_cmd
from hermes_ledger.gateway.cli.options import Seconds
from hermes_ledger.gateway.cli.run import run_cmd

# --- the command line: seconds --------------------------------------------------


def _option(command: click.Command, name: str) -> click.Parameter:
    return next(p for p in command.params if name in p.opts)


SECONDS_OPTIONS = [
    (run_cmd, "--interval"),
    (events_cmd, "--poll-interval"),
    (events_cmd, "--follow-timeout"),
]


@pytest.mark.parametrize(("command", "name"), SECONDS_OPTIONS)
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1", "1e6"])
def test_seconds_options_refuse_what_is_not_a_sane_finite_number(
    command: click.Command, name: str, text: str
) -> None:
    option = _option(command, name)
    assert isinstance(option.type, Seconds)
    with pytest.raises(click.BadParameter):
        option.type.convert(text, option, None)


@pytest.mark.parametrize(("command", "name"), SECONDS_OPTIONS)
def test_seconds_options_take_finite_numbers_in_range(command: click.Command, name: str) -> None:
    option = _option(command, name)
    for text, seconds in [("0.01", 0.01), ("30", 30.0), ("86400", 86400.0), (" 1.5 ", 1.5)]:
        assert option.type.convert(text, option, None) == seconds
    assert option.type.convert(2.5, option, None) == 2.5


def test_follow_timeout_may_be_zero_and_intervals_may_not() -> None:
    assert _option(events_cmd, "--follow-timeout").type.convert("0", None, None) == 0.0
    for command, name in SECONDS_OPTIONS[:2]:
        with pytest.raises(click.BadParameter, match="between 0.01 and 86400"):
            _option(command, name).type.convert("0", None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--interval", "nan"], "'nan' is not a finite number of seconds"),
        (["run", "--interval", "inf"], "'inf' is not a finite number of seconds"),
        (["run", "--interval", "0"], "0 is not between 0.01 and 86400 seconds"),
        (["run", "--interval", "86401"], "86401 is not between 0.01 and 86400 seconds"),
        (["run", "--interval", "soon"], "'soon' is not a number of seconds"),
        (["events", "--follow", "--poll-interval", "nan"], "'nan' is not a finite number"),
        (["events", "--follow", "--follow-timeout", "inf"], "'inf' is not a finite number"),
        (["events", "--follow", "--follow-timeout", "-1"], "-1 is not between 0 and 86400"),
    ],
)
def test_bad_seconds_are_usage_errors(
    cli: Callable[..., Result], tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli(*args, "--db", str(tmp_path / "ledger.db"))
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output and message in result.output
    assert not (tmp_path / "ledger.db").exists()
