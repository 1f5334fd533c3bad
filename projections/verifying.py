"""Verify: rebuild into scratch tables and compare with the live ones, row for row.

Each projection is replayed up to the position its live checkpoint records, in
the same read snapshot as the live tables, so a live projection that is exactly
what the log implies compares equal even while appends go on. Every difference
is reported with its table, key, column and both values. The full-text index is
compared through its vocabulary (term, documents, occurrences).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.sql import scalar
from hermes_ledger.projections.definitions import Projection, by_name
from hermes_ledger.projections.quoting import LIVE, SCRATCH, quote_ident
from hermes_ledger.projections.rebuilding import DEFAULT_CHUNK
from hermes_ledger.projections.replay import (
    create_tables,
    head,
    read_checkpoints,
    replay_chunks,
    table_exists,
)
from hermes_ledger.projections.scratch import snapshot
from hermes_ledger.projections.tables import TableSpec

__all__ = ["Difference", "VerifyReport", "verify"]

_SHOWN = 50


@dataclass(frozen=True)
class Difference:
    """One way the live projections differ from a replay of the log.

    ``kind``: ``changed`` (same key, ``column`` differs: ``live`` vs ``rebuilt``),
    ``extra`` (a live row the replay does not produce), ``missing`` (a replayed row
    the live table lacks), or ``projection`` (it could not be compared: ``live``
    says why).
    """

    table: str
    kind: str
    key: Any = None
    column: str | None = None
    live: Any = None
    rebuilt: Any = None

    def __str__(self) -> str:
        where = f"{self.table}[{self.key!r}]"
        if self.kind == "changed":
            return f"{where}.{self.column}: live {self.live!r}, rebuilt {self.rebuilt!r}"
        if self.kind == "extra":
            return f"{where}: only in the live table: {self.live!r}"
        if self.kind == "missing":
            return f"{where}: missing from the live table; rebuilt: {self.rebuilt!r}"
        return f"{self.table}: {self.live}"


@dataclass(frozen=True)
class VerifyReport:
    """``ok`` when every live projection equals its replay. ``positions`` are the
    live checkpoints compared at, ``head`` the log's last position, ``rows`` the
    number of replayed rows per table, ``terms`` the number of distinct terms per
    full-text index (an index is compared by its vocabulary, not row for row, so
    its count is of terms, not of rows)."""

    ok: bool
    head: int
    positions: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    differences: tuple[Difference, ...] = ()
    terms: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        at = ", ".join(f"{name} at {pos}" for name, pos in self.positions.items())
        if self.ok:
            counts = "rows: " + ", ".join(f"{n} {t}" for t, n in self.rows.items())
            counts += "".join(
                f"; full-text index {t}: {n} distinct terms" for t, n in self.terms.items()
            )
            return f"ok: live projections equal a replay of the log ({at}; {counts})"
        lines = [f"FAILED: {len(self.differences)} differences ({at}, head {self.head})"]
        lines += [f"  {d}" for d in self.differences[:_SHOWN]]
        if len(self.differences) > _SHOWN:
            lines.append(f"  … and {len(self.differences) - _SHOWN} more")
        return "\n".join(lines)


def verify(
    ledger: Ledger,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
    projections: Sequence[Projection] | None = None,
) -> VerifyReport:
    """Replay the log into a scratch database and compare it with the live tables.

    Read-only: works while other processes append, and on read-only ledgers.
    ``projections`` are the definitions to check against (default: the code's,
    ``PROJECTIONS``); a test passes other versions.
    """
    differences: list[Difference] = []
    positions: dict[str, int] = {}
    rows: dict[str, int] = {}
    terms: dict[str, int] = {}
    with snapshot(ledger) as conn:
        checkpoints = read_checkpoints(conn)
        last = head(conn)
        for projection in by_name() if projections is None else projections:
            problem = _comparable(conn, projection, checkpoints)
            if problem is not None:
                differences.append(Difference(projection.name, "projection", live=problem))
                continue
            position = checkpoints[projection.name][1]
            positions[projection.name] = position
            create_tables(conn, projection, SCRATCH, indexes=False)
            replay_chunks(conn, (projection,), SCRATCH, 0, position, chunk_size, progress)
            for table in projection.tables:
                if table.fts:
                    found, count = _compare_fts(conn, table)
                    terms[table.name] = count
                else:
                    found, count = _compare_table(conn, table)
                    rows[table.name] = count
                differences += found
    return VerifyReport(not differences, last, positions, rows, tuple(differences), terms)


def _comparable(
    conn: apsw.Connection, projection: Projection, checkpoints: dict[str, tuple[int, int]]
) -> str | None:
    recorded = checkpoints.get(projection.name)
    if recorded is None:
        return "not attached: no checkpoint (attach the projections to the ledger)"
    if recorded[0] != projection.version:
        return (
            f"its tables are at schema version {recorded[0]}, this code builds version "
            f"{projection.version} (attach or rebuild with the matching version)"
        )
    missing = [t.name for t in projection.tables if not table_exists(conn, t.name)]
    if missing:
        return f"tables missing: {', '.join(missing)} (rebuild the projections)"
    return None


_EXCEPT = "SELECT {columns} FROM {a} EXCEPT SELECT {columns} FROM {b}"
"""Rows of ``a`` that ``b`` does not have (NULLs compare equal, as in every set operation)."""


def _compare_table(conn: apsw.Connection, table: TableSpec) -> tuple[list[Difference], int]:
    columns = table.columns
    listed = ", ".join(quote_ident(c) for c in columns)
    live, rebuilt = LIVE.table(table.name), SCRATCH.table(table.name)
    key = columns.index(table.key)
    sql = _EXCEPT.format(columns=listed, a=live, b=rebuilt)
    only_live = {row[key]: row for row in conn.execute(sql)}
    sql = _EXCEPT.format(columns=listed, a=rebuilt, b=live)
    only_rebuilt = {row[key]: row for row in conn.execute(sql)}
    found: list[Difference] = []
    for k in sorted(only_live.keys() | only_rebuilt.keys(), key=repr):
        a, b = only_live.get(k), only_rebuilt.get(k)
        if a is not None and b is not None:
            found += [
                Difference(table.name, "changed", k, column, x, y)
                for column, x, y in zip(columns, a, b, strict=True)
                if x != y or type(x) is not type(y)
            ]
        elif a is not None:
            found.append(Difference(table.name, "extra", k, live=_as_row(columns, a)))
        elif b is not None:
            found.append(Difference(table.name, "missing", k, rebuilt=_as_row(columns, b)))
    return found, int(scalar(conn, f"SELECT count(*) FROM {rebuilt}"))


def _as_row(columns: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(columns, values, strict=True))


def _compare_fts(conn: apsw.Connection, table: TableSpec) -> tuple[list[Difference], int]:
    """Compare the full-text indexes through fts5vocab (term, documents, occurrences);
    the count is of the replay's distinct terms."""
    vocab = {}
    for side, schema in (("live", "main"), ("rebuilt", "temp")):
        name = quote_ident(f"verify_{side}_{table.name}_vocab")
        conn.execute(
            f"CREATE VIRTUAL TABLE temp.{name} USING fts5vocab("
            f"{quote_ident(schema)}, {quote_ident(table.name)}, 'row')"
        )
        vocab[side] = f"temp.{name}"
    columns = "term, doc, cnt"
    found: list[Difference] = []
    sql = _EXCEPT.format(columns=columns, a=vocab["live"], b=vocab["rebuilt"])
    for term, docs, count in conn.execute(sql):
        found.append(Difference(table.name, "extra", term, live=_vocab(docs, count)))
    sql = _EXCEPT.format(columns=columns, a=vocab["rebuilt"], b=vocab["live"])
    for term, docs, count in conn.execute(sql):
        found.append(Difference(table.name, "missing", term, rebuilt=_vocab(docs, count)))
    return found, int(scalar(conn, f"SELECT count(*) FROM {vocab['rebuilt']}"))


def _vocab(documents: int, occurrences: int) -> dict[str, int]:
    return {"documents": documents, "occurrences": occurrences}
