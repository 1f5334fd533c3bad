"""Output files written safely: only a regular file is ever replaced, and a file
being written lives under a ``.part`` name, locked while its writer lives.

Directories, devices, FIFOs, sockets and symbolic links at an output path are
refused, before anything is written and again just before the finished file takes
the name (a new name is made with ``link()``, so nothing that appeared meanwhile is
replaced). A ``.part`` file is ``flock``-ed while written; the next export to the
same place removes those whose writer is gone (their lock can be taken), with the
side files SQLite may have left beside them. Export and import both use this.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hermes_ledger.ledger.errors import LedgerError

__all__ = [
    "check_target",
    "claim_part",
    "place",
    "private_temp",
    "remove_dead_parts",
    "scratch",
    "sync_directory",
]


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_special(target: Path) -> bool:
    """Raise LedgerError unless ``target`` is missing or a regular file (not a
    symbolic link, which is not followed); True if it exists."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise LedgerError(
            f"cannot write {target}: {exc.strerror or exc}", hint="choose another -o path"
        ) from None
    if stat.S_ISREG(info.st_mode):
        return True
    if stat.S_ISLNK(info.st_mode):
        raise LedgerError(
            f"{target} is a symbolic link (to {os.readlink(target)}); export does not "
            "write through links",
            hint=f"give -o the file itself ({target.resolve()}), or omit -o and redirect "
            f"stdout: hermes-ledger export > {target}",
        )
    kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
    if kind == "a directory":
        raise LedgerError(f"{target} is a directory", hint="give -o a file name")
    raise LedgerError(
        f"{target} is {kind}; export writes only regular files",
        hint=f"give -o a new file name or a previous export; to write to a pipe or a "
        f"device, omit -o and redirect stdout: hermes-ledger export > {target}",
    )


def check_target(target: Path, ledger_path: Path | None) -> None:
    """Refuse ``target`` before anything is written: a missing directory, a special
    file (``_refuse_special``), or the ledger file ``ledger_path`` itself (None: the
    ledger is no file, e.g. PostgreSQL)."""
    parent = target.parent
    if not parent.is_dir():
        raise LedgerError(
            f"cannot write {target}: the directory {parent} does not exist",
            hint=f"create it first (mkdir -p {parent}) or choose another -o path",
        )
    _refuse_special(target)
    if ledger_path is None:
        return
    resolved = target.resolve()
    ledger = ledger_path.resolve()
    if resolved in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
        raise LedgerError(
            f"refusing to export over the ledger itself ({target})",
            hint="choose another -o path",
        )


# -- .part files: written under a lock, removed when their writer is gone ----------

_SIDECARS = ("-journal", "-wal", "-shm")  # what SQLite may put next to a .part file


def _part_pattern(name: str) -> re.Pattern[str]:
    """``.NAME.XXXXXXXX.part`` (tempfile's eight characters) and its SQLite sidecars."""
    return re.compile(re.escape(f".{name}.") + r"[a-z0-9_]{8}\.part(-journal|-wal|-shm)?")


def claim_part(target: Path, *, what: str = "-o") -> tuple[Path, int]:
    """A new empty file ``.NAME.XXXXXXXX.part`` next to ``target``, readable by its
    owner only (0600), and an open descriptor holding an exclusive ``flock`` on it.

    The lock lasts until the descriptor is closed, or the process dies (even by
    SIGKILL): ``remove_dead_parts`` removes only files whose lock it can take.
    Close the descriptor after the file is renamed or removed."""
    while True:
        try:
            fd, name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".part"
            )
        except FileNotFoundError:
            raise LedgerError(
                f"cannot write {target}: the directory {target.parent} does not exist",
                hint=f"create it first (mkdir -p {target.parent}) or choose another {what} path",
            ) from None
        except PermissionError:
            raise LedgerError(
                f"cannot write {target}: permission denied",
                hint=f"choose a {what} path in a directory you can write to",
            ) from None
        except OSError as exc:
            raise LedgerError(
                f"cannot write {target}: {exc.strerror or exc}",
                hint=f"choose another {what} path",
            ) from None
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only for a cleanup that holds it
        try:
            mine = os.path.samestat(os.stat(name), os.fstat(fd))
        except FileNotFoundError:
            mine = False
        if mine:
            return Path(name), fd
        # A cleanup took the file for a dead export's before it was locked: again.
        os.close(fd)


def remove_dead_parts(target: Path) -> list[Path]:
    """Remove the ``.part`` files (and SQLite sidecars) of exports or imports to
    ``target`` that were killed: those nobody holds the lock of. Files of a
    writer that is still running are left alone. Returns what was removed."""
    pattern = _part_pattern(target.name)
    removed: list[Path] = []
    try:
        names = sorted(e.name for e in os.scandir(target.parent) if pattern.fullmatch(e.name))
    except OSError:
        return removed
    parts = [n for n in names if n.endswith(".part")]
    for name in parts:
        path = target.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone, a symbolic link, or not ours to open
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer is alive
            for leftover in (path, *(Path(f"{path}{s}") for s in _SIDECARS)):
                with contextlib.suppress(OSError):
                    leftover.unlink()
                    removed.append(leftover)
        finally:
            os.close(fd)
    for name in names:  # sidecars whose .part is already gone
        main = name[: -len(next((s for s in _SIDECARS if name.endswith(s)), ""))] or name
        if main != name and not (target.parent / main).exists():
            with contextlib.suppress(OSError):
                (target.parent / name).unlink()
                removed.append(target.parent / name)
    return removed


def _remove(path: Path) -> None:
    for leftover in (path, *(Path(f"{path}{s}") for s in _SIDECARS)):
        leftover.unlink(missing_ok=True)


def place(temp: Path, target: Path) -> None:
    """Give the finished ``temp`` the name ``target``: as a new name if there is
    nothing there (never over something that appeared meanwhile), else over a
    regular file only (checked again just before the rename)."""
    try:
        os.link(temp, target)
    except FileExistsError:
        _refuse_special(target)
        os.replace(temp, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        _refuse_special(target)  # a file system without hard links
        os.replace(temp, target)
    else:
        temp.unlink()


@contextmanager
def private_temp(target: Path) -> Iterator[Path]:
    """A new owner-only, locked file next to ``target``: flushed to disk and moved
    onto ``target`` if the block succeeds, removed if it fails."""
    temp, lock = claim_part(target)
    try:
        try:
            yield temp
            with open(temp, "rb") as done:
                os.fsync(done.fileno())
            place(temp, target)
        except BaseException:
            _remove(temp)
            raise
    finally:
        os.close(lock)
    sync_directory(target.parent)


@contextmanager
def scratch(target: Path) -> Iterator[Path]:
    """A private, locked scratch file next to ``target``, removed afterwards whatever happens."""
    temp, lock = claim_part(target)
    try:
        yield temp
    finally:
        _remove(temp)
        os.close(lock)


def sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform can open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
