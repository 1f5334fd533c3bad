"""`hermes-ledger import` and ledger.restore: exact restores, and refusals that write nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import ManualClock, installed_script, run_on_terminal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.chain import GENESIS, row_hash
from hermes_ledger.ledger.events import (
    EventModel,
    MemoryFlushed,
    MessageAppended,
    SessionEnded,
    SessionStarted,
    Source,
    UsageRecorded,
)
from hermes_ledger.ledger.export import export, export_to_stream
from hermes_ledger.ledger.query import EventFilter
from hermes_ledger.ledger.restore import RestoreError, import_jsonl, restore_jsonl

K1 = "agent:main:telegram:dm:99"
K2 = "agent:main:slack:channel:C1"


def history(led: Ledger, clock: ManualClock) -> None:
    led.append(
        K1,
        [
            SessionStarted(session_id="s1", source=Source(platform="telegram", chat_id="99")),
            MessageAppended(session_id="s1", role="user", content='héllo \u2028 \x01 "q" \\'),
        ],
        meta={"actor": "gateway", "correlation_id": "c-1"},
    )
    clock.advance(minutes=5)
    led.append(K2, [SessionStarted(session_id="s2", source=Source(platform="slack"))])
    led.append(
        K1,
        [
            UsageRecorded(session_id="s1", input_tokens=10, cost_usd=1e-7),
            MemoryFlushed(session_id="s1", provider="honcho"),
            SessionEnded(session_id="s1", reason="manual_reset"),
        ],
    )


@pytest.fixture
def source(led: Ledger, clock: ManualClock, db_path: Path) -> Path:
    history(led, clock)
    return db_path


def dump(path: Path) -> list[tuple[Any, ...]]:
    with Ledger.open(path, readonly=True) as led:
        return led.query("SELECT * FROM events ORDER BY position")


def export_bytes(path: Path, events: EventFilter | None = None) -> bytes:
    out = io.BytesIO()
    with Ledger.open(path, readonly=True) as led:
        export_to_stream(led, out, events=events)
    return out.getvalue()


def restore(data: bytes, target: Path) -> Any:
    with Ledger.open(target) as led:
        return restore_jsonl(led, io.BytesIO(data))


def refused(data: bytes, target: Path) -> RestoreError:
    """Restore ``data``, expect a refusal, and check that nothing was written."""
    with pytest.raises(RestoreError) as info:
        restore(data, target)
    assert dump(target) == []
    return info.value


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


# -- exact restores -----------------------------------------------------------------


def test_an_export_restores_the_same_rows_and_hashes(source: Path, tmp_path: Path) -> None:
    data = export_bytes(source)
    target = tmp_path / "restored.db"
    result = restore(data, target)
    assert dump(target) == dump(source)
    manifest = json.loads(data.splitlines()[-1])["manifest"]
    assert (result.count, result.last_position, result.last_hash) == (
        6, 6, manifest["last_hash"],
    )  # fmt: skip
    with Ledger.open(target) as led:
        report = led.verify()
        assert report.ok and report.head == 6
        # the restored ledger carries on where the old one stopped
        assert led.append(K1, [MessageAppended(session_id="s3", role="user", content="x")]) \
            .positions == (7,)  # fmt: skip
        assert led.stream_version(K1) == 6
        assert led.verify().ok
    # and its export is the same file again (but for the export time)
    again = export_bytes(target, EventFilter(to_position=6)).splitlines()[:-1]
    assert again == data.splitlines()[:-1]


def test_an_empty_export_restores_an_empty_ledger(db_path: Path, tmp_path: Path) -> None:
    Ledger.open(db_path).close()
    result = restore(export_bytes(db_path), tmp_path / "new.db")
    assert (result.count, result.last_position, result.last_hash) == (0, None, None)


def test_import_jsonl_reads_files_gzip_and_stdin(source: Path, tmp_path: Path) -> None:
    plain, zipped = tmp_path / "e.jsonl", tmp_path / "e.jsonl.gz"
    export(source, plain)
    export(source, zipped)
    assert import_jsonl(tmp_path / "a.db", plain).count == 6
    assert import_jsonl(tmp_path / "b.db", zipped).count == 6
    # gzip is recognised by its first bytes, so a compressed pipe works too
    stdin = io.BufferedReader(io.BytesIO(zipped.read_bytes()))  # type: ignore[arg-type]
    assert import_jsonl(tmp_path / "c.db", "-", stdin=stdin).count == 6
    assert dump(tmp_path / "a.db") == dump(tmp_path / "b.db") == dump(tmp_path / "c.db")
    with pytest.raises(LedgerError, match="there is no file"):
        import_jsonl(tmp_path / "d.db", tmp_path / "missing.jsonl")


def craft(rows: list[tuple[Any, ...]]) -> bytes:
    """An export of hand-made rows (position, event_id, stream, version, type,
    session_id, data, meta, recorded_at), hashed like the ledger does."""
    previous, out = GENESIS, []
    for row in rows:
        previous = row_hash(previous, *row)
        out.append((*row, previous))
    text = "".join(line(row) + "\n" for row in out)
    return (text + manifest_line(len(out), out[-1][0], previous) + "\n").encode()


def embedded(key: str, text: str) -> str:
    """How an export embeds ``data``/``meta``: as is, or (with line breaks in it)
    re-serialised with its exact text in ``<key>_text``."""
    if "\n" not in text and "\r" not in text:
        return f'"{key}":{text}'
    compact = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    return f'"{key}":{compact},"{key}_text":{json.dumps(text)}'


def line(row: tuple[Any, ...]) -> str:
    p, eid, stream, v, t, sid, data, meta, at, h = row
    q = json.dumps
    return (
        f'{{"position":{p},"event_id":{q(eid)},"stream":{q(stream)},"version":{v},'
        f'"type":{q(t)},"session_id":{q(sid)},{embedded("data", data)},'
        f'{embedded("meta", meta)},"recorded_at":{q(at)},"hash":{q(h)}}}'
    )


def manifest_line(count: int, last: int | None, last_hash: str | None) -> str:
    body = {"format": "hermes-ledger-export", "format_version": 1, "count": count,
            "first_position": 1 if count else None, "last_position": last,
            "last_hash": last_hash}  # fmt: skip
    return json.dumps({"manifest": body})


AT = "2026-11-22T09:00:00.000000Z"
META = '{"schema_version":1}'


def test_data_with_line_breaks_and_odd_spacing_survives_export_and_import(
    tmp_path: Path,
) -> None:
    """Valid bodies laid out as the ledger never writes them (pretty-printed,
    padded JSON) still round-trip byte for byte: the export keeps each event on
    one line."""
    policy = {"mode": "idle", "n": [1, 2]}
    pretty = json.dumps(
        {"session_id": "s1", "reason": "idle", "deadline": AT, "evaluated_at": AT,
         "policy": policy}, indent=2,
    )  # fmt: skip
    meta = '{\r\n"schema_version": 1}'
    rows = [
        (1, "a", K1, 1, "session_expired", "s1", pretty, META, AT),
        (2, "b", K1, 2, "session_reset", "s2", ' {"session_id": "s2"}\t', meta, AT),
        (3, "c", K1, 3, "session_reset", "s3", '{"session_id":"s3"}', META, AT),
    ]
    first = tmp_path / "first.db"
    restore(craft(rows), first)
    assert [r[6] for r in dump(first)] == [pretty, ' {"session_id": "s2"}\t', '{"session_id":"s3"}']
    data = export_bytes(first)
    assert len(data.splitlines()) == 4
    assert b'"data_text":' in data.splitlines()[0] and b'"meta_text":' in data.splitlines()[1]
    second = tmp_path / "second.db"
    restore(data, second)
    assert dump(second) == dump(first)
    with Ledger.open(second) as led:
        assert led.verify().ok


def test_a_line_laid_out_another_way_is_read_by_its_members(tmp_path: Path) -> None:
    """Member order and spacing do not matter; only the values and the hash do."""
    data = '{"session_id":"s1","reason":"r"}'
    digest = row_hash(GENESIS, 1, "a", K1, 1, "session_ended", "s1", data, META, AT)
    text = (
        f'{{ "hash": "{digest}", "meta":{META} , "data":{data},"recorded_at": "{AT}",'
        f' "session_id": "s1", "type": "session_ended", "version": 1, "stream": "{K1}",'
        f' "event_id": "a", "position": 1 }}\n' + manifest_line(1, 1, digest) + "\n"
    )
    restore(text.encode(), tmp_path / "t.db")
    assert dump(tmp_path / "t.db")[0][6:8] == (data, META)


# -- refusals ------------------------------------------------------------------------


def test_an_edited_line_is_refused_with_its_number(source: Path, tmp_path: Path) -> None:
    lines = lines_of(export_bytes(source))
    lines[1] = lines[1].replace(b"h\xc3\xa9llo", b"hello")
    error = refused(b"".join(lines), tmp_path / "t.db")
    # the message text is a personal field: the digest in meta (chained) catches it
    assert str(error) == ("line 2: position 2: the personal fields do not match the digest in meta")
    assert error.line == 2
    assert error.hint == (
        "the file was edited or damaged after it was exported; nothing was imported. "
        "Export the ledger again"
    )


def test_a_truncated_file_is_refused(source: Path, tmp_path: Path) -> None:
    data = export_bytes(source)
    lines = lines_of(data)
    error = refused(b"".join(lines[:-1]), tmp_path / "a.db")
    assert str(error) == (
        "the input ends after line 6 without the export's manifest line: it is truncated"
    )
    error = refused(data[: len(data) // 2], tmp_path / "b.db")
    assert error.line is not None and str(error).startswith(f"line {error.line}: not valid JSON")
    assert "truncated" in str(error)
    error = refused(b"", tmp_path / "c.db")
    assert str(error) == "the input is empty: it holds no export"


def test_missing_reordered_or_extra_lines_are_refused(source: Path, tmp_path: Path) -> None:
    lines = lines_of(export_bytes(source))
    error = refused(b"".join(lines[:2] + lines[3:]), tmp_path / "a.db")
    assert str(error).startswith("line 3: position 4 follows position 2")
    error = refused(b"".join([lines[1], lines[0], *lines[2:]]), tmp_path / "b.db")
    assert str(error) == "line 1: the export starts at position 2, not 1"
    error = refused(b"".join([*lines, lines[0]]), tmp_path / "c.db")
    assert str(error) == "line 8: there is more after the manifest (line 7)"
    error = refused(b"".join([*lines[:3], b"\n", *lines[3:]]), tmp_path / "d.db")
    assert str(error) == "line 4: the line is empty"


def test_a_filtered_export_cannot_be_imported(source: Path, tmp_path: Path) -> None:
    error = refused(export_bytes(source, EventFilter(session_key=K2)), tmp_path / "a.db")
    assert str(error) == "line 1: the export starts at position 3, not 1"
    assert "only a complete export can be imported" in (error.hint or "")
    error = refused(export_bytes(source, EventFilter(session_key=K1)), tmp_path / "b.db")
    assert str(error).startswith("line 3: position 4 follows position 2")
    # a prefix (--to) is a complete history up to that point, and restores
    assert restore(export_bytes(source, EventFilter(to_position=3)), tmp_path / "c.db").count == 3


def test_a_manifest_that_disagrees_is_refused(source: Path, tmp_path: Path) -> None:
    lines = lines_of(export_bytes(source))
    body = json.loads(lines[-1])
    for key, value, shown in (
        ("count", 7, "count is 7, but the events before it give 6"),
        ("last_hash", "0" * 64, f"last_hash is '{'0' * 64}'"),
        ("last_position", 5, "last_position is 5, but the events before it give 6"),
        ("format_version", 2, "format version is 2; this hermes-ledger reads version 1"),
        ("format", "other", "the last line is not a hermes-ledger-export manifest"),
    ):
        edited = json.dumps({"manifest": {**body["manifest"], key: value}}).encode() + b"\n"
        error = refused(b"".join([*lines[:-1], edited]), tmp_path / f"{key}.db")
        assert str(error).startswith("line 7: ") and shown in str(error), str(error)


def test_malformed_events_are_refused(tmp_path: Path) -> None:
    good = (1, "a", K1, 1, "session_reset", "s1", '{"session_id":"s1"}', META, AT)
    base = json.loads(craft([good]).splitlines()[0])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"version": 0}, "'version' must be an integer >= 1, not 0"),
        ({"position": True}, "'position' must be an integer >= 1, not True"),
        ({"stream": 5}, "'stream' must be a string, not 5"),
        ({"session_id": []}, "'session_id' must be a string or null, not []"),
        ({"extra": 1}, "unexpected key 'extra' in an event"),
        ({"data_text": "{}"}, "'data_text' does not hold the same JSON as 'data'"),
    ]
    for n, (change, message) in enumerate(cases):
        text = json.dumps({**base, **change}) + "\n" + manifest_line(1, 1, base["hash"]) + "\n"
        error = refused(text.encode(), tmp_path / f"{n}.db")
        assert str(error) == f"line 1: {message}"
    missing = {k: v for k, v in base.items() if k != "hash"}
    error = refused((json.dumps(missing) + "\n").encode(), tmp_path / "m.db")
    assert str(error) == "line 1: the event has no 'hash'"
    for n, raw in enumerate([b"[1, 2]\n", b"\xff\xfe\n", b"{oops\n"]):
        error = refused(raw, tmp_path / f"bad{n}.db")
        assert error.line == 1


def test_rows_the_ledger_itself_refuses_are_reported_by_line(tmp_path: Path) -> None:
    """A crafted file with a valid chain still meets the database's constraints."""
    rows = [
        (1, "a", K1, 1, "session_ended", "s1", '{"session_id":"s1","reason":"r"}', META, AT),
        (2, "b", K2, 1, "session_ended", "s1", '{"session_id":"s1","reason":"r"}', META, AT),
    ]
    error = refused(craft(rows), tmp_path / "a.db")
    assert str(error).startswith("line 2: the ledger refused the event: UNIQUE constraint failed")
    rows = [
        (1, "a", K1, 1, "session_reset", "s1", '{"session_id":"s1"}', META, AT),
        (2, "a", K2, 1, "session_reset", "s2", '{"session_id":"s2"}', META, AT),
    ]
    error = refused(craft(rows), tmp_path / "b.db")
    assert str(error) == (
        "line 2: the ledger refused the event: UNIQUE constraint failed: events.event_id"
    )
    rows = [(1, "a", K1, 2, "session_reset", "s1", "{}", META, AT)]
    error = refused(craft(rows), tmp_path / "c.db")
    assert str(error) == f"line 1: stream '{K1}' jumps from version 0 to 2"


