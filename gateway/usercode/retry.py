"""How often failing operator code is tried again, and when: one definition for the
scheduler's memory flushes and the hooks' deliveries.

Attempts are numbered from 1. After attempt ``n`` fails, ``next_attempt(n, failed_at)``
is when attempt ``n + 1`` is due, or None once ``n`` was the last one allowed: the
caller gives up (the scheduler closes the session with the failure recorded; a hook
delivery is dead-lettered).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` tries in all; the wait after failed attempt ``n`` is
    ``delay * backoff**(n - 1)``, at most ``max_delay`` (``backoff`` 1: a fixed delay)."""

    max_attempts: int
    delay: timedelta
    backoff: float = 1.0
    max_delay: timedelta | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.delay < timedelta(0) or self.backoff < 1:
            raise ValueError(
                "a retry delay cannot be negative, nor shrink from one try to the next"
            )

    def gave_up(self, attempts: int) -> bool:
        """True once ``attempts`` tries have used up the policy."""
        return attempts >= self.max_attempts

    def wait_after(self, attempt: int) -> timedelta:
        """How long to wait after failed attempt ``attempt`` before the next one."""
        seconds = self.delay.total_seconds() * self.backoff ** (attempt - 1)
        if self.max_delay is not None:
            seconds = min(seconds, self.max_delay.total_seconds())
        return timedelta(seconds=seconds)

    def next_attempt(self, attempt: int, failed_at: datetime) -> datetime | None:
        """When the try after failed attempt ``attempt`` (at ``failed_at``) is due;
        None when that was the last one: give up."""
        if self.gave_up(attempt):
            return None
        return failed_at + self.wait_after(attempt)
