"""Shared fixtures: a fresh, file-backed ledger per test, a hand-ticked clock, and
the installed console scripts for the tests that run the CLI as a real process."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger import Ledger


def installed_script(name: str = "hermes") -> str:
    """The path of an installed console script (``hermes``, ``hermes-ledger``): the
    one beside this interpreter, else the first on PATH. Fails the test when there
    is none, since these tests are about the installed entry points."""
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if found is None:
        pytest.fail(f"the {name!r} console script is not installed; run pip install -e .")
    return found


class ManualClock:
    """A clock that only moves when a test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


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
