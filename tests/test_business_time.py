"""Business time (``events.occurred_at``) against recorded time (``recorded_at``):
the migration, the filters, ``state_at``, the exports and the import, one parser
for every time option, and times shown in a zone and relative to now."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import apsw
import pytest
from backends import Backend
from click.testing import Result
from helpers import ManualClock

from hermes_ledger import projections
from hermes_ledger.gateway.cli.times import relative_time, resolve_zone, show_time
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.errors import InvalidInputError
from hermes_ledger.ledger.events import MessageAppended, SessionEnded, SessionStarted, Source
from hermes_ledger.ledger.export import export, export_to_stream
from hermes_ledger.ledger.query import EventFilter, parse_time, select_events
from hermes_ledger.ledger.restore import RestoreError, import_jsonl
from hermes_ledger.ledger.schema import load_migrations
from hermes_ledger.ledger.sql import business_time, business_time_of, scalar

LIVE = "agent:main:telegram:dm:1"
OLD = "agent:main:telegram:dm:2"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
WEEK_AGO = NOW - timedelta(days=7)


def _source() -> Source:
    return Source(platform="telegram")


def fill(led: Ledger, clock: ManualClock) -> None:
    """Positions 1-2: a live session recorded an hour before NOW; 3-5: a session
    of a week ago imported at NOW (its events carry their times from then, one in
    +02:00); 6: a live message at NOW."""
    clock.now = NOW - timedelta(hours=1)
    led.append(LIVE, [SessionStarted(event_id="l1", session_id="live", source=_source())])
    led.append(LIVE, [MessageAppended(event_id="l2", session_id="live", role="user", content="a")])
    clock.now = NOW
    led.append(
        OLD,
        [
            SessionStarted(event_id="o1", session_id="old", source=_source(), occurred_at=WEEK_AGO),
            MessageAppended(
                event_id="o2",
                session_id="old",
                role="user",
                content="then",
                occurred_at=(WEEK_AGO + timedelta(minutes=5)).astimezone(
                    timezone(timedelta(hours=2))
                ),
            ),
            SessionEnded(
                event_id="o3",
                session_id="old",
                reason="idle_expiry",
                occurred_at=WEEK_AGO + timedelta(hours=1),
            ),
        ],
    )
    led.append(LIVE, [MessageAppended(event_id="l3", session_id="live", role="user", content="b")])


@pytest.fixture
def filled(led: Ledger, clock: ManualClock) -> Ledger:
    fill(led, clock)
    return led


def ids(led: Ledger, events: EventFilter) -> list[str]:
    return [rec.event_id for rec in select_events(led, events)]


# -- the column ----------------------------------------------------------------


def test_the_migration_derives_occurred_at_as_business_time_does(filled: Ledger) -> None:
    migration = load_migrations()[2]
    assert migration.name == "0003_occurred_at.sql"
    normal = " ".join(migration.sql.split())
    assert " ".join(business_time("data", "recorded_at").split()) in normal
    rows = filled.query("SELECT position, data, recorded_at, occurred_at FROM events")
    conn = filled.connection
    for _position, data, recorded_at, occurred_at in rows:
        assert occurred_at == scalar(
            conn, f"SELECT {business_time('?1', '?2')}", (data, recorded_at)
        )
        assert occurred_at == business_time_of(json.loads(data), recorded_at)
    assert [r[3] for r in rows] == [
        "2026-11-22T08:00:00.000000Z",
        "2026-11-22T08:00:00.000000Z",
        "2026-11-15T09:00:00.000000Z",
        "2026-11-15T09:05:00.000000Z",  # written as 11:05+02:00
        "2026-11-15T10:00:00.000000Z",
        "2026-11-22T09:00:00.000000Z",
    ]


def test_a_v2_ledger_is_migrated_on_open_without_rewriting_a_row(
    db_path: Path, clock: ManualClock
) -> None:
    with Ledger.open(db_path, clock=clock, migrations=load_migrations()[:2]) as led:
        fill(led, clock)
        before = led.query("SELECT * FROM events ORDER BY position")
        assert "occurred_at" not in [
            c[1] for c in led.connection.execute("PRAGMA table_info(events)")
        ]
    with Ledger.open(db_path, clock=clock) as led:
        conn = led.connection
        assert scalar(conn, "PRAGMA user_version") == len(load_migrations())
        stored = led.query(
            "SELECT position, event_id, stream, version, type, session_id, data, meta,"
            " recorded_at, hash FROM events ORDER BY position"
        )
        assert stored == before
        assert led.query("SELECT occurred_at FROM events WHERE event_id = 'o2'") == [
            ("2026-11-15T09:05:00.000000Z",)
        ]
        assert led.verify().ok and led.check_file().ok
        assert "index events_by_occurred_at" in led.check_file().expected
        # appending goes on, the column following each new row
        clock.advance(minutes=1)
        led.append(LIVE, [MessageAppended(session_id="live", role="user", content="c")])
        assert led.query("SELECT occurred_at = recorded_at FROM events WHERE position = 7") == [
            (1,)
        ]
        assert led.verify().ok


def test_the_column_cannot_be_written_and_bad_json_is_still_a_check_failure(
    filled: Ledger,
) -> None:
    conn = filled.connection
    with pytest.raises(apsw.SQLError, match="generated column"):
        conn.execute(
            "INSERT INTO events (event_id, stream, version, type, data, meta, recorded_at, hash,"
            " occurred_at) VALUES ('x', 's', 1, 't', '{}', '{}', '2026-01-01T00:00:00Z', ?, 'z')",
            ("0" * 64,),
        )
    with pytest.raises(apsw.ConstraintError, match="json_valid"):
        conn.execute(
            "INSERT INTO events (event_id, stream, version, type, data, meta, recorded_at, hash)"
            " VALUES ('x', 's', 1, 't', '{not json', '{}', '2026-01-01T00:00:00Z', ?)",
            ("0" * 64,),
        )


# -- filters -------------------------------------------------------------------


def test_since_and_until_are_business_time_unless_recorded(filled: Ledger) -> None:
    day_ago = format_utc(NOW - timedelta(days=1))
    eight_days_ago = format_utc(NOW - timedelta(days=8))
    assert ids(filled, EventFilter(since=day_ago)) == ["l1", "l2", "l3"]
    assert ids(filled, EventFilter(until=day_ago)) == ["o1", "o2", "o3"]
    assert ids(filled, EventFilter(since=eight_days_ago, until=format_utc(WEEK_AGO))) == []
    assert ids(filled, EventFilter(since=format_utc(WEEK_AGO), until=day_ago)) == [
        "o1",
        "o2",
        "o3",
    ]
    # recorded time: the import happened at NOW
    assert ids(filled, EventFilter(since=day_ago, recorded=True)) == [
        "l1", "l2", "o1", "o2", "o3", "l3",
    ]  # fmt: skip
    assert ids(filled, EventFilter(until=day_ago, recorded=True)) == []
    assert ids(filled, EventFilter(since=format_utc(NOW), recorded=True)) == [
        "o1", "o2", "o3", "l3",
    ]  # fmt: skip
    assert EventFilter(recorded=True).is_empty
    assert EventFilter(since=day_ago, recorded=True).describe() == {
        "since": day_ago,
        "recorded": True,
    }
    assert EventFilter(since=day_ago).describe() == {"since": day_ago}


def test_business_time_filters_seek_on_the_index(filled: Ledger) -> None:
    where, args = EventFilter(since="2026-11-20T00:00:00.000000Z").where()
    plan = filled.query(f"EXPLAIN QUERY PLAN SELECT position FROM events WHERE 1{where}", args)
    assert any("events_by_occurred_at" in row[3] for row in plan), plan


# -- one parser ------------------------------------------------------------------


def test_parse_time_reads_every_form() -> None:
    clock = ManualClock(datetime(2026, 11, 22, 0, 30, tzinfo=UTC))
    berlin = ZoneInfo("Europe/Berlin")
    cases = {
        "2026-11-22": "2026-11-22T00:00:00.000000Z",
        "2026-11-22T09:30": "2026-11-22T09:30:00.000000Z",
        "2026-11-22 09:30:05.25": "2026-11-22T09:30:05.250000Z",
        "2026-11-22T09:30Z": "2026-11-22T09:30:00.000000Z",
        "2026-11-22T09:30:00+01:00": "2026-11-22T08:30:00.000000Z",
        "30s": "2026-11-22T00:29:30.000000Z",
        "15m": "2026-11-22T00:15:00.000000Z",
        "2h": "2026-11-21T22:30:00.000000Z",
        "3d": "2026-11-19T00:30:00.000000Z",
        "1w": "2026-11-15T00:30:00.000000Z",
        "now": "2026-11-22T00:30:00.000000Z",
        " Today ": "2026-11-22T00:00:00.000000Z",
        "yesterday": "2026-11-21T00:00:00.000000Z",
    }
    for text, expected in cases.items():
        assert parse_time(text, now=clock) == expected, text
    # a zone for what has none: dates, times, today (in Berlin it is 01:30 on the 22nd)
    assert parse_time("2026-11-22", now=clock, tz=berlin) == "2026-11-21T23:00:00.000000Z"
    assert parse_time("2026-07-01T12:00", now=clock, tz=berlin) == "2026-07-01T10:00:00.000000Z"
    assert parse_time("today", now=clock, tz=berlin) == "2026-11-21T23:00:00.000000Z"
    assert parse_time("2026-11-22T09:30Z", now=clock, tz=berlin) == "2026-11-22T09:30:00.000000Z"
    for bad in ("soon", "", "3 days", "-2h", "2026-13-01", "99999999999d"):
        with pytest.raises(InvalidInputError, match="as a time") as info:
            parse_time(bad, now=clock)
        assert "ISO-8601" in (info.value.hint or "")


# -- state as of a time ------------------------------------------------------------


def test_state_at_a_business_time_replays_what_had_happened(filled: Ledger) -> None:
    mid_old = WEEK_AGO + timedelta(minutes=30)
    then = projections.state_at(filled, time=mid_old)
    assert set(then.session_map) == {OLD} and then.position == 4
    assert then.session_map[OLD]["status"] == "open"
    assert [m["content"] for m in then.transcripts["old"]] == ["then"]
    later = projections.state_at(filled, time=format_utc(NOW - timedelta(minutes=30)))
    assert set(later.session_map) == {OLD, LIVE} and later.position == 5
    assert later.session_map[OLD]["status"] == "closed"
    assert [m["content"] for m in later.transcripts["live"]] == ["a"]
    # recorded time: a week ago the log held nothing; half an hour ago, the live session
    assert projections.state_at(filled, time=mid_old, recorded=True).position == 0
    recorded = projections.state_at(filled, time=NOW - timedelta(minutes=30), recorded=True)
    assert set(recorded.session_map) == {LIVE} and recorded.position == 2
    assert projections.state_at(filled, time=NOW) == projections.state_at(filled)


# -- exports and the import -----------------------------------------------------------


def test_every_export_keeps_both_times(backend: Backend, tmp_path: Path) -> None:
    """On either backend: both times in JSONL, CSV and SQLite, and a time filter
    on business time."""
    with backend.open() as log:
        fill(log, backend.clock)  # type: ignore[arg-type]
    target = backend.target
    out = io.BytesIO()
    export(target, None, stdout=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()[:-1]]
    assert [(x["event_id"], x["recorded_at"], x["occurred_at"]) for x in lines][2:4] == [
        ("o1", "2026-11-22T09:00:00.000000Z", "2026-11-15T09:00:00.000000Z"),
        ("o2", "2026-11-22T09:00:00.000000Z", "2026-11-15T09:05:00.000000Z"),
    ]
    out = io.BytesIO()
    export(target, None, format="csv", stdout=out)
    table = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert [(r["recorded_at"], r["occurred_at"]) for r in table][4] == (
        "2026-11-22T09:00:00.000000Z",
        "2026-11-15T10:00:00.000000Z",
    )
    exported = tmp_path / "out.db"
    export(target, exported)
    with sqlite3.connect(exported) as db:
        got = db.execute("SELECT event_id, occurred_at FROM events ORDER BY position").fetchall()
        assert got == backend.raw("SELECT event_id, occurred_at FROM events ORDER BY position")
        ts = db.execute("SELECT position, ts FROM messages ORDER BY position").fetchall()
        assert ts == [(2, "2026-11-22T08:00:00.000000Z"), (4, "2026-11-15T09:05:00.000000Z"),
                      (6, "2026-11-22T09:00:00.000000Z")]  # fmt: skip
    # a filtered export selects by business time, and says which time it filtered on
    out = io.BytesIO()
    manifest = export(target, None, stdout=out, events=EventFilter(until="2026-11-20T00:00:00Z"))
    assert manifest.count == 3 and manifest.filters == {"until": "2026-11-20T00:00:00Z"}


def _jsonl(led: Ledger) -> list[str]:
    out = io.BytesIO()
    export_to_stream(led, out)
    return out.getvalue().decode().splitlines(keepends=True)


def test_an_import_checks_occurred_at_and_takes_exports_without_it(
    filled: Ledger, tmp_path: Path
) -> None:
    lines = _jsonl(filled)
    source = tmp_path / "export.jsonl"
    source.write_text("".join(lines))
    result = import_jsonl(tmp_path / "a.db", source)
    assert result.count == 6
    with Ledger.open(tmp_path / "a.db", readonly=True) as copy:
        assert copy.query("SELECT occurred_at FROM events") == filled.query(
            "SELECT occurred_at FROM events"
        )
    # an export made before the column: no occurred_at on any line
    old = [_without_occurred_at(line) for line in lines]
    assert [json.loads(line).get("occurred_at") for line in old] == [None] * 7
    source.write_text("".join(old))
    assert import_jsonl(tmp_path / "b.db", source).count == 6
    # an occurred_at that is not the one the event's data gives: the line was edited
    edited = list(lines)
    edited[3] = edited[3].replace(
        '"occurred_at":"2026-11-15T09:05:00.000000Z"', '"occurred_at":"2026-11-16T00:00:00.000000Z"'
    )
    assert edited[3] != lines[3]
    source.write_text("".join(edited))
    with pytest.raises(RestoreError, match="line 4: position 4: occurred_at '2026-11-16"):
        import_jsonl(tmp_path / "c.db", source)
    assert not (tmp_path / "c.db").exists()
    edited[3] = lines[3].replace('"occurred_at":"2026-11-15T09:05:00.000000Z"', '"occurred_at":5')
    source.write_text("".join(edited))
    with pytest.raises(RestoreError, match="'occurred_at' must be a string"):
        import_jsonl(tmp_path / "c.db", source)


def _without_occurred_at(line: str) -> str:
    """An export line as exports before schema v3 wrote it (the data's own
    ``occurred_at`` member stays)."""
    obj = json.loads(line)
    if "manifest" in obj:
        return line
    return line.replace(f',"occurred_at":"{obj["occurred_at"]}","hash":', ',"hash":')


# -- the command line ------------------------------------------------------------------


@pytest.fixture
def recent(db_path: Path) -> Path:
    """A session of ten days ago imported just now, and a live one: times relative to
    the wall clock, since the command line reads ``8d`` against it."""
    now = datetime.now(UTC)
    then = now - timedelta(days=10)
    with Ledger.open(db_path) as led:
        led.append(LIVE, [SessionStarted(event_id="l1", session_id="live", source=_source())])
        led.append(
            OLD,
            [
                SessionStarted(event_id="o1", session_id="old", source=_source(), occurred_at=then),
                SessionEnded(
                    event_id="o2",
                    session_id="old",
                    reason="idle_expiry",
                    occurred_at=then + timedelta(hours=1),
                ),
            ],
        )
    return db_path


def _ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [json.loads(line)["event_id"] for line in result.output.splitlines()]


def test_events_since_means_when_it_happened(recent: Path, cli: Callable[..., Result]) -> None:
    db = str(recent)
    assert _ids(cli("events", "--db", db, "--json", "--since", "8d")) == ["l1"]
    assert _ids(cli("events", "--db", db, "--json", "--until", "8d")) == ["o1", "o2"]
    assert _ids(cli("events", "--db", db, "--json", "--since", "8d", "--recorded")) == [
        "l1",
        "o1",
        "o2",
    ]
    assert _ids(cli("events", "--db", db, "--json", "--since", "today", "--until", "now")) == ["l1"]
    # the listing shows the business time; with --recorded, the recorded time
    with Ledger.open(recent, readonly=True) as led:
        (o1,) = led.query("SELECT recorded_at, occurred_at FROM events WHERE event_id = 'o1'")
    shown = cli("events", "--db", db, "--session-id", "old").output.splitlines()
    assert shown[0].split()[:2] == ["2", o1[1]]
    shown = cli("events", "--db", db, "--session-id", "old", "--recorded").output.splitlines()
    assert shown[0].split()[:2] == ["2", o1[0]]


def test_export_since_exports_last_weeks_import(recent: Path, cli: Callable[..., Result]) -> None:
    result = cli("export", "--db", str(recent), "--since", "11d", "--until", "9d")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [x.get("event_id") for x in lines[:-1]] == ["o1", "o2"]
    assert lines[-1]["manifest"]["count"] == 2


def test_replay_at_takes_every_time_form(recent: Path, cli: Callable[..., Result]) -> None:
    db = str(recent)
    result = cli("replay", "--db", db, "--at", "9d", "--json")
    assert result.exit_code == 0, result.output
    state = json.loads(result.output)
    assert [r["session_key"] for r in state["session_map"]] == [OLD]
    assert state["session_map"][0]["status"] == "closed" and state["position"] == 3
    result = cli("replay", "--db", db, "--at", "9d", "--recorded", "--json")
    assert json.loads(result.output) == {"position": 0, "session_map": []}
    result = cli("replay", "--db", db, "--at", "now")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Session map as of business time 20")
    result = cli("replay", "--db", db, "--at", "3 days")
    assert result.exit_code == 2
    assert result.output.startswith("Error: cannot read '3 days' as a time\nTry: give --at ")
    result = cli("replay", "--db", db, "--recorded")
    assert result.exit_code == 2 and "--recorded says how --at is read" in result.output


def test_events_since_an_unreadable_time_is_a_usage_error(
    recent: Path, cli: Callable[..., Result]
) -> None:
    result = cli("events", "--db", str(recent), "--since", "last tuesday")
    assert (result.exit_code, result.output.splitlines()[:2]) == (
        2,
        [
            "Error: cannot read 'last tuesday' as a time",
            "Try: give --since an ISO-8601 time (2026-11-22, 2026-11-22T09:30, with Z or an"
            " offset like +01:00), a duration ago (30s, 15m, 2h, 7d, 1w), now, today or"
            " yesterday",
        ],
    )
    result = cli("export", "--db", str(recent), "--until", "2026-02-30")
    assert result.exit_code == 2 and "Try: give --until an ISO-8601 time" in result.output


def test_tables_show_times_in_the_zone_asked_for(
    filled: Ledger, db_path: Path, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    filled.close()
    monkeypatch.delenv("TZ", raising=False)
    db = str(db_path)
    utc = cli("events", "--db", db, "--session-id", "old").output.splitlines()
    assert utc[0].split()[1] == "2026-11-15T09:00:00.000000Z"
    berlin = cli("events", "--db", db, "--session-id", "old", "--tz", "Europe/Berlin")
    assert berlin.output.splitlines()[0].split()[1] == "2026-11-15T10:00:00.000000+01:00"
    monkeypatch.setenv("TZ", "America/New_York")
    by_env = cli("events", "--db", db, "--session-id", "old").output.splitlines()
    assert by_env[0].split()[1] == "2026-11-15T04:00:00.000000-05:00"
    # --json stays UTC text, whatever the zone
    line = cli("events", "--db", db, "--session-id", "old", "--json", "--tz", "Asia/Tokyo")
    assert json.loads(line.output.splitlines()[0])["recorded_at"] == "2026-11-22T09:00:00.000000Z"
    # the tables of sessions and history, and replay's
    sessions = cli("sessions", "--db", db, "--all", "--tz", "Asia/Tokyo").output
    assert "2026-11-22T18:00:00.000000+09:00" in sessions  # the live key's last event
    history = cli("history", OLD, "--db", db, "--tz", "UTC").output.splitlines()
    assert history[2].split()[1:3] == [
        "2026-11-15T09:00:00.000000Z",
        "2026-11-15T10:00:00.000000Z",
    ]
    replay = cli("replay", "--db", db, "--at", "2026-11-15T09:30Z", "--tz", "Asia/Tokyo")
    assert replay.output.splitlines()[0] == (
        "Session map as of business time 2026-11-15T18:30:00.000000+09:00 (position 4):"
    )
    # a time typed without a zone is read in --tz's zone (only when --tz is given)
    replay = cli("replay", "--db", db, "--at", "2026-11-15T18:30", "--tz", "Asia/Tokyo", "--json")
    assert json.loads(replay.output)["position"] == 4
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    replay = cli("replay", "--db", db, "--at", "2026-11-15T18:30", "--json")
    assert json.loads(replay.output)["position"] == 5  # UTC: after the old session ended
    result = cli("events", "--db", db, "--tz", "Mars/Olympus")
    assert result.exit_code == 2
    assert result.output.startswith("Error: unknown time zone 'Mars/Olympus'\nTry: give an IANA")


def test_show_time_and_relative_time() -> None:
    text = "2026-11-22T09:00:00.000000Z"
    assert show_time(text, resolve_zone(None, {})) == text
    assert show_time(text, resolve_zone(None, {"TZ": ":Europe/Berlin"})) == (
        "2026-11-22T10:00:00.000000+01:00"
    )
    assert show_time(None, resolve_zone("UTC")) == "-"
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert relative_time(text, now) == "3 h ago"
    assert relative_time("2026-11-22T12:05:30.000000Z", now) == "in 5 min"
    assert relative_time("2026-11-22T11:59:59.500000Z", now) == "now"
    assert relative_time("2026-11-22T11:59:15.000000Z", now) == "45 s ago"
    assert relative_time("2026-11-12T11:00:00.000000Z", now) == "10 d ago"
    assert relative_time(None, now) == "" and relative_time("garbage", now) == ""
    with pytest.raises(LedgerError, match="unknown time zone"):
        resolve_zone("Nowhere/Special")
    # a TZ that is a POSIX rule, not a zone name, falls back to the local time
    assert resolve_zone(None, {"TZ": "CET-1CEST"}).tz is not None
