"""The commands' library on a PostgreSQL ledger (issue 14): open it with its
projections when they are there, verify the chain and the projections, rebuild
them, state at a position, search, and the session reads (``sessions``,
``history``, ``transcript``: the rows ``gateway.sessions.reports`` returns on
SQLite, the same values in the same order). The CLI calls these with the connection
URI ``--db`` gave; everything goes through ``PostgresLog`` (an ``EventLog``) and
``projections.postgres``.

psycopg (the ``postgres`` extra) is imported when a function is called, so the CLI
starts without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal

from hermes_ledger.gateway.sessions.globbing import glob_regex
from hermes_ledger.gateway.sessions.listing import SESSION_FIELDS, SessionFilter
from hermes_ledger.gateway.sessions.reports import HISTORY_COLUMNS
from hermes_ledger.gateway.sessions.search import SearchFilter
from hermes_ledger.ledger.backend import POSTGRES_HINT
from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.errors import InvalidInputError, LedgerError
from hermes_ledger.ledger.records import VerifyReport as ChainReport
from hermes_ledger.ledger.transcript import TRANSCRIPT_KEY, transcript_column, transcript_names

if TYPE_CHECKING:
    from hermes_ledger.ledger.anchors import AnchorReport, Witness
    from hermes_ledger.ledger.postgres import PostgresLog
    from hermes_ledger.ledger.postgres.reading import PostgresStatus
    from hermes_ledger.ledger.restore import RestoreResult
    from hermes_ledger.projections import RebuildReport
    from hermes_ledger.projections import VerifyReport as ProjectionsReport
    from hermes_ledger.projections.postgres import MessageHit
    from hermes_ledger.projections.state import State

__all__ = [
    "PostgresInit",
    "PostgresVerifyReport",
    "has_projections",
    "history",
    "init",
    "open_postgres",
    "rebuild",
    "restore_export",
    "search",
    "sessions",
    "state_at",
    "transcript",
    "verify",
]

_HINT_CHAIN = (
    "the log was changed outside the ledger: restore the database from a backup, and keep"
    " this one as evidence"
)
_HINT_ANCHORS = (
    "the log no longer matches what was anchored: restore it from a backup or export taken"
    " after the last good anchor; keep the database and the witness as evidence"
)
_HINT_PROJECTIONS = "rebuild the projections with `hermes-ledger replay --db URI`"
_HINT_REPLAY = "create them with `hermes-ledger replay --db URI` (as the database owner)"

# The session reads, as gateway.sessions.listing / reports / reads run them on
# SQLite. Text is compared and ordered byte for byte (COLLATE "C"), as SQLite's
# BINARY collation does; the deadline (timestamptz here) is shown as ledger time
# text. SQLite's NOCASE folds ASCII letters only: so does _ASCII_LOWER.
_ASCII_LOWER = "translate({}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
SQL_SESSIONS_PAGE = (
    "SELECT m.session_key, m.session_id, m.status, m.platform, m.chat_type, m.user_id,"
    " m.user_name, m.display_name, m.created_at, m.updated_at, m.message_count,"
    " m.input_tokens, m.output_tokens, h.ended_at, h.end_reason, d.deadline"
    " FROM session_map AS m"
    " LEFT JOIN session_history AS h ON h.session_id = m.session_id"
    " LEFT JOIN session_deadlines AS d"
    " ON d.session_key = m.session_key AND d.session_id = m.session_id"
    ' WHERE TRUE{where} ORDER BY m.updated_at COLLATE "C" DESC, m.session_key COLLATE "C"'
    " LIMIT %s"
)
_WHERE_STATUS = "m.status = ANY(%s)"
_WHERE_PLATFORM = "m.platform = %s"
_WHERE_CHAT_TYPE = "m.chat_type = %s"
_WHERE_USER = (
    f"(m.user_id = %s OR {_ASCII_LOWER.format('m.user_name')} = {_ASCII_LOWER.format('%s')})"
)
_WHERE_SINCE = 'm.updated_at >= %s COLLATE "C"'
_WHERE_UNTIL = 'm.updated_at < %s COLLATE "C"'
_WHERE_END_REASON = "h.end_reason = %s"
_WHERE_KEY = "m.session_key ~ %s"
_WHERE_NONE = "FALSE"
SQL_HISTORY = (
    f"SELECT {HISTORY_COLUMNS} FROM session_history WHERE session_key = %s"
    ' ORDER BY started_at COLLATE "C", session_id COLLATE "C"'
)
SQL_SESSION_KNOWN = "SELECT 1 FROM session_history WHERE session_id = %s"
SQL_MAY_APPEND = "SELECT has_table_privilege('hermes_ledger.events', 'INSERT')"
_ALWAYS = ("role", "content")
_WHEN_SET = ("tool_calls", "tool_name", "tool_call_id", "user_id", "user_name")
_READ = (*_ALWAYS, "ts", *_WHEN_SET)
SQL_TRANSCRIPT = (
    f"SELECT {transcript_names(_READ)} FROM messages WHERE session_id = %s"
    f" ORDER BY {TRANSCRIPT_KEY}"
)


@contextmanager
def open_postgres(dsn: str, *, projections: bool = True) -> Iterator[PostgresLog]:
    """The PostgreSQL log at ``dsn``; with ``projections``, attached to them when
    their tables exist (caught up, and scrubbed by an erasure), never created. A role
    that may not append (``hermes_ledger_reader``) reads them as they stand: catching
    up takes the append lock, which it may not take."""
    try:
        from hermes_ledger.ledger.postgres import PostgresLog
    except ImportError:
        raise LedgerError(
            "a PostgreSQL ledger needs psycopg, which is not installed", hint=POSTGRES_HINT
        ) from None
    with PostgresLog.open(dsn) as log:
        if projections and has_projections(log) and _may_append(log):
            from hermes_ledger.projections import postgres as pg_projections

            pg_projections.attach(log)
        yield log


def _may_append(log: PostgresLog) -> bool:
    row = log.connection.execute(SQL_MAY_APPEND).fetchone()
    return bool(row and row[0])


def has_projections(log: PostgresLog) -> bool:
    """Whether the projection tables exist in ``log``'s database."""
    from hermes_ledger.projections.postgres.tables import tables_exist

    return tables_exist(log.connection)


