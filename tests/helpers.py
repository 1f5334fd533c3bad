"""Helpers the test modules share: a hand-ticked clock, the installed console
scripts, and what the CLI tests need. ``tests/`` is on ``sys.path`` (pytest's
``pythonpath``), the repository root is not: its ``gateway/`` folder would shadow
Hermes's own ``gateway`` package."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import UTC, datetime, timedelta

import pytest

__all__ = ["ManualClock", "installed_script"]


def installed_script(name: str = "hermes-ledger") -> str:
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
