"""Reset policies: when a session closes on its own, and the pure evaluation of that.

A ``ResetPolicy`` has a mode:

- ``none`` — never (the default, as in Hermes);
- ``idle`` — ``idle_minutes`` after the last activity;
- ``daily`` — at ``at_hour`` o'clock (local time in ``timezone``), the first such
  moment after the last activity;
- ``both`` — whichever of ``idle`` and ``daily`` comes first;
- ``cron`` — at the first firing of the cron ``schedule`` after the last activity.

``evaluate_policy(last_activity, policy, now)`` answers "has this session
expired?" with ``None`` or an ``Expiry(reason, deadline)``; ``next_deadline``
gives the deadline itself. Both are pure: time comes in as arguments, and the
only outside input is the system time zone when a policy names none.

**Time zones and DST.** ``timezone`` is an IANA name; without one the system
zone is used. Idle time is real elapsed time (60 idle minutes across a DST
change are 60 minutes). Daily and cron times are wall-clock times, resolved
with the RFC 5545 rule (Python's ``fold=0``):

- a time skipped by a spring-forward change is moved forward by the length of
  the gap — a 02:30 reset on the day New York or Berlin jumps from 02:00 to
  03:00 happens at 03:30 local time, once;
- a time that occurs twice on a fall-back day means its first occurrence — a
  01:30 reset in New York happens at 01:30 EDT, and not again at 01:30 EST.

So a daily policy fires exactly once per local calendar day, whatever DST does.

**Deadlines.** A session is expired once ``now >= deadline`` (Hermes compares
the idle deadline with ``>``; the one-microsecond difference keeps "due" the
same question for every mode). When both deadlines of ``both`` have passed,
the earlier one is reported — it is the one that closed the session — with
``idle`` winning a tie, as Hermes checks idle first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "FIELD_RULES",
    "RESET_MODES",
    "Expiry",
    "ExpiryReason",
    "ResetMode",
    "ResetPolicy",
    "evaluate_policy",
    "next_deadline",
    "system_timezone",
]

ResetMode = Literal["none", "idle", "daily", "both", "cron"]
ExpiryReason = Literal["idle", "daily", "cron"]
RESET_MODES: Final[tuple[str, ...]] = ("none", "idle", "daily", "both", "cron")

# What each field accepts, as error messages and docs say it.
FIELD_RULES: Final[dict[str, str]] = {
    "mode": "one of " + ", ".join(RESET_MODES),
    "idle_minutes": "a whole number of minutes, 1 or more",
    "at_hour": "a whole hour from 0 to 23",
    "schedule": "a five-field cron expression such as '0 4 * * *'",
    "timezone": "an IANA time zone name such as 'Europe/Berlin'",
    "notify": "true or false",
    "notify_exclude_platforms": "a list of platform names",
    "bg_process_max_age_hours": "a whole number of hours, 0 or more",
}


def _no_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


WholeNumber = Annotated[int, BeforeValidator(_no_bool)]


class Expiry(NamedTuple):
    """Why a session closes and when: ``reason`` is ``idle``, ``daily`` or ``cron``."""

    reason: ExpiryReason
    deadline: datetime


def _load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


@lru_cache(maxsize=8)
def _system_zone(tz_env: str | None) -> ZoneInfo:
    candidates: list[str] = []
    if tz_env:
        candidates.append(tz_env.removeprefix(":"))
    localtime = Path("/etc/localtime")
    with contextlib.suppress(OSError):
        target = str(localtime.resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        try:
            return _load_zone(name)
        except ValueError:
            continue
    try:
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


def system_timezone() -> ZoneInfo:
    """The zone of this machine: ``$TZ``, else ``/etc/localtime``, else UTC."""
    return _system_zone(os.environ.get("TZ"))


def _check_schedule(expr: str) -> None:
    fields = expr.split()
    if not (len(fields) == 5 or (len(fields) == 1 and expr.startswith("@"))):
        raise ValueError(f"{expr!r} is not a five-field cron expression")
    if not croniter.is_valid(expr):
        raise ValueError(f"{expr!r} is not a valid cron expression")
    try:
        croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"{expr!r} never fires") from None


class ResetPolicy(BaseModel):
    """When sessions reset on their own (see the module docstring for the modes).

    The defaults are Hermes': no automatic reset; when turned on, 24 idle hours
    and 04:00. ``notify`` (tell the user after an automatic reset, except on
    ``notify_exclude_platforms``) and ``bg_process_max_age_hours`` are carried
    for the gateway; they do not change when a session expires.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ResetMode = "none"
    idle_minutes: Annotated[WholeNumber, Field(ge=1)] = 1440
    at_hour: Annotated[WholeNumber, Field(ge=0, le=23)] = 4
    schedule: str | None = None
    timezone: str | None = None
    notify: bool = True
    notify_exclude_platforms: tuple[str, ...] = ("api_server", "webhook")
    bg_process_max_age_hours: Annotated[WholeNumber, Field(ge=0)] = 24

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("schedule", "timezone", mode="after")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None

    @field_validator("schedule", mode="after")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            _check_schedule(value)
        return value

    @field_validator("timezone", mode="after")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            _load_zone(value)
        return value

    @model_validator(mode="after")
    def _cron_needs_schedule(self) -> ResetPolicy:
        if self.mode == "cron" and self.schedule is None:
            raise ValueError("mode 'cron' needs a schedule")
        return self

    def zone(self) -> ZoneInfo:
        """The zone daily and cron times are read in."""
        return _load_zone(self.timezone) if self.timezone else system_timezone()

    def with_timezone(self, timezone: str | None) -> ResetPolicy:
        """This policy with ``timezone`` filled in, unless it names its own."""
        if self.timezone or not timezone:
            return self
        return self.model_copy(update={"timezone": _load_zone(timezone).key})

    def snapshot(self) -> dict[str, Any]:
        """The policy as plain JSON, with the zone it is evaluated in (for audit events)."""
        data = self.model_dump(mode="json")
        data["timezone"] = self.zone().key
        return data

    def next_deadline(self, last_activity: datetime) -> Expiry | None:
        return next_deadline(last_activity, self)

    def evaluate(self, last_activity: datetime, now: datetime) -> Expiry | None:
        return evaluate_policy(last_activity, self, now)