def test_a_ledger_with_events_is_not_restored_into(source: Path, tmp_path: Path) -> None:
    data = export_bytes(source)
    before = dump(source)
    with Ledger.open(source) as led, pytest.raises(RestoreError) as info:
        restore_jsonl(led, io.BytesIO(data))
    assert str(info.value) == (
        f"{source} already has events; an export is restored only into an empty ledger"
    )
    assert dump(source) == before


# -- Hypothesis ----------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=20
)
free_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
session_ids = st.sampled_from(["s1", "s2", "s3", "ünï"])
step_events: st.SearchStrategy[EventModel] = st.one_of(
    st.builds(
        SessionStarted,
        session_id=session_ids,
        source=st.builds(Source, platform=names, chat_id=st.none() | names),
    ),
    st.builds(
        MessageAppended,
        session_id=session_ids,
        role=st.sampled_from(["user", "assistant", "tool", "system"]),
        content=st.none() | free_text,
        tool_calls=st.none() | st.lists(st.dictionaries(names, free_text, max_size=2), max_size=2),
        synthetic=st.booleans(),
    ),
    st.builds(
        UsageRecorded,
        session_id=session_ids,
        input_tokens=st.integers(0, 2**40),
        cost_usd=st.none() | st.floats(min_value=0, max_value=1e9, allow_nan=False),
    ),
)
histories = st.lists(
    st.tuples(
        st.sampled_from([K1, K2, "agent:main:cli:dm", "k:ü:%3A"]),
        st.lists(step_events, min_size=1, max_size=4),
        st.none() | st.dictionaries(names, free_text, max_size=2),
    ),
    max_size=8,
)


