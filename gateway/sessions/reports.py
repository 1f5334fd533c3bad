"""Read-side helpers behind ``hermes-ledger sessions / history / transcript / verify``.

Each returns plain data (dicts of the projection tables' columns) so the CLI can
print it as a table or as JSON, and tests can call it directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw

from hermes_ledger import projections
from hermes_ledger.gateway.sessions.listing import SessionFilter, list_sessions
from hermes_ledger.gateway.sessions.reads import load_transcript
from hermes_ledger.ledger import Ledger, LedgerError
from hermes_ledger.ledger.anchors import AnchorReport, Witness
from hermes_ledger.ledger.records import FileReport
from hermes_ledger.ledger.records import VerifyReport as ChainReport

__all__ = [
    "FullVerifyReport",
    "history",
    "open_existing",
    "sessions",
    "transcript",
    "verify_all",
]

HISTORY_COLUMNS = (
    "session_id, started_at, ended_at, end_reason, start_reason, message_count,"
    " input_tokens, output_tokens, flush_status, close_cause, close_detail"
)
SQL_HISTORY = (
    f"SELECT {HISTORY_COLUMNS} FROM session_history WHERE session_key = ?"
    " ORDER BY started_at, session_id"
)
SQL_SESSION_KNOWN = "SELECT 1 FROM session_history WHERE session_id = ?"


def open_existing(path: str | os.PathLike[str]) -> Ledger:
    """Open a ledger that must already exist (NoLedgerError if there is none), with
    its projections attached."""
    ledger = Ledger.open_existing(path)
    try:
        projections.attach(ledger)
    except BaseException:
        ledger.close()
        raise
    return ledger


def _dicts(columns: str, rows: list[Any]) -> list[dict[str, Any]]:
    names = [c.strip() for c in columns.split(",")]
    return [dict(zip(names, row, strict=True)) for row in rows]


def sessions(
    ledger: Ledger,
    *,
    all_: bool = False,
    limit: int = 1000,
    which: SessionFilter | None = None,
) -> list[dict[str, Any]]:
    """Sessions by key, most recently active first: those matching ``which`` (see
    ``listing.SessionFilter``), or the open ones (any status with ``all_``)."""
    return list_sessions(ledger, which or SessionFilter(all_=all_), limit=limit)


def history(ledger: Ledger, session_key: str) -> list[dict[str, Any]]:
    """Every session (transcript) a key has had, oldest first."""
    rows = _dicts(HISTORY_COLUMNS, ledger.query(SQL_HISTORY, (session_key,)))
    if not rows:
        raise LedgerError(
            f"no sessions with key {session_key!r}",
            hint="list keys with `hermes-ledger sessions --all`",
        )
    return rows


def transcript(ledger: Ledger, session_id: str) -> list[dict[str, Any]]:
    """A session's messages in order (synthetic flush turns excluded), with who
    spoke (user_id, user_name) where known."""
    if not ledger.query(SQL_SESSION_KNOWN, (session_id,)):
        raise LedgerError(
            f"no session with id {session_id!r}",
            hint="find ids with `hermes-ledger sessions` or `hermes-ledger history KEY`",
        )
    return load_transcript(ledger, session_id, speakers=True)


_HINT_CHAIN = (
    "the log was changed in place at that position: restore the ledger from a backup or an"
    " export taken before the change, and find out who could write to the file"
)
_HINT_SCHEMA = (
    "someone with write access dropped or replaced them: check the chain and the anchors, then"
    " restore the ledger from a backup (the definitions are in migrations/0001_events.sql)"
)
_HINT_INTEGRITY = (
    "the file's pages are damaged (disk, copy or hand edit): restore it from a backup; on a copy,"
    " `hermes-ledger export` saves what is still readable"
)
_HINT_ANCHORS = (
    "the log no longer matches what was anchored: restore it from a backup or export taken"
    " after the last good anchor; keep this file and the witness as evidence"
)
_HINT_PROJECTIONS = "rebuild the projections with `hermes-ledger replay`"


@dataclass(frozen=True)
class FullVerifyReport:
    """The chain, the projections, the file (triggers, indexes, pages) and the
    anchors; ``file`` and ``anchors`` are None when they were not checked."""

    chain: ChainReport
    projections: projections.VerifyReport
    file: FileReport | None = None
    anchors: AnchorReport | None = None

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[tuple[str, str]]:
        """``(what is wrong, what to do)`` for each failed part, worst first."""
        found: list[tuple[str, str]] = []
        if self.file is not None and not self.file.integrity_ok:
            found.append((f"integrity: {self.file.integrity_text()}", _HINT_INTEGRITY))
        if not self.chain.ok:
            found.append((f"hash chain: {self.chain}", _HINT_CHAIN))
        if self.anchors is not None and not self.anchors.ok:
            found.append((f"anchors: {self.anchors.text()}", _HINT_ANCHORS))
        if self.file is not None and not self.file.schema_ok:
            found.append((f"schema: {self.file.schema_text()}", _HINT_SCHEMA))
        if not self.projections.ok:
            first = str(self.projections).splitlines()[0]
            found.append((f"projections: {first}", _HINT_PROJECTIONS))
        return found

    def lines(self) -> list[str]:
        lines = [f"hash chain: {self.chain}", f"projections: {self.projections}"]
        if self.file is not None:
            lines.append(f"schema: {self.file.schema_text()}")
            lines.append(f"integrity: {self.file.integrity_text()}")
        if self.anchors is not None:
            lines.append(f"anchors: {self.anchors.text()}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The ``verify --json`` document (the first six keys are the original ones)."""
        file = self.file
        return {
            "ok": self.ok,
            "chain_ok": self.chain.ok,
            "first_bad_position": self.chain.first_bad_position,
            "chain_problem": self.chain.problem,
            "projections_ok": self.projections.ok,
            "differences": [str(d) for d in self.projections.differences],
            "head": self.chain.head,
            "schema_ok": None if file is None else file.schema_ok,
            "schema_expected": None if file is None else list(file.expected),
            "schema_missing": None if file is None else list(file.missing),
            "schema_changed": None if file is None else list(file.changed),
            "integrity_ok": None if file is None else file.integrity_ok,
            "integrity_check": None if file is None else file.integrity_mode,
            "integrity_problems": None if file is None else list(file.integrity),
            "anchors": None if self.anchors is None else self.anchors.to_dict(),
            "problems": [what for what, _ in self.problems()],
        }


def verify_all(
    ledger: Ledger,
    progress: Callable[[int, int], None] | None = None,
    *,
    witness: Witness | None = None,
    quick: bool | None = None,
) -> FullVerifyReport:
    """The file (triggers and indexes against the migrations, SQLite's integrity
    check), the hash chain end to end, the live projections against a replay (after
    bringing them up to date), and every anchor ``witness`` holds for this ledger.

    A part that cannot be read (damaged pages) is reported as failed, not raised;
    a key file others can read is refused (LedgerError)."""
    file = ledger.check_file(quick=quick)
    try:
        chain = ledger.verify(progress=progress)
    except (LedgerError, apsw.Error) as exc:
        chain = ChainReport(False, 0, 0, None, f"the log could not be read: {exc}")
    try:
        if not ledger.readonly:
            projections.attach(ledger)
        live = projections.verify(ledger, progress=progress)
    except (LedgerError, apsw.Error) as exc:
        problem = projections.Difference("projections", "projection", live=f"not compared: {exc}")
        live = projections.VerifyReport(False, chain.head, differences=(problem,))
    anchors = None if witness is None else witness.check(ledger)
    return FullVerifyReport(chain, live, file, anchors)
