"""Reset policies: validation, and the pure deadline evaluation across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes_ledger.gateway.sessions.policy import (
    Expiry,
    ResetPolicy,
    evaluate_policy,
    next_deadline,
    system_timezone,
)

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
US = "America/New_York"
EU = "Europe/Berlin"
TICK = timedelta(microseconds=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# --- the model ---------------------------------------------------------------


def test_defaults_are_hermes_defaults() -> None:
    policy = ResetPolicy()
    assert (policy.mode, policy.idle_minutes, policy.at_hour, policy.notify) == (
        "none",
        1440,
        4,
        True,
    )
    assert policy.notify_exclude_platforms == ("api_server", "webhook")
    assert next_deadline(utc(2026, 1, 1), policy) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "sometimes"}, "mode"),
        ({"idle_minutes": 0}, "greater than or equal to 1"),
        ({"idle_minutes": True}, "not true/false"),
        ({"idle_minutes": 1.5}, "idle_minutes"),
        ({"at_hour": 24}, "less than or equal to 23"),
        ({"at_hour": -1}, "greater than or equal to 0"),
        ({"schedule": "61 * * * *"}, "not a valid cron expression"),
        ({"schedule": "0 4 * * * *"}, "not a five-field cron expression"),
        ({"schedule": "0 0 30 2 *"}, "never fires"),
        ({"mode": "cron"}, "needs a schedule"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"timezone": "../../etc/passwd"}, "unknown time zone"),
        ({"idle": 5}, "Extra inputs"),
    ],
)
def test_invalid_policies(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ResetPolicy(**fields)


def test_lenient_spellings() -> None:
    policy = ResetPolicy(mode=" Daily ", at_hour="5", schedule="  ", timezone="")
    assert (policy.mode, policy.at_hour, policy.schedule, policy.timezone) == (
        "daily",
        5,
        None,
        None,
    )
    assert ResetPolicy(mode="cron", schedule="@daily").schedule == "@daily"


def test_zone_and_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", EU)
    assert system_timezone() == BERLIN
    policy = ResetPolicy(mode="daily")
    assert policy.zone() == BERLIN
    assert policy.snapshot()["timezone"] == EU
    assert policy.with_timezone(US).zone() == NY
    assert ResetPolicy(timezone="UTC").with_timezone(US).timezone == "UTC"
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0x")  # not an IANA name: falls back
    assert isinstance(system_timezone(), ZoneInfo)


def test_naive_times_are_refused() -> None:
    policy = ResetPolicy(mode="idle")
    with pytest.raises(ValueError, match="last_activity must be a timezone-aware"):
        next_deadline(datetime(2026, 1, 1), policy)
    with pytest.raises(ValueError, match="now must be a timezone-aware"):
        evaluate_policy(utc(2026, 1, 1), policy, datetime(2026, 1, 2))


# --- idle ----------------------------------------------------------------------


def test_idle_deadline_and_boundary() -> None:
    policy = ResetPolicy(mode="idle", idle_minutes=30, timezone="UTC")
    last = utc(2026, 5, 1, 12, 0)
    deadline = last + timedelta(minutes=30)
    assert next_deadline(last, policy) == Expiry("idle", deadline)
    assert evaluate_policy(last, policy, deadline - TICK) is None
    assert evaluate_policy(last, policy, deadline) == Expiry("idle", deadline)
    assert evaluate_policy(last, policy, deadline + timedelta(days=3)) == Expiry("idle", deadline)


@pytest.mark.parametrize(
    ("last", "deadline_local"),
    [
        # Spring forward: 60 real minutes after 01:30 EST is 03:30 EDT.
        (datetime(2024, 3, 10, 1, 30, tzinfo=NY), (2024, 3, 10, 3, 30)),
        # Fall back: 60 real minutes after 00:30 EDT is 01:30 EDT (first pass).
        (datetime(2024, 11, 3, 0, 30, tzinfo=NY), (2024, 11, 3, 1, 30)),
    ],
)
def test_idle_counts_real_time_across_dst(last: datetime, deadline_local: tuple[int, ...]) -> None:
    expiry = next_deadline(last, ResetPolicy(mode="idle", idle_minutes=60, timezone=US))
    assert expiry is not None
    assert expiry.deadline.astimezone(UTC) - last.astimezone(UTC) == timedelta(minutes=60)
    assert expiry.deadline.replace(tzinfo=None) == datetime(*deadline_local)  # type: ignore[misc]


# --- daily ---------------------------------------------------------------------


def daily(hour: int, zone: str) -> ResetPolicy:
    return ResetPolicy(mode="daily", at_hour=hour, timezone=zone)


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        # Last active before at_hour today: due at 04:00 today.
        ((2026, 6, 1, 3, 0), (2026, 6, 1, 3, 59), None),
        ((2026, 6, 1, 3, 0), (2026, 6, 1, 4, 0), (2026, 6, 1, 4, 0)),
        # Last active after at_hour: due at 04:00 tomorrow, not today.
        ((2026, 6, 1, 5, 0), (2026, 6, 1, 23, 0), None),
        ((2026, 6, 1, 5, 0), (2026, 6, 2, 3, 59), None),
        ((2026, 6, 1, 5, 0), (2026, 6, 2, 4, 0), (2026, 6, 2, 4, 0)),
        # Active exactly at the boundary: that boundary does not count.
        ((2026, 6, 1, 4, 0), (2026, 6, 1, 12, 0), None),
        # Last active yesterday evening, now is before at_hour: not yet.
        ((2026, 6, 1, 23, 0), (2026, 6, 2, 1, 0), None),
        # Many days idle: the first missed boundary is the deadline.
        ((2026, 6, 1, 23, 0), (2026, 6, 9, 12, 0), (2026, 6, 2, 4, 0)),
    ],
)
def test_daily_at_hour_before_and_after_now(
    last: tuple[int, ...], now: tuple[int, ...], expected: tuple[int, ...] | None
) -> None:
    policy = daily(4, US)
    result = evaluate_policy(
        datetime(*last, tzinfo=NY),  # type: ignore[misc]
        policy,
        datetime(*now, tzinfo=NY),  # type: ignore[misc]
    )
    if expected is None:
        assert result is None
    else:
        assert result == Expiry("daily", datetime(*expected, tzinfo=NY))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("zone", "schedule", "last", "deadline_utc"),
    [
        # New York jumps 02:00 EST -> 03:00 EDT on 2024-03-10: 02:30 becomes 03:30 EDT.
        (US, "30 2 * * *", utc(2024, 3, 10, 5, 0), utc(2024, 3, 10, 7, 30)),
        # Berlin jumps 02:00 CET -> 03:00 CEST on 2024-03-31: 02:30 becomes 03:30 CEST.
        (EU, "30 2 * * *", utc(2024, 3, 30, 23, 0), utc(2024, 3, 31, 1, 30)),
        # A whole skipped hour (at_hour 2) fires when the clock jumps.
        (US, "0 2 * * *", utc(2024, 3, 10, 5, 0), utc(2024, 3, 10, 7, 0)),
        (EU, "0 2 * * *", utc(2024, 3, 30, 23, 0), utc(2024, 3, 31, 1, 0)),
        # The day after the change, 02:30 exists again.
        (US, "30 2 * * *", utc(2024, 3, 10, 7, 30), utc(2024, 3, 11, 6, 30)),
    ],
)
def test_spring_forward(zone: str, schedule: str, last: datetime, deadline_utc: datetime) -> None:
    cron = ResetPolicy(mode="cron", schedule=schedule, timezone=zone)
    expiry = next_deadline(last, cron)
    assert expiry is not None and expiry.reason == "cron"
    assert expiry.deadline.astimezone(UTC) == deadline_utc
    assert evaluate_policy(last, cron, deadline_utc - TICK) is None
    assert evaluate_policy(last, cron, deadline_utc) == expiry
    if schedule.startswith("0 "):  # the same as a daily at_hour policy
        hour = int(schedule.split()[1])
        assert next_deadline(last, daily(hour, zone)) == Expiry("daily", expiry.deadline)


@pytest.mark.parametrize(
    ("zone", "hour", "last", "deadline_utc"),
    [
        # New York repeats 01:00-01:59 on 2024-11-03 (EDT, then EST); at_hour 1
        # means the first 01:00, 05:00 UTC.
        (US, 1, utc(2024, 11, 3, 2, 0), utc(2024, 11, 3, 5, 0)),
        # Active during the first pass: next reset is tomorrow, not the second 01:00.
        (US, 1, utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 0)),
        # Active during the second pass (01:30 EST): tomorrow as well.
        (US, 1, utc(2024, 11, 3, 6, 30), utc(2024, 11, 4, 6, 0)),
        # Berlin repeats 02:00-02:59 on 2024-10-27; at_hour 2 is 02:00 CEST.
        (EU, 2, utc(2024, 10, 26, 22, 0), utc(2024, 10, 27, 0, 0)),
        (EU, 2, utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 0)),
        (EU, 2, utc(2024, 10, 27, 1, 30), utc(2024, 10, 28, 1, 0)),
    ],
)
def test_fall_back(zone: str, hour: int, last: datetime, deadline_utc: datetime) -> None:
    policy = daily(hour, zone)
    expiry = next_deadline(last, policy)
    assert expiry == Expiry("daily", deadline_utc.astimezone(ZoneInfo(zone)))
    assert evaluate_policy(last, policy, deadline_utc - TICK) is None
    assert evaluate_policy(last, policy, deadline_utc) == expiry


def test_fall_back_resets_once_during_the_repeated_hour() -> None:
    policy = daily(1, US)
    first = next_deadline(utc(2024, 11, 3, 4, 0), policy)
    assert first is not None and first.deadline.astimezone(UTC) == utc(2024, 11, 3, 5, 0)
    # A session started right after that reset stays open through 01:00 EST.
    assert evaluate_policy(first.deadline, policy, utc(2024, 11, 3, 6, 59)) is None


def test_cron_in_the_gap_and_the_repeated_hour() -> None:
    every_15 = ResetPolicy(mode="cron", schedule="*/15 * * * *", timezone=US)
    # 01:50 EST on the spring-forward day: 02:00 does not exist; next is 03:00 EDT.
    assert next_deadline(utc(2024, 3, 10, 6, 50), every_15) == Expiry(
        "cron", datetime(2024, 3, 10, 3, 0, tzinfo=NY)
    )
    # Within the repeated hour only the first pass fires; after 01:50 EDT the next
    # fire time is 02:00 EST.
    expiry = next_deadline(utc(2024, 11, 3, 5, 50), every_15)
    assert expiry is not None and expiry.deadline.astimezone(UTC) == utc(2024, 11, 3, 7, 0)


# --- both ----------------------------------------------------------------------


def test_both_reports_the_earlier_deadline() -> None:
    policy = ResetPolicy(mode="both", idle_minutes=60, at_hour=4, timezone="UTC")
    assert next_deadline(utc(2026, 6, 1, 1, 0), policy) == Expiry("idle", utc(2026, 6, 1, 2, 0))
    assert next_deadline(utc(2026, 6, 1, 3, 30), policy) == Expiry("daily", utc(2026, 6, 1, 4, 0))
    # Both passed long ago: the daily boundary came first.
    assert evaluate_policy(utc(2026, 6, 1, 3, 30), policy, utc(2026, 6, 5)) == Expiry(
        "daily", utc(2026, 6, 1, 4, 0)
    )
    # A tie goes to idle, as Hermes checks idle first.
    assert next_deadline(utc(2026, 6, 1, 3, 0), policy) == Expiry("idle", utc(2026, 6, 1, 4, 0))


def test_methods_match_functions() -> None:
    policy = ResetPolicy(mode="idle", idle_minutes=5, timezone="UTC")
    last = utc(2026, 1, 1)
    assert policy.next_deadline(last) == next_deadline(last, policy)
    assert policy.evaluate(last, utc(2026, 1, 2)) == evaluate_policy(last, policy, utc(2026, 1, 2))


# --- properties ----------------------------------------------------------------

ZONES = [US, EU, "Australia/Lord_Howe", "Pacific/Chatham", "UTC", "Asia/Kolkata"]
instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2025, 12, 31), timezones=st.just(UTC)
)


@given(instants, st.sampled_from(ZONES), st.integers(0, 23))
def test_daily_fires_once_per_local_day(last: datetime, zone: str, hour: int) -> None:
    policy = daily(hour, zone)
    expiry = next_deadline(last, policy)
    assert expiry is not None
    deadline = expiry.deadline
    assert deadline > last
    assert evaluate_policy(last, policy, deadline - TICK) is None
    assert evaluate_policy(last, policy, deadline) == expiry
    # The deadline is at_hour local time, or the first real time after a skipped at_hour.
    local = deadline.astimezone(ZoneInfo(zone))
    assert local.hour == hour or (local.hour, local.minute) in {(hour + 1, 0), (hour, 30)}
    # The next deadline falls on a later local day.
    after = next_deadline(deadline, policy)
    assert after is not None
    assert after.deadline.astimezone(ZoneInfo(zone)).date() > local.date()


@given(instants, st.sampled_from(ZONES), st.sampled_from(["30 2 * * *", "*/20 * * * *", "@daily"]))
def test_cron_deadline_is_the_first_after_last(last: datetime, zone: str, schedule: str) -> None:
    policy = ResetPolicy(mode="cron", schedule=schedule, timezone=zone)
    expiry = next_deadline(last, policy)
    assert expiry is not None and expiry.deadline > last
    assert expiry.deadline - last <= timedelta(days=1, hours=2)
    assert evaluate_policy(last, policy, expiry.deadline - TICK) is None
