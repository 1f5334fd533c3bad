"""Erasure: forgetting a subject's personal content while the log stays append-only.

``Ledger.erase(scope, requested_by=…, dry_run=…)`` is the one interface (the CLI's
``erase`` and retention's ``prune`` call it). In ONE write transaction it appends
a ``subject_erased`` event (the scope, who asked, when; no content), deletes the
payload rows of every event in the scope with ``PRAGMA secure_delete`` on (their
bytes are zeroed, not just unlinked), and lets every registered scrubber (the
projections register theirs when attached) rewrite the read-model rows and the
full-text index of those events. After the commit it checkpoints the WAL
(``TRUNCATE``), so no old page image of the content is left in ``-wal``.

Re-running the same erasure is safe and finishes one a kill interrupted after its
commit (a kill before the commit leaves nothing: the transaction rolls back).
``verify`` accepts a missing payload only where a recorded ``subject_erased``
covers its event (``covered_sql``), so deleting a payload by hand is tampering.

What a scope covers (positions up to ``through``, the log's head when it was
recorded, so events appended later are never erased by an old erasure):

* ``user`` ID: every event of every session whose ``session_started`` names ID as
  its ``source.user_id`` (all roles: the agent's replies quote the user), and ID's
  own messages (``message_appended.user_id``) in other sessions (a group chat);
* ``session_key`` KEY: every event of the stream KEY (all its sessions);
* ``session_id`` ID: every event of that session;
* ``retention``: every event that happened (``occurred_at``) before ``before``, in
  any session or only in sessions started on ``platform`` / in ``chat_type``: "keep
  content N days" holds in a session that is still open too.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import apsw

from hermes_ledger.ledger.clock import format_utc
from hermes_ledger.ledger.errors import EventValidationError, LedgerError
from hermes_ledger.ledger.events import SubjectErased
from hermes_ledger.ledger.personal import UNCOVERED, held_in_log_sql

if TYPE_CHECKING:
    from hermes_ledger.ledger.store import Ledger

__all__ = [
    "ERASURE_STREAM",
    "SCOPE_PARTS",
    "SQLITE_DIALECT",
    "ErasureReport",
    "ErasureScope",
    "ScopeDialect",
    "Scrubber",
    "check_requested_by",
    "covered_sql",
    "erase",
    "erasure_event",
    "scope_sql",
]

ERASURE_STREAM = "_erasures"
"""The stream every ``subject_erased`` event is appended to."""

ScopeKind = Literal["user", "session_key", "session_id", "retention"]
SCOPE_KINDS: tuple[str, ...] = ("user", "session_key", "session_id", "retention")

Scrubber = Callable[[apsw.Connection], None]
"""Runs inside the erasure's transaction, after the payloads are deleted: rewrites
its read-model rows for the positions in ``temp.erasing`` (one column, position)."""

# What each scope covers, written once for both backends: a scope is the UNION ALL
# of its parts; in each part ``{events}`` is the log's table, ``{:name}`` a binding
# (``ErasureScope.bindings``) and ``{$a.b}`` the text at that JSON path of ``data``,
# each spelled by the backend's ``ScopeDialect``. Session starts are found through
# their partial index (events_session_starts); no position bound there: a session
# started after ``through`` has no events before it.
_SESSIONS_OF_USER = (
    "SELECT session_id FROM {events} WHERE type = 'session_started'"
    " AND {$source.user_id} = {:value}"
)
# The sessions retention looks at: all, or those started on :platform / in :chat_type.
_RETAINED_SESSIONS = (
    "SELECT session_id FROM {events} WHERE type = 'session_started'"
    " AND ({:platform} IS NULL OR {$source.platform} = {:platform})"
    " AND ({:chat_type} IS NULL OR {$source.chat_type} = {:chat_type})"
)
SCOPE_PARTS: dict[str, tuple[str, ...]] = {
    # Two parts: the events of the user's sessions (by events_by_session), and the
    # user's messages elsewhere (a scan: no index on a message's sender).
    "user": (
        "SELECT position FROM {events} WHERE position <= {:through}"
        f" AND session_id IN ({_SESSIONS_OF_USER})",
        "SELECT position FROM {events} WHERE position <= {:through}"
        " AND type = 'message_appended' AND {$user_id} = {:value}",
    ),
    "session_key": (
        "SELECT position FROM {events} WHERE stream = {:value} AND position <= {:through}",
    ),
    "session_id": (
        "SELECT position FROM {events} WHERE session_id = {:value} AND position <= {:through}",
    ),
    "retention": (
        "SELECT position FROM {events} WHERE position <= {:through}"
        f" AND occurred_at < {{:before}} AND session_id IN ({_RETAINED_SESSIONS})",
    ),
}
"""Per scope kind: the parts of the positions it covers (bindings value, through,
before, platform, chat_type), in no backend's dialect: see ``scope_sql``."""


