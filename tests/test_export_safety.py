"""`export -o PATH` never destroys what is at PATH: only a regular file is ever
replaced; devices, FIFOs, sockets, directories and symbolic links are refused;
a killed export's ``.part`` files are removed by the next export to that place,
and a running export's are not. Each runs on a SQLite ledger and on a PostgreSQL
one (tests/backends.py): the file handling is the same for both."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backends import Backend
from click.testing import Result
from helpers import next_line

from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source

K1 = "agent:main:telegram:dm:99"


@pytest.fixture
def source(backend: Backend) -> str:
    """A two-event ledger of either backend: its ``--db`` target."""
    with backend.open() as led:
        led.append(
            K1,
            [
                SessionStarted(session_id="s1", source=Source(platform="telegram", chat_id="99")),
                MessageAppended(session_id="s1", role="user", content="hello"),
            ],
        )
    return backend.target


def parts(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".part" in p.name)


def refused(result: Result, message: str) -> None:
    """An Error/Try refusal with exit status 1 and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[1].startswith("Try: "), result.output
    assert lines[0].startswith("Error: ") and message in lines[0], result.output


def test_a_fifo_is_refused_and_left_in_place(
    source: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    result = cli("export", "--db", str(source), "-o", str(fifo))
    refused(result, f"{fifo} is a FIFO (named pipe); export writes only regular files")
    assert "omit -o and redirect stdout" in result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert parts(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_is_refused_and_left_in_place(
    source: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """As root, a rename would have replaced the device node (as -o /dev/full did)."""
    for name, kind, device in (
        ("null", stat.S_IFCHR, os.makedev(1, 3)),
        ("full", stat.S_IFCHR, os.makedev(1, 7)),
        ("loop", stat.S_IFBLK, os.makedev(7, 200)),
    ):
        node = tmp_path / name
        os.mknod(node, kind | 0o600, device)
        result = cli("export", "--db", str(source), "-o", str(node))
        shown = "character device" if kind == stat.S_IFCHR else "block device"
        refused(result, f"{node} is a {shown}; export writes only regular files")
        info = os.lstat(node)
        assert stat.S_IFMT(info.st_mode) == kind and info.st_rdev == device
    assert parts(tmp_path) == []


def test_a_socket_is_refused_and_left_in_place(
    source: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        result = cli("export", "--db", str(source), "-o", str(path))
        refused(result, f"{path} is a socket; export writes only regular files")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert parts(tmp_path) == []


def test_a_directory_is_refused_with_error_and_try(
    source: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    for directory in (tmp_path / "empty", tmp_path / "full"):
        directory.mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine\n")
    for directory in (tmp_path / "empty", tmp_path / "full"):
        result = cli("export", "--db", str(source), "-o", str(directory))
        refused(result, f"{directory} is a directory")
        assert directory.is_dir()
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine\n"
    assert parts(tmp_path) == []


def test_a_symbolic_link_is_refused_not_replaced_nor_followed(
    source: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """The documented choice: export does not write through links (a link in a
    shared directory must not make export overwrite the file it points to)."""
    real = tmp_path / "real.jsonl"
    real.write_text("the previous backup\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    result = cli("export", "--db", str(source), "-o", str(link))
    refused(result, f"{link} is a symbolic link (to {real}); export does not write through links")
    assert f"give -o the file itself ({real})" in result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "the previous backup\n"
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "nowhere.jsonl")
    refused(cli("export", "--db", str(source), "-o", str(dangling)), "is a symbolic link")
    assert dangling.is_symlink() and not (tmp_path / "nowhere.jsonl").exists()
    # the file itself is written as usual
    result = cli("export", "--db", str(source), "-o", str(real))
    assert result.exit_code == 0, result.output
    assert json.loads(real.read_text().splitlines()[-1])["manifest"]["count"] == 2
    assert parts(tmp_path) == []


def test_a_regular_file_is_still_replaced(
    source: str, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    target = tmp_path / "backup.jsonl"
    target.write_text("old\n")
    result = cli("export", "--db", str(source), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert len(target.read_text().splitlines()) == 3
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_a_write_error_is_an_error_and_try_and_changes_nothing(
    source: str, tmp_path: Path, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hermes_ledger.ledger import export as export_module

    def disk_full(conn: object, out: object, *args: object) -> None:
        out.write(b'{"position":1')  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "_write_jsonl", disk_full)
    target = tmp_path / "backup.jsonl"
    target.write_text("the previous backup\n")
    result = cli("export", "--db", str(source), "-o", str(target))
    refused(result, f"cannot write {target}: No space left on device")
    assert "a previous file at that path is unchanged" in result.output
    assert target.read_text() == "the previous backup\n"
    assert parts(tmp_path) == []


# -- killed and concurrent exports (real processes) -----------------------------------

# Exports SOURCE to TARGET and, once its first page is written (the .part file
# exists, nothing is renamed yet), says "writing" and waits for a line on stdin.
_BLOCKED_EXPORT = textwrap.dedent(
    """
    import sys
    from hermes_ledger.ledger.export import export

    def progress(done, total):
        print("writing", flush=True)
        sys.stdin.readline()

    export(sys.argv[1], sys.argv[2], progress=progress)
    print("done", flush=True)
    """
)


@pytest.fixture
def blocked_export(source: str) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(target: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BLOCKED_EXPORT, str(source), str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert next_line(proc) == "writing\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def test_a_killed_exports_part_file_is_removed_by_the_next_export(
    source: str,
    tmp_path: Path,
    cli: Callable[..., Result],
    blocked_export: Callable[[Path], subprocess.Popen[str]],
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "backup.jsonl"
    target.write_text("the previous backup\n")
    proc = blocked_export(target)
    left = parts(out)
    assert len(left) == 1 and left[0].startswith(".backup.jsonl.") and left[0].endswith(".part")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert parts(out) == left  # what a kill leaves behind
    assert target.read_text() == "the previous backup\n"
    # someone else's file with a similar name is not touched
    (out / ".backup.jsonl.notmine.part").write_text("x")
    result = cli("export", "--db", str(source), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert parts(out) == [".backup.jsonl.notmine.part"]
    assert json.loads(target.read_text().splitlines()[-1])["manifest"]["count"] == 2


def test_a_running_exports_part_file_is_left_alone(
    source: str,
    tmp_path: Path,
    cli: Callable[..., Result],
    blocked_export: Callable[[Path], subprocess.Popen[str]],
) -> None:
    target = tmp_path / "backup.jsonl"
    proc = blocked_export(target)
    running = parts(tmp_path)
    assert len(running) == 1
    result = cli("export", "--db", str(source), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert parts(tmp_path) == running  # still being written by the other export
    assert proc.stdin is not None
    proc.stdin.write("go on\n")
    proc.stdin.flush()
    assert next_line(proc) == "done\n"
    assert proc.wait(timeout=30) == 0
    assert parts(tmp_path) == []
    assert json.loads(target.read_text().splitlines()[-1])["manifest"]["count"] == 2
