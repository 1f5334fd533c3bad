"""The command line: exact output through CliRunner, plus the installed scripts."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import Result
from helpers import installed_script

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import SessionStarted, Source


def test_init_creates_the_default_ledger_in_hermes_home(
    hermes_home: Path, cli: Callable[..., Result]
) -> None:
    result = cli("init")
    path = hermes_home / "ledger.db"
    assert (result.exit_code, result.output) == (0, f"Created ledger {path} (schema v4)\n")
    assert oct(hermes_home.stat().st_mode & 0o777) == "0o700"
    result = cli("init")
    assert (result.exit_code, result.output) == (
        0,
        f"Ledger {path} already exists (schema v4, 0 events)\n",
    )


def test_db_option_and_env_override_the_default(
    hermes_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., Result]
) -> None:
    other = tmp_path / "other.db"
    assert cli("init", "--db", str(other)).exit_code == 0
    assert other.exists() and not hermes_home.exists()
    monkeypatch.setenv("HERMES_LEDGER_DB", str(tmp_path / "env.db"))
    assert cli("init").exit_code == 0
    assert (tmp_path / "env.db").exists() and not hermes_home.exists()


def test_status_prints_what_the_ledger_holds(tmp_path: Path, cli: Callable[..., Result]) -> None:
    db = tmp_path / "l.db"
    clock_time = "2026-11-22T09:00:00.000000Z"
    with Ledger.open(db, clock=lambda: datetime(2026, 11, 22, 9, tzinfo=UTC)) as led:
        led.append("k1", [SessionStarted(session_id="s1", source=Source(platform="telegram"))])
        led.append("k2", [SessionStarted(session_id="s2", source=Source(platform="discord"))])
    result = cli("status", "--db", str(db))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[:5] == [
        f"ledger:      {db}",
        "schema:      v4 (up to date)",
        "events:      2 (head position 2)",
        "streams:     2",
        "sessions:    2",
    ]
    # when, and how long ago (from the wall clock: "9 d ago")
    age = r"\((\d+ (d|h|min|s) ago|in \d+ (d|h|min|s)|now)\)"
    assert re.fullmatch(f"first event: {clock_time} {age}", lines[5]), lines[5]
    assert re.fullmatch(f"last event:  {clock_time} {age}", lines[6]), lines[6]
    assert lines[7].startswith("size:        ") and lines[7].endswith("KiB")
    result = cli("status", "--db", str(db), "--json")
    data = json.loads(result.output)
    assert data["events"] == 2 and data["head"] == 2 and data["path"] == str(db)


def test_status_of_a_missing_ledger_says_what_to_do(
    hermes_home: Path, cli: Callable[..., Result]
) -> None:
    result = cli("status")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: there is no ledger at {hermes_home / 'ledger.db'}\n"
        "Try: create one with `hermes-ledger init`, or pass --db / HERMES_LEDGER_DB\n"
    )


def test_a_file_that_is_not_a_ledger_is_an_error_not_a_traceback(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database " * 100)
    result = cli("init", "--db", str(notes))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {notes} is not a SQLite database\nTry: ")
    assert notes.read_text() == "not a database " * 100


def test_usage_errors_exit_2(cli: Callable[..., Result]) -> None:
    result = cli("no-such-command")
    assert result.exit_code == 2 and "No such command 'no-such-command'" in result.output
    result = cli("status", "--bogus")
    assert result.exit_code == 2 and "No such option '--bogus'" in result.output


def test_help_lists_one_line_per_command(cli: Callable[..., Result]) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    commands = result.output.split("Commands:\n", 1)[1].splitlines()
    names = [line.split()[0] for line in commands]
    assert {"init", "status", "sessions", "history", "transcript", "replay", "verify"} <= set(names)
    assert all(not line.rstrip().endswith("...") for line in commands), commands


def test_hermes_ledger_is_the_same_as_hermes_ledger(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    db = str(tmp_path / "x.db")
    direct = cli("init", "--db", db)
    assert (direct.exit_code, direct.output) == (0, f"Created ledger {db} (schema v4)\n")
    via = cli("status", "--db", db, "--json")
    assert json.loads(via.output)["path"] == db


def test_installed_scripts_run_the_readme_main_job(tmp_path: Path) -> None:
    env = {**os.environ, "HERMES_HOME": str(tmp_path / "home")}
    env.pop("HERMES_LEDGER_DB", None)
    init = subprocess.run(
        [installed_script(), "init"], env=env, capture_output=True, text=True, timeout=60
    )
    assert init.returncode == 0, init.stderr
    status = subprocess.run(
        [installed_script("hermes-ledger"), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["path"] == str(tmp_path / "home" / "ledger.db")