@dataclass(frozen=True)
class PostgresInit:
    """What ``hermes-ledger init`` did on a PostgreSQL database: ``applied`` schema
    migrations (``created``: all of them, the ledger is new), then its status."""

    status: PostgresStatus
    created: bool
    applied: int

    def to_dict(self) -> dict[str, Any]:
        return {"created": self.created, "applied_migrations": self.applied,
                **self.status.to_dict()}  # fmt: skip

    def text(self) -> str:
        st = self.status
        if self.created:
            return f"Created ledger {st.where} (PostgreSQL, schema v{st.schema_version})"
        if self.applied:
            noun = "migration" if self.applied == 1 else "migrations"
            return (
                f"Migrated ledger {st.where} to schema v{st.schema_version} ({self.applied}"
                f" {noun} applied; {st.events} events)"
            )
        return (
            f"Ledger {st.where} already exists (PostgreSQL, schema v{st.schema_version},"
            f" {st.events} events)"
        )


def init(dsn: str) -> PostgresInit:
    """Create the ledger's schema in the database ``dsn`` (or apply the migrations it
    lacks), as opening it does, and say what was done."""
    from hermes_ledger.ledger.postgres.reading import migrations_applied_here, status
    from hermes_ledger.ledger.postgres.schema import load_migrations

    with open_postgres(dsn, projections=False) as log:
        applied = migrations_applied_here(log)
        st = status(log)
    return PostgresInit(st, created=applied == len(load_migrations()), applied=applied)


@dataclass(frozen=True)
class PostgresVerifyReport:
    """The chain and payloads; the projections against a replay (None when the
    database has none); the anchors the witness holds for this database (None when
    not checked)."""

    chain: ChainReport
    projections: ProjectionsReport | None = None
    anchors: AnchorReport | None = None

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
        if self.anchors is not None and not self.anchors.ok:
            found.append((f"anchors: {self.anchors.text()}", _HINT_ANCHORS))
        return found

    def lines(self) -> list[str]:
        shown = (
            str(self.projections)
            if self.projections is not None
            else "not attached (none in this database; `replay` creates them)"
        )
        lines = [f"hash chain: {self.chain}", f"projections: {shown}"]
        if self.anchors is not None:
            lines.append(f"anchors: {self.anchors.text()}")
        return lines

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
            "anchors": None if self.anchors is None else self.anchors.to_dict(),
            "backend": "postgresql",
        }


def verify(
    log: PostgresLog,
    *,
    progress: Callable[[int, int], None] | None = None,
    witness: Witness | None = None,
) -> PostgresVerifyReport:
    """The chain and payloads end to end, the projections when there are any, and
    every anchor ``witness`` holds for this database (as ``reports.verify_all``)."""
    chain = log.verify(progress=progress)
    anchors = None if witness is None else witness.check(log)
    if not has_projections(log):
        return PostgresVerifyReport(chain, anchors=anchors)
    from hermes_ledger.projections import postgres as pg_projections

    return PostgresVerifyReport(chain, pg_projections.verify(log), anchors)


