"""Several real OS processes on one ledger, on both backends (``backend``,
tests/backends.py: a SQLite file, a PostgreSQL database): concurrent appends, a
migration race on a new ledger, SIGKILL in the middle of a big batch, idempotency
across restarts. The workers open the log by its target (a path or a URI), so on
PostgreSQL several processes write one database.

The workers live in tests/proc_workers.py and run with ``sys.executable``; every
wait on them has a timeout. No result depends on a sleep: sleeps only randomise the
kill moment, or keep a lock held for a moment. PostgreSQL runs fewer rounds and
events (a fresh database and each round trip cost more), the same checks.
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import apsw
import pytest
from backends import Backend, pg_uri
from pg_support import fresh_database

from hermes_ledger.ledger import open_log
from hermes_ledger.ledger.postgres.schema import load_migrations
from hermes_ledger.ledger.schema import APPLICATION_ID, latest_version

WORKER = Path(__file__).with_name("proc_workers.py")
TIMEOUT = 60.0  # generous ceiling for any one worker; the tests take seconds

HAMMER_COUNT = {"sqlite": 5_000, "postgresql": 1_000}
CRASH_ITERATIONS = {"sqlite": 5, "postgresql": 4}
RACE_ROUNDS = {"sqlite": 12, "postgresql": 3}
PRE_COUNT = 200
BIG = {"sqlite": 20_000, "postgresql": 5_000}
Row = tuple[int, str, str, int]


# -- helpers -------------------------------------------------------------------


def spawn(command: str, **options: object) -> subprocess.Popen[str]:
    """Start ``proc_workers.py command --option value …`` in its own process."""
    args = [part for key, value in options.items() for part in (f"--{key}", str(value))]
    return subprocess.Popen(
        [sys.executable, str(WORKER), command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> str:
    """Wait for a worker; fail with its stderr unless it exited 0 and said nothing."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker {proc.args} timed out after {timeout}s; stderr:\n{err}")
    assert proc.returncode == 0, f"worker {proc.args} exited {proc.returncode}:\n{err}"
    assert "locked" not in err.lower() and "busy" not in err.lower(), err
    assert err == "", f"worker {proc.args} wrote to stderr:\n{err}"
    return out


def finish_all(procs: list[subprocess.Popen[str]], timeout: float = TIMEOUT) -> None:
    """Wait for every worker; as soon as one fails, stop the others and report it
    (they may be waiting on a barrier the failed one will never reach)."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        for proc in list(pending):
            if proc.poll() is None:
                continue
            pending.remove(proc)
            if proc.returncode != 0:
                kill_all(pending)
            finish(proc, timeout=max(1.0, deadline - time.monotonic()))
        if pending and time.monotonic() > deadline:
            finish(pending[0], timeout=0.1)  # fails with its stderr
        time.sleep(0.005)


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def wait_for_files(paths: list[Path], procs: list[subprocess.Popen[str]]) -> None:
    """Wait until every path exists, failing early if a worker died first."""
    deadline = time.monotonic() + TIMEOUT
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None and not all(p.exists() for p in paths):
                _, err = proc.communicate()
                pytest.fail(f"worker {proc.args} exited {proc.returncode} early:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {[str(p) for p in paths if not p.exists()]}")
        time.sleep(0.002)


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


SQL_ROWS = "SELECT position, event_id, stream, version FROM events{where} ORDER BY position"


def all_rows(backend: Backend) -> list[Row]:
    """(position, event_id, stream, version) of every event, read with plain SQL."""
    return backend.raw(SQL_ROWS.format(where=""))  # type: ignore[return-value]


def assert_log_invariants(backend: Backend, expected_count: int) -> list[Row]:
    """Gap-free positions 1..N, unique event_ids, versions 1..n per stream, chain intact."""
    backend.settle()
    with backend.open() as led:  # the first open after a crash: recovery happens here
        report = led.verify()
        assert report.ok, str(report)
        assert report.checked == expected_count
        assert led.head() == expected_count
    rows = all_rows(backend)
    assert len(rows) == expected_count
    assert [r[0] for r in rows] == list(range(1, expected_count + 1)), "positions have gaps"
    ids = Counter(r[1] for r in rows)
    assert not [i for i, n in ids.items() if n > 1], "an event_id is in the log twice"
    versions: dict[str, list[int]] = defaultdict(list)
    for _, _, stream, version in rows:
        versions[stream].append(version)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"stream {stream!r} versions not 1..n"
    return rows


def write_progress(backend: Backend) -> int:
    """How far an uncommitted write has got: the WAL's size in bytes on SQLite; on
    PostgreSQL, how many worker sessions hold a write transaction open."""
    if backend.name == "sqlite":
        return _size(Path(backend.target + "-wal"))
    return backend.other_sessions()[0]


def wait_mid_write(backend: Backend, since: int, proc: subprocess.Popen[str]) -> None:
    """Wait until the big batch is being written and not committed: on SQLite, its
    transaction spilling pages into the WAL (1 MiB past ``since``); on PostgreSQL, a
    worker's session holding a write transaction (or the worker has exited)."""
    grown = since + (1024 * 1024 if backend.name == "sqlite" else 1)
    deadline = time.monotonic() + TIMEOUT
    while write_progress(backend) < grown and proc.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the write never got under way ({backend.name})")
        time.sleep(0.001)


