"""The plugin's background worker: spool → ledger, then the ledger's own hooks.

Where it runs — the decision (issue 10)
---------------------------------------

Hermes runs a plugin's ``register()`` and its hook callbacks in *every* process
that discovers plugins: the gateway, an interactive ``hermes chat``, cron and
kanban workers, and ``hermes ledger …`` itself (its argparse is built after
discovery). The choices were a separate ``hermes-ledger run``-like process, a
thread in every process with active plugins, or a thread in the gateway only.

* **Capture happens everywhere the callbacks fire**: it is one ``os.write`` to a
  per-process spool file (``plugin.spool``), costs microseconds, opens nothing
  else, and is what makes a record survive ``kill -9`` of whatever process saw it.
* **The worker is one daemon thread in the gateway process, and nowhere else.**
  The gateway is the long-lived process that owns the sessions (its store,
  expiry watcher and ``/new``), so it is where draining promptly matters and
  where a thread lives long enough to do it; its hooks ran there before the
  plugin existed. A ``hermes chat`` is short-lived and interactive: a thread
  there would contend for the ledger's write lock with the gateway and die with
  the terminal; its records simply wait in the spool, and the gateway's worker
  drains *every* spool file of the home (live writers up to their last complete
  line, finished ones entirely, then deletes them). Without a gateway running
  they are drained by the next one, or by ``hermes ledger sync`` (``sync_home``:
  one pass from the command line). ``hermes ledger …`` registers the callbacks
  but starts nothing: ``register`` only starts the worker when the process
  already is a gateway.
* **Started lazily** (``plugin.capture``): by ``register`` when a gateway is
  already constructed, else by the first callback in a gateway process
  (``pre_gateway_dispatch`` proves it; so does Hermes's gateway runner
  existing), so a restarted gateway resumes its predecessor's spool at once.
  A process that forks never runs its parent's worker.

What one pass does
------------------

Every ``ledger.plugin_interval`` seconds (default 1 s), or promptly after a
callback ``wake()``s it: write any in-memory backlog to the spool, drain the
spool into the home's ledger (``plugin.location``: ``HERMES_LEDGER_DB``, else
``ledger.db`` in config.yaml, else ``<home>/ledger.db``; a SQLite file or a
PostgreSQL database, which the gateways of several hosts may share; opened
through ``bootstrap.build_gateway`` with the projections attached, and kept open) with
the recorder (``LiveRecorder.apply`` by default; ``apply_factory`` is the
seam), then run the ``HookDispatcher`` over the hooks in
``<home>/ledger-hooks/``. That directory is the ledger's *only*: Hermes delivers
``<home>/hooks/`` itself, so a hook there would hear of one close twice. Like
Hermes's own hooks, they are discovered when the worker opens the ledger (at
its start, and again after a failure made it close the ledger), and a hook new
to the ledger starts at the log's head then: before the spool is drained, so it
hears of the closes that were waiting in the spool.

It runs the dispatcher, never ``Scheduler.tick``: in plugin mode the closes are
Hermes's (its expiry watcher, ``/new``, auto-resets), and the recorder records
them; the ledger's scheduler closing a Hermes session on its own deadline would
record a close that did not happen.

The first pass that records something in a home also checks, once per home and
process, whether the ledger lacks the home's history (``history_gap``: sessions
in ``state.db`` that started before the plugin's first event and are not in the
ledger) and if so logs one line suggesting ``hermes ledger backfill``.

When the ledger is locked, busy, full or damaged, or its PostgreSQL server cannot
be reached (each connection attempt gives up after ``connect_timeout``), the pass
fails, the problem is logged once (and its end once), the records stay spooled,
and the pass is retried with a growing delay (at most ``MAX_RETRY_DELAY``):
nothing is lost. All of that happens in the worker thread; a callback never waits
for it. At interpreter exit (``atexit``) the worker makes one last drain with
short timeouts and stops; what it could not drain waits for the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hermes_ledger.gateway.bootstrap import Gateway, build_gateway
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.config.paths import default_ledger_hooks_dir
from hermes_ledger.gateway.hooks import DeliveryReport
from hermes_ledger.gateway.plugin.location import describe_ledger, plugin_ledger
from hermes_ledger.gateway.plugin.spool import (
    DrainReport,
    SpoolBusyError,
    SpoolError,
    SpoolWriter,
    drain,
    spool_dir,
)
from hermes_ledger.gateway.plugin.status import HistoryGap, history_gap
from hermes_ledger.ledger import EventLog, Ledger, LedgerBusyError, LedgerError, open_log
from hermes_ledger.ledger.backend import is_dsn

__all__ = [
    "MAX_RETRY_DELAY",
    "ApplyFactory",
    "Incidents",
    "PassOutcome",
    "SpoolWorker",
    "SyncError",
    "SyncReport",
    "live_recorder",
    "sync_home",
]

log = logging.getLogger("hermes_plugins.ledger")

MAX_RETRY_DELAY = 30.0
"""Seconds between attempts at most while the ledger cannot be written."""
_DEBOUNCE = 0.02  # after a wake-up: let the rest of a burst of callbacks arrive

ApplyFn = Callable[[Sequence[Mapping[str, Any]]], Any]
ApplyFactory = Callable[[Gateway, Path], ApplyFn]
"""Makes the drain's ``apply`` for an open gateway over the home's ledger."""


def live_recorder(gateway: Gateway, home: Path) -> ApplyFn:
    """The production ``apply``: ``LiveRecorder(...).apply`` over the gateway's ledger."""
    from hermes_ledger.gateway.hermes.live import LiveRecorder

    recorder = LiveRecorder(
        gateway.ledger, home, config=gateway.config, redact_tools=gateway.settings.redact_tools
    )
    return recorder.apply


