"""Erasure in the read models: the rows of erased events rewritten as a rebuild
would now write them.

``scrub`` is the scrubber ``attach`` registers with ``Ledger.add_scrubber``. It
runs inside the erasure's transaction, after the payloads are deleted, for the
positions in ``temp.erasing``; every value it writes is read from the log's
``data`` (which holds "[erased]" in place of each personal field), so the live
tables equal a rebuild's row for row. The full-text index gets an FTS5 'delete'
of each old text (external-content: the old text must be given), the new text,
and then an 'optimize', which merges every segment into one: a 'delete' alone
only adds a tombstone and leaves the old tokens readable in the older segments.
(FTS5's own 'secure-delete' option would avoid the merge, but a database using it
cannot be read by SQLite before 3.42, such as Datasette's 3.40.)

Idempotent: a row already as the log says is left alone, and re-running an
erasure finishes a scrub that did not commit (there is none: it is one
transaction with the erasure).
"""

from __future__ import annotations

import os

import apsw

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.erasure import ErasureReport, ErasureScope
from hermes_ledger.ledger.personal import ERASED as PERSONAL_ERASED
from hermes_ledger.ledger.sql import scalar
from hermes_ledger.projections.quoting import LIVE, Target, quote_ident
from hermes_ledger.projections.tables import MESSAGES, MESSAGES_FTS, SESSION_HISTORY, SESSION_MAP

__all__ = [
    "ERASED",
    "SCRUBBED_FLUSHES",
    "SCRUBBED_FLUSH_STATUSES",
    "SCRUBBED_MAP_COLUMNS",
    "SCRUBBED_MESSAGE_COLUMNS",
    "SCRUBBED_START_COLUMNS",
    "erase_ledger",
    "scrub",
    "scrub_target",
]

# What an erasure rewrites in the read models, on every backend (SQLite below;
# PostgreSQL in projections/postgres/erasing.py, computing each value with the
# projector's own rules): the columns of an erased event's rows, each set to what a
# rebuild now writes from the log (which holds "[erased]" in each personal field).
SCRUBBED_MESSAGE_COLUMNS = ("content", "user_name", "tool_calls")
"""``messages`` columns of an erased ``message_appended`` (and its full-text index)."""
SCRUBBED_START_COLUMNS = ("user_name",)
"""``session_history`` columns of an erased ``session_started``."""
SCRUBBED_MAP_COLUMNS = ("chat_name", "user_name", "origin", "display_name")
"""``session_map`` columns of the key whose current session's start was erased."""
SCRUBBED_FLUSHES = ("memory_flushed", "memory_flush_failed")
SCRUBBED_FLUSH_STATUSES = ("ok", "failed")
"""A session with an erased flush event of ``SCRUBBED_FLUSHES`` whose history row
has one of these statuses gets ``flush_detail`` = ``ERASED`` (when it has one)."""
ERASED = PERSONAL_ERASED

_PICK = """CREATE TEMP TABLE IF NOT EXISTS scrubbing (position INTEGER PRIMARY KEY, content TEXT)"""
_CLEAR = "DELETE FROM temp.scrubbing"
_TABLE_EXISTS = "SELECT count(*) FROM {schema}.sqlite_schema WHERE type = 'table' AND name = ?"

_MESSAGES_STALE = """INSERT INTO temp.scrubbing (position, content)
SELECT m.position, m.content FROM {messages} AS m
JOIN main.events AS e ON e.position = m.position
WHERE m.position IN (SELECT position FROM temp.erasing)
    AND (m.content IS NOT (e.data ->> '$.content')
        OR m.user_name IS NOT (e.data ->> '$.user_name')
        OR m.tool_calls IS NOT nullif(e.data -> '$.tool_calls', 'null'))"""
_FTS_DELETE = """INSERT INTO {fts} ({fts_name}, rowid, content)
SELECT 'delete', position, content FROM temp.scrubbing WHERE content IS NOT NULL"""
_MESSAGES_REWRITE = """UPDATE {messages} AS m SET
    content = e.data ->> '$.content', user_name = e.data ->> '$.user_name',
    tool_calls = nullif(e.data -> '$.tool_calls', 'null')
FROM main.events AS e
WHERE e.position = m.position AND m.position IN (SELECT position FROM temp.scrubbing)"""
_FTS_INSERT = """INSERT INTO {fts} (rowid, content)
SELECT m.position, m.content FROM {messages} AS m
WHERE m.position IN (SELECT position FROM temp.scrubbing) AND m.content IS NOT NULL"""
_FTS_OPTIMIZE = "INSERT INTO {fts} ({fts_name}) VALUES ('optimize')"

