"""Append throughput on PostgreSQL: ``PostgresLog`` against raw psycopg, with the
SQLite ``Ledger`` beside them (issue 14, first part).

Rows, each with 1 and with 4 writer processes (every process its own stream and
connection), one event per transaction and --batch events per call:

  pg      PostgresLog.append(stream, events)
  raw     raw psycopg doing the same INSERTs into the same (migrated) table: BEGIN,
          LOCK TABLE events IN EXCLUSIVE MODE, read the head and the stream's version,
          INSERT the precomputed rows (executemany), COMMIT
  sqlite  Ledger.append on one SQLite file (synchronous=NORMAL) for all processes

Every run gets a fresh database (or file), dropped at the end; each row runs --rounds
times, raw, pg and sqlite taking turns in rotating order (a busy machine slows them
alike), and shows the medians. Building the events and rows is not timed (the
producer's cost); a run's time is from the moment every process is ready to the
moment the last one is done. The target is pg/raw >= 0.7.

    python bench/postgres.py [--events N] [--batch-events N] [--batch 1000] [--rounds 3] [--json]

``HERMES_LEDGER_BENCH_PG`` names the server (a role that may CREATE DATABASE),
default postgresql://127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, body_json
from hermes_ledger.ledger.postgres import PostgresLog

ADMIN_DSN = os.environ.get("HERMES_LEDGER_BENCH_PG") or "postgresql://127.0.0.1:5432/postgres"
META = '{"schema_version":1}'
RECORDED_AT = "2026-05-22T10:15:00.000000Z"
HASH = "ab" * 32
TARGET = 0.7
RAW_INSERT = (
    "INSERT INTO events (position, event_id, stream, version, type, session_id, data, meta,"
    " recorded_at, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
RAW_STATE = (
    "SELECT (SELECT coalesce(max(version), 0) FROM events WHERE stream = %s),"
    " (SELECT coalesce(max(position), 0) FROM events)"
)


def events_for(stream_no: int, count: int) -> list[MessageAppended]:
    text = "the gateway wrote this message to the ledger " * 4
    return [
        MessageAppended(
            session_id=f"s{stream_no}",
            role="assistant" if i % 2 else "user",
            content=text[: 180 + i % 20],
            output_tokens=i % 700,
        )
        for i in range(count)
    ]


def _worker(kind: str, target: str, n: int, count: int, batch: int, ready: Any, out: Any) -> None:
    stream = f"agent:main:telegram:dm:{n}"
    events = events_for(n, count)
    calls = [events[i : i + batch] for i in range(0, count, batch)]
    if kind == "pg":
        store: Any = PostgresLog.open(target)
        write = lambda chunk: store.append(stream, chunk)  # noqa: E731
    elif kind == "sqlite":
        store = Ledger.open(target)
        write = lambda chunk: store.append(stream, chunk)  # noqa: E731
    else:
        store = psycopg.connect(target, autocommit=True)
        store.execute("SET search_path = hermes_ledger")
        bodies = [[(e.event_id, e.type, e.session_id, body_json(e)) for e in c] for c in calls]
        calls = bodies  # type: ignore[assignment]

        def write(chunk: list[tuple[str, str, str, str]]) -> None:
            with store.transaction():
                store.execute("LOCK TABLE events IN EXCLUSIVE MODE")
                version, position = store.execute(RAW_STATE, (stream,)).fetchone()
                rows = [
                    (position + k, event_id, stream, version + k, event_type, sid, data, META,
                     RECORDED_AT, HASH)
                    for k, (event_id, event_type, sid, data) in enumerate(chunk, start=1)
                ]  # fmt: skip
                if len(rows) == 1:
                    store.execute(RAW_INSERT, rows[0])
                else:
                    with store.cursor() as cur:
                        cur.executemany(RAW_INSERT, rows)

    ready.wait()
    t0 = time.monotonic()
    for chunk in calls:
        write(chunk)
    out.put((t0, time.monotonic()))
    store.close()


def _run(kind: str, target: str, writers: int, total: int, batch: int) -> float:
    """Events per second of ``writers`` processes appending ``total`` events in all."""
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(writers)
    out = ctx.Queue()
    per = total // writers
    procs = [
        ctx.Process(target=_worker, args=(kind, target, n, per, batch, ready, out))
        for n in range(writers)
    ]
    for p in procs:
        p.start()
    times = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a {kind} writer failed (exit status {p.exitcode})")
    return per * writers / (max(t1 for _, t1 in times) - min(t0 for t0, _ in times))


def _database(admin: psycopg.Connection, created: list[str]) -> str:
    name = f"hl_bench_{secrets.token_hex(4)}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    created.append(name)
    dsn = psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name)
    PostgresLog.open(dsn).close()  # migrated: the same table for pg and raw
    return dsn


def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = psycopg.connect(ADMIN_DSN, autocommit=True)
    created: list[str] = []
    results: list[dict[str, Any]] = []
    kinds = ["raw", "pg", "sqlite"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for batch, total in ((1, args.events), (args.batch, args.batch_events)):
                for writers in (1, 4):
                    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
                    for turn in range(args.rounds):
                        for kind in kinds[turn % 3 :] + kinds[: turn % 3]:
                            if kind == "sqlite":
                                target = str(Path(tmp) / f"{batch}-{writers}-{turn}.db")
                            else:
                                target = _database(admin, created)
                            rates[kind].append(_run(kind, target, writers, total, batch))
                    row: dict[str, Any] = {"batch": batch, "writers": writers}
                    row.update({kind: statistics.median(rates[kind]) for kind in kinds})
                    row["pg/raw"] = row["pg"] / row["raw"]
                    results.append(row)
    finally:
        for name in created:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()
    server = psycopg.connect(ADMIN_DSN).info.parameter_status("server_version")
    return {"events": args.events, "batch_events": args.batch_events, "rounds": args.rounds,
            "server": server,
            "python": sys.version.split()[0], "rows": results}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    lines = [
        f"PostgreSQL {result['server']}, Python {result['python']}: events/s"
        f" ({result['events']} events one per transaction,"
        f" {result['batch_events']} in batches; median of {result['rounds']} runs)",
        f"{'per call':>8} {'writers':>7} {'raw psycopg':>12} {'PostgresLog':>12}"
        f" {'SQLite Ledger':>14} {'pg/raw':>7}  target",
    ]
    for row in result["rows"]:
        ok = "ok" if row["pg/raw"] >= TARGET else "MISSED"
        lines.append(
            f"{row['batch']:>8} {row['writers']:>7} {row['raw']:>12,.0f} {row['pg']:>12,.0f}"
            f" {row['sqlite']:>14,.0f} {row['pg/raw']:>7.2f}  >= {TARGET} {ok}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=2000, help="events, one per transaction")
    p.add_argument("--batch-events", type=int, default=40_000, help="events in batches")
    p.add_argument("--batch", type=int, default=1000, help="events per call when batched")
    p.add_argument("--rounds", type=int, default=3, help="runs of each row (median shown)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


# -- the scheduler's due query at 100k sessions (gateway.scheduler.postgres) ----------
#
#   python bench/postgres.py due-query [--sessions 100000] [--due 1000] [--limit 100]
#                                      [--samples 300] [--json]
#
# A fresh database with --sessions deadline rows (--due of them past), analysed; each
# sample runs the scheduler's claim (SQL_CLAIM_DUE: deadline <= now ordered, LIMIT,
# FOR UPDATE SKIP LOCKED, the lease UPDATE) in a transaction that is rolled back, so
# every sample sees the same table. Two rows: no due row claimed, and half the due
# rows leased by other runners (the scan steps over them). Target: p99 < 5 ms.

DUE_TARGET_MS = 5.0
SQL_BENCH_DEADLINES = (
    "INSERT INTO session_deadlines (session_key, session_id, deadline, reason,"
    " claimed_by, claim_expires)"
    " SELECT 'agent:main:telegram:dm:' || n, 's' || n,"
    " CASE WHEN n <= %(due)s THEN now() - n * interval '1 second'"
    "  ELSE now() + n * interval '1 second' END, 'idle',"
    " CASE WHEN %(leased)s AND n <= %(due)s AND n %% 2 = 0 THEN 'other' END,"
    " CASE WHEN %(leased)s AND n <= %(due)s AND n %% 2 = 0 THEN now() + interval '1 hour' END"
    " FROM generate_series(1, %(sessions)s) AS n"
)


def _due_samples(target: str, args: argparse.Namespace, leased: bool) -> list[float]:
    from datetime import UTC, datetime, timedelta

    from hermes_ledger.gateway.scheduler.postgres import SQL_CLAIM_DUE

    with PostgresLog.open(target) as log:
        conn = log.connection
        conn.execute(
            SQL_BENCH_DEADLINES, {"due": args.due, "leased": leased, "sessions": args.sessions}
        )
        conn.execute("ANALYZE session_deadlines")
        claim = {"limit": args.limit, "runner": "bench", "lease": timedelta(minutes=2)}
        times = []
        for _ in range(args.samples):
            with conn.transaction(force_rollback=True):
                start = time.perf_counter()
                conn.execute(SQL_CLAIM_DUE, {**claim, "now": datetime.now(UTC)}).fetchall()
                times.append((time.perf_counter() - start) * 1000)
    return times


def due_query_run(args: argparse.Namespace) -> dict[str, Any]:
    admin = psycopg.connect(ADMIN_DSN, autocommit=True)
    rows = []
    try:
        for leased in (False, True):
            name = f"hl_bench_{secrets.token_hex(6)}"
            create = sql.SQL("CREATE DATABASE {} ENCODING 'UTF8'")
            admin.execute(create.format(sql.Identifier(name)))
            try:
                times = _due_samples(psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name),
                                     args, leased)  # fmt: skip
            finally:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))  # fmt: skip
            cuts = statistics.quantiles(times, n=100, method="inclusive")
            rows.append({"half_the_due_leased": leased, "p50_ms": round(cuts[49], 3),
                         "p99_ms": round(cuts[98], 3)})  # fmt: skip
    finally:
        admin.close()
    return {"sessions": args.sessions, "due": args.due, "limit": args.limit,
            "samples": args.samples, "target_ms": DUE_TARGET_MS, "rows": rows}  # fmt: skip


def due_query_render(result: dict[str, Any]) -> str:
    lines = [
        f"the scheduler's due query at {result['sessions']:,} sessions ({result['due']:,} due,"
        f" LIMIT {result['limit']}, {result['samples']} samples; target p99 <"
        f" {result['target_ms']:g} ms)",
        f"{'due rows':<28} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for row in result["rows"]:
        what = "half leased by other runners" if row["half_the_due_leased"] else "none claimed"
        ok = "ok" if row["p99_ms"] < result["target_ms"] else "SLOW"
        lines.append(f"{what:<28} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}  {ok}")
    return "\n".join(lines)


def due_query_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bench/postgres.py due-query", description="the scheduler's due query at 100k sessions"
    )
    p.add_argument("--sessions", type=int, default=100_000, help="deadline rows")
    p.add_argument("--due", type=int, default=1000, help="rows whose deadline has passed")
    p.add_argument("--limit", type=int, default=100, help="rows claimed per query (a tick's batch)")
    p.add_argument("--samples", type=int, default=300, help="queries timed")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    result = due_query_run(args)
    print(json.dumps(result, indent=2) if args.json else due_query_render(result))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["due-query"]:
        raise SystemExit(due_query_main(sys.argv[2:]))
    raise SystemExit(main())