class Incidents:
    """Log a problem once when it starts and once when it ends, not once per call.

    An incident is identified by ``where`` and the exception's type, so a
    different problem at the same place is a new incident.
    """

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = self.logger = logger
        self._open: dict[str, str] = {}
        self._lock = threading.Lock()

    def fail(self, where: str, exc: BaseException, *, action: str = "") -> None:
        kind = type(exc).__name__
        with self._lock:
            if self._open.get(where) == kind:
                return
            self._open[where] = kind
        extra = f"; {action}" if action else ""
        self._log.warning("ledger plugin: %s failed: %s: %s%s", where, kind, exc, extra)

    def ok(self, where: str) -> None:
        if where not in self._open:  # the common case, without the lock
            return
        with self._lock:
            if self._open.pop(where, None) is None:
                return
        self._log.warning("ledger plugin: %s works again", where)

    def failing(self, where: str) -> bool:
        return where in self._open


@dataclass
class PassOutcome:
    """One pass: what the drain did, what the hooks were given, what failed."""

    drained: DrainReport | None = None
    delivered: DeliveryReport | None = None
    error: BaseException | None = None
    anchor_error: str | None = None  # why an anchor that was due was refused

    @property
    def ok(self) -> bool:
        return self.error is None


class SpoolWorker:
    """Drains ``home``'s spool into its ledger and delivers its ledger hooks, in a
    daemon thread (``start``) or a pass at a time (``run_pass``).

    ``ledger`` is the ledger (a file or a ``postgresql://`` URI); by default the
    home's (``plugin.location.plugin_ledger``, read when the ledger is opened).
    ``apply_factory(gateway, home)`` makes the drain's ``apply`` each time the
    ledger is opened (default ``live_recorder``); ``writer`` is this process's
    spool writer, whose backlog each pass writes out. ``interval`` defaults to
    ``ledger.plugin_interval``. ``busy_timeout`` bounds a wait for SQLite's write
    lock, ``connect_timeout`` (whole seconds, at least 2: libpq's minimum) a
    connection attempt to PostgreSQL.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        ledger: str | os.PathLike[str] | None = None,
        apply_factory: ApplyFactory = live_recorder,
        writer: SpoolWriter | None = None,
        interval: float | None = None,
        deliver_hooks: bool = True,
        hooks_dir: str | os.PathLike[str] | None = None,
        lock_timeout: float = 2.0,
        busy_timeout: float = 2.0,
        connect_timeout: int = 5,
        exit_timeout: float = 3.0,
        max_retry_delay: float = MAX_RETRY_DELAY,
        incidents: Incidents | None = None,
    ) -> None:
        self.home = Path(home)
        self._target = None if ledger is None else _target(ledger)
        self.hooks_dir = (
            Path(hooks_dir) if hooks_dir is not None else default_ledger_hooks_dir(self.home)
        )
        self.apply_factory = apply_factory
        self.writer = writer
        self.deliver_hooks = deliver_hooks
        self.lock_timeout = lock_timeout
        self.busy_timeout = busy_timeout
        self.connect_timeout = max(2, int(connect_timeout))
        self.exit_timeout = exit_timeout
        self.max_retry_delay = max_retry_delay
        self.incidents = incidents or Incidents()
        self._interval = interval
        self._gateway: Gateway | None = None
        self._apply: ApplyFn | None = None
        self._pass_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._failures = 0

    # -- the thread ----------------------------------------------------------------

    @property
    def interval(self) -> float:
        if self._interval is None:
            try:
                self._interval = RunnerSettings.load(self.home).plugin_interval
                self.incidents.ok("reading the ledger: section")
            except Exception as exc:  # a bad config.yaml: the default, and say so once
                self.incidents.fail("reading the ledger: section", exc, action="using 1 s")
                return 1.0
        return self._interval

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start the daemon thread (once); True if this call started it."""
        with self._start_lock:
            if self._thread is not None:
                return False
            self._thread = threading.Thread(
                target=self._run, name=f"hermes-ledger-worker:{self.home}", daemon=True
            )
            self._thread.start()
            atexit.register(self._at_exit)
            return True

    def wake(self) -> None:
        """Ask for a pass soon (a callback spooled something)."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread after one last drain; True if it ended within ``timeout``."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(self.exit_timeout if timeout is None else timeout)
        return not thread.is_alive()

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):  # never disturb the interpreter's exit
            self.stop(self.exit_timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.run_pass()
                if self._failures:
                    delay = min(self.interval * 2 ** min(self._failures, 10), self.max_retry_delay)
                    self._stop.wait(delay)  # wake-ups do not hurry a retry
                else:
                    if self._wake.wait(self.interval) and not self._stop.is_set():
                        self._stop.wait(_DEBOUNCE)
                self._wake.clear()
            # the last drain: a short wait for the drain lock, no hook calls (their
            # deliveries stay queued in the ledger)
            self.lock_timeout = min(self.exit_timeout / 2, self.lock_timeout)
            if self.writer is not None:
                self.writer.close()  # our own file, released, is drained and removed
            self.run_pass(hooks=False)
        except BaseException as exc:  # a bug here must not take the gateway down
            self.incidents.fail("the worker thread", exc, action="it stopped")
        finally:
            self._close_gateway()

    # -- a pass -----------------------------------------------------------------------

    def run_pass(self, *, hooks: bool | None = None) -> PassOutcome:
        """Backlog → spool, spool → ledger, then (``hooks``, default ``deliver_hooks``)
        the ledger hooks. Never raises: the outcome says what failed (and the log,
        once per incident)."""
        outcome = PassOutcome()
        with self._pass_lock:
            if self.writer is not None:
                self.writer.flush_backlog()
            try:
                gateway, apply = self._open()
                # Hooks installed since the last pass start before the closes it records.
                gateway.runner.refresh_hooks()
                outcome.drained = drain(self.home, apply, lock_timeout=self.lock_timeout)
                self.incidents.ok("recording the spool in the ledger")
            except Exception as exc:
                outcome.error = exc
                self._failures += 1
                self.incidents.fail(
                    "recording the spool in the ledger", exc,
                    action=f"the records stay in {self.home / 'ledger-spool'}; retrying",
                )  # fmt: skip
                if not isinstance(exc, LedgerBusyError | SpoolBusyError):
                    self._close_gateway()  # reopen from scratch next time
                return outcome
            self._failures = 0
            if outcome.drained.applied:
                self._suggest_backfill(gateway.ledger)
            if self.deliver_hooks if hooks is None else hooks:
                try:
                    outcome.delivered = gateway.dispatcher.deliver()
                    self.incidents.ok("delivering ledger hooks")
                except Exception as exc:
                    outcome.error = exc
                    self.incidents.fail("delivering ledger hooks", exc, action="retrying")
            # The runner's anchoring, at its interval (ledger.anchor_interval).
            _, outcome.anchor_error = gateway.runner.anchor_if_due(gateway.runner.clock())
            if outcome.anchor_error:
                self.incidents.fail("anchoring the ledger", LedgerError(outcome.anchor_error))
            else:
                self.incidents.ok("anchoring the ledger")
        return outcome

    @property
    def ledger_target(self) -> Path | str:
        """The ledger this worker records into: a file's path or a PostgreSQL URI.
        Raises ConfigError when it comes from a config.yaml that cannot be read."""
        if self._target is None:
            self._target = plugin_ledger(self.home)
        return self._target

    def _suggest_backfill(self, ledger: EventLog | Ledger) -> None:
        """Once per home and process: say if the ledger lacks the home's history."""
        home = self.home.resolve()
        if home in _history_checked:
            return
        try:
            gap = history_gap(ledger, self.home)
        except Exception:  # never a reason to fail the pass; no state.db: nothing to say
            gap = None
        else:
            if gap is not None and not gap.plugin_started:
                return  # nothing the plugin recorded yet: ask again after the next records
        with _history_lock:
            if home in _history_checked:
                return
            _history_checked.add(home)
        if gap is not None and gap.sessions:
            self.incidents.logger.warning("ledger plugin: %s", gap.message())

    def _open(self) -> tuple[Gateway, ApplyFn]:
        if self._gateway is None or self._apply is None:
            self._close_gateway()
            target = self.ledger_target
            ledger: EventLog
            if isinstance(target, str):
                ledger = open_log(target, connect_timeout=self.connect_timeout)
            else:
                ledger = open_log(target, busy_timeout=self.busy_timeout)
            try:
                gateway = build_gateway(ledger, home=self.home, hooks_dir=self.hooks_dir)
                apply = self.apply_factory(gateway, self.home)
            except BaseException:
                ledger.close()
                raise
            self._gateway, self._apply = gateway, apply
        return self._gateway, self._apply

    def _close_gateway(self) -> None:
        gateway, self._gateway, self._apply = self._gateway, None, None
        if gateway is not None:
            with contextlib.suppress(Exception):
                gateway.ledger.close()


