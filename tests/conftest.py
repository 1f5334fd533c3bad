"""Shared fixtures: a fresh, file-backed ledger per test, a hand-ticked clock, the
command line run in-process, and ``backend`` (tests/backends.py: each test that
takes it runs on SQLite and on PostgreSQL). Helpers that test modules import live in
``helpers.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backends import backend  # noqa: F401  (the both-backend fixture, for every test file)
from click.testing import CliRunner, Result
from helpers import ManualClock

from hermes_ledger.ledger import Ledger


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def led(db_path: Path, clock: ManualClock) -> Iterator[Ledger]:
    with Ledger.open(db_path, clock=clock) as ledger:
        yield ledger


@pytest.fixture
def hermes_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``HERMES_HOME`` for this test: ``tmp_path / "home"`` (not created); and no
    ``HERMES_LEDGER_DB``, so the default ledger is the one in that home."""
    home = tmp_path / "home"
    monkeypatch.setenv("HERMES_HOME", str(home))
    monkeypatch.delenv("HERMES_LEDGER_DB", raising=False)
    return home


@pytest.fixture
def cli(hermes_home: Path) -> Callable[..., Result]:
    """``cli("status", "--db", path, input=...)`` runs ``hermes-ledger status --db
    path`` in-process (click's CliRunner, stdin from ``input``) in ``hermes_home``."""
    from hermes_ledger.gateway.cli import cli as ledger_cli

    def run(*args: str, input: bytes | str | None = None) -> Result:
        return CliRunner().invoke(ledger_cli, [*args], input=input)

    return run