@contextmanager
def fresh_logs(backend: Backend, tmp_path: Path, count: int) -> Iterator[list[Backend]]:
    """``count`` more brand-new, empty ledgers of ``backend``'s kind (not created on
    SQLite: new file names; fresh databases on PostgreSQL, dropped afterwards)."""
    if backend.name == "sqlite":
        (tmp_path / "dbs").mkdir()
        yield [Backend("sqlite", str(tmp_path / "dbs" / f"race-{k}.db"), backend.clock)
               for k in range(count)]  # fmt: skip
        return
    with ExitStack() as stack:
        yield [Backend("postgresql", pg_uri(stack.enter_context(fresh_database())), backend.clock)
               for _ in range(count)]  # fmt: skip


# -- 1. concurrent appenders ------------------------------------------------------


@pytest.mark.parametrize("mode", ["any", "exact"])
def test_two_processes_append_concurrently(backend: Backend, tmp_path: Path, mode: str) -> None:
    db = backend.target
    count = HAMMER_COUNT[backend.name]
    backend.open().close()  # create + migrate up front; the migration race is test 2
    sync = tmp_path / "sync"
    sync.mkdir()
    names = ["w1", "w2"]
    procs = [
        spawn(
            "hammer",
            db=db,
            name=name,
            count=count,
            mode=mode,
            sync=sync,
            out=tmp_path / f"{name}.json",
        )
        for name in names
    ]
    try:
        wait_for_files([sync / f"ready-{name}" for name in names], procs)
        (sync / "go").touch()  # both are waiting on this file: they start together
        finish_all(procs)
    finally:
        kill_all(procs)

    results = {name: load(tmp_path / f"{name}.json") for name in names}
    total = count * len(names)
    rows = assert_log_invariants(backend, total)
    by_id = {event_id: (position, stream, version) for position, event_id, stream, version in rows}

    written: dict[str, set[str]] = {}
    for name, result in results.items():
        records = result["records"]
        assert len(records) == count
        ids = {r[0] for r in records}
        assert len(ids) == count, f"{name} generated a repeated event_id"
        written[name] = ids
        for event_id, stream, position, version in records:
            # What the worker was told is exactly what the log holds.
            assert by_id[event_id] == (position, stream, version)
    assert written["w1"].isdisjoint(written["w2"])
    assert written["w1"] | written["w2"] == set(by_id), "the log holds events nobody wrote"

    # They really overlapped: each started before the other finished, and their
    # events are interleaved in the log rather than one block after the other.
    w1, w2 = results["w1"], results["w2"]
    assert w1["t_first"] < w2["t_last"] and w2["t_first"] < w1["t_last"]
    owner = {event_id: name for name, ids in written.items() for event_id in ids}
    sequence = [owner[r[1]] for r in rows]
    switches = sum(1 for a, b in itertools.pairwise(sequence) if a != b)
    assert switches >= 10, f"writers barely interleaved ({switches} switches)"

    if mode == "exact":
        # Contested streams: every retried append landed exactly once.
        contested = [r for r in rows if r[2].startswith("contested-")]
        expected = sum(1 for i in range(count) if i % 4 == 0) * len(names)
        assert len(contested) == expected