def build(path: Path, steps: list[tuple[str, list[EventModel], dict[str, str] | None]]) -> None:
    moment = datetime(2026, 11, 22, 9, tzinfo=UTC)
    with Ledger.open(path, clock=lambda: moment) as led:
        for stream, batch, meta in steps:
            led.append(stream, batch, meta={f"m_{k}": v for k, v in (meta or {}).items()})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=histories)
def test_any_history_round_trips_through_export_and_import(
    tmp_path_factory: pytest.TempPathFactory, steps: list[Any]
) -> None:
    directory = tmp_path_factory.mktemp("rt")
    build(directory / "a.db", steps)
    data = export_bytes(directory / "a.db")
    result = restore(data, directory / "b.db")
    assert dump(directory / "b.db") == dump(directory / "a.db")
    assert result.count == len(dump(directory / "a.db"))
    assert result.last_hash == json.loads(data.splitlines()[-1])["manifest"]["last_hash"]
    with Ledger.open(directory / "b.db") as led:
        assert led.verify().ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=histories.filter(bool), where=st.floats(0, 1, exclude_max=True), byte=st.integers(32, 126)
)
def test_any_changed_byte_in_an_event_line_is_refused(
    tmp_path_factory: pytest.TempPathFactory, steps: list[Any], where: float, byte: int
) -> None:
    directory = tmp_path_factory.mktemp("flip")
    build(directory / "a.db", steps)
    data = export_bytes(directory / "a.db")
    events_end = data.rindex(b"\n", 0, len(data) - 1)  # the manifest line is not covered
    at = int(where * events_end)
    if data[at] == byte or data[at : at + 1] == b"\n":
        return
    changed = data[:at] + bytes([byte]) + data[at + 1 :]
    refused(changed, directory / "b.db")


