"""Shared fixtures: a fresh, file-backed ledger per test and a hand-ticked clock.
Helpers that test modules import live in ``helpers.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
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
