"""Migration 5: an append's read under the lock stays one index entry on a
long-lived connection (hl_append_state reads the stream's version as the top of
the (stream, version) index, whatever plan PL/pgSQL cached while the log was
small), and hl_utc_text is STRICT (occurred_at of a body without a business time
needs no PL/pgSQL call) with the same results.

The plans are the server's own, reported by auto_explain (with row counts) as
notices to this connection; nothing is timed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from pg_support import fresh_database

from hermes_ledger.ledger.events import MessageAppended
from hermes_ledger.ledger.postgres import PostgresLog

STREAM = "agent:main:telegram:dm:1"


@pytest.fixture
def log() -> Iterator[PostgresLog]:
    with fresh_database() as dsn, PostgresLog.open(dsn) as opened:
        yield opened


def _message(n: int) -> MessageAppended:
    return MessageAppended(session_id="s1", role="user", content=f"message {n}")


def _nested_plans(conn: psycopg.Connection, notices: list[str]) -> None:
    conn.execute("LOAD 'auto_explain'")
    for setting, value in (("log_min_duration", "0"), ("log_nested_statements", "on"),
                           ("log_analyze", "on"), ("log_level", "notice")):  # fmt: skip
        conn.execute(f"SET auto_explain.{setting} = {value}")
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))


def test_the_version_read_takes_one_index_entry_however_long_the_stream(
    log: PostgresLog,
) -> None:
    for n in range(8):  # PL/pgSQL settles on a cached plan after five calls
        log.append(STREAM, [_message(n)])
    log.append(STREAM, [_message(n) for n in range(8, 2008)])  # the stream grows long
    notices: list[str] = []
    _nested_plans(log.connection, notices)

    result = log.append(STREAM, [_message(2008)])

    assert result.positions == (2009,) and result.version == 2009
    plans = [text for text in notices if "p_stream" in text]
    assert len(plans) == 1, notices
    rows = [int(n) for n in re.findall(r"actual time=\S+ rows=(\d+)", plans[0])]
    assert rows and max(rows) == 1, plans[0]  # not the stream's 2,008 index entries
    assert log.verify().ok


def test_occurred_at_skips_plpgsql_for_bodies_without_a_business_time(log: PostgresLog) -> None:
    when = datetime(2026, 5, 22, 12, 15, 1, 250000, tzinfo=timezone(timedelta(hours=2)))
    timed_message = MessageAppended(session_id="s1", role="user", content="t", occurred_at=when)
    log.append(STREAM, [_message(0), timed_message])
    conn = log.connection
    strict = conn.execute("SELECT proisstrict FROM pg_proc WHERE proname = 'hl_utc_text'")
    assert strict.fetchone() == (True,)
    rows = conn.execute("SELECT occurred_at, recorded_at FROM events ORDER BY position")
    (plain, recorded), (timed, _) = rows.fetchall()
    assert plain == recorded  # no business time: recorded_at, as before
    assert timed == "2026-05-22T10:15:01.250000Z"
    assert conn.execute("SELECT hl_utc_text(NULL)").fetchone() == (None,)
