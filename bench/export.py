"""Export throughput: `hermes-ledger export` against SQLite's own JSON and sqlite-utils.

One run prints one table of rows/s and peak RSS for exporting every event of a
ledger to a JSONL file, then the ratios the issue sets targets for:

  (a) SQLite json_object() per row, written by a minimal Python loop (the limit:
      SQLite builds the JSON, Python only writes it)
  (b) sqlite-utils: Database(...)["events"].rows, json.dumps per row, written
      (what `sqlite-utils rows --nl` does)
  (c) ours: ledger.export.export(ledger, "out.jsonl") -- what `hermes-ledger export
      -o out.jsonl` runs: a read snapshot, SQLite-built lines with data/meta
      verbatim, the manifest, an owner-only temp file fsynced and renamed

Every measurement runs in a fresh process (so peak RSS is its own), the rows take
turns in rotating order for --rounds rounds, and each row reports its median. The
ledger (--events, default 1,000,000, a realistic mix of sessions) is built once with
correctly hashed rows and cached in --cache-dir; output files are removed after
each measurement.

    python bench/export.py [--events N] [--rounds 5] [--cache-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import apsw

TARGETS = {"c/a": 0.7, "c/b": 3.0}
RSS_TARGET_MB = 150.0
FIXTURE_VERSION = 1
KINDS = {
    "a": "SQLite json_object(), minimal loop",
    "b": "sqlite-utils rows + json.dumps",
    "c": "ours: ledger.export (hermes-ledger export)",
}
SQL_JSON_OBJECT = (
    "SELECT json_object('position', position, 'event_id', event_id, 'stream', stream,"
    " 'version', version, 'type', type, 'session_id', session_id, 'data', json(data),"
    " 'meta', json(meta), 'recorded_at', recorded_at, 'hash', hash)"
    " FROM events ORDER BY position"
)
WORDS = ["the", "session", "gateway", "ledger", "message", "reply", "agent", "telegram",
         "memory", "flush", "token", "schedule", "reset", "idle", "daily", "context", "tool",
         "result", "user", "assistant", "summary", "note"]  # fmt: skip


# -- the fixture ----------------------------------------------------------------------


def _templates() -> dict[str, str]:
    """``data`` bodies as the real models serialise them, with placeholders."""
    from hermes_ledger.ledger.events import (
        MemoryFlushed,
        MessageAppended,
        SessionEnded,
        SessionReset,
        SessionStarted,
        Source,
        UsageRecorded,
        body_json,
    )

    sid = "@SID@"
    return {
        "session_started": body_json(SessionStarted(
            session_id=sid, source=Source(platform="telegram", chat_id="@CHAT@",
                                          user_id="@CHAT@", user_name="user @CHAT@"))),
        "user": body_json(MessageAppended(session_id=sid, role="user", content="@TEXT@",
                                          platform_message_id="@MSG@")),
        "assistant": body_json(MessageAppended(session_id=sid, role="assistant",
                                               content="@TEXT@", output_tokens=321)),
        "usage_recorded": body_json(UsageRecorded(session_id=sid, input_tokens=1234,
                                                  output_tokens=321, cost_usd=0.0042,
                                                  model="anthropic/claude")),
        "session_reset": body_json(SessionReset(session_id=sid, trigger="/new")),
        "memory_flushed": body_json(MemoryFlushed(session_id=sid, provider="honcho")),
        "session_ended": body_json(SessionEnded(session_id=sid, reason="manual_reset")),
    }  # fmt: skip


def _session_plan(turns: int) -> list[tuple[str, str]]:
    """(event type, template) for one session: start, turns, close."""
    plan = [("session_started", "session_started")]
    for _ in range(turns):
        plan += [("message_appended", "user"), ("message_appended", "assistant"),
                 ("usage_recorded", "usage_recorded")]  # fmt: skip
    return [*plan, ("session_reset", "session_reset"), ("memory_flushed", "memory_flushed"),
            ("session_ended", "session_ended")]  # fmt: skip


def _insert(sql: str, rows: list[tuple[Any, ...]], conn: apsw.Connection) -> None:
    conn.executemany(sql, rows)


def build_fixture(path: Path, total: int) -> None:
    """A ledger of ``total`` events: sessions of 5-40 turns on 2,000 keys, message
    bodies of ~200 characters, every row hashed like Ledger.append hashes it."""
    from hermes_ledger.ledger import Ledger
    from hermes_ledger.ledger.chain import GENESIS, row_hash
    from hermes_ledger.ledger.store import SQL_INSERT

    rng = random.Random(7)
    templates = _templates()
    texts = [json.dumps(" ".join(rng.choice(WORDS) for _ in range(40))[:200])[1:-1]
             for _ in range(1000)]  # fmt: skip
    meta = '{"schema_version":1}'
    usage_meta = '{"schema_version":2}'
    base = 1_700_000_000_000_000  # microseconds
    versions: dict[str, int] = {}
    previous, position, session = GENESIS, 0, 0
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with Ledger.open(partial, synchronous="OFF") as led:
        rows: list[tuple[Any, ...]] = []
        while position < total:
            key = f"agent:main:telegram:dm:{session % 2000}"
            sid = f"20260522_101500_{session:08x}"
            for event_type, name in _session_plan(rng.randrange(5, 40)):
                if position == total:
                    break
                position += 1
                version = versions[key] = versions.get(key, 0) + 1
                data = (templates[name].replace("@SID@", sid)
                        .replace("@CHAT@", str(session % 2000))
                        .replace("@TEXT@", rng.choice(texts))
                        .replace("@MSG@", str(position)))  # fmt: skip
                at_us = base + position * 1500
                recorded_at = (
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_us // 1_000_000))
                    + f".{at_us % 1_000_000:06d}Z"
                )
                event_meta = usage_meta if event_type == "usage_recorded" else meta
                event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                previous = row_hash(previous, position, event_id, key, version, event_type,
                                    sid, data, event_meta, recorded_at)  # fmt: skip
                rows.append((position, event_id, key, version, event_type, sid, data,
                             event_meta, recorded_at, previous))  # fmt: skip
            session += 1
            if len(rows) >= 20_000 or position == total:
                led.write(functools.partial(_insert, SQL_INSERT, rows))
                rows = []
        led.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    os.replace(partial, path)
    for suffix in ("-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)


def fixture(cache_dir: Path, total: int) -> Path:
    """The cached ledger of ``total`` events, built if missing or incomplete."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"ledger-{total}-v{FIXTURE_VERSION}.db"
    if path.exists():
        from hermes_ledger.ledger import Ledger

        try:
            with Ledger.open(path, readonly=True) as led:
                if led.head() == total:
                    return path
        except Exception:  # any doubt about the cached file: rebuild it
            pass
        path.unlink()
    print(f"building a {total:,}-event ledger in {path} (once) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    build_fixture(path, total)
    print(f"  built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return path


# -- one measurement (in its own process) -----------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss on Linux also counts the
    parent's peak from before exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, db: Path, out: Path) -> dict[str, Any]:
    """Export ``db`` to ``out`` one way; imports happen before the clock starts."""
    import sqlite_utils

    from hermes_ledger.ledger.export import export

    rows = 0
    started = time.perf_counter()
    if kind == "a":
        conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        with open(out, "w", encoding="utf-8") as f:
            for (line,) in conn.execute(SQL_JSON_OBJECT):
                f.write(line)
                f.write("\n")
                rows += 1
        conn.close()
    elif kind == "b":
        database = sqlite_utils.Database(sqlite3.connect(f"file:{db}?mode=ro", uri=True))
        with open(out, "w", encoding="utf-8") as f:
            for row in database.table("events").rows:
                f.write(json.dumps(row) + "\n")
                rows += 1
        database.close()
    elif kind == "c":
        rows = export(db, out).count
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - started
    size = out.stat().st_size
    out.unlink()
    return {"rows": rows, "seconds": seconds, "bytes": size, "peak_rss_mb": peak_rss_mb()}


def run_worker(kind: str, db: Path, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--db", str(db), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} failed:\n{done.stderr}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# -- the run ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    db = fixture(Path(args.cache_dir), args.events)
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    order = list(KINDS)
    with tempfile.TemporaryDirectory(prefix="hermes-bench-export-", dir=args.cache_dir) as tmp:
        for r in range(args.rounds):
            for kind in order[r % len(order) :] + order[: r % len(order)]:
                sample = run_worker(kind, db, Path(tmp) / f"{kind}.jsonl")
                if sample["rows"] != args.events:
                    raise RuntimeError(f"{kind} exported {sample['rows']} rows, not {args.events}")
                samples[kind].append(sample)
    rows = {}
    for kind, what in KINDS.items():
        rates = [args.events / s["seconds"] for s in samples[kind]]
        rows[kind] = {
            "what": what,
            "rows_per_s": statistics.median(rates),
            "best_rows_per_s": max(rates),
            "seconds": statistics.median(s["seconds"] for s in samples[kind]),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in samples[kind]),
            "mb_written": samples[kind][0]["bytes"] / 1e6,
        }
    rate = {k: r["rows_per_s"] for k, r in rows.items()}
    ratios = {
        name: {"value": rate[name[0]] / rate[name[2]], "target": target,
               "pass": rate[name[0]] / rate[name[2]] >= target}
        for name, target in TARGETS.items()
    }  # fmt: skip
    rss = rows["c"]["peak_rss_mb"]
    ratios["RSS(c)"] = {"value": rss, "target": RSS_TARGET_MB, "pass": rss < RSS_TARGET_MB}
    notes = [
        f"ledger: {args.events:,} events, {db.stat().st_size / 1e6:,.0f} MB "
        "(sessions of 5-40 turns: messages of ~200 chars, usage, reset, flush, end)",
        f"each row: median of {args.rounds} runs, each in a fresh process, rotating order; "
        "peak RSS is the process's maximum (Python and imports included)",
        "(a) re-serialises data/meta with json(); (c) embeds them verbatim and adds the "
        "manifest, a snapshot transaction, fsync and rename; (b) writes data/meta as "
        "escaped strings",
        f"(b) runs on the stdlib sqlite3 (SQLite {sqlite3.sqlite_version}); (a) and (c) on "
        f"apsw's SQLite {apsw.sqlite_lib_version()}",
    ]
    versions = {"python": platform.python_version(), "sqlite": apsw.sqlite_lib_version(),
                "apsw": apsw.apsw_version(), "sqlite_utils": metadata.version("sqlite-utils"),
                "stdlib_sqlite3": sqlite3.sqlite_version}  # fmt: skip
    return {"events": args.events, "versions": versions, "rows": rows, "ratios": ratios,
            "notes": notes}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    v = result["versions"]
    out = [
        f"hermes-ledger export benchmark: {result['events']:,} events to JSONL",
        f"Python {v['python']}, SQLite {v['sqlite']}, apsw {v['apsw']}, "
        f"sqlite-utils {v['sqlite_utils']} (stdlib sqlite3 {v['stdlib_sqlite3']})",
        "",
        f"{'':4}{'what':44}{'rows/s':>10}{'best':>10}{'seconds':>9}{'MB out':>8}{'peak RSS':>10}",
    ]
    for key, r in result["rows"].items():
        out.append(
            f"({key}) {r['what']:44}{r['rows_per_s']:>10,.0f}{r['best_rows_per_s']:>10,.0f}"
            f"{r['seconds']:>9.2f}{r['mb_written']:>8,.0f}{r['peak_rss_mb']:>7.0f} MB"
        )
    out.append("")
    for name, r in result["ratios"].items():
        mark = "PASS" if r["pass"] else "short"
        if name.startswith("RSS"):
            out.append(f"{name:7}{r['value']:>8.0f} MB   target < {r['target']:g} MB  {mark}")
        else:
            out.append(f"{name:7}{r['value']:>8.2f}      target >= {r['target']:<6g} {mark}")
    out.append("")
    out += [f"- {note}" for note in result["notes"]]
    return "\n".join(out)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--events", type=positive, default=1_000_000, help="events in the ledger")
    p.add_argument("--rounds", type=positive, default=5, help="runs of each row")
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "hermes-bench"),
                   help="where the ledger is cached (and outputs written)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--worker", choices=sorted(KINDS), help=argparse.SUPPRESS)
    p.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.db, args.out)))
        return 0
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
