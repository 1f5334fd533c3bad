"""The checks ``hermes-ledger doctor`` runs, each a function returning a ``Check``.

In order: ``ledger`` (the hash chain, the triggers and indexes, the pages),
``anchors`` (the witness), ``projections`` (their checkpoints against the head),
``hooks`` (the ones that do not load), ``deliveries`` (dead letters), ``closes``
(stuck or overdue closes), ``spool`` (the plugin's backlog) and ``file_modes``.

Nothing is repaired and nothing is brought up to date: the projections are not
attached (that would catch them up and hide the lag), the scheduler does not
tick. Loading the hooks runs their ``handler.py`` module code, as ``hermes-ledger
hooks`` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import apsw

from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.config.paths import delivered_hooks_dir
from hermes_ledger.gateway.health.modes import check_file_modes
from hermes_ledger.gateway.health.results import Check, DoctorReport
from hermes_ledger.gateway.hooks import HookRegistry, hook_states
from hermes_ledger.gateway.plugin.spool import SpoolError, pending_records
from hermes_ledger.ledger import EventLog, Ledger, LedgerError
from hermes_ledger.ledger.anchors import Witness
from hermes_ledger.ledger.backend import POSTGRES_HINT, is_dsn
from hermes_ledger.ledger.clock import format_utc, parse_utc, system_clock
from hermes_ledger.projections import PROJECTIONS
from hermes_ledger.projections.replay import read_checkpoints

__all__ = ["CHECK_NAMES", "DEFAULT_STUCK_AFTER", "POSTGRES_CHECK_NAMES", "diagnose"]

DEFAULT_STUCK_AFTER = timedelta(minutes=15)
"""How long a close may stay unfinished (or a session past its deadline, a spool
record undrained) before the doctor warns."""

CHECK_NAMES = (
    "ledger",
    "anchors",
    "projections",
    "hooks",
    "deliveries",
    "closes",
    "spool",
    "file_modes",
)

POSTGRES_CHECK_NAMES = (
    "server",
    "ledger",
    "anchors",
    "projections",
    "hooks",
    "deliveries",
    "closes",
    "spool",
    "privileges",
    "file_modes",
)
"""The checks on a PostgreSQL ledger (``health.postgres``), in order: ``server`` and
``privileges`` are its own, ``file_modes`` covers the files in the home only."""

SQL_STUCK_CLOSING = (
    "SELECT session_key, session_id, updated_at FROM session_map"
    " WHERE status = 'closing' AND updated_at <= ? ORDER BY updated_at"
)
"""Sessions whose close began (their cause is recorded) before the cut-off."""
SQL_OVERDUE = (
    "SELECT d.session_key, d.session_id, d.deadline FROM session_deadlines AS d"
    " JOIN session_map AS m ON m.session_key = d.session_key AND m.session_id = d.session_id"
    " WHERE m.status = 'open' AND d.deadline <= ? ORDER BY d.deadline"
)
"""Sessions whose expiry was due before the cut-off and that no tick has closed."""
SQL_HAS_SESSION_MAP = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:g} min"


# -- the ledger ----------------------------------------------------------------------


def check_ledger(ledger: Ledger) -> Check:
    """``ledger``: the hash chain end to end, the triggers and indexes against the
    migrations, SQLite's integrity check."""
    try:
        chain = ledger.verify()
    except (LedgerError, apsw.Error) as exc:
        return Check(
            "ledger",
            "fail",
            f"the log could not be read: {exc}",
            "restore the ledger from a backup",
        )
    file = ledger.check_file()
    problems = []
    if not chain.ok:
        problems.append(f"hash chain {chain}")
    if not file.schema_ok:
        problems.append(f"schema {file.schema_text()}")
    if not file.integrity_ok:
        problems.append(f"integrity {file.integrity_text()}")
    if problems:
        return Check(
            "ledger",
            "fail",
            "; ".join(problems),
            "someone changed the file: keep it as evidence, restore the ledger from a backup or"
            " an export taken before the change (`hermes-ledger verify` shows the details)",
        )
    return Check(
        "ledger",
        "ok",
        f"hash chain intact ({_plural(chain.checked, 'event')}),"
        f" {len(file.expected)} triggers and indexes as migrated, pages sound",
    )