@dataclass(frozen=True)
class ScopeDialect:
    """How a backend spells the pieces of ``SCOPE_PARTS``: its events table, a
    binding by name, and the text at a JSON path of ``data`` (path as a tuple)."""

    events: str
    binding: Callable[[str], str]
    json_text: Callable[[tuple[str, ...]], str]


SQLITE_DIALECT = ScopeDialect(
    events="main.events",
    binding=lambda name: f":{name}",
    json_text=lambda path: "data ->> '$." + ".".join(path) + "'",
)

_PIECE = re.compile(r"\{(events|:[a-z_]+|\$[a-z_.]+)\}")


def scope_sql(kind: str, dialect: ScopeDialect) -> str:
    """The positions scope ``kind`` covers, as one SELECT in ``dialect``'s SQL."""

    def spell(match: re.Match[str]) -> str:
        piece = match.group(1)
        if piece == "events":
            return dialect.events
        if piece.startswith(":"):
            return dialect.binding(piece[1:])
        return dialect.json_text(tuple(piece[1:].split(".")))

    return " UNION ALL ".join(_PIECE.sub(spell, part) for part in SCOPE_PARTS[kind])


SCOPE_SQL: dict[str, str] = {kind: scope_sql(kind, SQLITE_DIALECT) for kind in SCOPE_PARTS}
"""Per scope kind: the positions it covers, in SQLite's SQL."""

SQL_ERASING_DDL = "CREATE TEMP TABLE IF NOT EXISTS erasing (position INTEGER PRIMARY KEY)"
SQL_ERASING_CLEAR = "DELETE FROM temp.erasing"
SQL_ERASING_FILL = "INSERT OR IGNORE INTO temp.erasing (position) {scope}"
SQL_ERASING_COUNTS = (
    "SELECT count(*), count(*) FILTER (WHERE e.type = 'message_appended'),"
    " count(DISTINCT e.session_id), count(p.position),"
    f" count(*) FILTER (WHERE {held_in_log_sql('e.data', 'e.meta', 'e.type')})"
    " FROM temp.erasing AS x JOIN main.events AS e ON e.position = x.position"
    " LEFT JOIN main.payloads AS p ON p.position = x.position"
)
SQL_ERASING_SESSIONS = (
    "SELECT DISTINCT e.session_id FROM temp.erasing AS x"
    " JOIN main.events AS e ON e.position = x.position"
    " WHERE e.session_id IS NOT NULL ORDER BY e.session_id"
)
SQL_DELETE_PAYLOADS = (
    "DELETE FROM main.payloads WHERE position IN (SELECT position FROM temp.erasing)"
)
SQL_ERASURES = (
    "SELECT position, data FROM main.events WHERE type = 'subject_erased' ORDER BY position"
)
SQL_HEAD = "SELECT coalesce(max(position), 0) FROM main.events"

_CHECKPOINT_TRIES = 50


