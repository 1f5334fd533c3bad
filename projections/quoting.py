"""Identifier quoting, and where a projection's tables live.

The same SQL builds the live tables, the fresh tables of a rebuild and the
scratch tables of ``verify``/``state_at``; only the table names differ. A
``Target`` turns a logical table name into a quoted, schema-qualified one, and
``quote_ident`` is the one helper that quotes interpolated identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LIVE", "NEXT", "SCRATCH", "Target", "quote_ident"]


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (``"a""b"`` for ``a"b``); refuses NUL characters."""
    if not name or "\x00" in name:
        raise ValueError(f"not a usable SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Target:
    """Tables named ``<name><suffix>`` in schema ``schema``."""

    schema: str
    suffix: str = ""

    def name(self, logical: str) -> str:
        """The unqualified table name, unquoted (``session_map__next``)."""
        return logical + self.suffix

    def bare(self, logical: str) -> str:
        """The quoted table name without its schema (for ``CREATE INDEX … ON``)."""
        return quote_ident(self.name(logical))

    def table(self, logical: str) -> str:
        """The quoted, schema-qualified table name."""
        return f"{quote_ident(self.schema)}.{self.bare(logical)}"

    def index(self, index_name: str) -> str:
        """A quoted, schema-qualified index name (index names are not suffixed)."""
        return f"{quote_ident(self.schema)}.{quote_ident(index_name)}"


LIVE = Target("main")
"""The live projection tables."""

NEXT = Target("main", "__next")
"""Fresh tables a rebuild fills before swapping them in."""

SCRATCH = Target("temp")
"""Private tables on a separate connection (verify, state_at)."""
