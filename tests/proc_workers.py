"""Worker processes for tests/test_processes.py (run as ``python proc_workers.py …``).

Each subcommand opens a real ledger, a SQLite file or a PostgreSQL database, by its
target (``--db``: a path or a ``postgresql://`` URI, through ``open_log``) and
appends to it from its own OS process.
Any exception is printed (with its traceback) to stderr and the process exits 1
(``worker_support.run_worker``), so a "database is locked" or any other error can
never be swallowed: the parent test asserts a zero exit status and an empty stderr.

Results go to JSON files written atomically (temp file + rename), so the parent can
tell a finished write from a torn one even when it SIGKILLs the worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import apsw
from backends import attach_projections
from worker_support import run_worker, wait_for

from hermes_ledger.ledger import ANY, NO_STREAM, ConcurrencyError, open_log
from hermes_ledger.ledger.backend import is_dsn
from hermes_ledger.ledger.events import MessageAppended


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)


def touch(path: Path) -> None:
    path.touch()


def message(event_id: str | None, session_id: str, content: str) -> MessageAppended:
    if event_id is None:
        return MessageAppended(session_id=session_id, role="user", content=content)
    return MessageAppended(event_id=event_id, session_id=session_id, role="user", content=content)


def big_batch(tag: str, count: int) -> list[MessageAppended]:
    """The big batch of crash test iteration ``tag``: fixed ids and fixed content."""
    return [
        message(f"big-{tag}-{i:06d}", f"sess-big-{tag}", f"big batch {tag} event {i}")
        for i in range(count)
    ]


def pre_batch(tag: str, count: int) -> list[MessageAppended]:
    return [
        message(f"pre-{tag}-{i:06d}", f"sess-pre-{tag}", f"pre batch {tag} event {i}")
        for i in range(count)
    ]


def idem_appends() -> list[tuple[str, list[MessageAppended], Any]]:
    """(stream, events, expected_version) of the idempotency test, fixed ids and content."""
    return [
        ("idem-a", [message(f"idem-a-{i}", "sess-idem-a", f"a{i}") for i in range(3)], NO_STREAM),
        ("idem-a", [message(f"idem-a-{i}", "sess-idem-a", f"a{i}") for i in range(3, 5)], 3),
        ("idem-b", [message("idem-b-0", "sess-idem-b", "b0")], ANY),
    ]


# -- subcommands ---------------------------------------------------------------


def cmd_hammer(args: argparse.Namespace) -> None:
    """Single-event appends, after a start barrier; records what each append returned."""
    sync = Path(args.sync)
    name = args.name
    records: list[list[Any]] = []
    conflicts = 0
    with open_log(args.db) as led:
        touch(sync / f"ready-{name}")
        wait_for([sync / "go"])
        own_versions: dict[str, int] = {}
        t_first = time.time()
        for i in range(args.count):
            event = message(None, f"sess-{name}-{i % 5}", f"{name} event {i}")
            if args.mode == "any":
                # A third of the events go to streams both processes write to.
                stream = f"shared-{i % 4}" if i % 3 == 0 else f"{name}-{i % 5}"
                result = led.append(stream, [event], ANY)
            elif i % 4 == 0:
                # Contested stream, exact expected version: re-read and retry on conflict.
                stream = f"contested-{i % 3}"
                for _attempt in range(10_000):
                    current = led.stream_version(stream)
                    try:
                        result = led.append(stream, [event], current)
                        break
                    except ConcurrencyError:
                        conflicts += 1
                else:
                    raise RuntimeError(f"gave up on {stream} after 10000 conflicts")
            else:
                # Own stream, exact expected version: nobody else writes it, so a
                # ConcurrencyError here would be a bug and ends the worker.
                stream = f"{name}-{i % 5}"
                expected = own_versions.get(stream, 0)
                result = led.append(stream, [event], expected)
                own_versions[stream] = expected + 1
                if result.version != expected + 1:
                    raise AssertionError(f"{stream}: version {result.version} != {expected + 1}")
            if result.duplicate or len(result.positions) != 1:
                raise AssertionError(f"unexpected result {result!r} for a new event")
            records.append([event.event_id, stream, result.positions[0], result.version])
        t_last = time.time()
    write_json(
        Path(args.out),
        {"records": records, "t_first": t_first, "t_last": t_last, "conflicts": conflicts},
    )


def cmd_race(args: argparse.Namespace) -> None:
    """For each round: meet the peers, then open/create a brand-new ledger (the
    round's target in the JSON list ``--targets``) and append."""
    sync = Path(args.sync)
    peers = args.peers.split(",")
    targets = json.loads(Path(args.targets).read_text(encoding="utf-8"))
    results = []
    for k in range(args.rounds):
        touch(sync / f"arrive-{k}-{args.name}")
        wait_for([sync / f"arrive-{k}-{peer}" for peer in peers])
        path = targets[k]
        with open_log(path) as led:
            stream = f"race-{args.name}"
            positions = []
            for i in range(args.count):
                event = message(f"race-{k}-{args.name}-{i}", f"sess-{args.name}", f"e{i}")
                result = led.append(stream, [event], i if i else NO_STREAM)
                positions.append(result.positions[0])
        results.append({"db": str(path), "positions": positions})
    write_json(Path(args.out), results)


def cmd_crash(args: argparse.Namespace) -> None:
    """A small append, then the big batch; the parent SIGKILLs us during the big one."""
    tag = args.tag
    big = big_batch(tag, args.big)  # built before the signal: the kill should hit the write
    # SQLite's default 2 MiB page cache, so the big transaction spills pages into the
    # WAL before it commits: a kill then leaves uncommitted frames behind to recover.
    options = {} if is_dsn(args.db) else {"cache_kib": 2048}
    with open_log(args.db, **options) as led:
        if args.projected:  # the projections' rows in the same transactions
            attach_projections(led)
        pre = led.append(f"pre-{tag}", pre_batch(tag, args.pre), NO_STREAM)
        write_json(Path(args.ready), {"pre_positions": list(pre.positions)})
        started = time.monotonic()
        result = led.append(f"big-{tag}", big, NO_STREAM)
        elapsed = time.monotonic() - started
    write_json(
        Path(args.done),
        {"first": result.positions[0], "last": result.positions[-1], "elapsed": elapsed},
    )


def cmd_retry(args: argparse.Namespace) -> None:
    """Send the crash test's big batch again, unchanged (same ids, same expected version)."""
    with open_log(args.db) as led:
        head_before = led.head()
        result = led.append(f"big-{args.tag}", big_batch(args.tag, args.big), NO_STREAM)
        head_after = led.head()
    write_json(
        Path(args.out),
        {
            "positions": list(result.positions),
            "version": result.version,
            "duplicate": result.duplicate,
            "head_before": head_before,
            "head_after": head_after,
        },
    )


def cmd_hold(args: argparse.Namespace) -> None:
    """Hold the write lock for a moment, then release it: BEGIN IMMEDIATE in plain
    SQLite; on PostgreSQL the lock an append takes (events IN EXCLUSIVE MODE) or, on
    a database not yet migrated, the lock a migrating process holds."""
    if is_dsn(args.db):
        hold_postgres(args)
        return
    conn = apsw.Connection(args.db)
    conn.execute("BEGIN IMMEDIATE")
    touch(Path(args.ready))
    time.sleep(args.hold)
    conn.execute("COMMIT")
    conn.close()


def hold_postgres(args: argparse.Namespace) -> None:
    import psycopg

    from hermes_ledger.ledger.postgres.schema import MIGRATION_LOCK_KEY, SCHEMA, SQL_MIGRATION_LOCK

    with psycopg.connect(args.db, autocommit=True) as conn, conn.transaction():
        exists = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.events",)).fetchone()
        if exists and exists[0] is not None:
            conn.execute(f"LOCK TABLE {SCHEMA}.events IN EXCLUSIVE MODE")
        else:
            conn.execute(SQL_MIGRATION_LOCK, (MIGRATION_LOCK_KEY,))
        touch(Path(args.ready))
        time.sleep(args.hold)


def cmd_idem(args: argparse.Namespace) -> None:
    """Run the fixed appends of the idempotency test and record every result."""
    out = []
    with open_log(args.db) as led:
        head_before = led.head()
        for stream, events, expected in idem_appends():
            result = led.append(stream, events, expected)
            out.append(
                {
                    "positions": list(result.positions),
                    "version": result.version,
                    "duplicate": result.duplicate,
                }
            )
        head_after = led.head()
    write_json(
        Path(args.out), {"results": out, "head_before": head_before, "head_after": head_after}
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="proc_workers")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("hammer")
    p.add_argument("--db", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--mode", choices=["any", "exact"], required=True)
    p.add_argument("--sync", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_hammer)

    p = sub.add_parser("race")
    p.add_argument("--targets", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--peers", required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--sync", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_race)

    p = sub.add_parser("crash")
    p.add_argument("--db", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--pre", type=int, required=True)
    p.add_argument("--big", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--done", required=True)
    p.add_argument("--projected", type=int, default=0)  # 1: with projections
    p.set_defaults(fn=cmd_crash)

    p = sub.add_parser("retry")
    p.add_argument("--db", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--big", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_retry)

    p = sub.add_parser("hold")
    p.add_argument("--db", required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--hold", type=float, required=True)
    p.set_defaults(fn=cmd_hold)

    p = sub.add_parser("idem")
    p.add_argument("--db", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_idem)

    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    run_worker(lambda: main(sys.argv[1:]))
