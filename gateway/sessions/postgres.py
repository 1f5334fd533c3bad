"""The commands' library on a PostgreSQL ledger (issue 14): open it with its
projections when they are there, verify the chain and the projections, rebuild
them, state at a position, and search. The CLI calls these with the connection
URI ``--db`` gave; everything goes through ``PostgresLog`` (an ``EventLog``) and
``projections.postgres``.

psycopg (the ``postgres`` extra) is imported when a function is called, so the CLI
starts without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hermes_ledger.ledger.backend import POSTGRES_HINT
from hermes_ledger.ledger.errors import LedgerError
from hermes_ledger.ledger.records import VerifyReport as ChainReport

if TYPE_CHECKING:
    from hermes_ledger.ledger.postgres import PostgresLog
    from hermes_ledger.projections import RebuildReport
    from hermes_ledger.projections import VerifyReport as ProjectionsReport
    from hermes_ledger.projections.postgres import MessageHit
    from hermes_ledger.projections.state import State

__all__ = [
    "PostgresVerifyReport",
    "has_projections",
    "open_postgres",
    "rebuild",
    "search",
    "state_at",
    "verify",
]

_HINT_CHAIN = (
    "the log was changed outside the ledger: restore the database from a backup, and keep"
    " this one as evidence"
)
_HINT_PROJECTIONS = "rebuild the projections with `hermes-ledger replay --db URI`"
_HINT_REPLAY = "create them with `hermes-ledger replay --db URI` (as the database owner)"


@contextmanager
def open_postgres(dsn: str, *, projections: bool = True) -> Iterator[PostgresLog]:
    """The PostgreSQL log at ``dsn``; with ``projections``, attached to them when
    their tables exist (caught up, and scrubbed by an erasure), never created."""
    try:
        from hermes_ledger.ledger.postgres import PostgresLog
    except ImportError:
        raise LedgerError(
            "a PostgreSQL ledger needs psycopg, which is not installed", hint=POSTGRES_HINT
        ) from None
    with PostgresLog.open(dsn) as log:
        if projections and has_projections(log):
            from hermes_ledger.projections import postgres as pg_projections

            pg_projections.attach(log)
        yield log


def has_projections(log: PostgresLog) -> bool:
    """Whether the projection tables exist in ``log``'s database."""
    from hermes_ledger.projections.postgres.tables import tables_exist

    return tables_exist(log.connection)


@dataclass(frozen=True)
class PostgresVerifyReport:
    """The chain and payloads; the projections against a replay (None when the
    database has none)."""

    chain: ChainReport
    projections: ProjectionsReport | None = None

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[tuple[str, str]]:
        """``(what is wrong, what to do)`` for each failed part."""
        found: list[tuple[str, str]] = []
        if not self.chain.ok:
            found.append((f"hash chain: {self.chain}", _HINT_CHAIN))
        if self.projections is not None and not self.projections.ok:
            first = str(self.projections).splitlines()[0]
            found.append((f"projections: {first}", _HINT_PROJECTIONS))
        return found

    def lines(self) -> list[str]:
        shown = (
            str(self.projections)
            if self.projections is not None
            else "not attached (none in this database; `replay` creates them)"
        )
        return [f"hash chain: {self.chain}", f"projections: {shown}"]

    def to_dict(self) -> dict[str, Any]:
        """The ``verify --json`` document: the SQLite one's chain and projection keys."""
        return {
            "ok": self.ok,
            "chain_ok": self.chain.ok,
            "first_bad_position": self.chain.first_bad_position,
            "chain_problem": self.chain.problem,
            "projections_ok": None if self.projections is None else self.projections.ok,
            "differences": []
            if self.projections is None
            else [str(d) for d in self.projections.differences],
            "head": self.chain.head,
            "backend": "postgresql",
        }


def verify(
    log: PostgresLog, *, progress: Callable[[int, int], None] | None = None
) -> PostgresVerifyReport:
    """The chain and payloads end to end, then the projections when there are any."""
    chain = log.verify(progress=progress)
    if not has_projections(log):
        return PostgresVerifyReport(chain)
    from hermes_ledger.projections import postgres as pg_projections

    return PostgresVerifyReport(chain, pg_projections.verify(log))


def rebuild(log: PostgresLog) -> RebuildReport:
    """Replay the log into fresh projection tables and swap them in."""
    from hermes_ledger.projections import postgres as pg_projections

    return pg_projections.rebuild(log)


def state_at(log: PostgresLog, position: int) -> State:
    """The projections as of ``position`` (a replay, nothing changed)."""
    from hermes_ledger.projections import postgres as pg_projections

    return pg_projections.state_at(log, position=position)


def search(
    log: PostgresLog,
    text: str,
    *,
    session_key: str | None = None,
    order: Literal["newest", "relevance"] = "newest",
    limit: int = 20,
) -> list[MessageHit]:
    """The messages matching ``text`` (``websearch_to_tsquery``: words, "a phrase",
    -word, or); a LedgerError when the database has no projections."""
    if not has_projections(log):
        raise LedgerError(
            f"the ledger at {log.where} has no projections to search", hint=_HINT_REPLAY
        )
    from hermes_ledger.projections import postgres as pg_projections

    return pg_projections.search_messages(
        log, text, session_key=session_key, order=order, limit=limit
    )