def check_anchors(ledger: EventLog, witness: Witness, settings: RunnerSettings) -> Check:
    """``anchors``: every anchor of this ledger still holds (fail if not); none
    yet, or none for longer than two anchor intervals while the log grew, warns."""
    try:
        report = witness.check(ledger)
    except LedgerError as exc:
        return Check("anchors", "fail", str(exc), exc.hint)
    if not report.ok:
        return Check(
            "anchors",
            "fail",
            report.text(),
            "the log no longer matches what was anchored: restore it from a backup taken after"
            " the last good anchor; keep this file and the witness as evidence",
        )
    last = report.last
    if last is None:
        if report.head == 0:
            return Check("anchors", "ok", "nothing to anchor yet (the log is empty)")
        return Check(
            "anchors",
            "warn",
            f"no anchor of this ledger in {witness.path}",
            "run `hermes-ledger anchor` (and keep `hermes-ledger run` going: it anchors every"
            " ledger.anchor_interval seconds)",
        )
    interval = settings.anchor_interval
    if interval > 0 and report.unanchored:
        age = system_clock() - parse_utc(last.at)
        if age > timedelta(seconds=2 * interval):
            return Check(
                "anchors",
                "warn",
                f"the last anchor (position {last.position}, {last.at}) is older than two"
                f" anchor intervals and {_plural(report.unanchored, 'event')} came since",
                "is `hermes-ledger run` running? `hermes-ledger anchor` anchors the head now",
            )
    return Check("anchors", "ok", report.text().removeprefix("ok: "))


def check_projections(ledger: Ledger) -> Check:
    """``projections``: each projection's checkpoint is at the head, at the version
    this code builds (a warning otherwise: the next writer with projections
    attached catches them up; ``replay`` rebuilds them)."""
    conn = ledger.connection
    head = ledger.head()
    checkpoints = read_checkpoints(conn)
    behind = []
    for projection in PROJECTIONS:
        recorded = checkpoints.get(projection.name)
        if recorded is None:
            behind.append(f"{projection.name} was never built")
            continue
        version, position = recorded
        if version != projection.version:
            behind.append(
                f"{projection.name} is at version {version}, this code builds {projection.version}"
            )
        elif position < head:
            behind.append(f"{projection.name} is {_plural(head - position, 'event')} behind")
    if behind:
        return Check(
            "projections",
            "warn",
            f"{'; '.join(behind)} (head {head})",
            "the next writer with projections attached catches them up; `hermes-ledger replay`"
            " rebuilds them now",
        )
    return Check(
        "projections", "ok", f"{_plural(len(PROJECTIONS), 'projection')} at the head ({head})"
    )


# -- the gateway's work ------------------------------------------------------------------


def check_hooks(hooks_dir: Path) -> Check:
    """``hooks``: every hook in the hooks directory loads (a refused or broken one
    is skipped by the runner: a failure)."""
    registry = HookRegistry.discover(hooks_dir)
    if registry.problems:
        return Check(
            "hooks",
            "fail",
            "; ".join(str(p) for p in registry.problems),
            "fix or remove them (`hermes-ledger hooks` lists them); `run` loads a fixed hook"
            " at its next pass",
        )
    return Check("hooks", "ok", f"{_plural(len(registry), 'hook')} load from {hooks_dir}")


def check_deliveries(ledger: EventLog) -> Check:
    """``deliveries``: no dead letters (deliveries given up on)."""
    dead = [(s.hook, s.dead) for s in hook_states(ledger) if s.dead]
    if dead:
        total = sum(n for _, n in dead)
        per_hook = ", ".join(f"{hook}: {n}" for hook, n in dead)
        return Check(
            "deliveries",
            "warn",
            f"{_plural(total, 'dead letter')} ({per_hook})",
            "see why with `hermes-ledger hooks`, fix the hook, then `hermes-ledger hooks retry`",
        )
    return Check("deliveries", "ok", "no dead letters")


def check_closes(ledger: Ledger, now: datetime, stuck_after: timedelta) -> Check:
    """``closes``: no session has been ``closing`` for longer than ``stuck_after``,
    and none is past its expiry deadline by more than that (the scheduler's
    ``session_deadlines``: as of the last tick)."""
    cutoff = format_utc(now - stuck_after)
    if not ledger.query(SQL_HAS_SESSION_MAP, ("session_map",))[0][0]:
        return Check("closes", "ok", "no sessions yet (no session map)")
    stuck = ledger.query(SQL_STUCK_CLOSING, (cutoff,))
    overdue = [(k, s, str(d)) for k, s, d in ledger.query(SQL_OVERDUE, (cutoff,))]
    return closes_check(stuck, overdue, stuck_after, "`hermes-ledger run`")