# -- 2. migration race on a brand-new file ------------------------------------------


def test_processes_create_new_ledger_at_the_same_instant(backend: Backend, tmp_path: Path) -> None:
    with fresh_logs(backend, tmp_path, RACE_ROUNDS[backend.name]) as logs:
        _race(logs, tmp_path)


def _race(logs: list[Backend], tmp_path: Path) -> None:
    rounds, count = len(logs), 20
    names = ["r1", "r2", "r3"]
    sync = tmp_path / "sync"
    sync.mkdir()
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([log.target for log in logs]), encoding="utf-8")
    procs = [
        spawn(
            "race",
            targets=targets,
            name=name,
            peers=",".join(names),
            rounds=rounds,
            count=count,
            sync=sync,
            out=tmp_path / f"{name}.json",
        )
        for name in names
    ]
    try:
        finish_all(procs)
    finally:
        kill_all(procs)

    for log in logs:
        rows = assert_log_invariants(log, count * len(names))
        streams = Counter(r[2] for r in rows)
        assert streams == {f"race-{name}": count for name in names}
        if log.name == "postgresql":
            applied = [r[0] for r in log.raw("SELECT version FROM schema_migrations")]
            assert sorted(applied) == [m.version for m in load_migrations()], applied
            continue
        conn = apsw.Connection(log.target, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
            assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            applied = [r[0] for r in conn.execute("SELECT version FROM ledger_migrations")]
            assert sorted(applied) == list(range(1, latest_version() + 1)), applied
        finally:
            conn.close()
    for name in names:
        for k, result in enumerate(load(tmp_path / f"{name}.json")):
            assert result["db"] == logs[k].target
            assert len(result["positions"]) == count


@pytest.mark.parametrize("state", ["new", "existing"])
def test_open_and_append_wait_for_a_brief_lock(
    backend: Backend, tmp_path: Path, state: str
) -> None:
    """Another process holds the write lock for half a second (as one creating the
    file, or writing a big batch, does): opening and appending wait for it, well
    within the busy timeout, instead of failing with "database is locked"."""
    db = backend.target
    if state == "existing":
        backend.open().close()
    ready = tmp_path / "ready"
    holder = spawn("hold", db=db, ready=ready, hold=0.5)
    options = {"busy_timeout": 30} if backend.name == "sqlite" else {}
    try:
        wait_for_files([ready], [holder])
        with open_log(db, clock=backend.clock, **options) as led:
            result = led.append("s", [{"type": "session_reset", "session_id": "x"}])
        assert result.positions == (1,)
        finish(holder)
    finally:
        kill_all([holder])
    assert_log_invariants(backend, 1)


# -- 3. SIGKILL in the middle of a big batch -----------------------------------------


def test_kill_during_big_batch_is_all_or_nothing(backend: Backend, tmp_path: Path) -> None:
    with fresh_logs(backend, tmp_path, CRASH_ITERATIONS[backend.name]) as logs:
        _kill_during_big_batch(logs, tmp_path)


def _kill_during_big_batch(logs: list[Backend], tmp_path: Path) -> None:
    big_count = BIG[logs[0].name]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    outcomes = []
    for k, log in enumerate(logs):
        # A fresh ledger each time keeps verify() cheap; the 200 events appended just
        # before the big batch are the "earlier events" that must survive the crash.
        db = log.target
        log.open().close()
        intact: dict[str, list[int]] = {}  # stream -> positions that must never change
        tag = str(k)
        ready, done = tmp_path / f"ready-{k}.json", tmp_path / f"done-{k}.json"
        proc = spawn("crash", db=db, tag=tag, pre=PRE_COUNT, big=big_count, ready=ready, done=done)
        try:
            wait_for_files([ready], [proc])
            wal_at_ready = write_progress(log)
            if k % 2 == 0:
                # Kill inside the transaction: once it is under way (SQLite: spilling
                # pages into the WAL).
                wait_mid_write(log, wal_at_ready, proc)
                time.sleep(rng.uniform(0.0, 0.05))  # only to randomise the kill moment
            else:
                # Anywhere from before BEGIN to after COMMIT.
                time.sleep(rng.uniform(0.0, 1.0))  # only to randomise the kill moment
            wal_at_kill = write_progress(log)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=TIMEOUT)
        finally:
            kill_all([proc])
        assert proc.returncode in (-signal.SIGKILL, 0), proc.returncode
        finished = done.exists()
        intact[f"pre-{tag}"] = load(ready)["pre_positions"]

        # Reopen (WAL recovery) and look: the big batch is all there or not at all.
        log.settle()
        with log.open() as led:
            head_before = led.head()
        assert_log_invariants(log, head_before)
        big = _stream_rows(log, f"big-{tag}")
        assert len(big) in (0, big_count), f"seed {seed}: torn batch, {len(big)} rows"
        if finished:
            assert len(big) == big_count, f"seed {seed}: a committed batch was lost"
        for stream, positions in intact.items():
            assert [r[0] for r in _stream_rows(log, stream)] == positions, stream
        if big:
            assert [r[1] for r in big] == [f"big-{tag}-{i:06d}" for i in range(big_count)]
            assert [r[3] for r in big] == list(range(1, big_count + 1))
            first = big[0][0]
            assert [r[0] for r in big] == list(range(first, first + big_count))

        # A restarted process retries the same batch unchanged.
        out = tmp_path / f"retry-{k}.json"
        finish(spawn("retry", db=db, tag=tag, big=big_count, out=out))
        retry = load(out)
        assert retry["head_before"] == head_before
        if big:
            assert retry["duplicate"] is True
            assert retry["positions"] == [r[0] for r in big]
            assert retry["version"] == big_count
            assert retry["head_after"] == head_before
        else:
            assert retry["duplicate"] is False
            assert retry["positions"] == list(range(head_before + 1, head_before + big_count + 1))
            assert retry["version"] == big_count
            assert retry["head_after"] == head_before + big_count
        intact[f"big-{tag}"] = retry["positions"]
        assert_log_invariants(log, PRE_COUNT + big_count)
        for stream, positions in intact.items():
            assert [r[0] for r in _stream_rows(log, stream)] == positions, stream
        grown = wal_at_kill - wal_at_ready
        outcomes.append(("present" if big else "absent", "done" if finished else "killed", grown))

    print(f"kill outcomes (seed {seed}): {outcomes}")
    # The test did what it says: some kill landed while the batch was half-written
    # (its pages were already in the WAL, or its transaction open, yet none of it
    # survived).
    assert any(o[0] == "absent" and o[2] > 0 for o in outcomes), outcomes


