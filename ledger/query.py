"""Reading the log from outside: filtered listings, following new events, read-only SQL.

``EventFilter`` is the one description of "which events" shared by ``hermes-ledger
events`` and ``hermes-ledger export``; ``select_events`` and ``follow_events`` list
them; ``run_sql`` (``ledger.readonly_sql``, re-exported here) runs a user's query on
a connection that cannot write.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from hermes_ledger.ledger.clock import Clock, format_utc, system_clock
from hermes_ledger.ledger.errors import InvalidInputError, LedgerError
from hermes_ledger.ledger.events import EVENT_TYPES
from hermes_ledger.ledger.readonly_sql import (
    DEFAULT_SQL_TIMEOUT,
    SQL_PRAGMA_LOOKUPS,
    SQL_PRAGMA_READS,
    QueryResult,
    QueryTimeoutError,
    refuse_write,
    run_sql,
)
from hermes_ledger.ledger.records import Recorded
from hermes_ledger.ledger.store import Ledger

__all__ = [
    "DEFAULT_SQL_TIMEOUT",
    "SQL_PRAGMA_LOOKUPS",
    "SQL_PRAGMA_READS",
    "TIME_FORMS",
    "TIME_HINT",
    "EventFilter",
    "QueryResult",
    "QueryTimeoutError",
    "follow",
    "follow_events",
    "list_events",
    "parse_time",
    "refuse_write",
    "run_sql",
    "select_events",
]

COLUMNS = "position, event_id, stream, version, type, session_id, data, meta, recorded_at, hash"

# A filtered page of the log: "{where}" is built by EventFilter.where() from fixed
# fragments; every value is a binding.
# event_bodies: each event whole, its personal fields merged in ("[erased]" once erased).
SQL_EVENTS_PAGE = (
    "SELECT {columns} FROM event_bodies WHERE position > ?{where} ORDER BY position LIMIT ?"
)
# The position of the N-th newest matching event (OFFSET N - 1), for ``--tail N``.
SQL_EVENTS_TAIL_START = (
    "SELECT position FROM events WHERE position > 0{where} ORDER BY position DESC LIMIT 1 OFFSET ?"
)
# How many matching events come after position ? (what a --limit left out).
SQL_EVENTS_COUNT_AFTER = "SELECT count(*) FROM events WHERE position > ?{where}"

# The events about one person (EventFilter.user; the one definition, shared by
# export --user and the erasure of a user): every event of the sessions they
# started (all roles: the whole conversation they opened, its usage and ends),
# and their own messages in other sessions. Both types read have one schema
# version, so ``data`` is read as stored (a later version of either must keep
# user_id where it is, or upcast).
SQL_USER_EVENTS = (
    "(session_id IN (SELECT session_id FROM events WHERE type = 'session_started'"
    " AND data ->> '$.source.user_id' = ?)"
    " OR (type = 'message_appended' AND data ->> '$.user_id' = ?))"
)

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DAYS_BACK = {"today": 0, "yesterday": 1}
_PAGE = 1000
TIME_FORMS = (
    "an ISO-8601 time (2026-11-22, 2026-11-22T09:30, with Z or an offset like +01:00), "
    "a duration ago (30s, 15m, 2h, 7d, 1w), now, today or yesterday"
)
"""What ``parse_time`` reads, for the hint of every time option."""
TIME_HINT = f"give {TIME_FORMS}"


def parse_time(text: str, *, now: Clock = system_clock, tz: tzinfo | None = None) -> str:
    """A time given on the command line, as UTC text in the format of ``recorded_at``
    (and of ``occurred_at``), so it compares with either column.

    The one reader of every time option (``--since``, ``--until``, ``--at``):
    ISO-8601 (``2026-11-22``, ``2026-11-22T09:30``, ``2026-11-22 09:30:05.25``, with
    ``Z`` or an offset); a time or date without a zone is in ``tz`` (default UTC).
    A duration ago: ``30s``, ``15m``, ``2h``, ``7d``, ``1w``. ``now``; ``today`` and
    ``yesterday`` (midnight starting that day in ``tz``). Anything else raises an
    InvalidInputError (a usage error) naming the text.
    """
    value = text.strip()
    zone = tz or UTC
    word = value.lower()
    match = _RELATIVE.match(value)
    try:
        if match:
            amount, unit = int(match.group(1)), _UNITS[match.group(2)]
            return format_utc(now() - timedelta(**{unit: amount}))
        if word == "now":
            return format_utc(now())
        if word in _DAYS_BACK:
            day = now().astimezone(zone).date() - timedelta(days=_DAYS_BACK[word])
            return format_utc(datetime.combine(day, datetime.min.time(), tzinfo=zone))
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
        return format_utc(moment)
    except (ValueError, OverflowError):
        raise InvalidInputError(f"cannot read {text!r} as a time", hint=TIME_HINT) from None


# The column each kind of time filter compares: business time (when it happened at
# the gateway; the default) or recorded time (when it was appended).
_TIME_COLUMN = {False: "occurred_at", True: "recorded_at"}


@dataclass(frozen=True)
class EventFilter:
    """Which events: all the given conditions hold (an empty filter matches all).

    ``since`` is inclusive and ``until`` exclusive, both UTC text (see
    ``parse_time``) compared with each event's business time (``occurred_at``:
    when it happened at the gateway, which for an imported session is long before
    it was recorded), or, with ``recorded``, with ``recorded_at`` (when it was
    appended to this log). ``from_position`` and ``to_position`` are both inclusive.
    """

    session_key: str | None = None
    session_id: str | None = None
    # One person (SQL_USER_EVENTS): every event of the sessions they started
    # (``session_started`` with their source), and the messages they sent
    # (``message_appended`` naming them as who spoke) in any other session.
    user: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    from_position: int | None = None
    to_position: int | None = None
    recorded: bool = False

    def __post_init__(self) -> None:
        if self.user is not None and not self.user.strip():
            raise InvalidInputError(
                "the user id is empty", hint="give the user_id of one person (--user ID)"
            )
        unknown = sorted(set(self.types) - set(EVENT_TYPES))
        if unknown:
            raise InvalidInputError(
                f"unknown event type {unknown[0]!r}",
                hint=f"use one of: {', '.join(sorted(EVENT_TYPES))}",
            )
        for name in ("from_position", "to_position"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LedgerError(f"positions start at 1, not {value}", hint="use --from 1")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be UTC time text (see parse_time)")

    @property
    def is_empty(self) -> bool:
        return replace(self, recorded=False) == EventFilter()

    @property
    def time_column(self) -> str:
        """The column ``since`` and ``until`` compare: ``occurred_at`` or ``recorded_at``."""
        return _TIME_COLUMN[self.recorded]

    def where(self) -> tuple[str, tuple[Any, ...]]:
        """``" AND …"`` conditions (possibly empty) and their bindings, in order."""
        parts: list[str] = []
        args: list[Any] = []
        if self.session_key is not None:
            parts.append("stream = ?")
            args.append(self.session_key)
        if self.session_id is not None:
            parts.append("session_id = ?")
            args.append(self.session_id)
        if self.user is not None:
            parts.append(SQL_USER_EVENTS)
            args.extend((self.user, self.user))
        if self.types:
            parts.append(f"type IN ({', '.join('?' for _ in self.types)})")
            args.extend(self.types)
        if self.since is not None:
            parts.append(f"{self.time_column} >= ?")
            args.append(self.since)
        if self.until is not None:
            parts.append(f"{self.time_column} < ?")
            args.append(self.until)
        if self.from_position is not None:
            parts.append("position >= ?")
            args.append(self.from_position)
        if self.to_position is not None:
            parts.append("position <= ?")
            args.append(self.to_position)
        return "".join(f" AND {p}" for p in parts), tuple(args)

    def describe(self) -> dict[str, Any]:
        """The conditions that are set, for manifests and messages (``recorded`` only
        when ``since`` or ``until`` is set: it says which time they are)."""
        timed = self.since is not None or self.until is not None
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in (
                ("session_key", self.session_key),
                ("session_id", self.session_id),
                ("user", self.user),
                ("types", self.types),
                ("since", self.since),
                ("until", self.until),
                ("recorded", self.recorded and timed),
                ("from_position", self.from_position),
                ("to_position", self.to_position),
            )
            if value not in (None, (), False)
        }


def _pages(
    led: Ledger, where: str, args: tuple[Any, ...], after: int, limit: int | None
) -> Iterator[Recorded]:
    """Keyset pagination: constant memory, no read transaction held between pages."""
    sql = SQL_EVENTS_PAGE.format(columns=COLUMNS, where=where)
    remaining = limit
    while remaining is None or remaining > 0:
        size = _PAGE if remaining is None else min(_PAGE, remaining)
        rows = led.query(sql, (after, *args, size))
        for row in rows:
            yield Recorded(*row)
        if len(rows) < size:
            return
        after = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def select_events(
    led: Ledger, events: EventFilter = EventFilter(), *, limit: int | None = None
) -> Iterator[Recorded]:
    """The events matching ``events``, in position order, at most ``limit`` of them."""
    if limit is not None and limit < 0:
        raise LedgerError(f"limit must be >= 0, not {limit}")
    where, args = events.where()
    return _pages(led, where, args, 0, limit)


def follow_events(
    led: Ledger,
    events: EventFilter = EventFilter(),
    *,
    after: int,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Recorded]:
    """Matching events appended after position ``after``, as they arrive.

    Polls every ``poll_interval`` seconds until the caller stops iterating (Ctrl-C),
    ``timeout`` seconds have passed, or the filter's ``to_position`` is reached.
    """
    where, args = events.where()

    def read(seen: int, head: int) -> Iterator[Recorded]:
        return _pages(led, where + " AND position <= ?", (*args, head), seen, None)

    return follow(
        led.head, read, after=after, to_position=events.to_position,
        poll_interval=poll_interval, timeout=timeout, sleep=sleep,
    )  # fmt: skip


def follow(
    head: Callable[[], int],
    read: Callable[[int, int], Iterator[Recorded]],
    *,
    after: int,
    to_position: int | None = None,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Recorded]:
    """The polling of ``follow_events``, for any backend: ``head()`` is the log's
    head position, ``read(seen, head)`` the matching events after ``seen`` up to
    ``head``. A log whose positions become visible in order (both backends) is
    followed without a gap or a repeat."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = after
    while to_position is None or seen < to_position:
        now = head()
        if now > seen:
            yield from read(seen, now)
            seen = now
            continue
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sleep(min(poll_interval, left))
        else:
            sleep(poll_interval)