# -- the history from before the plugin ------------------------------------------------

_history_checked: set[Path] = set()  # homes checked by this process's workers
_history_lock = threading.Lock()
# -- one pass from the command line: `hermes ledger sync` --------------------------------


class SyncError(LedgerError):
    """``sync_home`` could not drain the spool (the message says why)."""


@dataclass
class SyncReport:
    """What ``sync_home`` did: the spool's records handed to the recorder, those it
    applied and skipped (with reasons), events and closes written, hook calls.
    ``ledger`` names the ledger (``location.describe_ledger``: never a password)."""

    home: Path
    ledger: str
    records: int = 0
    applied: int = 0
    events: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    closes: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bad_lines: int = 0
    hooks: dict[str, Any] | None = None
    history: HistoryGap | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "ledger": self.ledger,
            "spool": str(spool_dir(self.home)),
            "records": self.records,
            "applied": self.applied,
            "events": self.events,
            "skipped": self.skipped,
            "closes": self.closes,
            "warnings": self.warnings,
            "bad_lines": self.bad_lines,
            "hooks": self.hooks,
            "backfill": self.history.to_dict() if self.history is not None else None,
        }

    def summary(self) -> list[str]:
        if not self.records and not (self.hooks and self.hooks.get("enqueued")):
            lines = [f"Nothing waiting in {spool_dir(self.home)}."]
        else:
            lines = [
                f"Recorded {self.records} spooled record(s) of {self.home} in {self.ledger}:"
                f" {self.applied} applied, {len(self.skipped)} skipped, {self.events} event(s)"
                f" appended, {len(self.closes)} close(s)."
            ]
        for close in self.closes:
            lines.append(f"  closed {close['session_id']} ({close['session_key']}): "
                         f"{close['reason']}")  # fmt: skip
        for skipped in self.skipped:
            lines.append(f"  skipped a {skipped['kind']} record: {skipped['reason']}")
        if self.bad_lines:
            lines.append(f"  {self.bad_lines} spool line(s) were not records (left out)")
        if self.hooks is not None:
            lines.append(
                f"Ledger hooks: {self.hooks['delivered']} delivered, {self.hooks['failed']}"
                f" failed ({self.hooks['dead_lettered']} dead-lettered)."
            )
        if self.history is not None and self.history.sessions:
            lines.append(f"Hint: {self.history.message()}")
        return lines