# -- the command ----------------------------------------------------------------------


def test_cli_imports_a_file_or_stdin(
    source: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    data = export_bytes(source)
    last_hash = json.loads(data.splitlines()[-1])["manifest"]["last_hash"]
    (tmp_path / "e.jsonl").write_bytes(data)
    target = tmp_path / "new.db"
    result = cli("import", "--db", str(target), str(tmp_path / "e.jsonl"))
    assert (result.exit_code, result.output) == (
        0,
        f"Imported 6 events into {target}; hash chain verified up to position 6 "
        f"(last hash {last_hash})\n",
    )
    result = cli("import", "--db", str(tmp_path / "stdin.db"), input=data)
    assert result.exit_code == 0 and result.output.startswith("Imported 6 events into ")
    assert dump(tmp_path / "stdin.db") == dump(source) == dump(target)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(manifest_line(0, None, None) + "\n")
    result = cli("import", "--db", str(tmp_path / "e.db"), str(empty))
    assert result.output == f"Imported 0 events into {tmp_path / 'e.db'} (the export holds none)\n"


def test_cli_import_refusals_print_error_and_try(
    source: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    lines = lines_of(export_bytes(source))
    target = tmp_path / "new.db"
    result = cli("import", "--db", str(target), "-", input=b"".join(lines[:-1]))
    assert (result.exit_code, result.output) == (
        1,
        "Error: the input ends after line 6 without the export's manifest line: it is truncated\n"
        "Try: export the ledger again (the manifest is the last line of every export)\n",
    )
    assert not target.exists()  # a refused import creates no ledger
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith("ledger.db")
    )
    result = cli("import", "--db", str(source), input=b"".join(lines))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {source} already has events; an export is restored only into an empty ledger\n"
        "Try: import into a new file: hermes-ledger import --db NEW.db FILE\n"
    )
    result = cli("import", "--db", str(target), str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 1 and result.output.startswith("Error: there is no file ")


# -- real processes ---------------------------------------------------------------------


def test_export_piped_into_import_between_real_processes(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "piped.db"
    env = {**os.environ, "HERMES_HOME": str(tmp_path / "home")}
    env.pop("HERMES_LEDGER_DB", None)
    exporter = subprocess.Popen(
        [installed_script(), "export", "--db", str(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    importer = subprocess.run(
        [installed_script(), "import", "--db", str(target)],
        stdin=exporter.stdout,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert exporter.stdout is not None and exporter.stderr is not None
    exporter.stdout.close()
    with exporter.stderr:
        errors = exporter.stderr.read().decode()
    assert exporter.wait(timeout=60) == 0, errors
    assert importer.returncode == 0, importer.stderr
    assert importer.stdout.startswith(f"Imported 6 events into {target}; hash chain verified")
    assert dump(target) == dump(source)
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_import_from_a_terminal_says_what_to_do(tmp_path: Path) -> None:
    command = [installed_script(), "import", "--db", str(tmp_path / "n.db")]
    done, _ = run_on_terminal(command, "stdin")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "Error: no export to read: SOURCE is stdin, and stdin is a terminal\n"
        "Try: hermes-ledger import FILE, or pipe one in: "
        "hermes-ledger export --db OLD.db | hermes-ledger import --db NEW.db\n"
    )
    assert not (tmp_path / "n.db").exists()


# -- bodies: an import writes only what Ledger.append could have written ---------------

V2 = '{"schema_version":2}'
STARTED = '{"session_id":"s1","source":{"platform":"telegram","chat_id":"99"}}'


def forged(body_row: tuple[Any, ...]) -> bytes:
    """A well-formed export whose chain and manifest were recomputed: a session
    start, then ``body_row`` at position 2."""
    return craft([(1, "a", K1, 1, "session_started", "s1", STARTED, META, AT), body_row])


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".part" in p.name)


def still_readable(cli: Callable[..., Result], target: Path) -> None:
    """verify, replay and sessions run on ``target`` (they crashed after a bad import)."""
    for command in ("verify", "replay", "sessions"):
        result = cli(command, "--db", str(target))
        assert result.exit_code == 0, (command, result.output)
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("body_row", "message"),
    [
        (
            (2, "b", K1, 2, "message_appended", "s1", "[1,2]", META, AT),
            "'data' must be a JSON object, not list",
        ),
        (
            (2, "b", K1, 2, "message_appended", "s1",
             '{"session_id":"s1","role":"robot","content":"hi"}', META, AT),
            "invalid message_appended event: role: Input should be 'user', 'assistant', "
            "'tool' or 'system'",
        ),
        (
            (2, "b", K1, 2, "message_appended", "s1", '{"session_id":"s1","content":"hi"}',
             META, AT),
            "invalid message_appended event: role: Field required",
        ),
        (
            (2, "b", K1, 2, "session_teleported", "s1", '{"session_id":"s1"}', META, AT),
            "unknown event type 'session_teleported' (known types: memory_flush_failed,",
        ),
        (
            (2, "b", K1, 2, "message_appended", "s1",
             '{"session_id":"s1","role":"user","content":"hi","synthetic":"true"}', META, AT),
            "invalid message_appended event: synthetic: Input should be a valid boolean",
        ),
        (
            (2, "b", K1, 2, "message_appended", "s1",
             '{"session_id":"s1","role":"user","role":null,"content":"hi"}', META, AT),
            "the key 'role' appears twice in one object",
        ),
        (
            (2, "b", K1, 2, "session_reset", "s9", '{"session_id":"s1"}', META, AT),
            "the session_id column is 's9' but the body says 's1'",
        ),
        (
            (2, "b", K1, 2, "session_reset", "s1", '{"session_id":"s1","type":"x"}', META, AT),
            "'data' may not hold 'type'",
        ),
        (
            (2, "b", K1, 2, "session_reset", "s1", '{"session_id":"s1"}', "{}", AT),
            "meta.schema_version must be an integer >= 1, not None",
        ),
        (
            (2, "b", K1, 2, "usage_recorded", "s1", '{"session_id":"s1"}',
             '{"schema_version":3}', AT),
            "usage_recorded v3 is newer than this code understands (v2)",
        ),
        (
            (2, "b", K1, 2, "session_reset", "s1", '{"session_id":"s1"}', META, "yesterday"),
            "recorded_at 'yesterday' is not a UTC time as the ledger writes it",
        ),
        (
            (2, "b", "k\x01", 1, "session_reset", "s1", '{"session_id":"s1"}', META, AT),
            "contains control characters",
        ),
    ],
    ids=["json-array", "bad-role", "missing-role", "unknown-type", "string-bool",
         "duplicate-key", "session-id-column", "type-in-body", "no-schema-version",
         "newer-version", "recorded-at", "control-chars"],
)  # fmt: skip
def test_a_rehashed_export_with_an_invalid_body_is_refused_by_line(
    tmp_path: Path, cli: Callable[..., Result], body_row: tuple[Any, ...], message: str
) -> None:
    """The chain and the manifest were recomputed after the edit, so only the body
    check can find it; the line is named, and no ledger file is created."""
    export_file = tmp_path / "forged.jsonl"
    export_file.write_bytes(forged(body_row))
    target = tmp_path / "new.db"
    result = cli("import", "--db", str(target), str(export_file))
    assert result.exit_code == 1, result.output
    first, second = result.output.splitlines()
    assert first.startswith("Error: line 2: ") and message in first, first
    assert second.startswith("Try: ")
    assert not target.exists()
    assert leftovers(tmp_path) == []
    # the library says the same, with the line
    with pytest.raises(RestoreError) as info:
        import_jsonl(target, export_file)
    assert info.value.line == 2 and not target.exists()


def test_an_old_version_body_is_upcast_and_accepted(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    v1 = '{"session_id":"s1","prompt_tokens":3,"completion_tokens":4,"cost_usd":null}'
    data = craft([
        (1, "a", K1, 1, "session_started", "s1", STARTED, META, AT),
        (2, "b", K1, 2, "usage_recorded", "s1", v1, META, AT),
        (3, "c", K1, 3, "usage_recorded", "s1", '{"session_id":"s1","input_tokens":5}', V2, AT),
    ])  # fmt: skip
    (tmp_path / "old.jsonl").write_bytes(data)
    target = tmp_path / "new.db"
    result = cli("import", "--db", str(target), str(tmp_path / "old.jsonl"))
    assert result.exit_code == 0, result.output
    assert dump(target)[1][6] == v1  # stored as it was written, never rewritten
    with Ledger.open(target, readonly=True) as led:
        usage = [r.event for r in led.read_all() if r.type == "usage_recorded"]
    assert [(u.input_tokens, u.output_tokens) for u in usage] == [(3, 4), (5, 0)]  # type: ignore[attr-defined]
    still_readable(cli, target)


def test_a_forged_real_export_leaves_the_target_unchanged_and_readable(
    source: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """The case of issue 11: a real export whose message body was replaced by a
    JSON array and every later hash (and the manifest) recomputed. Into a new
    path: no file; into an existing empty ledger: nothing changes; and the read
    commands keep working on it."""
    rows = [list(row[:9]) for row in dump(source)]
    assert rows[1][4] == "message_appended"
    rows[1][6] = "[1,2]"
    data = craft([tuple(row) for row in rows])
    export_file = tmp_path / "forged.jsonl"
    export_file.write_bytes(data)
    missing = tmp_path / "missing.db"
    result = cli("import", "--db", str(missing), str(export_file))
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: line 2: position 2: 'data' must be a JSON object, not list\n"
    )
    assert not missing.exists() and leftovers(tmp_path) == []
    empty = tmp_path / "empty.db"
    assert cli("init", "--db", str(empty)).exit_code == 0
    before = empty.read_bytes()
    result = cli("import", "--db", str(empty), str(export_file))
    assert result.exit_code == 1 and result.output.startswith("Error: line 2: position 2: ")
    assert empty.read_bytes() == before and dump(empty) == []
    still_readable(cli, empty)
    with Ledger.open(empty) as led:
        assert led.verify().ok
    # the same export, unedited, imports into the same ledger afterwards
    good = tmp_path / "good.jsonl"
    export(source, good)
    assert cli("import", "--db", str(empty), str(good)).exit_code == 0
    assert dump(empty) == dump(source)
    still_readable(cli, empty)


def test_an_import_into_a_new_path_makes_the_file_only_at_the_end(
    source: Path, tmp_path: Path
) -> None:
    """A ledger built under a temporary name: complete when it appears, owner-only,
    with no -wal left beside it; a refused one leaves nothing, and a dead import's
    .part files are removed by the next import to that path."""
    good = tmp_path / "good.jsonl"
    export(source, good)
    target = tmp_path / "restored.db"
    (tmp_path / ".restored.db.abcd1234.part").write_bytes(b"")  # a killed import's
    (tmp_path / ".restored.db.abcd1234.part-wal").write_bytes(b"")
    seen: list[bool] = []
    import_jsonl(target, good, progress=lambda count: seen.append(target.exists()))
    assert seen and not any(seen)  # not there while it was being written
    assert dump(target) == dump(source)
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert leftovers(tmp_path) == []
    with Ledger.open(target) as led:
        assert led.verify().ok
