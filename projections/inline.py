"""Live projections: attach them to an open Ledger, catch up, then project every append.

``attach`` (1) creates what is missing and rebuilds any projection whose recorded
schema version is older than the code's, (2) catches a lagging projection up from
its checkpoint, in short transactions, and (3) registers the inline projector,
which runs inside every later append's transaction: the append's events and the
projection rows (and checkpoints) commit together, so a reader always sees both.

Several processes may attach to one ledger at once. Every step re-reads the
checkpoints under the write lock, and the inline projector applies everything
after the checkpoint (not just the new events), so an append by a process
without projections is picked up by the next projected append. A projection
whose recorded version is *newer* than the code's belongs to newer code: it is
left alone (neither written nor rebuilt) and reported as skipped.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apsw

from hermes_ledger.ledger import Ledger, Recorded
from hermes_ledger.ledger.events import EVENT_TYPES
from hermes_ledger.ledger.sql import scalar
from hermes_ledger.projections.definitions import Projection, by_name
from hermes_ledger.projections.erasing import scrub
from hermes_ledger.projections.errors import ProjectionError, RebuildSuperseded
from hermes_ledger.projections.quoting import LIVE
from hermes_ledger.projections.rebuilding import DEFAULT_CHUNK, lease, rebuild_outdated
from hermes_ledger.projections.replay import (
    advance_checkpoint,
    ensure_bookkeeping,
    head,
    prepare_connection,
    read_checkpoints,
    replay,
)
from hermes_ledger.projections.statements import EVENT_TIME
from hermes_ledger.projections.views import ensure_views

__all__ = ["AttachReport", "attach", "open_ledger"]

_NO_OCCURRED_AT = '{"occurred_at":null'
"""How ``data`` starts when the event has no occurred_at (its time is recorded_at)."""

_ATTACHED: weakref.WeakKeyDictionary[Ledger, _InlineProjector] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class AttachReport:
    """What attaching did: ``rebuilt`` projections (missing or older schema),
    events ``caught_up`` per projection, projections ``skipped`` because newer code
    owns them, and the ``position`` the projections were at when attach returned."""

    position: int
    rebuilt: tuple[str, ...] = ()
    caught_up: dict[str, int] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    already_attached: bool = False


def _current_meta_prefixes() -> dict[str, tuple[str, str]]:
    """How the ledger's meta column starts for an event written in its current shape."""
    return {
        t: (f'{{"schema_version":{m.schema_version},', f'{{"schema_version":{m.schema_version}}}')
        for t, m in EVENT_TYPES.items()
    }


_CURRENT_META = _current_meta_prefixes()


def _current_shape(rec: Recorded) -> bool:
    prefixes = _CURRENT_META.get(rec.type)
    return prefixes is not None and rec.meta_json.startswith(prefixes)


class _InlineProjector:
    """Runs in the append transaction: bring every owned projection up to the append.

    Fast path (the projection had applied everything before this append): one
    conditional update advances the checkpoints, then each event goes through the
    single-event twins. Otherwise (a lagging projection, or events in
    an older shape) the range statements replay everything after the checkpoint.
    """

    def __init__(self, projections: Sequence[Projection]) -> None:
        self.projections = tuple(projections)
        owned = " OR ".join(
            f"(name = ?{3 + 2 * i} AND version = ?{4 + 2 * i})" for i in range(len(projections))
        )
        self._claim_sql = (
            "UPDATE main.projection_checkpoints SET position = ?1"
            f" WHERE position = ?2 AND ({owned or 'false'})"
        )
        self._claim_tail = tuple(x for p in self.projections for x in (p.name, p.version))
        self._twins = {
            (p.name, event_type): p.one_sql(LIVE, event_type)
            for p in self.projections
            for event_type in EVENT_TYPES
        }

    def __call__(self, conn: apsw.Connection, records: Sequence[Recorded]) -> None:
        if not self.projections:
            return
        first = records[0].position
        last = records[-1].position
        fast: Sequence[Projection] = ()
        slow: Sequence[Projection] = self.projections
        if all(_current_shape(rec) for rec in records):
            conn.execute(self._claim_sql, (last, first - 1, *self._claim_tail))
            if conn.changes() == len(self.projections):
                fast, slow = self.projections, ()
            elif conn.changes():
                checkpoints = read_checkpoints(conn)
                fast = [p for p in self.projections if checkpoints.get(p.name) == (p.version, last)]
                slow = [p for p in self.projections if p not in fast]
        if fast:
            for rec in records:
                if rec.data_json.startswith(_NO_OCCURRED_AT):
                    when = rec.recorded_at_text
                else:
                    when = scalar(conn, EVENT_TIME, (rec.data_json, rec.recorded_at_text))
                args = (rec.position, rec.stream, rec.session_id, rec.data_json, when,
                        rec.meta_json, rec.type)  # fmt: skip
                for projection in fast:
                    for sql, count in self._twins[projection.name, rec.type]:
                        conn.execute(sql, args[:count])
        if slow:
            self._replay_ranges(conn, slow, last)

    @staticmethod
    def _replay_ranges(conn: apsw.Connection, projections: Sequence[Projection], last: int) -> None:
        checkpoints = read_checkpoints(conn)
        for projection in projections:
            recorded = checkpoints.get(projection.name)
            if recorded is None or recorded[0] != projection.version or recorded[1] >= last:
                continue  # not attached here, owned by other code, or already applied
            replay(conn, projection, LIVE, recorded[1] + 1, last)
            advance_checkpoint(conn, projection, last)