def list_events(
    led: Ledger,
    events: EventFilter = EventFilter(),
    *,
    limit: int | None = None,
    tail: int | None = None,
    follow: bool = False,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_more: Callable[[int], None] | None = None,
) -> Iterator[Recorded]:
    """What ``hermes-ledger events`` prints: the matching events up to the current
    head — the oldest ``limit`` of them, or the newest ``tail`` (still oldest
    first), not both — then, if ``follow``, those appended afterwards as they
    arrive (see ``follow_events``), with no event missed or repeated in between.

    When ``limit`` left matching events out, ``on_more(count)`` is called with how
    many, after the last event shown and before following.
    """
    if limit is not None and tail is not None:
        raise LedgerError(
            "give a limit (the oldest events) or a tail (the newest), not both",
            hint="use --limit N for the first N events, or --tail N for the last N",
        )
    if tail is not None and tail < 0:
        raise LedgerError(f"tail must be >= 0, not {tail}")
    head = led.head()
    to = head if events.to_position is None else min(events.to_position, head)
    now = replace(events, to_position=to) if to >= 1 and tail != 0 else None
    if now is not None and tail is not None:
        now = _newest(led, now, tail)
    if now is not None:
        shown, last = 0, 0
        for rec in select_events(led, now, limit=limit):
            shown, last = shown + 1, rec.position
            yield rec
        if limit is not None and shown == limit and on_more is not None:
            where, args = now.where()
            sql = SQL_EVENTS_COUNT_AFTER.format(where=where)
            left = led.query(sql, (last, *args))[0][0]
            if left:
                on_more(left)
    if follow:
        yield from follow_events(
            led, events, after=head, poll_interval=poll_interval, timeout=timeout, sleep=sleep
        )


def _newest(led: Ledger, events: EventFilter, count: int) -> EventFilter:
    """``events`` narrowed to its newest ``count`` events (``count`` >= 1)."""
    where, args = events.where()
    rows = led.query(SQL_EVENTS_TAIL_START.format(where=where), (*args, count - 1))
    return events if not rows else replace(events, from_position=rows[0][0])
