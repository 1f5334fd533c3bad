"""`hermes-ledger export` and ledger.export: formats, filters, files, constant memory.

The tests that take ``backend`` run on a SQLite file and on a PostgreSQL database
(tests/backends.py): every format is made from either backend's rows by the same
writer, and an export of a PostgreSQL ledger imports into a SQLite one."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import os
import sqlite3
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from backends import Backend, pg_uri
from click.testing import Result
from helpers import ManualClock, installed_script, run_on_terminal
from pg_support import fresh_database

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.events import (
    MessageAppended,
    SessionEnded,
    SessionReset,
    SessionStarted,
    Source,
    UsageRecorded,
)
from hermes_ledger.ledger.export import (
    EXPORT_FORMAT,
    ExportManifest,
    export,
    format_for,
)
from hermes_ledger.ledger.query import EventFilter

K1 = "agent:main:telegram:dm:99"
K2 = "agent:main:discord:group:5:7"
EXPORTED_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
FIELDS = [
    "position", "event_id", "stream", "version", "type", "session_id", "data", "meta",
    "recorded_at", "occurred_at", "hash",
]  # fmt: skip
HASH = FIELDS.index("hash")


def history(led: Ledger, clock: ManualClock) -> None:
    """Two sessions on two keys, an hour apart, with a synthetic (flush) message."""
    led.append(
        K1,
        [
            SessionStarted(event_id="e1", session_id="s1", source=Source(platform="telegram")),
            MessageAppended(event_id="e2", session_id="s1", role="user", content="héllo\nworld"),
        ],
        meta={"actor": "test"},
    )
    clock.advance(hours=1)
    led.append(
        K2, [SessionStarted(event_id="e3", session_id="s2", source=Source(platform="discord"))]
    )
    led.append(
        K1,
        [
            MessageAppended(event_id="e4", session_id="s1", role="assistant", content="hi"),
            UsageRecorded(event_id="e5", session_id="s1", input_tokens=5, cost_usd=0.25),
        ],
    )
    clock.advance(hours=1)
    led.append(
        K1,
        [
            SessionReset(event_id="e6", session_id="s1", trigger="/new"),
            MessageAppended(
                event_id="e7", session_id="s1", role="user", content="flush", synthetic=True
            ),
            SessionEnded(event_id="e8", session_id="s1", reason="manual_reset"),
        ],
    )


@pytest.fixture
def filled(led: Ledger, clock: ManualClock) -> Ledger:
    history(led, clock)
    return led


@pytest.fixture
def ledger(backend: Backend) -> str:
    """``history`` in a ledger of either backend: its ``--db`` target."""
    with backend.open() as log:
        history(log, backend.clock)  # type: ignore[arg-type]
    return backend.target


def rows(target: str | Path) -> list[tuple[Any, ...]]:
    """Every event as exported: event_bodies (each event whole, its personal fields
    merged in), on either backend."""
    sql = f"SELECT {', '.join(FIELDS)} FROM event_bodies ORDER BY position"
    if str(target).startswith("postgresql://"):
        return Backend("postgresql", str(target), ManualClock()).raw(sql)
    with Ledger.open(target, readonly=True) as led:
        return led.query(sql)


def exported(target: str | Path, fmt: str = "jsonl", events: EventFilter | None = None) -> bytes:
    out = io.BytesIO()
    export(target, None, format=fmt, events=events, stdout=out, clock=lambda: EXPORTED_AT)
    return out.getvalue()


def jsonl(target: str | Path, events: EventFilter | None = None) -> list[dict[str, Any]]:
    return [json.loads(line) for line in exported(target, "jsonl", events).splitlines()]


def positions(lines: list[dict[str, Any]]) -> list[int]:
    return [line["position"] for line in lines if "manifest" not in line]


# -- JSONL ---------------------------------------------------------------------


def test_jsonl_has_one_line_per_event_with_every_column_then_a_manifest(ledger: str) -> None:
    out = io.BytesIO()
    manifest = export(ledger, None, stdout=out, clock=lambda: EXPORTED_AT)
    text = out.getvalue().decode()
    lines = text.splitlines()
    assert len(lines) == 9 and text.endswith("\n")
    stored = rows(ledger)
    for line, row in zip(lines, stored, strict=False):
        obj = json.loads(line)
        # an event with personal fields also names its payload's salt (for import)
        assert [k for k in obj if k != "payload"] == FIELDS
        assert [obj[f] for f in FIELDS if f not in ("data", "meta")] == [
            v for f, v in zip(FIELDS, row, strict=True) if f not in ("data", "meta")
        ]
        # data and meta are embedded as stored, byte for byte
        assert f',"data":{row[6]},"meta":{row[7]},' in line
    assert json.loads(lines[0])["meta"] == {"schema_version": 1, "actor": "test"}
    assert json.loads(lines[1])["data"]["content"] == "héllo\nworld"
    assert json.loads(lines[-1]) == {
        "manifest": {
            "format": EXPORT_FORMAT,
            "format_version": 1,
            "count": 8,
            "first_position": 1,
            "last_position": 8,
            "last_hash": stored[-1][HASH],
            "filters": {},
            "exported_at": "2026-11-23T12:00:00.000000Z",
            "generator": manifest.generator,
        }
    }
    assert manifest == ExportManifest(
        "jsonl", 8, 1, 8, stored[-1][HASH], {}, "2026-11-23T12:00:00.000000Z", manifest.generator
    )
    assert manifest.generator.startswith("hermes-ledger ")


def test_an_empty_ledger_exports_just_a_manifest(backend: Backend) -> None:
    backend.open().close()
    lines = jsonl(backend.target)
    assert len(lines) == 1
    body = lines[0]["manifest"]
    assert (body["count"], body["first_position"], body["last_position"], body["last_hash"]) == (
        0, None, None, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (EventFilter(session_key=K2), [3]),
        (EventFilter(session_id="s1"), [1, 2, 4, 5, 6, 7, 8]),
        (EventFilter(types=("session_started", "session_ended")), [1, 3, 8]),
        (EventFilter(since="2026-11-22T10:00:00.000000Z"), [3, 4, 5, 6, 7, 8]),
        (EventFilter(until="2026-11-22T10:00:00.000000Z"), [1, 2]),
        (
            EventFilter(since="2026-11-22T10:00:00.000000Z", until="2026-11-22T11:00:00.000000Z"),
            [3, 4, 5],
        ),
        (EventFilter(from_position=4), [4, 5, 6, 7, 8]),
        (EventFilter(to_position=2), [1, 2]),
        (EventFilter(from_position=2, to_position=4, session_key=K1), [2, 4]),
        (EventFilter(session_key="nobody"), []),
    ],
)
def test_filters_select_the_events(ledger: str, events: EventFilter, expected: list[int]) -> None:
    lines = jsonl(ledger, events)
    assert positions(lines) == expected
    body = lines[-1]["manifest"]
    assert body["count"] == len(expected)
    assert body["first_position"] == (expected[0] if expected else None)
    assert body["last_position"] == (expected[-1] if expected else None)
    assert body["filters"] == events.describe() and body["filters"]


def test_an_unknown_type_or_position_zero_is_refused() -> None:
    with pytest.raises(LedgerError, match="unknown event type 'message'") as info:
        EventFilter(types=("message",))
    assert "message_appended" in (info.value.hint or "")
    with pytest.raises(LedgerError, match="positions start at 1"):
        EventFilter(from_position=0)


# -- CSV and SQLite ----------------------------------------------------------------


def test_csv_has_a_header_and_the_stored_columns(ledger: str) -> None:
    out = io.BytesIO()
    manifest = export(ledger, None, format="csv", stdout=out, clock=lambda: EXPORTED_AT)
    text = out.getvalue().decode()
    assert text.startswith(",".join(FIELDS) + "\n")
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    stored = [[("" if v is None else str(v)) for v in row] for row in rows(ledger)]
    assert parsed[1:] == stored
    assert manifest.export_format == "csv" and manifest.count == 8 and manifest.last_position == 8


def test_sqlite_export_has_events_messages_and_full_text_search(
    ledger: str, tmp_path: Path
) -> None:
    target = tmp_path / "out.db"
    manifest = export(ledger, target, clock=lambda: EXPORTED_AT)
    assert manifest.export_format == "sqlite" and manifest.count == 8
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT * FROM events ORDER BY position").fetchall() == rows(ledger)
        found = db.execute(
            "SELECT m.position, m.session_key, m.role, m.content FROM messages_fts"
            " JOIN messages m ON m.rowid = messages_fts.rowid"
            " WHERE messages_fts MATCH ? ORDER BY m.position",
            ("hello OR hi OR flush",),
        ).fetchall()
        # the synthetic flush turn is in events, not in the searchable transcript
        assert found == [(2, K1, "user", "héllo\nworld"), (4, K1, "assistant", "hi")]
        columns = [c[1] for c in db.execute("PRAGMA table_info(messages)")]
        assert columns == [
            "position", "session_id", "session_key", "role", "content", "user_id",
            "user_name", "tool_calls", "tool_name", "tool_call_id", "input_tokens",
            "output_tokens", "platform_message_id", "ts",
        ]  # fmt: skip
        (info,) = db.execute(
            "SELECT format, export_format, count, last_hash, filters FROM export_manifest"
        ).fetchall()
    assert info == (EXPORT_FORMAT, "sqlite", 8, manifest.last_hash, "{}")
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_sqlite_export_messages_are_the_projection_rows_with_business_time(
    led: Ledger, db_path: Path, tmp_path: Path
) -> None:
    when = datetime(2026, 11, 22, 10, 30, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    led.append(
        K1,
        [
            SessionStarted(event_id="e1", session_id="s1", source=Source(platform="telegram")),
            MessageAppended(session_id="s1", role="user", content="late", occurred_at=when),
            MessageAppended(
                session_id="s1", role="assistant", content=None,
                tool_calls=[{"id": "c1", "name": "search"}], input_tokens=3,
            ),
            MessageAppended(session_id="s1", role="user", content="x", synthetic=True),
        ],
    )  # fmt: skip
    target = tmp_path / "out.db"
    export(db_path, target)
    with sqlite3.connect(target) as db:
        db.row_factory = sqlite3.Row
        exported = [dict(r) for r in db.execute("SELECT * FROM messages ORDER BY position")]
    assert exported == projections.state_at(led).transcripts["s1"]
    assert exported[0]["ts"] == "2026-11-22T08:30:00.250000Z"


def test_sqlite_export_follows_the_filters_and_can_be_gzipped(
    filled: Ledger, db_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "s2.sqlite.gz"
    export(db_path, target, events=EventFilter(session_key=K2))
    plain = tmp_path / "s2.sqlite"
    plain.write_bytes(gzip.decompress(target.read_bytes()))
    with sqlite3.connect(plain) as db:
        assert db.execute("SELECT position FROM events").fetchall() == [(3,)]
        assert db.execute("SELECT count(*) FROM messages").fetchall() == [(0,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ledger.db", "ledger.db-shm", "ledger.db-wal", "s2.sqlite.gz", "s2.sqlite"]
    )


def test_sqlite_needs_an_output_file(filled: Ledger, db_path: Path) -> None:
    with pytest.raises(LedgerError, match="'sqlite' format needs an output file") as info:
        export(db_path, None, format="sqlite", stdout=io.BytesIO())
    assert info.value.hint == "pass -o FILE (e.g. -o export.db)"


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("x.jsonl", "jsonl"),
        ("x.jsonl.gz", "jsonl"),
        ("x.ndjson", "jsonl"),
        ("x.CSV", "csv"),
        ("x.csv.gz", "csv"),
        ("x.db", "sqlite"),
        ("x.sqlite3", "sqlite"),
        ("x.sqlite.gz", "sqlite"),
    ],
)
def test_the_format_follows_the_file_name(name: str, fmt: str) -> None:
    assert format_for(name) == fmt
    assert format_for(None) == "jsonl"


# -- files -------------------------------------------------------------------------


def test_gz_by_extension_holds_the_same_export(ledger: str, tmp_path: Path) -> None:
    plain, zipped = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz"
    export(ledger, plain, clock=lambda: EXPORTED_AT)
    export(ledger, zipped, clock=lambda: EXPORTED_AT)
    assert zipped.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(zipped.read_bytes()) == plain.read_bytes()


def test_export_files_are_owner_only_whatever_the_umask(ledger: str, tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        for name in ("a.jsonl", "a.csv", "a.jsonl.gz", "a.db", "a.md"):
            export(ledger, tmp_path / name)
            assert oct((tmp_path / name).stat().st_mode & 0o777) == "0o600", name
    finally:
        os.umask(old)


def test_a_failed_export_leaves_the_old_file_and_no_temporary_file(
    ledger: str, tmp_path: Path
) -> None:
    target = tmp_path / "backup.jsonl"
    target.write_text("the previous backup\n")

    def fail(done: int, total: int) -> None:
        raise RuntimeError("disk full, say")

    for fmt in ("jsonl", "csv", "sqlite", "markdown"):
        with pytest.raises(RuntimeError, match="disk full"):
            export(ledger, target, format=fmt, progress=fail)
        assert target.read_text() == "the previous backup\n"
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ledger.db")) == [
            "backup.jsonl"
        ]


def test_export_refuses_the_ledger_itself_and_missing_directories(
    filled: Ledger, db_path: Path, tmp_path: Path
) -> None:
    before = rows(db_path)
    with pytest.raises(LedgerError, match="refusing to export over the ledger itself"):
        export(db_path, db_path)
    with pytest.raises(LedgerError, match=r"the directory .* does not exist") as info:
        export(db_path, tmp_path / "nowhere" / "x.jsonl")
    assert (info.value.hint or "").startswith("create it first (mkdir -p ")
    assert rows(db_path) == before


def record(calls: list[tuple[int, int]], done: int, total: int) -> None:
    calls.append((done, total))


def test_progress_reports_done_and_total(ledger: str, tmp_path: Path) -> None:
    for name in ("p.jsonl", "p.csv", "p.db", "p.md"):
        calls: list[tuple[int, int]] = []
        export(ledger, tmp_path / name, progress=functools.partial(record, calls))
        assert calls and calls[-1] == (8, 8), name
        assert all(0 <= d <= t for d, t in calls)


def peak_memory(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_streams_in_constant_memory(db_path: Path, tmp_path: Path) -> None:
    """Exporting 20,000 events (~9 MB) takes no more memory than exporting 2,000."""
    with Ledger.open(db_path) as led:
        for batch in range(20):
            led.append(
                f"k{batch}",
                [
                    MessageAppended(session_id=f"s{batch}", role="user", content="x" * 300)
                    for _ in range(1000)
                ],
            )
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    export(db_path, small, events=EventFilter(to_position=2000))  # warm up (imports, caches)
    small_peak = peak_memory(lambda: export(db_path, small, events=EventFilter(to_position=2000)))
    big_peak = peak_memory(lambda: export(db_path, big))
    assert big.stat().st_size > 8_000_000
    assert big_peak < small_peak + 500_000, f"{big_peak:,} vs {small_peak:,} bytes"
    assert big_peak < 4_000_000


# -- the command -------------------------------------------------------------------


def test_cli_exports_jsonl_to_stdout(ledger: str, cli: Callable[..., Result]) -> None:
    result = cli("export", "--db", ledger, "--session-key", K2)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["event_id"] == "e3"
    manifest = json.loads(lines[1])["manifest"]
    assert manifest["count"] == 1 and manifest["filters"] == {"session_key": K2}
    assert result.stderr == ""


def test_cli_exports_to_a_file_and_says_so(
    ledger: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    target = tmp_path / "out.csv"
    result = cli("export", "--db", ledger, "-o", str(target), "--type", "session_started")
    assert (result.exit_code, result.output) == (
        0,
        f"Exported 2 events (positions 1-3) to {target}\n",
    )
    assert target.read_text().splitlines()[0] == ",".join(FIELDS)
    result = cli("export", "--db", ledger, "-o", str(target), "--from", "99")
    assert (result.exit_code, result.output) == (0, f"Exported 0 events to {target}\n")
    result = cli(
        "export", "--db", ledger, "-o", str(tmp_path / "one.jsonl"), "--to", "1",
        "--since", "2026-11-22", "--until", "2026-11-22T09:30Z",
    )  # fmt: skip
    assert result.output == f"Exported 1 event (positions 1-1) to {tmp_path / 'one.jsonl'}\n"


def test_cli_export_errors_say_what_to_do(
    filled: Ledger, db_path: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    result = cli("export", "--db", str(db_path), "--format", "sqlite")
    assert (result.exit_code, result.output) == (
        1,
        "Error: the 'sqlite' format needs an output file\nTry: pass -o FILE (e.g. -o export.db)\n",
    )
    result = cli("export", "--db", str(db_path), "--since", "the day before")
    assert result.exit_code == 2  # bad input: a usage error
    assert result.output == (
        "Error: cannot read 'the day before' as a time\n"
        "Try: give --since an ISO-8601 time (2026-11-22, 2026-11-22T09:30, with Z or an offset"
        " like +01:00), a duration ago (30s, 15m, 2h, 7d, 1w), now, today or yesterday\n"
    )
    missing = tmp_path / "missing.db"
    result = cli("export", "--db", str(missing))
    assert (result.exit_code, result.output) == (
        1,
        f"Error: {missing} does not exist\nTry: create it with `hermes-ledger init`\n",
    )
    assert not missing.exists()
    result = cli("export", "--db", str(db_path), "--format", "xml")
    assert result.exit_code == 2 and "'xml' is not one of 'jsonl', 'csv', 'sqlite'" in result.output


def test_dash_means_stdout(filled: Ledger, db_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("export", "--db", str(db_path), "-o", "-", "--format", "csv", "--to", "1")
    assert result.exit_code == 0 and result.output.splitlines()[0] == ",".join(FIELDS)
    assert not Path("-").exists()


def test_a_progress_bar_when_stderr_is_a_terminal(
    filled: Ledger, db_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "p.jsonl"
    done, shown = run_on_terminal(
        [installed_script(), "export", "--db", str(db_path), "-o", str(target)], "stderr"
    )
    assert (done.returncode, done.stdout) == (0, f"Exported 8 events (positions 1-8) to {target}\n")
    assert b"exporting" in shown and b"100%" in shown, shown


# -- both backends: the same files, and back into SQLite ---------------------------


def test_every_format_is_the_same_export_on_both_backends(
    filled: Ledger, db_path: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """The same log (``migrate`` copies it, salts and hashes included) in a SQLite
    file and in a PostgreSQL database: every format, filtered or not, gives the same
    bytes (the SQLite form: the same tables and rows)."""
    with fresh_database() as dsn:
        copied = cli("migrate", "--to", dsn, "--from", str(db_path))
        assert copied.exit_code == 0, copied.output
        pg = pg_uri(dsn)
        for events in (None, EventFilter(session_id="s1", types=("message_appended",))):
            for fmt in ("jsonl", "csv", "markdown"):
                assert exported(pg, fmt, events) == exported(db_path, fmt, events), fmt
            dumps = []
            for name, source in (("pg.db", pg), ("lite.db", str(db_path))):
                export(source, tmp_path / name, events=events, clock=lambda: EXPORTED_AT)
                with sqlite3.connect(tmp_path / name) as db:
                    dumps.append(list(db.iterdump()))
            assert dumps[0] == dumps[1]
            assert any('INSERT INTO "messages"' in line for line in dumps[0])


@pytest.mark.parametrize("name", ["back.jsonl", "back.jsonl.gz"])
@pytest.mark.parametrize("erased", [False, True], ids=["whole", "erased"])
def test_an_export_imports_into_sqlite_and_verifies(
    ledger: str, name: str, erased: bool, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """The JSONL export (the one form that imports) carries a ledger of either
    backend back into a new SQLite ledger, row for row, and the chain verifies."""
    if erased:
        done = cli("erase", "--db", ledger, "--session-id", "s2", "--yes")
        assert done.exit_code == 0, done.output
    out = tmp_path / name
    result = cli("export", "--db", ledger, "-o", str(out))
    count = 9 if erased else 8
    assert result.output == f"Exported {count} events (positions 1-{count}) to {out}\n"
    restored = tmp_path / "restored.db"
    imported = cli("import", str(out), "--db", str(restored))
    assert imported.exit_code == 0, imported.output
    assert "hash chain verified up to position" in imported.output
    verified = cli("verify", "--db", str(restored), "--json")
    assert json.loads(verified.output)["ok"] is True, verified.output
    assert rows(restored) == rows(ledger)
    again = tmp_path / ("again" + name.removeprefix("back"))
    assert cli("export", "--db", str(restored), "-o", str(again)).exit_code == 0
    body = gzip.decompress if name.endswith(".gz") else (lambda b: b)
    assert body(again.read_bytes()).splitlines()[:-1] == body(out.read_bytes()).splitlines()[:-1]
    # what was carried back exports as the original does, in every other form too
    for fmt in ("csv", "markdown"):
        assert exported(restored, fmt) == exported(ledger, fmt), fmt
    dumps = []
    for file, source in (("original.db", ledger), ("carried.db", str(restored))):
        export(source, tmp_path / file, clock=lambda: EXPORTED_AT)
        with sqlite3.connect(tmp_path / file) as db:
            dumps.append(list(db.iterdump()))
    assert dumps[0] == dumps[1]
