"""Hooks are code run with the gateway's rights: attacks on how they are loaded,
reproduced with real files.

Where the attack needs a second local user, it is the real unprivileged user
``nobody`` (as root, which CI runs as: ``/bin/sh`` started with ``user=``); run as
any other user, the attacker is a process of ours writing where anyone may write
(a world-writable directory), which is what another user could do there too.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hook_workers import write_hook

from hermes_ledger.gateway.hooks import discover_hooks, run_handler

ROOT = os.geteuid() == 0
NOBODY = 65534


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory another user can reach (tmp_path's parents are owner-only)."""
    path = Path(tempfile.mkdtemp(prefix="hermes-hook-security-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_attacker(script: str, **popen: object) -> subprocess.Popen[bytes]:
    """Start ``/bin/sh -c script`` as the other user (``nobody`` when we are root)."""
    who: dict[str, object] = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if ROOT else {}
    return subprocess.Popen(["/bin/sh", "-c", script], cwd="/", **who, **popen)  # type: ignore[call-overload, no-any-return]


def attacker_dir(base: Path) -> Path:
    """A directory the attacker can write: owned by nobody (as root), else world-writable."""
    path = base / "shared"
    path.mkdir()
    if ROOT:
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o755)
    else:
        os.chmod(path, 0o777)
    return path


def evil_source(marker: Path) -> str:
    return (
        f"with open({str(marker)!r}, 'a') as out:\n    out.write('pwned\\n')\n"
        "def handle(event_type, context):\n    pass\n"
    )


GOOD = "def handle(event_type, context):\n    return 'good'\n"


def test_no_bytecode_is_written_beside_a_hook_nor_read_from_there(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, item 1: under umask 000, loading a hook used to create
    ``__pycache__`` mode 0777 beside handler.py; a .pyc planted there by another
    user, with handler.py's mtime and size in its header, ran at the next discovery."""
    # a gateway as usually run (the test environment may set PYTHONDONTWRITEBYTECODE)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    hooks = base / "hooks"
    hook_dir = write_hook(hooks, "logger", GOOD)
    handler = hook_dir / "handler.py"
    marker = base / "pwned"
    before = sorted(p.name for p in hook_dir.iterdir())
    old = os.umask(0)
    try:
        loaded, problems = discover_hooks(hooks)
    finally:
        os.umask(old)
    assert problems == [] and [h.name for h in loaded] == ["logger"]
    after_loading = sorted(p.name for p in hook_dir.iterdir())

    # The attacker plants bytecode whose header matches handler.py, where the
    # import system looks for it.
    st = handler.stat()
    code = compile(evil_source(marker), str(handler), "exec")
    pyc = (
        importlib.util.MAGIC_NUMBER
        + (0).to_bytes(4, "little")
        + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
        + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little")
        + marshal.dumps(code)
    )
    staged = base / "staged.pyc"
    staged.write_bytes(pyc)
    os.chmod(staged, 0o644)
    cached = Path(importlib.util.cache_from_source(str(handler)))
    plant = (
        f"mkdir -p '{cached.parent}' 2>/dev/null; rm -f '{cached}';"
        f" cat '{staged}' > '{cached}' 2>/dev/null"
    )
    as_attacker(plant).wait(timeout=30)
    loaded, problems = discover_hooks(hooks)
    assert problems == []
    assert run_handler(loaded[0], "session:end", {}, timeout=10) is None
    assert not marker.exists(), "a planted .pyc ran as the gateway"
    assert after_loading == before, "loading the hook wrote bytecode beside it"

    # A __pycache__ others can write left by an earlier version (0777 under
    # umask 000), with matching bytecode in it: never read either.
    cached.parent.mkdir(exist_ok=True)
    os.chmod(cached.parent, 0o777)
    as_attacker(plant).wait(timeout=30)
    assert cached.read_bytes() == pyc
    loaded, problems = discover_hooks(hooks)
    assert not marker.exists(), "a planted .pyc ran as the gateway"
    assert problems == [] and [h.name for h in loaded] == ["logger"]
    assert loaded[0].handler("session:end", {}) == "good"
    assert sorted(p.name for p in cached.parent.iterdir()) == [cached.name]


def test_a_handler_symlinked_into_a_directory_others_can_write_is_refused(
    base: Path,
) -> None:
    """Item 2: the checks followed the symlink to a file that was ours, and never
    looked at the directory it sits in, where another user can swap it."""
    shared = attacker_dir(base)
    target = shared / "handler.py"
    target.write_text(GOOD)  # ours (or root's), mode 0644: only its directory is open
    os.chmod(target, 0o644)
    hooks = base / "hooks"
    hook_dir = write_hook(hooks, "linked", GOOD)
    (hook_dir / "handler.py").unlink()
    (hook_dir / "handler.py").symlink_to(target)
    write_hook(hooks, "plain", GOOD)
    loaded, (problem,) = discover_hooks(hooks)
    assert [h.name for h in loaded] == ["plain"]
    assert problem.path == shared
    who = "uid 65534, not by this user or root" if ROOT else "writable by everyone"
    assert who in problem.message
    assert problem.message.endswith(f"it is on the real path of {hook_dir / 'handler.py'}")


def test_a_handler_symlinked_to_a_private_place_loads(base: Path) -> None:
    """The real path is what is checked: a symlink into directories only we (or
    root) can change is fine."""
    lib = base / "lib"
    lib.mkdir(mode=0o755)
    (lib / "real.py").write_text(GOOD)
    os.chmod(lib / "real.py", 0o644)
    hook_dir = write_hook(base / "hooks", "linked", GOOD)
    (hook_dir / "handler.py").unlink()
    (hook_dir / "handler.py").symlink_to(lib / "real.py")
    loaded, problems = discover_hooks(base / "hooks")
    assert problems == [] and loaded[0].handler("session:end", {}) == "good"


def test_swapping_a_handler_between_the_check_and_the_load_never_runs_foreign_code(
    base: Path,
) -> None:
    """Item 2, the race itself: the attacker swaps the symlink target between a
    file that passes the checks and its own code as fast as it can, while the
    gateway discovers its hooks again and again. Before the fix the foreign code
    ran within a fraction of a second."""
    shared = attacker_dir(base)
    good = shared / "good.py"
    good.write_text(GOOD)  # ours (or root's): passes the owner and mode checks
    os.chmod(good, 0o644)
    marker = base / "pwned"
    staged = base / "evil.src"
    staged.write_text(evil_source(marker))
    os.chmod(staged, 0o644)
    stop = base / "stop"
    swap = (
        f"cd '{shared}' && cat '{staged}' > evil.py && chmod 644 evil.py"
        f" && ln -s good.py handler.py && end=$(( $(date +%s) + 30 ))"
        f" && while [ ! -e '{stop}' ] && [ $(date +%s) -lt $end ]; do"
        " ln -s good.py a; mv -fT a handler.py; ln -s evil.py b; mv -fT b handler.py;"
        " done"
    )
    hooks = base / "hooks"
    hook_dir = write_hook(hooks, "linked", GOOD)
    (hook_dir / "handler.py").unlink()
    (hook_dir / "handler.py").symlink_to(shared / "handler.py")
    attacker = as_attacker(swap)
    try:
        deadline = time.monotonic() + 10
        while not (shared / "handler.py").is_symlink() and time.monotonic() < deadline:
            time.sleep(0.01)
        attempts = accepted = 0
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and not marker.exists():
            loaded, _problems = discover_hooks(hooks)
            attempts += 1
            accepted += bool(loaded)
    finally:
        stop.touch()
        try:
            attacker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            attacker.kill()
            attacker.wait()
    assert not marker.exists(), f"foreign code ran as the gateway within {attempts} discoveries"
    assert attempts > 10 and accepted == 0, (attempts, accepted)


def test_a_handler_is_one_file_sibling_modules_are_not_importable(base: Path) -> None:
    """The hook's directory is not put on sys.path (docs/hooks.md): a sibling
    module is not imported, through the import system or otherwise."""
    hook_dir = write_hook(base / "hooks", "split", "import split_helper\n" + GOOD)
    (hook_dir / "split_helper.py").write_text("X = 1\n")
    loaded, (problem,) = discover_hooks(base / "hooks")
    assert loaded == []
    assert "import failed: ModuleNotFoundError" in problem.message
    assert not (hook_dir / "__pycache__").exists()
