"""``hermes-ledger serve``: the installed script serving a real ledger file with
Datasette on a free loopback port — pages, a canned query's JSON, a transcript
search, an append by another process seen on the next request (the WAL is read),
a headless-Chromium screenshot — and its refusals; the metadata and canned
queries against the definitions and docs/sql.md."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import pg_uri
from helpers import installed_script, next_line
from pg_support import fresh_database

from hermes_ledger import projections
from hermes_ledger.gateway.web import DOC_QUERIES, build_metadata
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import (
    MemoryFlushed,
    MessageAppended,
    SessionEnded,
    SessionReset,
    SessionStarted,
    Source,
)
from hermes_ledger.ledger.postgres import PostgresLog
from hermes_ledger.ledger.postgres.log import describe_dsn
from hermes_ledger.projections import postgres as pg_projections
from hermes_ledger.projections.audits import REPORTS
from hermes_ledger.projections.definitions import PROJECTIONS

KEY = "agent:main:telegram:dm:99"
OTHER = "agent:main:discord:dm:7"
DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
CHROMIUM = "/usr/bin/chromium"


def make_events() -> list[Any]:
    return [
        SessionStarted(
            session_id="s1", source=Source(platform="telegram", chat_id="99", user_id="u1")
        ),
        MessageAppended(session_id="s1", role="user", content="where is the invoice?"),
        MessageAppended(session_id="s1", role="assistant", content="attached, page two"),
        SessionReset(session_id="s1", trigger="/new"),
        MemoryFlushed(session_id="s1", provider="honcho"),
        SessionEnded(session_id="s1", reason="manual_reset"),
    ]


def make_ledger(path: Path) -> Path:
    with Ledger.open(path) as led:
        projections.attach(led)
        led.append(KEY, make_events())
    return path


class Served:
    """A running ``hermes-ledger serve`` and the URL of its ledger."""

    def __init__(self, proc: subprocess.Popen[str], url: str, path: Path) -> None:
        self.proc, self.url, self.path = proc, url, path

    def get(self, route: str, **params: str) -> tuple[int, str]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(self.url + route + query, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def json(self, route: str, **params: str) -> Any:
        status, body = self.get(route, **params)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    path = make_ledger(root / "ledger.db")
    env = {**os.environ, "HERMES_HOME": str(root / "home")}
    env.pop("HERMES_LEDGER_DB", None)
    proc = subprocess.Popen(
        [installed_script(), "serve", "--db", str(path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = next_line(proc)
        match = re.search(r"read-only at (http://127\.0\.0\.1:\d+/ledger) ", line)
        assert match, line
        yield Served(proc, match.group(1), path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("hermes-ledger serve did not stop on SIGTERM")
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_pages_show_tables_with_their_descriptions(served: Served) -> None:
    status, page = served.get("")
    assert status == 200
    assert "session_history" in page and "session_map" in page and "messages" in page
    status, page = served.get("/session_map")
    assert status == 200
    assert "One row per session key" in page and "agent:main:telegram:dm:99" in page
    status, page = served.get("/messages")
    assert status == 200
    assert 'name="_search"' in page  # Datasette found the full-text index
    assert "where is the invoice?" in page


def test_a_canned_query_with_a_parameter_as_json(served: Served) -> None:
    rows = served.json("/transcript.json", session_id="s1", _shape="array")
    assert rows == [
        {"role": "user", "content": "where is the invoice?", "tool_name": None,
         "tool_call_id": None},
        {"role": "assistant", "content": "attached, page two", "tool_name": None,
         "tool_call_id": None},
    ]  # fmt: skip
    # a named report: an empty field is a condition turned off, a filled one applies
    resets = served.json("/resets-by-user.json", user="u1", since="", _shape="array")
    assert [(r["session_id"], r["trigger"]) for r in resets] == [("s1", "/new")]
    assert served.json("/resets-by-user.json", user="u2", _shape="array") == []
    ends = served.json("/end-reasons.json", platform="telegram", _shape="array")
    assert [(r["end_reason"], r["sessions"]) for r in ends] == [("manual_reset", 1)]


def test_a_transcript_search(served: Served) -> None:
    rows = served.json("/messages.json", _search="invoice", _shape="array")
    assert [(r["session_id"], r["content"]) for r in rows] == [("s1", "where is the invoice?")]
    assert served.json("/messages.json", _search="nowhere", _shape="array") == []


def test_an_append_by_another_process_shows_on_the_next_request(served: Served) -> None:
    """The ledger is served live, WAL included (not as --immutable would)."""
    with Ledger.open(served.path) as led:
        projections.attach(led)
        led.append(
            OTHER,
            [
                SessionStarted(session_id="s2", source=Source(platform="discord", chat_id="7")),
                MessageAppended(session_id="s2", role="user", content="zeppelin schedule"),
            ],
        )
        rows = served.json("/messages.json", _search="zeppelin", _shape="array")
    assert [r["session_id"] for r in rows] == ["s2"]


def test_arbitrary_sql_is_read_only(served: Served) -> None:
    status, body = served.get(".json", sql="DELETE FROM session_map")
    assert status == 400 and "must be a SELECT" in body
    assert served.json("/session_map.json", _shape="array")  # still there


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="needs Debian's chromium: apt-get install -y --no-install-recommends chromium"
    " (.ci/run installs it)",
)
def test_a_screenshot_of_the_session_page(served: Served, tmp_path: Path) -> None:
    shot = tmp_path / "session.png"
    done = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
            "--window-size=1280,900", f"{served.url}/session_history/s1",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000, len(data)  # a rendered page, not a blank one


def test_a_host_other_machines_reach_is_refused_without_allow_remote(cli, db_path: Path) -> None:
    make_ledger(db_path)
    result = cli("serve", "--db", str(db_path), "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert "'0.0.0.0' is not a loopback address" in result.output
    assert "--allow-remote" in result.output


def test_no_ledger_is_an_error(cli, tmp_path: Path) -> None:
    result = cli("serve", "--db", str(tmp_path / "missing.db"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert not (tmp_path / "missing.db").exists()


def test_without_the_web_extra_it_says_how_to_install_it(
    cli, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_ledger(db_path)
    monkeypatch.setitem(sys.modules, "datasette", None)  # as if it were not installed
    result = cli("serve", "--db", str(db_path))
    assert result.exit_code == 1
    assert "serve needs Datasette, which is not installed" in result.output
    assert "Try: pip install 'hermes-ledger[web]'" in result.output


def test_every_projection_column_is_described_in_the_metadata() -> None:
    tables = build_metadata()["databases"]["ledger"]["tables"]
    for projection in PROJECTIONS:
        for spec in projection.data_tables:
            assert tables[spec.name]["description"]
            assert list(tables[spec.name]["columns"]) == list(spec.columns), spec.name


def test_the_canned_queries_are_the_named_reports_and_the_queries_of_docs_sql_md() -> None:
    documented = dict(re.findall(r"```sql\n-- name: (\w+)\n(.*?)\n```", DOC.read_text(), re.S))
    for query in DOC_QUERIES:  # each, text for text, the docs' query of its name
        assert documented.get(query.name) == query.sql, query.name
    assert len(DOC_QUERIES) >= 10
    queries = build_metadata()["databases"]["ledger"]["queries"]
    assert set(queries) == set(REPORTS) | {q.name for q in DOC_QUERIES}
    assert queries["idle_expiries_in_window"]["params"] == ["since", "until"]
    assert queries["full_text_search"]["params"] == ["query"]
    assert queries["unflushed-ends"]["params"] == ["since", "until", "platform", "limit"]
    assert "LIMIT coalesce(nullif(:limit, ''), 1000)" in queries["unflushed-ends"]["sql"]


# -- a PostgreSQL ledger: a read-only SQLite snapshot taken at start ---------------------


def test_serve_on_postgres_serves_a_snapshot_and_removes_it(tmp_path: Path) -> None:
    """The installed script on a ``postgresql://`` ledger: the banner says it is a
    snapshot; the pages and canned queries are the SQLite ledger's, on the same
    events; an append made after the start is not shown; the snapshot is owner-only
    in a directory of its own, removed when serve stops (SIGTERM)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with fresh_database() as dsn:
        uri = pg_uri(dsn)
        with PostgresLog.open(uri) as log:
            pg_projections.attach(log)
            log.append(KEY, make_events())
        env = {**os.environ, "HERMES_HOME": str(tmp_path / "home"), "TMPDIR": str(scratch)}
        env.pop("HERMES_LEDGER_DB", None)
        proc = subprocess.Popen(
            [installed_script(), "serve", "--db", uri, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            line = next_line(proc)
            assert line.startswith(
                f"Serving a snapshot of {describe_dsn(uri)} (PostgreSQL, up to position 6, taken "
            ), line
            match = re.search(r"read-only at (http://127\.0\.0\.1:\d+/ledger) ", line)
            assert match, line
            note = next_line(proc)
            assert note.startswith("Note: Datasette reads SQLite only, so this is a SQLite copy")
            (directory,) = scratch.iterdir()
            assert directory.name.startswith("hermes-ledger-serve-")
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
            files = list(directory.iterdir())
            assert [f.name for f in files] == ["ledger-snapshot.db"]
            assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
            served = Served(proc, match.group(1), files[0])
            rows = served.json("/session_map.json", _shape="array")
            assert [(r["session_key"], r["status"]) for r in rows] == [(KEY, "closed")]
            found = served.json("/messages.json", _search="invoice", _shape="array")
            assert [r["content"] for r in found] == ["where is the invoice?"]
            report = served.json("/unflushed-ends.json", _shape="array")
            assert report == []  # the flush succeeded
            with PostgresLog.open(uri) as log:  # an append after the snapshot was taken
                log.append(
                    OTHER, [SessionStarted(session_id="s2", source=Source(platform="discord"))]
                )
            rows = served.json("/session_map.json", _shape="array")
            assert [r["session_key"] for r in rows] == [KEY]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert list(scratch.iterdir()) == []  # the snapshot went with the server


def test_serve_on_postgres_takes_no_snapshot_when_the_port_is_taken(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp makes it
    with fresh_database() as dsn, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("serve", "--db", pg_uri(dsn), "--port", str(port))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1 port {port}: ")
    assert list(scratch.iterdir()) == []


def test_serve_help_says_a_postgres_ledger_is_a_snapshot(cli: Any) -> None:
    result = cli("serve", "--help")
    assert "On a PostgreSQL ledger (--db postgresql://…) Datasette, which reads SQLite" in (
        result.output
    )


def test_serve_on_an_unreachable_postgres_says_so_and_leaves_nothing(
    tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mkdtemp makes it
    result = cli("serve", "--db", "postgresql://gw@127.0.0.1:1/nowhere", "--port", "0")
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot connect to PostgreSQL at 127.0.0.1:1/nowhere")
    assert "Try: " in result.output and "Traceback" not in result.output
    assert list(scratch.iterdir()) == []  # the snapshot's directory was removed