def restore_export(
    dsn: str,
    source: str | None,
    *,
    stdin: IO[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[RestoreResult, str]:
    """``hermes-ledger import`` into the empty PostgreSQL ledger ``dsn``: the JSONL
    export ``source`` (a path, ``-`` or None for stdin), opened before the database
    (a missing file touches nothing), restored by ``ledger.postgres.restore``.
    Returns the result and the ledger as ``host:port/dbname as user``."""
    from hermes_ledger.ledger.restore import open_input

    with open_input(source, stdin) as stream, open_postgres(dsn, projections=False) as log:
        from hermes_ledger.ledger.postgres.restore import restore_jsonl

        return restore_jsonl(log, stream, progress=progress), log.where


def rebuild(log: PostgresLog) -> RebuildReport:
    """Replay the log into fresh projection tables and swap them in."""
    from hermes_ledger.projections import postgres as pg_projections

    return pg_projections.rebuild(log)


def state_at(
    log: PostgresLog,
    position: int | None = None,
    *,
    time: str | None = None,
    recorded: bool = False,
) -> State:
    """The projections as of ``position``, or of ``time`` (business time, or recorded
    time with ``recorded``), as ``projections.state_at`` on SQLite: a replay,
    nothing changed."""
    from hermes_ledger.projections import postgres as pg_projections

    return pg_projections.state_at(log, position=position, time=time, recorded=recorded)


def search(
    log: PostgresLog,
    text: str,
    which: SearchFilter | None = None,
    *,
    order: Literal["newest", "relevance"] = "newest",
    limit: int = 20,
) -> list[MessageHit]:
    """The messages matching ``text`` (``websearch_to_tsquery``: words, "a phrase",
    -word, or) under ``which`` (as on SQLite); a LedgerError when the database has
    no projections."""
    if not has_projections(log):
        raise LedgerError(
            f"the ledger at {log.where} has no projections to search", hint=_HINT_REPLAY
        )
    from hermes_ledger.projections import postgres as pg_projections

    which = which or SearchFilter()
    return pg_projections.search_messages(
        log, text, session_key=which.session_key, platform=which.platform, user=which.user,
        since=which.since, until=which.until, order=order, limit=limit,
    )  # fmt: skip


def _needs_projections(log: PostgresLog) -> None:
    if not has_projections(log):
        raise LedgerError(f"the ledger at {log.where} has no projections", hint=_HINT_REPLAY)


def _rows(log: PostgresLog, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    from hermes_ledger.ledger.postgres.reading import snapshot

    with snapshot(log) as conn:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]


def _session_where(which: SessionFilter) -> tuple[str, tuple[Any, ...]]:
    """``which`` as ``" AND …"`` conditions and their bindings (``SessionFilter.where``
    on PostgreSQL). ``--key``, SQLite's GLOB, is the regex ``glob_regex`` spells."""
    statuses = list(which.wanted_statuses) or None
    given: list[tuple[str, tuple[Any, ...]]] = [
        (sql, args)
        for sql, args in (
            (_WHERE_STATUS, (statuses,)),
            (_WHERE_PLATFORM, (which.platform,)),
            (_WHERE_CHAT_TYPE, (which.chat_type,)),
            (_WHERE_SINCE, (which.since,)),
            (_WHERE_UNTIL, (which.until,)),
            (_WHERE_END_REASON, (which.end_reason,)),
            (_WHERE_USER, (which.user, which.user)),
        )
        if args[0] is not None
    ]
    if which.key is not None:
        regex = glob_regex(which.key)
        given.append((_WHERE_KEY, (regex,)) if regex is not None else (_WHERE_NONE, ()))
    return "".join(f" AND {sql}" for sql, _ in given), tuple(a for _, args in given for a in args)


def sessions(
    log: PostgresLog, which: SessionFilter | None = None, *, limit: int = 1000
) -> list[dict[str, Any]]:
    """``reports.sessions`` on PostgreSQL: the keys matching ``which``, most recently
    active first (at most ``limit``), each a dict with the keys ``SESSION_FIELDS``."""
    if limit < 0:
        raise InvalidInputError(f"limit must be >= 0, not {limit}")
    _needs_projections(log)
    where, args = _session_where(which or SessionFilter())
    out = []
    for row in _rows(log, SQL_SESSIONS_PAGE.format(where=where), (*args, limit)):
        item = dict(zip(SESSION_FIELDS, row, strict=True))
        if item["next_deadline"] is not None:
            item["next_deadline"] = format_utc(item["next_deadline"])
        out.append(item)
    return out


def history(log: PostgresLog, session_key: str) -> list[dict[str, Any]]:
    """``reports.history`` on PostgreSQL: every session a key has had, oldest first."""
    _needs_projections(log)
    names = [c.strip() for c in HISTORY_COLUMNS.split(",")]
    rows = [dict(zip(names, r, strict=True)) for r in _rows(log, SQL_HISTORY, (session_key,))]
    if not rows:
        raise LedgerError(
            f"no sessions with key {session_key!r}",
            hint="list keys with `hermes-ledger sessions --all --db URI`",
        )
    return rows


def transcript(log: PostgresLog, session_id: str) -> list[dict[str, Any]]:
    """``reports.transcript`` on PostgreSQL: the session's messages in order (Hermes
    shape, with user_id / user_name where known)."""
    _needs_projections(log)
    if not _rows(log, SQL_SESSION_KNOWN, (session_id,)):
        raise LedgerError(
            f"no session with id {session_id!r}",
            hint="find ids with `hermes-ledger sessions --db URI` or `hermes-ledger history KEY"
            " --db URI`",
        )
    out = []
    for row in _rows(log, SQL_TRANSCRIPT, (session_id,)):
        values = dict(zip(_READ, row, strict=True))
        message: dict[str, Any] = {name: values[name] for name in _ALWAYS}
        message["timestamp"] = values["ts"]
        for name in _WHEN_SET:
            value = values[name]
            if value is not None:
                message[name] = json.loads(value) if transcript_column(name).json else value
        out.append(message)
    return out
