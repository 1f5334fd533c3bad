"""Time, injected: every component that needs "now" takes a Clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "format_utc", "parse_utc", "system_clock"]

Clock = Callable[[], datetime]
"""A zero-argument callable returning an aware datetime."""


def system_clock() -> datetime:
    return datetime.now(UTC)


def format_utc(moment: datetime) -> str:
    """``2026-11-22T05:20:00.000000Z``: fixed width, so text order is time order."""
    if moment.tzinfo is None:
        raise ValueError(f"a clock must return an aware datetime, got naive {moment!r}")
    # isoformat() is C-fast; its zone suffix is always +00:00 once converted to UTC.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_utc(text: str) -> datetime:
    """Parse an ISO-8601 time; a time without a zone is taken as UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
