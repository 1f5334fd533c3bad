"""``hermes-ledger vacuum`` on a PostgreSQL ledger: ``VACUUM (ANALYZE)`` of every
table in the ledger's schema, with the dead tuples and sizes before and after.

On SQLite, vacuum returns a file's free pages to the disk. On PostgreSQL the space
an UPDATE or DELETE leaves is a dead tuple (the projections' upserts, an erasure's
deleted payloads), kept in the table's pages until ``VACUUM`` marks it reusable; a
plain ``VACUUM`` does not give the pages back to the operating system (only at the
end of a table), ``VACUUM FULL`` would, by rewriting each table under an ACCESS
EXCLUSIVE lock, which this does not do. ``ANALYZE`` refreshes the planner's
statistics on the way.

Who may: on PostgreSQL 15, a table's owner, the database's owner or a superuser.
The tables this role may not vacuum are listed as skipped; when it may vacuum
none, ``vacuum_postgres`` refuses (LedgerError) and runs nothing. Each table is
vacuumed on its own (``VACUUM`` runs outside any transaction), after waiting at
most ``wait`` seconds for its lock (``lock_timeout``): ``VACUUM`` takes SHARE
UPDATE EXCLUSIVE, which the append lock (EXCLUSIVE on ``events``) conflicts with,
so appends wait while ``events`` is vacuumed, and an append in progress makes the
vacuum of ``events`` wait. The figures are the server's statistics
(``pg_stat_user_tables``, ``pg_total_relation_size``: table, TOAST and indexes,
with their free-space and visibility maps, which the first ``VACUUM`` of a table
creates: its size may grow a little).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.postgres.log import PostgresLog

__all__ = ["DEFAULT_VACUUM_WAIT", "PostgresVacuumReport", "TableSpace", "vacuum_postgres"]

DEFAULT_VACUUM_WAIT = 10.0
"""Seconds to wait for each table's lock before refusing."""

SCHEMA = "hermes_ledger"
SQL_TABLES = (
    "SELECT c.relname,"
    " pg_has_role(current_user, c.relowner, 'MEMBER')"
    "  OR pg_has_role(current_user, d.datdba, 'MEMBER')"
    "  OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " JOIN pg_database AS d ON d.datname = current_database()"
    " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')"
    ' ORDER BY c.relname COLLATE "C"'
)
SQL_SPACE = (
    "SELECT coalesce(s.n_dead_tup, 0), coalesce(s.n_live_tup, 0), pg_total_relation_size(c.oid)"
    " FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid"
    " WHERE n.nspname = %s AND c.relname = %s"
)
SQL_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %s, false)"
SQL_VACUUM = "VACUUM (ANALYZE) {}"


@dataclass(frozen=True)
class TableSpace:
    """One table's dead and live tuples and total size (bytes), before and after."""

    table: str
    dead_before: int
    dead_after: int
    live_after: int
    bytes_before: int
    bytes_after: int


@dataclass(frozen=True)
class PostgresVacuumReport:
    """What ``vacuum_postgres`` did: each vacuumed table's space, the tables the
    role may not vacuum, how long it took."""

    where: str
    tables: tuple[TableSpace, ...]
    skipped: tuple[str, ...]
    seconds: float
    warnings: tuple[str, ...] = field(default=())

    @property
    def dead_before(self) -> int:
        return sum(t.dead_before for t in self.tables)

    @property
    def dead_after(self) -> int:
        return sum(t.dead_after for t in self.tables)

    @property
    def bytes_before(self) -> int:
        return sum(t.bytes_before for t in self.tables)

    @property
    def bytes_after(self) -> int:
        return sum(t.bytes_after for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": "postgresql",
            "ledger": self.where,
            "tables": [asdict(t) for t in self.tables],
            "skipped": list(self.skipped),
            "dead_tuples_before": self.dead_before,
            "dead_tuples_after": self.dead_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
        }

    def summary(self) -> list[str]:
        n = len(self.tables)
        lines = [
            f"Vacuumed {self.where} (VACUUM (ANALYZE), {n} table{'' if n == 1 else 's'}) in"
            f" {self.seconds:.1f}s: {self.dead_before} dead tuples before, {self.dead_after}"
            f" after; {_size(self.bytes_before)} -> {_size(self.bytes_after)}"
        ]
        width = max((len(t.table) for t in self.tables), default=5)
        for t in self.tables:
            lines.append(
                f"  {t.table:<{width}}  dead {t.dead_before} -> {t.dead_after},"
                f" {_size(t.bytes_before)} -> {_size(t.bytes_after)}"
            )
        return lines


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _space(conn: psycopg.Connection[Any], table: str) -> tuple[int, int, int]:
    row = conn.execute(SQL_SPACE, (SCHEMA, table)).fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


def vacuum_postgres(log: PostgresLog, *, wait: float = DEFAULT_VACUUM_WAIT) -> PostgresVacuumReport:
    """``VACUUM (ANALYZE)`` each table of the ledger's schema this role may vacuum,
    waiting at most ``wait`` seconds for each one's lock (see the module)."""
    conn = log.connection
    started = time.monotonic()
    try:
        listed = [(str(name), bool(may)) for name, may in conn.execute(SQL_TABLES, (SCHEMA,))]
    except psycopg.Error as exc:
        raise LedgerError(
            f"cannot list the ledger's tables at {log.where}: {str(exc).strip()}",
            hint="check that this role may read the ledger",
        ) from None
    mine = [name for name, may in listed if may]
    skipped = tuple(name for name, may in listed if not may)
    if not mine:
        raise LedgerError(
            f"this role may not vacuum the ledger's tables at {log.where} (on PostgreSQL"
            " only a table's owner, the database's owner or a superuser may); nothing was done",
            hint="connect as the database's owner (the role that ran the migrations)",
        )
    before = {name: _space(conn, name) for name in mine}
    conn.execute(SQL_LOCK_TIMEOUT, (f"{max(1, round(wait * 1000))}ms",))
    try:
        for name in mine:
            try:
                conn.execute(sql.SQL(SQL_VACUUM).format(sql.Identifier(SCHEMA, name)))
            except psycopg.errors.LockNotAvailable:
                raise LedgerError(
                    f"{SCHEMA}.{name} stayed locked for more than {wait:g} s (a long append, a"
                    f" rebuild or DDL holds it); the tables before it were vacuumed",
                    hint="try again later, or give it longer with --wait SECONDS",
                ) from None
            except psycopg.Error as exc:
                raise LedgerError(
                    f"VACUUM of {SCHEMA}.{name} failed: {str(exc).strip()}",
                    hint="check the server's log",
                ) from None
    finally:
        conn.execute(SQL_LOCK_TIMEOUT, ("0",))
    tables = []
    for name in mine:
        dead, live, size = _space(conn, name)
        tables.append(TableSpace(name, before[name][0], dead, live, before[name][2], size))
    warnings = (
        (f"this role may not vacuum {', '.join(skipped)}: the owner must",) if skipped else ()
    )
    return PostgresVacuumReport(
        log.where, tuple(tables), skipped, round(time.monotonic() - started, 3), warnings
    )