_HISTORY_STARTS = """UPDATE {history} AS h SET user_name = e.data ->> '$.source.user_name'
FROM main.events AS e
WHERE e.position IN (SELECT position FROM temp.erasing) AND e.type = 'session_started'
    AND h.session_id = e.session_id AND h.user_name IS NOT (e.data ->> '$.source.user_name')"""
_HISTORY_FLUSHES = f"""UPDATE {{history}} SET flush_detail = '{ERASED}'
WHERE flush_status IN {SCRUBBED_FLUSH_STATUSES!r} AND flush_detail IS NOT NULL
    AND flush_detail <> '{ERASED}'
    AND session_id IN (SELECT e.session_id FROM main.events AS e
        WHERE e.position IN (SELECT position FROM temp.erasing)
        AND e.type IN {SCRUBBED_FLUSHES!r})"""
_MAP_STARTS = """UPDATE {map} AS m SET
    chat_name = e.data ->> '$.source.chat_name', user_name = e.data ->> '$.source.user_name',
    origin = e.data -> '$.source',
    display_name = coalesce(e.data ->> '$.source.chat_name', e.data ->> '$.source.user_name',
        e.data ->> '$.source.user_id', e.data ->> '$.source.chat_id')
FROM main.events AS e
WHERE e.position IN (SELECT position FROM temp.erasing) AND e.type = 'session_started'
    AND m.session_id = e.session_id AND m.origin IS NOT (e.data -> '$.source')"""


def _exists(conn: apsw.Connection, target: Target, logical: str) -> bool:
    sql = _TABLE_EXISTS.format(schema=quote_ident(target.schema))
    return bool(scalar(conn, sql, (target.name(logical),)))


def scrub_target(conn: apsw.Connection, target: Target) -> int:
    """Rewrite ``target``'s rows of the events in ``temp.erasing``; returns how many
    transcript rows changed (the full-text index is optimized when any did)."""
    names = {
        "messages": target.table(MESSAGES.name),
        "fts": target.table(MESSAGES_FTS.name),
        "fts_name": target.bare(MESSAGES_FTS.name),
        "history": target.table(SESSION_HISTORY.name),
        "map": target.table(SESSION_MAP.name),
    }
    changed = 0
    if _exists(conn, target, SESSION_HISTORY.name):
        conn.execute(_HISTORY_STARTS.format(**names))
        conn.execute(_HISTORY_FLUSHES.format(**names))
    if _exists(conn, target, SESSION_MAP.name):
        conn.execute(_MAP_STARTS.format(**names))
    if _exists(conn, target, MESSAGES.name):
        conn.execute(_PICK)
        conn.execute(_CLEAR)
        conn.execute(_MESSAGES_STALE.format(**names))
        changed = int(scalar(conn, "SELECT count(*) FROM temp.scrubbing"))
        if changed:
            has_fts = _exists(conn, target, MESSAGES_FTS.name)
            if has_fts:
                conn.execute(_FTS_DELETE.format(**names))
            conn.execute(_MESSAGES_REWRITE.format(**names))
            if has_fts:
                conn.execute(_FTS_INSERT.format(**names))
                conn.execute(_FTS_OPTIMIZE.format(**names))
        conn.execute(_CLEAR)
    return changed


def scrub(conn: apsw.Connection) -> None:
    """The live projections' scrubber (see the module docstring)."""
    scrub_target(conn, LIVE)


def erase_ledger(
    path: str | os.PathLike[str], scope: ErasureScope, *, requested_by: str, dry_run: bool = True
) -> ErasureReport:
    """``Ledger.erase`` on the existing ledger at ``path`` with its projections
    attached (caught up first), so that their rows are scrubbed in the same
    transaction. A dry run opens the file read-only and changes nothing."""
    if dry_run:
        with Ledger.open_existing(path, readonly=True) as led:
            return led.erase(scope, requested_by=requested_by, dry_run=True)
    from hermes_ledger.projections.inline import attach

    with Ledger.open_existing(path) as led:
        attach(led)
        return led.erase(scope, requested_by=requested_by, dry_run=False)