def attach(
    ledger: Ledger,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int, int], None] | None = None,
    stall_timeout: float = 60.0,
    projections: Sequence[Projection] | None = None,
) -> AttachReport:
    """Bring the projections up to date and keep them so on every append.

    Creates (by rebuilding) projections that are missing or at an older schema
    version, catches up those behind the log, then registers the inline projector
    with ``ledger.add_inline_projector``. Idempotent per Ledger object. If another
    process is rebuilding the same projections, waits for it (and takes over if
    it makes no progress for ``stall_timeout`` seconds). ``progress(done, total)``
    reports rebuild and catch-up progress. ``projections`` are the definitions to
    keep (default: the code's, ``PROJECTIONS``); a test passes other versions.
    """
    if ledger.readonly:
        raise ProjectionError(
            f"{ledger.path} is open read-only: projections cannot be kept up to date",
            hint="use projections.state_at or projections.verify to read a read-only ledger",
        )
    if ledger in _ATTACHED:
        return AttachReport(position=ledger.head(), already_attached=True)

    def plan(conn: apsw.Connection) -> tuple[list[Projection], list[Projection], list[str]]:
        prepare_connection(conn)
        ensure_bookkeeping(conn)
        checkpoints = read_checkpoints(conn)
        owned, outdated, skipped = [], [], []
        for projection in by_name() if projections is None else projections:
            recorded = checkpoints.get(projection.name)
            if recorded is not None and recorded[0] > projection.version:
                skipped.append(projection.name)
                continue
            owned.append(projection)
            if recorded is None or recorded[0] < projection.version:
                outdated.append(projection)
        return owned, outdated, skipped

    owned, outdated, skipped = ledger.write(plan)
    if outdated:
        _rebuild_or_wait(ledger, outdated, chunk_size, progress, stall_timeout)
    caught_up = _catch_up(ledger, owned, chunk_size, progress)
    if not skipped:
        ledger.write(ensure_views)
    projector = _InlineProjector(owned)
    ledger.add_inline_projector(projector)
    ledger.add_scrubber(scrub)
    _ATTACHED[ledger] = projector
    return AttachReport(
        position=ledger.head(),
        rebuilt=tuple(p.name for p in outdated),
        caught_up=caught_up,
        skipped=tuple(skipped),
    )


def open_ledger(path: str | os.PathLike[str], **options: Any) -> Ledger:
    """``Ledger.open(path, **options)`` with the projections attached (and caught up)."""
    ledger = Ledger.open(path, **options)
    try:
        attach(ledger)
    except BaseException:
        ledger.close()
        raise
    return ledger


def _catch_up(
    ledger: Ledger,
    owned: Iterable[Projection],
    chunk_size: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, int]:
    """Apply what each projection has not seen yet, one chunk per write transaction."""
    applied = {p.name: 0 for p in owned}
    projections = tuple(owned)

    def step(conn: apsw.Connection) -> tuple[bool, int, int]:
        checkpoints = read_checkpoints(conn)
        position = head(conn)
        done = True
        lowest = position
        for projection in projections:
            recorded = checkpoints.get(projection.name)
            if recorded is None or recorded[0] != projection.version or recorded[1] >= position:
                continue
            upto = min(recorded[1] + chunk_size, position)
            replay(conn, projection, LIVE, recorded[1] + 1, upto)
            advance_checkpoint(conn, projection, upto)
            applied[projection.name] += upto - recorded[1]
            lowest = min(lowest, upto)
            done = done and upto >= position
        return done, lowest, position

    while True:
        done, lowest, position = ledger.write(step)
        if progress is not None:
            progress(lowest, position)
        if done:
            return {name: n for name, n in applied.items() if n}


def _rebuild_or_wait(
    ledger: Ledger,
    projections: Sequence[Projection],
    chunk_size: int,
    progress: Callable[[int, int], None] | None,
    stall_timeout: float,
) -> None:
    """Rebuild ``projections`` unless another process already has; if another process
    takes the rebuild over, wait for it."""
    while True:
        try:
            rebuild_outdated(ledger, tuple(projections), chunk_size=chunk_size,
                             progress=progress, only_outdated=True)  # fmt: skip
            return
        except RebuildSuperseded:
            if _wait_for_other_rebuild(ledger, projections, stall_timeout):
                return


def _wait_for_other_rebuild(
    ledger: Ledger, projections: Sequence[Projection], stall_timeout: float
) -> bool:
    """True once the projections are at the code's version; False if the rebuild that
    took over stops making progress (the caller then takes it over in turn)."""

    def look(conn: apsw.Connection) -> tuple[bool, tuple[str, str, int] | None]:
        checkpoints = read_checkpoints(conn)
        ready = all(checkpoints.get(p.name, (0, 0))[0] >= p.version for p in projections)
        return ready, lease(conn)

    last_seen: tuple[str, str, int] | None = None
    since = time.monotonic()
    delay = 0.01
    while True:
        ready, current = ledger.write(look)
        if ready:
            return True
        if current is None:
            return False  # the other rebuild ended without swapping these in
        if current != last_seen:
            last_seen, since = current, time.monotonic()
        elif time.monotonic() - since > stall_timeout:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
