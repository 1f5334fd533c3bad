"""The projection tables on PostgreSQL, derived from the SQLite definitions.

Each table's DDL is its ``TableSpec`` DDL (``projections.tables``, the transcript
columns from ``ledger.transcript``) with SQLite's dialect turned into
PostgreSQL's: ``INTEGER`` becomes ``BIGINT`` and ``STRICT`` goes; the columns, keys,
CHECKs and indexes are the same text. ``messages`` gains ``search_vector``, a
generated ``tsvector`` of its content under the ``hl_words`` text-search
configuration (``simple`` with ``unaccent`` when the extension is available: any
language, diacritics folded, like SQLite's ``unicode61 remove_diacritics 2``), with a
GIN index, and ``messages_content_trgm``, a GIN ``gin_trgm_ops`` index on the
``content`` of the messages holding a CJK character (``cjk.CJK_SQL``: the others
cost an append nothing) when ``pg_trgm`` is installed or may be created (a trusted
extension: the database owner may), which serves the substring match of CJK search
terms (``projections.postgres.search``); without it that match is a scan, with the
same rows. ``projection_checkpoints`` records each projection's version and applied
position; the inline projector updates it in the append's transaction.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg

from hermes_ledger.ledger.postgres.schema import READER_ROLE, SCHEMA, WRITER_ROLE
from hermes_ledger.ledger.transcript import TRANSCRIPT_SEARCHED
from hermes_ledger.projections.definitions import PROJECTIONS, Projection
from hermes_ledger.projections.postgres.cjk import CJK_SQL
from hermes_ledger.projections.quoting import Target, quote_ident
from hermes_ledger.projections.tables import MESSAGES, TableSpec

__all__ = [
    "DATA_TABLES",
    "LIVE",
    "NEXT",
    "SCRATCH",
    "SEARCH_CONFIG",
    "SEARCH_VECTOR",
    "TRIGRAM_INDEX",
    "create_tables",
    "ensure_bookkeeping",
    "ensure_search_config",
    "ensure_trigram",
    "read_checkpoints",
    "save_checkpoint",
    "swap_in",
    "table_ddl",
    "tables_exist",
]

Connection = psycopg.Connection[Any]

_log = logging.getLogger(__name__)

LIVE = Target(SCHEMA)
"""The live tables, beside the log."""
NEXT = Target(SCHEMA, "__next")
"""The fresh tables of a rebuild, renamed into place at its end."""
SCRATCH = Target("pg_temp")
"""Temporary tables of one transaction (verify, state_at)."""

DATA_TABLES: tuple[TableSpec, ...] = tuple(t for p in PROJECTIONS for t in p.data_tables)
"""The tables on PostgreSQL (SQLite's FTS5 index is ``messages.search_vector`` here)."""

SEARCH_CONFIG = f"{SCHEMA}.hl_words"
"""The text-search configuration of ``messages.search_vector`` and of the queries."""
SEARCH_VECTOR = "search_vector"
"""The generated ``tsvector`` column of ``messages``."""

TRIGRAM_INDEX = "messages_content_trgm"
"""The trigram index on ``messages.content`` of the messages holding a CJK
character (when ``pg_trgm`` is there)."""

SQL_CONFIG_EXISTS = (
    "SELECT count(*) FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace"
    " WHERE n.nspname = %s AND c.cfgname = 'hl_words'"
)
SQL_CREATE_UNACCENT = f"CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA {SCHEMA}"
SQL_UNACCENT_DICTIONARY = (
    "SELECT quote_ident(n.nspname) || '.unaccent' FROM pg_ts_dict d"
    " JOIN pg_namespace n ON n.oid = d.dictnamespace WHERE d.dictname = 'unaccent' LIMIT 1"
)
SQL_CREATE_CONFIG = f"CREATE TEXT SEARCH CONFIGURATION {SEARCH_CONFIG} (COPY = pg_catalog.simple)"
SQL_MAP_UNACCENT = (
    f"ALTER TEXT SEARCH CONFIGURATION {SEARCH_CONFIG}"
    " ALTER MAPPING FOR word, hword, hword_part, asciiword, asciihword, hword_asciipart"
    " WITH {dictionary}, pg_catalog.simple"
)
SQL_CREATE_TRIGRAM = f"CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA {SCHEMA}"
SQL_TRIGRAM_OPCLASS = (
    "SELECT quote_ident(n.nspname) || '.gin_trgm_ops' FROM pg_opclass o"
    " JOIN pg_namespace n ON n.oid = o.opcnamespace JOIN pg_am a ON a.oid = o.opcmethod"
    " WHERE o.opcname = 'gin_trgm_ops' AND a.amname = 'gin' LIMIT 1"
)
SQL_CHECKPOINTS_DDL = f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.projection_checkpoints (
    name     TEXT PRIMARY KEY,
    version  INTEGER NOT NULL CHECK (version >= 1),
    position BIGINT NOT NULL CHECK (position >= 0)
)"""
SQL_READ_CHECKPOINTS = f"SELECT name, version, position FROM {SCHEMA}.projection_checkpoints"
SQL_SAVE_CHECKPOINT = (
    f"INSERT INTO {SCHEMA}.projection_checkpoints (name, version, position) VALUES (%s, %s, %s)"
    " ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = EXCLUDED.position"
)
SQL_TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
SQL_GRANT = "GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO " + WRITER_ROLE
# Migration 6's default privileges cover tables the migrating role creates; this covers
# a rebuild run by another (a superuser).
SQL_GRANT_READ = "GRANT SELECT ON {tables} TO " + READER_ROLE
SQL_DROP = "DROP TABLE IF EXISTS {table}"
SQL_RENAME = "ALTER TABLE {table} RENAME TO {name}"
SQL_INDEXES_OF = (
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE i.indrelid = %s::regclass"
)
SQL_RENAME_INDEX = "ALTER INDEX {schema}.{index} RENAME TO {name}"

_INTEGER = re.compile(r"\bINTEGER\b")


def table_ddl(table: TableSpec, target: Target) -> str:
    """``CREATE TABLE`` for ``table`` at ``target``: the SQLite DDL in PostgreSQL's
    dialect (and, for messages, the generated search vector)."""
    ddl = _INTEGER.sub("BIGINT", table.create_sql(target)).removesuffix(" STRICT")
    if table.name == MESSAGES.name:
        vector = (
            f"    {SEARCH_VECTOR} tsvector GENERATED ALWAYS AS"
            f" (to_tsvector('{SEARCH_CONFIG}'::regconfig,"
            f" coalesce({quote_ident(TRANSCRIPT_SEARCHED)}, ''))) STORED"
        )
        ddl = ddl.removesuffix(")").rstrip() + ",\n" + vector + "\n)"
    return ddl


def _index_ddl(table: TableSpec, target: Target, trigram_ops: str | None) -> list[str]:
    out = [
        f"CREATE INDEX {quote_ident(name + target.suffix)} ON {target.table(table.name)} {spec}"
        for name, spec in table.indexes
    ]
    if table.name == MESSAGES.name:
        name = quote_ident(f"messages_search{target.suffix}")
        out.append(f"CREATE INDEX {name} ON {target.table(table.name)} USING gin ({SEARCH_VECTOR})")
        if trigram_ops is not None:
            name = quote_ident(TRIGRAM_INDEX + target.suffix)
            column = quote_ident(TRANSCRIPT_SEARCHED)
            out.append(
                f"CREATE INDEX {name} ON {target.table(table.name)}"
                f" USING gin ({column} {trigram_ops}) WHERE {column} ~ {CJK_SQL}"
            )
    return out


def ensure_trigram(conn: Connection) -> str | None:
    """The qualified name of ``pg_trgm``'s ``gin_trgm_ops``, the extension created
    first if it is missing and this role may; None when it is not there (the CJK
    substring match then scans, with the same rows)."""
    try:
        with conn.transaction():
            conn.execute(SQL_CREATE_TRIGRAM)
    except psycopg.Error as exc:
        _log.debug("pg_trgm not created (%s): no trigram index on messages.content", exc)
    row = conn.execute(SQL_TRIGRAM_OPCLASS).fetchone()
    return None if row is None else str(row[0])


def ensure_search_config(conn: Connection) -> None:
    """Create the ``hl_words`` configuration if it is missing: ``simple`` (no stemming,
    no stop words: right for any language), with diacritics folded by ``unaccent``
    when that extension can be created (it is a trusted contrib extension)."""
    if conn.execute(SQL_CONFIG_EXISTS, (SCHEMA,)).fetchone()[0]:  # type: ignore[index]
        return
    dictionary = None
    try:
        with conn.transaction():
            conn.execute(SQL_CREATE_UNACCENT)
    except psycopg.Error:
        pass  # not installed on this server, or not allowed: words keep their accents
    row = conn.execute(SQL_UNACCENT_DICTIONARY).fetchone()
    if row is not None:
        dictionary = row[0]
    conn.execute(SQL_CREATE_CONFIG)
    if dictionary is not None:
        conn.execute(SQL_MAP_UNACCENT.format(dictionary=dictionary))


def ensure_bookkeeping(conn: Connection) -> None:
    """The checkpoint table and the search configuration, if missing."""
    conn.execute(SQL_CHECKPOINTS_DDL)
    conn.execute(SQL_GRANT.format(tables=f"{SCHEMA}.projection_checkpoints"))
    conn.execute(SQL_GRANT_READ.format(tables=f"{SCHEMA}.projection_checkpoints"))
    ensure_search_config(conn)


def tables_exist(conn: Connection, target: Target = LIVE) -> bool:
    """True when every projection table exists at ``target``."""
    return all(
        conn.execute(SQL_TABLE_EXISTS, (target.table(t.name),)).fetchone()[0]  # type: ignore[index]
        for t in DATA_TABLES
    )


def create_tables(
    conn: Connection, projections: tuple[Projection, ...], target: Target, *, indexes: bool = True
) -> None:
    """Create the tables of ``projections`` at ``target`` (with their indexes, and
    for schema targets the writer role's grants), and the search configuration
    ``messages`` needs if it is missing (as ``state_at`` on a log never attached);
    with indexes, ``pg_trgm`` too when it may be created (``ensure_trigram``)."""
    tables = [t for p in projections for t in p.data_tables]
    trigram_ops = None
    if any(t.name == MESSAGES.name for t in tables):
        ensure_search_config(conn)  # its search vector needs it (a log never attached lacks it)
        if indexes:
            trigram_ops = ensure_trigram(conn)
    for table in tables:
        conn.execute(table_ddl(table, target))
        if indexes:
            for sql in _index_ddl(table, target, trigram_ops):
                conn.execute(sql)
    if target.schema != SCRATCH.schema:
        names = ", ".join(target.table(t.name) for t in tables)
        conn.execute(SQL_GRANT.format(tables=names))
        conn.execute(SQL_GRANT_READ.format(tables=names))


def swap_in(conn: Connection, projections: tuple[Projection, ...]) -> None:
    """Replace the live tables of ``projections`` by the fresh (``NEXT``) ones, their
    indexes renamed to the live names (inside the caller's transaction)."""
    for table in (t for p in projections for t in p.data_tables):
        conn.execute(SQL_DROP.format(table=LIVE.table(table.name)))
        fresh = NEXT.table(table.name)
        for (index,) in conn.execute(SQL_INDEXES_OF, (fresh,)).fetchall():
            conn.execute(
                SQL_RENAME_INDEX.format(
                    schema=quote_ident(SCHEMA),
                    index=quote_ident(index),
                    name=quote_ident(index.replace(NEXT.suffix, "")),
                )
            )
        conn.execute(SQL_RENAME.format(table=fresh, name=LIVE.bare(table.name)))


def read_checkpoints(conn: Connection) -> dict[str, tuple[int, int]]:
    """Projection name -> (schema version, applied position)."""
    if not conn.execute(SQL_TABLE_EXISTS, (f"{SCHEMA}.projection_checkpoints",)).fetchone()[0]:  # type: ignore[index]
        return {}
    return {name: (v, p) for name, v, p in conn.execute(SQL_READ_CHECKPOINTS).fetchall()}


def save_checkpoint(conn: Connection, projection: Projection, position: int) -> None:
    conn.execute(SQL_SAVE_CHECKPOINT, (projection.name, projection.version, position))
