"""The transcripts' full-text index is one sqlite-utils and Datasette can see: a
real ledger file, ``detect_fts()`` of both, a search through each, after a
rebuild, after the upgrade from the old declaration; and verify's line for it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from hermes_ledger import projections
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source
from hermes_ledger.projections.definitions import TRANSCRIPTS

KEY = "agent:main:telegram:dm:99"
OLD_DDL = """CREATE VIRTUAL TABLE "messages_fts" USING fts5(
    content,
    content='messages',
    content_rowid='position',
    tokenize='unicode61 remove_diacritics 2'
)"""
"""How messages_fts was declared before: ``content='messages'``, which neither
sqlite-utils nor Datasette recognises."""


def make_ledger(path: Path) -> Path:
    with Ledger.open(path) as led:
        projections.attach(led)
        led.append(
            KEY,
            [
                SessionStarted(session_id="s1", source=Source(platform="telegram", chat_id="99")),
                MessageAppended(session_id="s1", role="user", content="the café is closed"),
                MessageAppended(session_id="s1", role="assistant", content="try the kiosk"),
            ],
        )
    return path


def test_sqlite_utils_detects_and_searches_the_index(tmp_path: Path) -> None:
    db = sqlite_utils.Database(make_ledger(tmp_path / "ledger.db"))
    try:
        messages = db.table("messages")
        assert messages.detect_fts() == "messages_fts"
        found = list(messages.search("cafe"))  # diacritics folded, as the tokenizer says
        assert [row["content"] for row in found] == ["the café is closed"]
    finally:
        db.close()


def test_datasette_detects_the_index(tmp_path: Path) -> None:
    from datasette.utils import detect_fts

    from hermes_ledger.gateway.web.server import build_datasette

    path = make_ledger(tmp_path / "ledger.db")
    conn = sqlite3.connect(path)
    try:
        assert detect_fts(conn, "messages") == "messages_fts"
    finally:
        conn.close()
    ds = build_datasette(path)
    assert asyncio.run(ds.get_database("ledger").fts_table("messages")) == "messages_fts"


def test_the_index_is_still_detected_after_a_rebuild(tmp_path: Path) -> None:
    path = make_ledger(tmp_path / "ledger.db")
    with Ledger.open(path) as led:
        projections.rebuild(led)
    db = sqlite_utils.Database(path)
    try:
        assert db.table("messages").detect_fts() == "messages_fts"
        assert [r["content"] for r in db.table("messages").search("kiosk")] == ["try the kiosk"]
    finally:
        db.close()


def test_a_ledger_with_the_old_declaration_is_rebuilt_into_the_new(tmp_path: Path) -> None:
    path = make_ledger(tmp_path / "ledger.db")
    with Ledger.open(path) as led:  # as a ledger of the previous version left it
        conn = led.connection
        conn.execute("DROP TABLE messages_fts")
        conn.execute(OLD_DDL)
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
        conn.execute("UPDATE projection_checkpoints SET version = 1 WHERE name = 'transcripts'")
    db = sqlite_utils.Database(path)
    assert db.table("messages").detect_fts() is None
    db.close()
    assert TRANSCRIPTS.version > 1
    with Ledger.open(path) as led:
        projections.attach(led)
        assert projections.verify(led).ok
    db = sqlite_utils.Database(path)
    try:
        assert db.table("messages").detect_fts() == "messages_fts"
    finally:
        db.close()


@pytest.mark.usefixtures("hermes_home")
def test_verify_counts_the_index_in_terms_not_as_rows(tmp_path: Path, cli) -> None:
    path = make_ledger(tmp_path / "ledger.db")
    result = cli("verify", "--db", str(path))
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("projections:"))
    # the, cafe (folded), is, closed, try, kiosk: the index's terms, not a row count
    # beside the tables' (it used to read "2 messages, 6 messages_fts", a mismatch)
    assert line.endswith(
        "(sessions at 3, transcripts at 3; rows: 1 session_history, 1 session_map,"
        " 2 messages; full-text index messages_fts: 6 distinct terms)"
    )