def test_kill_during_a_projected_batch_leaves_the_projections_whole(
    backend: Backend, tmp_path: Path
) -> None:
    """The big batch with the projections attached (their rows in its transaction),
    SIGKILLed while it is being written: the log is consistent, the projections
    equal a replay of it, and the next projected append carries on."""
    backend.open(projections=True).close()
    ready, done = tmp_path / "ready.json", tmp_path / "done.json"
    proc = spawn("crash", db=backend.target, tag="p", pre=PRE_COUNT, big=BIG[backend.name],
                 ready=ready, done=done, projected=1)  # fmt: skip
    try:
        wait_for_files([ready], [proc])
        wait_mid_write(backend, write_progress(backend), proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
    finally:
        kill_all([proc])
    assert not done.exists()  # killed inside the batch's transaction, so:
    assert _stream_rows(backend, "big-p") == []
    assert_log_invariants(backend, PRE_COUNT)
    p = backend.projections
    with backend.open(projections=True) as log:
        assert p.verify(log).ok
        assert p.live_state(log) == p.state_at(log)
        log.append("after", [{"type": "session_reset", "session_id": "sess-big-p"}])
        assert p.verify(log).ok


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _stream_rows(backend: Backend, stream: str) -> list[Row]:
    assert stream.replace("-", "").isalnum()  # a test's own name: no quoting needed
    return backend.raw(SQL_ROWS.format(where=f" WHERE stream = '{stream}'"))  # type: ignore[return-value]


def test_kill_of_a_writer_does_not_disturb_another(backend: Backend, tmp_path: Path) -> None:
    """SIGKILL a process while it holds the write lock in the middle of a big batch:
    a second process appending at the same time carries on, without errors."""
    db, big_count = backend.target, BIG[backend.name]
    backend.open().close()
    sync = tmp_path / "sync"
    sync.mkdir()
    ready, done = tmp_path / "ready.json", tmp_path / "done.json"
    crasher = spawn("crash", db=db, tag="k", pre=PRE_COUNT, big=big_count, ready=ready, done=done)
    other = spawn(
        "hammer", db=db, name="w", count=500, mode="exact", sync=sync, out=tmp_path / "w.json"
    )
    try:
        wait_for_files([ready, sync / "ready-w"], [crasher, other])
        wal_at_ready = write_progress(backend)
        (sync / "go").touch()
        wait_mid_write(backend, wal_at_ready, crasher)
        crasher.send_signal(signal.SIGKILL)
        crasher.communicate(timeout=TIMEOUT)
        finish(other)
    finally:
        kill_all([crasher, other])
    backend.settle()
    big = _stream_rows(backend, "big-k")
    assert len(big) in (0, big_count)
    records = load(tmp_path / "w.json")["records"]
    assert len(records) == 500
    rows = assert_log_invariants(backend, PRE_COUNT + len(big) + 500)
    by_id = {event_id: (position, stream, version) for position, event_id, stream, version in rows}
    for event_id, stream, position, version in records:
        assert by_id[event_id] == (position, stream, version)


# -- 4. a repeated event_id across process restarts ----------------------------------


def test_repeated_event_ids_across_processes_are_duplicates(
    backend: Backend, tmp_path: Path
) -> None:
    db = backend.target
    first_out, second_out = tmp_path / "first.json", tmp_path / "second.json"
    finish(spawn("idem", db=db, out=first_out))
    first = load(first_out)
    assert first["head_before"] == 0
    assert [r["duplicate"] for r in first["results"]] == [False, False, False]
    assert [r["positions"] for r in first["results"]] == [[1, 2, 3], [4, 5], [6]]
    assert first["head_after"] == 6

    # Someone else appends in between, so "the original positions" differ from "head + 1".
    with backend.open() as led:
        led.append("other", [{"type": "session_reset", "session_id": "s-other"}])
        assert led.head() == 7

    finish(spawn("idem", db=db, out=second_out))
    second = load(second_out)
    assert second["head_before"] == second["head_after"] == 7
    for before, again in zip(first["results"], second["results"], strict=True):
        assert again["duplicate"] is True
        assert again["positions"] == before["positions"]
        assert again["version"] == before["version"]
    assert_log_invariants(backend, 7)


def test_worker_reports_errors_with_nonzero_exit(tmp_path: Path) -> None:
    """The harness itself: a failing worker is noticed (not silently passed)."""
    proc = spawn("retry", db=tmp_path / "missing" / "x.db", tag=0, big=1, out=tmp_path / "o.json")
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1
    assert "Traceback" in err and "LedgerError" in err, err