def closes_check(
    stuck: Sequence[Sequence[Any]], overdue: Sequence[Sequence[Any]], stuck_after: timedelta,
    runner: str,
) -> Check:  # fmt: skip
    """The ``closes`` check from its rows on either backend: ``stuck`` (key, session
    id, closing since), ``overdue`` (key, session id, deadline as text), the oldest
    first; ``runner`` is what to ask about ("is … running?")."""
    problems = []
    if stuck:
        key, sid, since = stuck[0]
        problems.append(
            f"{_plural(len(stuck), 'close')} unfinished for over {_minutes(stuck_after)}"
            f" (the oldest: {key} session {sid}, closing since {since})"
        )
    if overdue:
        key, sid, deadline = overdue[0]
        its = "its" if len(overdue) == 1 else "their"
        problems.append(
            f"{_plural(len(overdue), 'session')} past {its} deadline by over"
            f" {_minutes(stuck_after)} (the oldest: {key} session {sid}, due {deadline})"
        )
    if problems:
        return Check(
            "closes",
            "warn",
            "; ".join(problems),
            f"is {runner} running? Its log says why a close waits (a failing flush);"
            " `hermes-ledger tick` runs one pass now",
        )
    return Check("closes", "ok", f"no close stuck or overdue for over {_minutes(stuck_after)}")


def check_spool(home: Path, now: datetime, stuck_after: timedelta) -> Check:
    """``spool``: the Hermes plugin's spool holds no record older than
    ``stuck_after`` that has not reached the ledger (a few recent ones are a
    gateway at work)."""
    try:
        records = pending_records(home)
    except (SpoolError, OSError) as exc:
        return Check(
            "spool",
            "fail",
            f"the spool cannot be read: {exc}",
            "make it owner-only: chmod 700 the spool directory",
        )
    if not records:
        return Check("spool", "ok", "no records waiting")
    times = [r["at"] for r in records if isinstance(r.get("at"), str)]
    oldest = min(times) if times else None
    try:
        old = oldest is None or parse_utc(oldest) <= now - stuck_after
    except ValueError:
        old = True
    waiting = f"{_plural(len(records), 'record')} not yet in the ledger (the oldest from {oldest})"
    if old:
        return Check(
            "spool",
            "warn",
            waiting,
            "the gateway drains them while it runs; `hermes-ledger sync` drains them now",
        )
    return Check("spool", "ok", f"{waiting}: draining")


# -- all of them ---------------------------------------------------------------------


def diagnose(
    db: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str],
    hooks_dir: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
    stuck_after: timedelta = DEFAULT_STUCK_AFTER,
) -> DoctorReport:
    """Run every check on the ledger at ``db`` and the Hermes home ``home`` (its
    anchors, ``ledger:`` settings, hooks in ``hooks_dir`` — default the ones the
    ledger delivers — and plugin spool), at ``now`` (default: the clock). A
    ``postgresql://`` URI runs the PostgreSQL checks (``health.postgres``:
    ``POSTGRES_CHECK_NAMES``).

    A ledger that cannot be opened (none there, not a ledger, a newer schema) is
    the ``ledger`` check's failure; the checks that need it are then left out and
    the others still run. A home whose ``config.yaml`` does not parse raises
    ``ConfigError``, as ``run`` would.
    """
    root = Path(home)
    hooks = Path(hooks_dir) if hooks_dir is not None else delivered_hooks_dir(root)
    settings = RunnerSettings.load(root)
    at = now or system_clock()
    if isinstance(db, str) and is_dsn(db):
        try:
            from hermes_ledger.gateway.health.postgres import diagnose_postgres
        except ImportError:
            raise LedgerError(
                "a PostgreSQL ledger needs psycopg, which is not installed", hint=POSTGRES_HINT
            ) from None
        return diagnose_postgres(
            db, root=root, hooks=hooks, settings=settings, at=at, stuck_after=stuck_after
        )
    path = Path(db)
    checks: list[Check] = []
    unopened = None
    try:
        ledger = Ledger.open_existing(path)
    except LedgerError as exc:
        unopened = Check("ledger", "fail", str(exc), exc.hint)
        checks += [unopened, check_hooks(hooks)]
    else:
        with ledger:
            checks += [
                check_ledger(ledger),
                check_anchors(ledger, Witness.in_directory(root), settings),
                check_projections(ledger),
                check_hooks(hooks),
                check_deliveries(ledger),
                check_closes(ledger, at, stuck_after),
            ]
    checks.append(check_spool(root, at, stuck_after))
    checks.append(check_file_modes(path, root, hooks))
    return DoctorReport(tuple(checks), unopened)
