"""Times as a person types and reads them on the command line.

The log stores UTC text (``2026-11-22T09:30:00.000000Z``). Every time option
(``--since``, ``--until``, ``--at``) is read by one parser, ``ledger.query.parse_time``,
through the click type ``TIME``: a time it cannot read is a usage error (exit 2)
naming the option. ``--tz ZONE`` (``tz_option``) chooses the zone of the tables a
person reads (default: the ``TZ`` environment variable if set, else UTC) and the
zone of a time typed without one (default UTC: only an explicit ``--tz`` changes
how input is read). ``show_time`` renders a stored time in that zone, with its
offset, so a time copied from a table reads back as the same instant;
``relative_time`` says how long ago it was ("3 h ago", "in 5 min"). ``--json``
output is never rendered: it stays the stored UTC text.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from hermes_ledger.gateway.cli.options import LedgerUsageError
from hermes_ledger.ledger import LedgerError
from hermes_ledger.ledger.clock import parse_utc, system_clock
from hermes_ledger.ledger.query import TIME_FORMS, parse_time

__all__ = [
    "TIME",
    "TimeOption",
    "Zone",
    "recorded_option",
    "relative_time",
    "resolve_zone",
    "show_time",
    "show_time_and_age",
    "tz_option",
]

F = TypeVar("F", bound=Callable[..., Any])

_META_KEY = "hermes_ledger.zone"
_ZONE_HINT = "give an IANA zone name, e.g. --tz Europe/Berlin, --tz America/New_York or --tz UTC"


@dataclass(frozen=True)
class Zone:
    """The zone times are shown in (``tz``: None is UTC) and whether it was given
    with ``--tz`` (``explicit``: only then are times typed without a zone read in it)."""

    tz: tzinfo | None = None
    name: str = "UTC"
    explicit: bool = False

    @property
    def is_utc(self) -> bool:
        return self.tz is None

    @property
    def for_input(self) -> tzinfo | None:
        """The zone of a time typed without one: ``--tz``'s, else UTC (None)."""
        return self.tz if self.explicit else None


def _zone_named(name: str) -> tzinfo | None:
    """The IANA zone ``name`` (None for UTC); ZoneInfoNotFoundError or ValueError
    for a name that is none."""
    if name.upper() in ("UTC", "Z", "UTC0", "GMT", "ETC/UTC"):
        return None
    return ZoneInfo(name)


def resolve_zone(name: str | None, environ: dict[str, str] | None = None) -> Zone:
    """The zone for ``--tz name``; with no name, ``TZ`` from ``environ`` (default
    ``os.environ``) if set, else UTC. A bad ``--tz`` raises LedgerError; a ``TZ``
    that names no IANA zone (a POSIX rule such as ``CET-1CEST``) falls back to the
    system's local time, which the C library reads from the same variable."""
    if name is not None:
        try:
            return Zone(_zone_named(name.strip()), name.strip(), explicit=True)
        except (ZoneInfoNotFoundError, ValueError):
            raise LedgerError(f"unknown time zone {name!r}", hint=_ZONE_HINT) from None
    env = (os.environ if environ is None else environ).get("TZ", "").strip().lstrip(":")
    if not env:
        return Zone()
    try:
        return Zone(_zone_named(env), env)
    except (ZoneInfoNotFoundError, ValueError):
        local = datetime.now().astimezone().tzinfo
        return Zone(local, env)


def _remember_zone(ctx: click.Context, param: click.Parameter, value: str | None) -> Zone:
    try:
        zone = resolve_zone(value)
    except LedgerError as exc:
        raise LedgerUsageError(str(exc), exc.hint) from None
    ctx.meta[_META_KEY] = zone
    return zone


def tz_option(fn: F) -> F:
    """``--tz ZONE``: the command receives a ``Zone`` as ``tz``. Eager, so every
    ``TIME`` option of the command reads its value in that zone."""
    return click.option(
        "--tz",
        "tz",
        metavar="ZONE",
        is_eager=True,
        callback=_remember_zone,
        help="Show times in this IANA zone (default: $TZ, else UTC); times given "
        "without a zone are read in it too (default UTC).",
    )(fn)


def _input_zone(ctx: click.Context | None) -> tzinfo | None:
    """The zone of a time typed without one: the command's ``--tz`` when given."""
    zone = ctx.meta.get(_META_KEY) if ctx is not None else None
    return zone.for_input if isinstance(zone, Zone) else None


class TimeOption(click.ParamType):
    """A time option's value, read by ``parse_time`` (ISO-8601, ``2h``, ``7d``,
    ``now``, ``today``, ``yesterday``) into UTC text; anything else is a usage
    error (``Error:`` / ``Try:``, exit 2) whose hint names the option. A time
    without a zone is read in ``--tz``'s zone when the command has one and it was
    given, else in UTC."""

    name = "time"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"{value!r} is not a time", param, ctx)
        try:
            return parse_time(value, tz=_input_zone(ctx))
        except LedgerError as exc:
            name = param.opts[0] if param is not None and param.opts else "the option"
            raise LedgerUsageError(str(exc), f"give {name} {TIME_FORMS}") from None


TIME = TimeOption()

recorded_option = click.option(
    "--recorded",
    is_flag=True,
    help="Times (--since, --until, --at) are recorded times (when appended to this "
    "log), not business times (when they happened at the gateway).",
)
"""``--recorded``: the command receives ``recorded`` (bool)."""


def show_time(text: str | None, zone: Zone) -> str:
    """A stored UTC time as a table shows it: unchanged in UTC, else in ``zone``
    with its offset (``2026-11-22T10:30:00.000000+01:00``); ``-`` for None."""
    if text is None:
        return "-"
    if zone.is_utc:
        return text
    try:
        moment = parse_utc(text)
    except ValueError:
        return text
    return moment.astimezone(zone.tz).isoformat(timespec="microseconds")


_STEPS = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))


def relative_time(text: str | None, now: datetime | None = None) -> str:
    """How long ago (or ahead) a stored UTC time is from ``now`` (default: the
    system clock), in its largest whole unit: ``3 h ago``, ``in 5 min``, ``now``
    (under a second); empty for None or text that is no time."""
    if text is None:
        return ""
    try:
        moment = parse_utc(text)
    except ValueError:
        return ""
    seconds = ((now or system_clock()).astimezone(UTC) - moment).total_seconds()
    span = abs(seconds)
    for unit, size in _STEPS:
        if span >= size:
            amount = f"{int(span // size)} {unit}"
            return f"{amount} ago" if seconds > 0 else f"in {amount}"
    return "now"


def show_time_and_age(text: str | None, zone: Zone, now: datetime | None = None) -> str:
    """``show_time`` followed by the relative form in parentheses (``-`` for None)."""
    if text is None:
        return "-"
    age = relative_time(text, now)
    return f"{show_time(text, zone)} ({age})" if age else show_time(text, zone)