def _utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def _first_after(last: datetime, zone: tzinfo, walls: Iterable[datetime]) -> datetime | None:
    """The earliest instant after ``last`` (UTC) among wall-clock times ``walls``.

    Wall times are resolved with ``fold=0``. That is monotonic except inside a
    spring-forward gap (02:30 becomes 03:30, later than a real 03:00), so after
    a gap time the search goes on to the next real time before it answers.
    Comparisons are made in UTC: Python compares two datetimes that share a
    tzinfo by their wall clocks, which is wrong across DST changes.
    """
    best: datetime | None = None
    for wall in walls:
        instant = wall.replace(tzinfo=zone).astimezone(UTC)
        if instant <= last:
            continue
        if best is None or instant < best:
            best = instant
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            return best  # a real wall time: nothing later in ``walls`` comes earlier
    return best


def _daily_walls(start: date, hour: int) -> Iterator[datetime]:
    for offset in range(3):  # the start day, then the next two always suffice
        yield datetime.combine(start + timedelta(days=offset), time(hour))


def _cron_walls(expr: str, start: datetime, limit: int = 20_000) -> Iterator[datetime]:
    it = croniter(expr, start)
    for _ in range(limit):
        try:
            yield it.get_next(datetime)
        except CroniterBadDateError:
            return


def next_deadline(last_activity: datetime, policy: ResetPolicy) -> Expiry | None:
    """When a session last active at ``last_activity`` expires under ``policy``.

    ``None`` for mode ``none``. The deadline is an aware datetime in the
    policy's zone.
    """
    last = _utc(last_activity, "last_activity")
    if policy.mode == "none":
        return None
    zone = policy.zone()
    found: list[Expiry] = []
    if policy.mode in ("idle", "both"):
        found.append(Expiry("idle", last + timedelta(minutes=policy.idle_minutes)))
    if policy.mode in ("daily", "both"):
        local_day = last.astimezone(zone).date()
        at = _first_after(last, zone, _daily_walls(local_day, policy.at_hour))
        if at is not None:
            found.append(Expiry("daily", at))
    if policy.mode == "cron" and policy.schedule:
        wall = last.astimezone(zone).replace(tzinfo=None)
        at = _first_after(last, zone, _cron_walls(policy.schedule, wall))
        if at is not None:
            found.append(Expiry("cron", at))
    if not found:
        return None
    first = min(found, key=lambda e: e.deadline)  # min keeps the first of a tie: idle
    return Expiry(first.reason, first.deadline.astimezone(zone))


def evaluate_policy(last_activity: datetime, policy: ResetPolicy, now: datetime) -> Expiry | None:
    """``Expiry(reason, deadline)`` if the session has expired by ``now``, else ``None``."""
    current = _utc(now, "now")
    due = next_deadline(last_activity, policy)
    if due is not None and due.deadline.astimezone(UTC) <= current:
        return due
    return None