@dataclass(frozen=True)
class ErasureScope:
    """What to forget. ``kind`` is ``user``, ``session_key``, ``session_id`` (``value``
    the user id, key or session id) or ``retention`` (``before`` required: what
    happened before it; ``platform`` / ``chat_type`` narrow it to those sessions). See the module
    docstring for exactly which events each covers."""

    kind: ScopeKind
    value: str | None = None
    platform: str | None = None
    chat_type: str | None = None
    before: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCOPE_KINDS:
            raise LedgerError(
                f"unknown erasure scope {self.kind!r}", hint=f"use one of {', '.join(SCOPE_KINDS)}"
            )
        if self.kind == "retention":
            if self.before is None or self.before.tzinfo is None:
                raise LedgerError(
                    "a retention erasure needs `before` (a time with a time zone)",
                    hint="pass before=datetime(..., tzinfo=UTC)",
                )
        elif not self.value:
            raise LedgerError(
                f"an erasure by {self.kind} needs the {self.kind.replace('_', ' ')} to erase",
                hint="give a non-empty value",
            )

    def describe(self) -> str:
        if self.kind != "retention":
            return f"{self.kind.replace('_', ' ')} {self.value}"
        assert self.before is not None
        parts = [f"content from before {format_utc(self.before)}"]
        if self.platform:
            parts.append(f"platform {self.platform}")
        if self.chat_type:
            parts.append(f"chat type {self.chat_type}")
        return ", ".join(parts)

    def bindings(self, through: int) -> dict[str, Any]:
        return {
            "value": self.value,
            "through": through,
            "before": format_utc(self.before) if self.before is not None else None,
            "platform": self.platform,
            "chat_type": self.chat_type,
        }

    @classmethod
    def of_event(cls, event: SubjectErased) -> ErasureScope:
        return cls(event.scope, event.value, event.platform, event.chat_type, event.before)


