"""The file-modes check: who may read or change the ledger, its key and its hooks.

Owner-only is the rule. A ledger file (or its ``-wal``/``-shm``) that another user
could change, an anchor key others may read (``Witness`` refuses it), a hooks
directory or hook file others could change (discovery refuses it, with the same
test, ``discovery._refusal``) is a failure; a ledger others may read (every
transcript) is a warning.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hermes_ledger.gateway.health.results import Check
from hermes_ledger.gateway.hooks.discovery import _refusal  # the rule discovery applies
from hermes_ledger.gateway.plugin.spool import spool_dir
from hermes_ledger.ledger.anchors import KEY_NAME, WITNESS_NAME

__all__ = ["check_file_modes"]

_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_GROUP_OTHER_ANY = 0o077


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _owner_problem(path: Path, st: os.stat_result) -> str | None:
    if st.st_uid not in (os.geteuid(), 0):
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    return None


def _ledger_files(ledger_path: Path, fails: list[str], warns: list[str]) -> None:
    for path in (ledger_path, Path(f"{ledger_path}-wal"), Path(f"{ledger_path}-shm")):
        st = _stat(path)
        if st is None:
            continue
        mode = stat.S_IMODE(st.st_mode)
        owner = _owner_problem(path, st)
        if owner:
            fails.append(owner)
        elif mode & _GROUP_OTHER_WRITE:
            fails.append(f"{path} is writable by others (mode {mode:o})")
        elif mode & _GROUP_OTHER_ANY:
            warns.append(f"{path} is readable by others (mode {mode:o}): every transcript")
    parent = ledger_path.absolute().parent
    st = _stat(parent)
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
        sticky = bool(st.st_mode & stat.S_ISVTX)
        owner = _owner_problem(parent, st)
        if owner:
            fails.append(owner)
        elif mode & _GROUP_OTHER_WRITE and not sticky:
            fails.append(
                f"{parent} (the ledger's directory) is writable by others (mode {mode:o}):"
                " they could replace the ledger"
            )


def _witness_files(home: Path, fails: list[str]) -> None:
    key = home / KEY_NAME
    st = _stat(key)
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != os.geteuid() or mode & _GROUP_OTHER_ANY:
            fails.append(
                f"{key} is not owner-only (mode {mode:o}, uid {st.st_uid}): whoever can read"
                " it can forge anchors"
            )
    witness = home / WITNESS_NAME
    st = _stat(witness)
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
        owner = _owner_problem(witness, st)
        if owner or mode & _GROUP_OTHER_WRITE:
            fails.append(owner or f"{witness} is writable by others (mode {mode:o})")


def _hook_files(hooks_dir: Path, fails: list[str]) -> None:
    st = _stat(hooks_dir)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return
    paths = [hooks_dir]
    try:
        entries = sorted(p for p in hooks_dir.iterdir() if p.is_dir())
    except OSError:
        entries = []
    for entry in entries:
        if entry.name.startswith((".", "__")):
            continue
        paths += [entry, entry / "HOOK.yaml", entry / "handler.py"]
    for path in paths:
        st = _stat(path)
        if st is None:
            continue
        message = _refusal(path, st)
        if message is not None:
            fails.append(f"{path}: {message.removeprefix('refused: ')}")


def _spool(home: Path, fails: list[str]) -> None:
    path = spool_dir(home)
    st = _stat(path)
    if st is None:
        return
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or mode & _GROUP_OTHER_WRITE:
        fails.append(f"{path} is not owner-only (mode {mode:o}): the plugin refuses it")


def check_file_modes(ledger_path: Path | None, home: Path, hooks_dir: Path) -> Check:
    """``file_modes``: the ledger and its -wal/-shm, its directory, the anchor key
    and witness in ``home``, the hooks in ``hooks_dir``, the plugin's spool. With
    ``ledger_path`` None (a PostgreSQL ledger: no file), the files in ``home`` only."""
    if os.name != "posix":
        return Check("file_modes", "ok", "not checked (not a POSIX system)")
    fails: list[str] = []
    warns: list[str] = []
    if ledger_path is not None:
        _ledger_files(ledger_path, fails, warns)
    _witness_files(home, fails)
    _hook_files(hooks_dir, fails)
    _spool(home, fails)
    if fails:
        return Check(
            "file_modes",
            "fail",
            "; ".join(fails + warns),
            "make them owner-only: chmod go-w on directories, chmod 600 on files, chown to the"
            " gateway's user; then find out who else could have changed them",
        )
    if warns:
        return Check("file_modes", "warn", "; ".join(warns), f"chmod 600 {ledger_path}*")
    if ledger_path is None:
        return Check("file_modes", "ok", "the anchor key and witness, hooks and spool are private")
    return Check("file_modes", "ok", "the ledger, its key and anchors, hooks and spool are private")
