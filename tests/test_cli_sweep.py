"""Bad input over every command (issue 11, items 6 and 7).

Every command and subcommand is found by walking the click root group, so a new
command is swept without a change here. Each runs against a table of bad inputs:
huge and negative integers for every int option, nan/inf/-1 for every seconds
option, a --db that is missing, 0 bytes, a directory, not a ledger or a corrupt
ledger, a HERMES_HOME that is a file, a --config directory that does not exist,
deeply nested JSON where a command reads JSON. Most cases run in-process
(CliRunner); the ones that need a real process (non-UTF-8 argv bytes, stdout on
a full disk, HERMES_HOME a file) run the installed script.

Each case asserts: no traceback, exit 1 with ``Error:`` and ``Try:`` (or 2 for
a usage error), and the ledger's bytes unchanged / no file created.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import installed_script

from hermes_ledger.gateway.cli import cli as root
from hermes_ledger.gateway.cli.options import Seconds, postgres_commands

# Commands that write a ledger on purpose: a missing or 0-byte --db is theirs to
# create (init), or they run until stopped (run). Everything else reads.
CREATES = {"init", "tick", "run", "demo"}
NO_LEDGER = {"schema", "sync"}  # never open --db (schema) / have none (sync)
HUGE = "99999999999999999999999"
NESTING = 100_000


def walk(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*prefix, name))


COMMANDS = dict(walk(root))
PLACEHOLDER = {"session_key": "agent:main:x", "session_id": "s-1", "query": "SELECT 1"}
# optional arguments without which a command reads no ledger (`report` alone lists reports)
READS_WITH = {
    ("report",): ["end-reasons"],
    ("prune",): ["--older-than", "90d"],
    ("erase",): ["--user", "u1"],
}


def base_args(names: tuple[str, ...], command: click.Command) -> list[str]:
    args = list(names)
    for param in command.params:
        if isinstance(param, click.Argument) and param.required:
            args.append(PLACEHOLDER.get(param.name or "", "x"))
    return args + READS_WITH.get(names, [])


def has(command: click.Command, name: str) -> bool:
    return any(p.name == name for p in command.params)


def option_flag(param: click.Parameter) -> str:
    assert isinstance(param, click.Option)
    return max(param.opts, key=len)


@dataclass
class Case:
    id: str
    args: list[str]
    db: str | None = None  # which --db fixture: "ledger", "missing", "empty", …
    env: dict[str, str] = field(default_factory=dict)
    home_file: bool = False
    expect_zero: bool = False  # a command that does not read what is broken
    marks: list[pytest.MarkDecorator] = field(default_factory=list)


def cases() -> Iterator[Case]:
    for names, command in COMMANDS.items():
        name = " ".join(names)
        args = base_args(names, command)
        if isinstance(command, click.Group) and command.invoke_without_command is False:
            continue
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag:
                continue
            flag = option_flag(param)
            if isinstance(param.type, (click.IntRange,)) or param.type is click.INT:
                for value in (HUGE, "-" + HUGE, "-1"):
                    yield Case(f"{name} {flag} {value[:6]}", [*args, flag, value], db="ledger")
            if isinstance(param.type, (Seconds, click.FloatRange)) or param.type is click.FLOAT:
                for value in ("nan", "inf", "-inf", "-1"):
                    yield Case(f"{name} {flag} {value}", [*args, flag, value], db="ledger")
        if has(command, "config_home"):
            yield Case(
                f"{name} --config missing", [*args, "--config", "{tmp}/no/such/home"], db="ledger"
            )
            yield Case(
                f"{name} --config nested json", [*args, "--config", "{nested_home}"], db="ledger"
            )
        if has(command, "db") and name not in NO_LEDGER:
            kinds = ["directory", "text", "foreign", "corrupt"]
            if names[0] not in CREATES:
                kinds += ["missing", "empty"]
            for kind in kinds:
                extra = ["{nested_export}"] if name == "import" else []
                # `hooks` lists hooks without a ledger (no state yet), creating none.
                zero = name == "hooks" and kind == "missing"
                yield Case(f"{name} --db {kind}", [*args, *extra], db=kind, expect_zero=zero)
        if name not in NO_LEDGER and name != "demo":
            yield Case(f"{name} HERMES_HOME file", args, home_file=True)
    yield Case(
        "sql missing parameter",
        ["sql", "SELECT :a"],
        db="ledger",
    )
    yield Case("import nested json", ["import", "{nested_export}"], db="missing")
    yield Case("import nested json into ledger", ["import", "{nested_export}"], db="ledger")


CASES = list(cases())


def digest(path: Path) -> str | None:
    if path.is_dir():
        return "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sweep")
    ledger = base / "ledger.db"
    result = CliRunner().invoke(
        root, ["demo", "--db", str(ledger), "--json"], env={"HERMES_HOME": str(base / "h")}
    )
    assert result.exit_code == 0, result.output
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    # A corrupt copy: garbage over every page but the first (the header and the
    # schema, so the file is still recognised as a ledger).
    data = bytearray(ledger.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    for offset in range(page, len(data), page):
        data[offset + 8 : offset + 64] = b"\xde\xad\xbe\xef" * 14
    (base / "corrupt.db").write_bytes(bytes(data))
    (base / "text.db").write_text("not a ledger\n")
    import apsw

    conn = apsw.Connection(str(base / "foreign.db"))
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    nested = "[" * NESTING + "]" * NESTING
    (base / "nested.jsonl").write_text('{"a": ' + nested + "}\n")
    home = base / "nested_home"
    home.mkdir()
    (home / "gateway.json").write_text(nested)
    (home / "config.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    return base


def prepare(case: Case, base: Path, tmp: Path) -> tuple[list[str], dict[str, str], Path | None]:
    env = {"HERMES_HOME": str(tmp / "home"), "HERMES_LEDGER_DB": "", **case.env}
    db: Path | None = None
    if case.db is not None:
        db = tmp / f"{case.db}.db"
        if case.db in ("ledger", "text", "foreign", "corrupt"):
            shutil.copy(base / ("ledger.db" if case.db == "ledger" else f"{case.db}.db"), db)
        elif case.db == "empty":
            db.write_bytes(b"")
        elif case.db == "directory":
            db.mkdir()
    if case.home_file:
        home = tmp / "home-file"
        home.write_text("not a directory\n")
        env["HERMES_HOME"] = str(home)
        db = home
    subst = {"tmp": str(tmp), "nested_export": str(base / "nested.jsonl"),
             "nested_home": str(base / "nested_home")}  # fmt: skip
    args = [a.format(**subst) for a in case.args]
    if case.db is not None:
        args += ["--db", str(db)]
    return args, env, db


def check(
    case: Case, code: int, output: str, before: str | None, after: str | None, db: Path | None
) -> None:
    assert "Traceback" not in output, output
    if case.expect_zero:
        assert code == 0, output
    else:
        assert code in (1, 2), (code, output)
        if code == 1:
            assert "Error:" in output and "Try:" in output, output
    assert after == before, f"{db} changed: {output}"


class Alarm(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Alarm("the command did not stop on bad input")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, fixtures: Path, tmp_path: Path) -> None:
    args, env, db = prepare(case, fixtures, tmp_path)
    before = digest(db) if db is not None else None
    siblings = sorted(p.name for p in tmp_path.iterdir())
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        result = CliRunner().invoke(root, args, env=env)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    output = result.output + (result.stderr if result.stderr_bytes else "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        output += "Traceback\n" + "".join(traceback.format_exception(result.exception))
    check(case, result.exit_code, output, before, digest(db) if db is not None else None, db)
    if case.db in ("missing", "empty") or case.home_file:
        # Nothing new beside it either (no -wal, -shm, journal, home).
        new = sorted(p.name for p in tmp_path.iterdir())
        assert new == siblings, output


def test_corrupt_ledger_message(fixtures: Path, tmp_path: Path) -> None:
    """One clear message naming the file and what to do, in every command that opens it."""
    for names, command in COMMANDS.items():
        # backfill reads the Hermes home (refused first: there is none here).
        if not has(command, "db") or names[0] in NO_LEDGER | {"demo", "backfill"}:
            continue
        if isinstance(command, click.Group) and not command.invoke_without_command:
            continue
        db = tmp_path / "corrupt.db"
        shutil.copy(fixtures / "corrupt.db", db)
        result = CliRunner().invoke(
            root, [*base_args(names, command), "--db", str(db)],
            env={"HERMES_HOME": str(tmp_path / "home"), "HERMES_LEDGER_DB": ""},
        )  # fmt: skip
        text = result.output
        assert result.exit_code == 1, (names, text)
        assert str(db) in text and ".recover" in text and "export" in text, (names, text)


# -- real processes ------------------------------------------------------------

BAD_BYTES = b"\xff\xfe-bad"


def _spawn(
    argv: list[bytes], env: dict[str, str], stdout: int | object = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if k != "HERMES_LEDGER_DB"}
    full.update(env, LC_ALL="C.UTF-8", PYTHONIOENCODING="")
    return subprocess.Popen(argv, env=full, stdout=stdout, stderr=subprocess.PIPE)  # type: ignore[arg-type]


def test_real_processes(fixtures: Path, tmp_path: Path) -> None:
    """Non-UTF-8 argv bytes, a HERMES_HOME that is a file, stdout on a full disk."""
    script = os.fsencode(installed_script())
    ledger = tmp_path / "ledger.db"
    shutil.copy(fixtures / "ledger.db", ledger)
    before = digest(ledger)
    home = tmp_path / "home"
    home_file = tmp_path / "home-file"
    home_file.write_text("x\n")
    runs: list[tuple[str, subprocess.Popen[bytes], Path | None, bool]] = []
    for names, command in COMMANDS.items():
        name = " ".join(names)
        if isinstance(command, click.Group) and not command.invoke_without_command:
            continue
        args = [os.fsencode(a) for a in base_args(names, command)]
        # A non-UTF-8 --db path: nothing may be created there.
        if has(command, "db") and names[0] not in CREATES:
            bad = tmp_path / os.fsdecode(BAD_BYTES + b".db")
            argv = [script, *args, b"--db", os.fsencode(tmp_path) + b"/" + BAD_BYTES + b".db"]
            # schema never opens --db; hooks lists hooks without a ledger.
            zero = name in ("schema", "hooks")
            runs.append((f"{name} bad --db", _spawn(argv, {"HERMES_HOME": str(home)}), bad, zero))
        # A non-UTF-8 argument.
        positional = [p for p in command.params if isinstance(p, click.Argument)]
        if positional and name != "sql":  # sql: see test_sql_non_utf8_query
            argv = [script, *args[: len(names)], BAD_BYTES, b"--db", os.fsencode(ledger)]
            runs.append(
                (f"{name} bad argument", _spawn(argv, {"HERMES_HOME": str(home)}), None, True)
            )
        if name not in NO_LEDGER and name != "demo":
            argv = [script, *args]
            runs.append(
                (
                    f"{name} HERMES_HOME file",
                    _spawn(argv, {"HERMES_HOME": str(home_file)}),
                    None,
                    False,
                )
            )
    with open("/dev/full", "wb") as full:
        commands = (["status"], ["events"], ["export"], ["sql", "SELECT * FROM events"],
                    ["sessions", "--all"], ["verify", "--json"], ["schema"], ["hooks"])  # fmt: skip
        for args in commands:
            argv = [script, *map(os.fsencode, args), b"--db", os.fsencode(ledger)]
            runs.append(
                (
                    f"{args[0]} > /dev/full",
                    _spawn(argv, {"HERMES_HOME": str(home)}, full),
                    None,
                    False,
                )
            )
    failures = []
    for what, proc, created, zero_ok in runs:
        out, err = proc.communicate(timeout=60)
        text = (out or b"").decode("utf-8", "replace") + err.decode("utf-8", "replace")
        ok = "Traceback" not in text and (
            proc.returncode == 2
            or (proc.returncode == 1 and "Error:" in text and "Try:" in text)
            or (zero_ok and proc.returncode == 0)
        )
        if created is not None and created.exists():
            ok = False
            text += f"\n(created {created})"
        if not ok:
            failures.append(f"{what}: exit {proc.returncode}\n{text[-1500:]}")
    assert digest(ledger) == before
    assert home_file.read_text() == "x\n"
    assert not failures, f"{len(failures)} of {len(runs)}:\n" + "\n\n".join(failures)


def test_sql_non_utf8_query(fixtures: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    shutil.copy(fixtures / "ledger.db", ledger)
    argv = [os.fsencode(installed_script()), b"sql", b"SELECT '" + BAD_BYTES + b"'",
            b"--db", os.fsencode(ledger)]  # fmt: skip
    _out, err = _spawn(argv, {"HERMES_HOME": str(tmp_path / "home")}).communicate(timeout=60)
    assert b"Traceback" not in err and b"Error:" in err


# -- every command with a PostgreSQL URI (issue 14) ----------------------------------

DB_COMMANDS = [names for names, command in COMMANDS.items() if has(command, "db")]


@pytest.fixture(scope="module")
def pg_uri(fixtures: Path) -> Iterator[str]:
    """A fresh database on the test server (tests/pg_support.py) holding the sweep's
    demo ledger, copied by ``migrate``, as a ``postgresql://`` URI."""
    import psycopg
    from pg_support import fresh_database

    with fresh_database() as dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        user = f"{info['user']}@" if info.get("user") else ""
        uri = f"postgresql://{user}{info.get('host', '')}:{info.get('port', 5432)}/{info['dbname']}"
        done = CliRunner().invoke(
            root, ["migrate", "--to", uri, "--from", str(fixtures / "ledger.db")],
            env={"HERMES_HOME": str(fixtures / "h"), "HERMES_LEDGER_DB": ""},
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        yield uri


def _pg_head(uri: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(uri) as conn:
        row = conn.execute("SELECT count(*), max(position) FROM hermes_ledger.events").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("names", DB_COMMANDS, ids=lambda n: " ".join(n))
def test_every_command_with_a_dsn(
    names: tuple[str, ...], pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands marked postgres_ready run (exit 0, or 1 with Error/Try); every
    other one refuses with one message, exit 1, and writes nothing: not in the
    database, not a file named after the URI."""
    command = COMMANDS[names]
    name = " ".join(names)
    ready = name in postgres_commands(root)
    monkeypatch.chdir(tmp_path)
    before = _pg_head(pg_uri)
    args = [*base_args(names, command), "--db", pg_uri]
    if name == "import":
        args.insert(1, str(tmp_path / "x.jsonl"))
    if name == "serve":  # it serves until stopped: an address it cannot listen on
        args += ["--allow-remote", "--host", "256.0.0.1"]
    # run passes until SIGTERM: a thread sends one every second until it returns (the
    # test's own handler ignores any that comes before run installs its handler).
    done = threading.Event()

    def terminate() -> None:
        while not done.wait(1.0):
            os.kill(os.getpid(), signal.SIGTERM)

    ignore = signal.signal(signal.SIGTERM, lambda *_: None) if name == "run" else None
    if name == "run":
        threading.Thread(target=terminate, daemon=True).start()
    try:
        result = CliRunner().invoke(root, args, env={"HERMES_HOME": str(tmp_path / "home")})
    finally:
        done.set()
        if ignore is not None:
            signal.signal(signal.SIGTERM, ignore)
    output = result.output + (result.stderr if result.stderr_bytes else "")
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), output
    if ready:
        assert result.exit_code in ((0,) if name == "demo" else (0, 1)), output  # demo: replaced
        if result.exit_code == 1:  # an error, or doctor's report of what needs attention
            assert ("Error:" in output and "Try:" in output) or output.endswith(
                ": needs attention\n"
            ), output
        return
    assert result.exit_code == 1, output
    assert output.splitlines()[0] == f"Error: {name} does not work on a PostgreSQL ledger yet"
    assert output.splitlines()[1].startswith("Try: on a PostgreSQL ledger use ")
    assert _pg_head(pg_uri) == before
    assert list(tmp_path.iterdir()) == []