def _quiet() -> logging.Logger:
    quiet = logging.getLogger("hermes_plugins.ledger.sync")
    quiet.propagate = False  # the command reports the error itself, once
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    return quiet


def sync_home(
    home: str | os.PathLike[str],
    *,
    ledger: str | os.PathLike[str] | None = None,
    hooks: bool = True,
    lock_timeout: float = 10.0,
    busy_timeout: float = 10.0,
    apply_factory: ApplyFactory = live_recorder,
) -> SyncReport:
    """Drain ``home``'s spool into its ledger now and (``hooks``) deliver its ledger
    hooks: one worker pass, for a home where no gateway runs (records of ``hermes
    chat`` wait in the spool otherwise, or that a gateway could not record while
    its PostgreSQL server was unreachable). ``ledger`` is the home's by default
    (``plugin.location``). Safe beside a running gateway (the drain lock and the
    hook claims keep each record and call single).

    Raises SyncError (or the LedgerError at fault, with its hint) when the spool
    cannot be drained; a hook that fails is reported, not raised.
    """
    home = Path(home).expanduser()
    if not home.is_dir():
        hint = "set HERMES_HOME (or use `hermes -p PROFILE ledger sync`)"
        raise SyncError(f"there is no Hermes home at {home}", hint=hint)
    target = _target(ledger) if ledger is not None else plugin_ledger(home)
    report = SyncReport(home, describe_ledger(target))
    if not spool_dir(home).exists() and isinstance(target, Path) and not target.exists():
        return report  # nothing spooled, nothing to deliver: do not create a ledger
    worker = SpoolWorker(
        home,
        ledger=target,
        apply_factory=apply_factory,
        lock_timeout=lock_timeout,
        busy_timeout=busy_timeout,
        deliver_hooks=hooks,
        incidents=Incidents(_quiet()),
    )
    try:
        outcome = worker.run_pass()
        if outcome.drained is not None and outcome.drained.applied:
            with contextlib.suppress(Exception):
                assert worker._gateway is not None
                report.history = history_gap(worker._gateway.ledger, home)
    finally:
        worker._close_gateway()
    if outcome.drained is None:
        raise _sync_error(home, report.ledger, outcome.error)
    drained = outcome.drained
    report.records, report.bad_lines = drained.applied, drained.bad_lines
    offset = 0
    for result in drained.results:
        data = result.to_dict() if hasattr(result, "to_dict") else {}
        report.applied += data.get("applied", 0)
        report.events += data.get("events", 0)
        for skipped in data.get("skipped", []):
            report.skipped.append({**skipped, "index": offset + skipped["index"]})
        report.closes.extend(data.get("closes", []))
        report.warnings.extend(w for w in data.get("warnings", []) if w not in report.warnings)
        offset += data.get("applied", 0) + len(data.get("skipped", []))
    if outcome.delivered is not None:
        report.hooks = outcome.delivered.to_dict()
    elif hooks and outcome.error is not None:
        report.hooks = {"enqueued": 0, "delivered": 0, "failed": 0, "dead_lettered": 0,
                        "error": f"{type(outcome.error).__name__}: {outcome.error}"}  # fmt: skip
    return report


def _target(ledger: str | os.PathLike[str]) -> Path | str:
    """A ledger given as a URI (kept as it is) or a file (a ``Path``)."""
    return ledger if isinstance(ledger, str) and is_dsn(ledger) else Path(ledger)


def _sync_error(home: Path, ledger: str, exc: BaseException | None) -> LedgerError:
    spool = spool_dir(home)
    if isinstance(exc, SpoolBusyError):
        return SyncError(
            f"another process is draining {spool} (a running gateway's worker?)",
            hint="a running gateway drains the spool itself; otherwise run `hermes ledger sync`"
            " again",
        )
    if isinstance(exc, LedgerError):
        return exc
    if isinstance(exc, SpoolError):
        return SyncError(f"cannot drain {spool}: {exc}",
                         hint=f"make {spool} a directory of yours with mode 0700")  # fmt: skip
    return SyncError(
        f"cannot record {spool} in {ledger}: {type(exc).__name__}: {exc}",
        hint="the records stay spooled; fix the problem and run `hermes ledger sync` again",
    )