@dataclass(frozen=True)
class ErasureReport:
    """What an erasure forgot (or, ``dry_run``, would forget): ``events`` in the scope,
    ``messages`` among them, ``sessions`` (their ids), ``payloads`` deleted (events
    whose content was still there), ``held_in_log`` events recorded before schema v4
    whose content is in the log itself (no erasure can remove it). ``position`` is the
    ``subject_erased`` event's (None in a dry run), ``checkpointed`` whether the WAL
    was emptied afterwards (SQLite; False: a reader held an old snapshot; re-run the
    erasure). On PostgreSQL ``checkpointed`` is False and ``vacuumed`` says whether
    the erase could VACUUM the tables it deleted and rewrote rows in (False: the role
    may not; an operator must); None on SQLite."""

    scope: ErasureScope
    requested_by: str
    dry_run: bool
    events: int
    messages: int
    sessions: tuple[str, ...]
    payloads: int
    position: int | None = None
    checkpointed: bool = False
    recorded_at: str | None = None
    held_in_log: int = 0
    vacuumed: bool | None = None

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.held_in_log:
            found.append(
                f"{self.held_in_log} events in scope were recorded before forgettable content "
                "(schema v4): their content is part of the hash chain and cannot be erased "
                "(docs/erasure.md)"
            )
        if not self.dry_run and self.vacuumed is False:
            found.append(
                "this role may not VACUUM the ledger's tables: the deleted payloads and the"
                " rewritten rows stay in the table files as dead row versions until an"
                " operator (the tables' owner) runs VACUUM on them (docs/postgres.md)"
            )
        if not self.dry_run and self.vacuumed is None and not self.checkpointed:
            found.append(
                "a reader kept the WAL from being emptied: old page images may remain in "
                "the -wal file until the next checkpoint; run the same erase again later"
            )
        return found

    def summary(self) -> list[str]:
        """The report for people (what ``erase`` prints)."""
        noun = "session" if len(self.sessions) == 1 else "sessions"
        counts = (
            f"{self.events} events ({self.messages} messages) in {len(self.sessions)} {noun},"
            f" {self.payloads} of them with content still held"
        )
        shown = ", ".join(self.sessions[:10])
        more = f" … and {len(self.sessions) - 10} more" if len(self.sessions) > 10 else ""
        lines = [f"Scope: {self.scope.describe()}"]
        if self.dry_run:
            lines.append(f"Would forget: {counts}")
        else:
            lines.append(f"Forgot: {counts}")
        if self.sessions:
            lines.append(f"Sessions: {shown}{more}")
        if self.dry_run:
            lines.append("Nothing was changed (a dry run); run again with --yes to erase.")
        else:
            lines.append(
                f"Recorded subject_erased at position {self.position} "
                f"(requested by {self.requested_by}, {self.recorded_at})"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["scope"] = {k: v for k, v in asdict(self.scope).items() if v is not None}
        if self.scope.before is not None:
            body["scope"]["before"] = format_utc(self.scope.before)
        body["sessions"] = list(self.sessions)
        if self.vacuumed is None:  # SQLite's reports keep their keys
            del body["vacuumed"]
        return body


def _fill(conn: apsw.Connection, scope: ErasureScope, through: int) -> None:
    conn.execute(SQL_ERASING_DDL)
    conn.execute(SQL_ERASING_CLEAR)
    conn.execute(SQL_ERASING_FILL.format(scope=SCOPE_SQL[scope.kind]), scope.bindings(through))


def _counts(conn: apsw.Connection) -> tuple[int, int, tuple[str, ...], int, int]:
    row: Any = conn.execute(SQL_ERASING_COUNTS).fetchone()
    sessions = tuple(r[0] for r in conn.execute(SQL_ERASING_SESSIONS))
    return int(row[0]), int(row[1]), sessions, int(row[3]), int(row[4])


def _event_id(scope: ErasureScope, when: str) -> str:
    """A stable id from the scope and the time: a retried erasure is one event."""
    key = f"{scope.kind}|{scope.value}|{scope.platform}|{scope.chat_type}|{scope.before}|{when}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "hermes-ledger:erasure:" + key))


def check_requested_by(requested_by: object) -> None:
    """LedgerError unless ``requested_by`` names someone (every backend's erase)."""
    if not isinstance(requested_by, str) or not requested_by.strip():
        raise LedgerError("requested_by must name who asked for the erasure", hint="e.g. an email")


def erasure_event(scope: ErasureScope, when: str, through: int, requested_by: str) -> SubjectErased:
    """The ``subject_erased`` event of an erasure recorded at ``when`` (UTC text),
    covering positions up to ``through``: the same body on every backend, so the
    same erasure of the same log chains to the same hash."""
    try:
        return SubjectErased(
            event_id=_event_id(scope, when),
            scope=scope.kind,
            value=scope.value,
            platform=scope.platform,
            chat_type=scope.chat_type,
            before=scope.before,
            through=through,
            requested_by=requested_by,
        )
    except EventValidationError as exc:
        raise LedgerError(str(exc), hint="check the scope and --requested-by") from None


def checkpoint(led: Ledger) -> bool:
    """``wal_checkpoint(TRUNCATE)``, retried while a reader holds an old snapshot:
    True when the WAL was emptied."""
    for attempt in range(_CHECKPOINT_TRIES):
        row: Any = led.query("PRAGMA main.wal_checkpoint(TRUNCATE)")[0]
        if row[0] == 0:
            return True
        time.sleep(min(0.01 * (attempt + 1), 0.1))
    return False


def erase(
    led: Ledger,
    scope: ErasureScope,
    *,
    requested_by: str,
    dry_run: bool = True,
    scrubbers: tuple[Scrubber, ...] = (),
    through: int | None = None,
) -> ErasureReport:
    """See ``Ledger.erase`` (the documented interface). ``through`` bounds the scope
    (default: the log's head), as re-applying an erasure to an imported log needs."""
    check_requested_by(requested_by)
    if dry_run:
        return _dry_run(led, scope, requested_by, through)

    def work(conn: apsw.Connection) -> ErasureReport:
        head = int(conn.execute(SQL_HEAD).fetchone()[0])  # type: ignore[index]
        bound = head if through is None else min(through, head)
        _fill(conn, scope, bound)
        events, messages, sessions, payloads, held = _counts(conn)
        when = format_utc(led._clock())
        event = erasure_event(scope, when, bound, requested_by)
        result = led._append_in(conn, ERASURE_STREAM, led._prepare([event]))
        conn.execute(SQL_DELETE_PAYLOADS)
        for scrub in scrubbers:
            scrub(conn)
        conn.execute(SQL_ERASING_CLEAR)
        return ErasureReport(
            scope, requested_by, False, events, messages, sessions, payloads,
            position=result.positions[0], recorded_at=when, held_in_log=held,
        )  # fmt: skip

    conn = led.connection
    conn.execute("PRAGMA secure_delete = ON").fetchall()
    report: ErasureReport = led.write(work)
    done = checkpoint(led)
    return ErasureReport(**{**report.__dict__, "checkpointed": done})


def _dry_run(
    led: Ledger, scope: ErasureScope, requested_by: str, through: int | None
) -> ErasureReport:
    conn = led.connection
    with led._lock:
        conn.execute("BEGIN").fetchall()
        try:
            head = int(conn.execute(SQL_HEAD).fetchone()[0])  # type: ignore[index]
            _fill(conn, scope, head if through is None else min(through, head))
            events, messages, sessions, payloads, held = _counts(conn)
            conn.execute(SQL_ERASING_CLEAR)
        finally:
            conn.execute("COMMIT").fetchall()
    return ErasureReport(
        scope, requested_by, True, events, messages, sessions, payloads, held_in_log=held
    )


def covered_sql() -> str:
    """SQL for ``verify``: fills ``temp.erasing`` for one recorded erasure (bound
    like ``ErasureScope.bindings``): see ``recorded_scopes``."""
    return SQL_ERASING_FILL


def recorded_scopes(conn: apsw.Connection, *, who: bool = False) -> list[tuple[Any, ...]]:
    """Every recorded erasure: (its position, its scope, the position it covers up
    to), and (``who``) who requested it."""
    from hermes_ledger.ledger.events import from_stored

    out: list[tuple[Any, ...]] = []
    rows: list[Any] = conn.execute(SQL_ERASURES).fetchall()
    for position, data in rows:
        event = from_stored("subject_erased", "x", data, 1)
        assert isinstance(event, SubjectErased)
        row = (position, ErasureScope.of_event(event), event.through)
        out.append((*row, event.requested_by) if who else row)
    return out


def fill_covered(conn: apsw.Connection) -> None:
    """``temp.erasing`` := every position some recorded erasure covers."""
    conn.execute(SQL_ERASING_DDL)
    conn.execute(SQL_ERASING_CLEAR)
    for _position, scope, through in recorded_scopes(conn):
        conn.execute(SQL_ERASING_FILL.format(scope=SCOPE_SQL[scope.kind]), scope.bindings(through))


SQL_PAYLOAD_ROWS = (
    "SELECT e.position, e.meta ->> '$.payload', p.salt, p.body FROM main.events AS e"
    " FULL JOIN main.payloads AS p ON p.position = e.position"
    " WHERE (e.meta ->> '$.payload') IS NOT NULL OR p.position IS NOT NULL"
    " ORDER BY coalesce(e.position, p.position)"
)
SQL_UNCOVERED = (
    "SELECT e.position FROM main.events AS e LEFT JOIN main.payloads AS p"
    " ON p.position = e.position WHERE (e.meta ->> '$.payload') IS NOT NULL"
    " AND p.position IS NULL AND e.position NOT IN (SELECT position FROM temp.erasing)"
    " ORDER BY e.position LIMIT 1"
)


def check_payloads(conn: apsw.Connection, head: int) -> tuple[int | None, str] | None:
    """``verify``'s check of the content: every payload matches the digest its
    event's meta holds (the chain covers meta), no event without a digest has a
    payload, and every missing payload is covered by a recorded erasure. (first bad
    position, problem), or None when all is well. Payload rows past the end of the
    log (left by a truncation, which anchors detect) are not the chain's to judge."""
    from hermes_ledger.ledger.personal import judge_payloads

    found: list[Any] = conn.execute(SQL_PAYLOAD_ROWS).fetchall()
    problem, missing = judge_payloads(found, head)
    if problem is not None or not missing:
        return problem
    fill_covered(conn)
    try:
        row: Any = conn.execute(SQL_UNCOVERED).fetchone()
    finally:
        conn.execute(SQL_ERASING_CLEAR)
    if row is not None:
        return row[0], UNCOVERED
    return None
