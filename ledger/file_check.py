"""Checking a ledger file around its chain: every trigger and index the migrations
create is present with the migration's definition, and SQLite's own check of the
pages (``PRAGMA integrity_check``, or ``quick_check`` on large files)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import apsw

from hermes_ledger.ledger.records import FileReport
from hermes_ledger.ledger.schema import load_migrations
from hermes_ledger.ledger.sql import scalar

__all__ = ["FULL_CHECK_LIMIT", "check_file"]

FULL_CHECK_LIMIT = 1 << 30
"""Files larger than this (1 GiB, with the WAL) get ``PRAGMA quick_check`` by default."""

SQL_SCHEMA_OBJECTS = (
    "SELECT type, name, sql FROM sqlite_schema"
    " WHERE type IN ('trigger', 'index') AND sql IS NOT NULL"
)


def _normal(sql: str) -> str:
    return " ".join(sql.split())


def _file_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


_EXPECTED: dict[int, dict[tuple[str, str], str]] = {}


def _expected_schema(version: int) -> dict[tuple[str, str], str]:
    """The triggers and indexes the first ``version`` shipped migrations create,
    read back from a scratch in-memory database (so SQLite's own normalisation of
    the stored text applies to both sides)."""
    if version not in _EXPECTED:
        scratch = apsw.Connection(":memory:")
        try:
            for migration in load_migrations()[:version]:
                for _ in scratch.execute(migration.sql):
                    pass
            _EXPECTED[version] = {
                (kind, name): _normal(sql)
                for kind, name, sql in scratch.execute(SQL_SCHEMA_OBJECTS)
            }
        finally:
            scratch.close()
    return _EXPECTED[version]


def check_file(conn: apsw.Connection, path: Path, *, quick: bool | None = None) -> FileReport:
    """The file around the chain: every trigger and index the migrations create
    is present with the migration's definition, and SQLite's check of the pages.

    ``quick`` runs ``PRAGMA quick_check`` (no index-against-table check) instead
    of ``integrity_check``; by default it is chosen for files larger than
    ``FULL_CHECK_LIMIT`` bytes. Driver errors (a page too damaged to read) are
    reported as integrity failures, not raised.
    """
    try:
        version = int(scalar(conn, "PRAGMA user_version"))
        expected = _expected_schema(version)
        found = {(kind, name): _normal(sql) for kind, name, sql in conn.execute(SQL_SCHEMA_OBJECTS)}
    except apsw.Error as exc:
        expected, found = {}, {}
        schema_error: str | None = f"the schema could not be read: {exc}"
    else:
        schema_error = None
    missing = tuple(f"{k} {n}" for (k, n) in expected if (k, n) not in found)
    changed = tuple(
        f"{k} {n}" for (k, n), sql in expected.items()
        if (k, n) in found and found[(k, n)] != sql
    )  # fmt: skip
    if quick is None:
        quick = _file_size(path) > FULL_CHECK_LIMIT
    mode = "quick_check" if quick else "integrity_check"
    try:
        messages = [str(row[0]) for row in conn.execute(f"PRAGMA {mode}")]
    except apsw.Error as exc:
        messages = [f"{type(exc).__name__}: {exc}"]
    if messages == ["ok"]:
        messages = []
    if schema_error is not None:
        messages.insert(0, schema_error)
    return FileReport(
        expected=tuple(f"{k} {n}" for (k, n) in expected),
        missing=missing,
        changed=changed,
        integrity_mode=mode,
        integrity=tuple(messages),
    )
