"""Finding hooks: discovery from ``$HERMES_HOME/hooks/<name>/``, permission checks, loading.

A hook is a directory holding ``HOOK.yaml``::

    name: session-logger
    description: Write every closed session to a file
    events: [session:end, "session:*"]

and ``handler.py`` defining ``handle(event_type, context)``, plain or ``async``.
Existing Hermes hooks run unchanged. A subscription is an exact event type or a
``prefix:*`` wildcard; the ledger produces ``session:start``, ``session:reset``
and ``session:end`` (see ``HOOK_EVENTS``).

Hooks run as code with the gateway's rights, so discovery refuses a hooks
directory, hook directory, ``HOOK.yaml`` or ``handler.py`` that other users could
change (group- or world-writable, or owned by another user). A refused or broken
hook (invalid YAML, missing fields, an import error, no ``handle``) is reported
as a ``HookProblem`` with its path and skipped; the other hooks still load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hermes_ledger.gateway.config.paths import default_hooks_dir
from hermes_ledger.gateway.hooks.delivery import (
    HOOK_EVENTS,
)
from hermes_ledger.ledger.text import has_ascii_controls

__all__ = [
    "Hook",
    "HookProblem",
    "HookRegistry",
    "discover_hooks",
    "hook_subscriptions",
    "hooks_dir_stamp",
    "load_hook",
    "log_types_of",
]

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Any]

_PATTERN = re.compile(r"^[^*\s]+(:\*)?$")
_MAX_NAME = 200


@dataclass(frozen=True)
class HookProblem:
    """A hook (or the hooks directory) that was skipped, and why."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "message": self.message}


def _matches(patterns: Iterable[str], event_type: str) -> bool:
    for pattern in patterns:
        if pattern == event_type:
            return True
        if pattern.endswith(":*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def log_types_of(events: Iterable[str]) -> frozenset[str]:
    """The log event types that subscriptions ``events`` are delivered (``HOOK_EVENTS``)."""
    patterns = tuple(events)
    return frozenset(t for t, name in HOOK_EVENTS.items() if _matches(patterns, name))


@dataclass(frozen=True)
class Hook:
    """One loaded hook: its ``HOOK.yaml`` fields, its directory and its ``handle``."""

    name: str
    events: tuple[str, ...]
    handler: Handler = field(repr=False, compare=False)
    description: str = ""
    path: Path | None = None

    def subscribes(self, event_type: str) -> bool:
        """True for an exact subscription or a matching ``prefix:*`` wildcard."""
        return _matches(self.events, event_type)

    @property
    def log_types(self) -> frozenset[str]:
        """The log event types this hook is delivered (see ``HOOK_EVENTS``)."""
        return log_types_of(self.events)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "events": list(self.events),
            "path": None if self.path is None else str(self.path),
        }


class HookRegistry:
    """The loaded hooks (by name) and the problems met while discovering them."""

    hooks_dir: Path | None = None
    """The directory ``discover`` read (None for a registry built from hooks)."""
    stamp: object = None
    """``hooks_dir_stamp(hooks_dir)`` taken just before ``discover`` read it."""

    def __init__(self, hooks: Iterable[Hook] = (), problems: Iterable[HookProblem] = ()) -> None:
        self._hooks: dict[str, Hook] = {}
        for hook in hooks:
            if hook.name in self._hooks:
                raise ValueError(f"two hooks are named {hook.name!r}")
            self._hooks[hook.name] = hook
        self.problems: tuple[HookProblem, ...] = tuple(problems)

    @classmethod
    def discover(cls, hooks_dir: str | os.PathLike[str] | None = None) -> HookRegistry:
        """Load every hook under ``hooks_dir`` (default ``$HERMES_HOME/hooks``)."""
        root = Path(default_hooks_dir() if hooks_dir is None else hooks_dir)
        stamp = hooks_dir_stamp(root)
        hooks, problems = discover_hooks(root)
        registry = cls(hooks, problems)
        registry.hooks_dir, registry.stamp = root, stamp
        return registry

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return tuple(self._hooks.values())

    def get(self, name: str) -> Hook | None:
        return self._hooks.get(name)

    def matching(self, event_type: str) -> list[Hook]:
        """The hooks subscribed to ``event_type``, in name order."""
        return [h for h in self._hooks.values() if h.subscribes(event_type)]

    def __iter__(self) -> Iterator[Hook]:
        return iter(self._hooks.values())

    def __len__(self) -> int:
        return len(self._hooks)


# -- discovery -----------------------------------------------------------------


class _Refused(Exception):
    """Internal: a hook that is skipped; the message says why."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.problem = HookProblem(path, message)


def _refusal(path: Path, st: os.stat_result, *, sticky_ok: bool = False) -> str | None:
    """Why ``st`` (of ``path``) is something a user other than us (or root) could
    change, or None. ``sticky_ok``: a sticky directory (``/tmp``) may be writable by
    others, since they cannot rename or remove entries they do not own."""
    if st.st_uid not in (os.geteuid(), 0):
        return (
            f"refused: owned by uid {st.st_uid}, not by this user or root; hooks run as code "
            "with the gateway's rights"
        )
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        who = "everyone" if st.st_mode & stat.S_IWOTH else "its group"
        return (
            f"refused: writable by {who} (mode {stat.S_IMODE(st.st_mode):o}); hooks run as "
            f"code with the gateway's rights, so only their owner may change them "
            f"(chmod go-w {path})"
        )
    return None


def _check_private(path: Path) -> None:
    """Refuse a file or directory that a user other than us (or root) could change."""
    if os.name != "posix":
        return
    message = _refusal(path, os.stat(path))
    if message is not None:
        raise _Refused(path, message)


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _read_checked(path: Path) -> bytes:
    """The bytes of a hook's file, read from one descriptor that was checked.

    The file's real path is opened one component at a time from ``/`` (each with
    ``O_NOFOLLOW``, relative to the descriptor of the directory before it), and
    every directory on it and the file itself are checked on their open
    descriptors (``fstat``): owned by us or root, not writable by group or others
    (a sticky directory such as ``/tmp`` may be). What is read is what was checked:
    a path swapped after the check (a symlink replaced, a file renamed into place)
    makes the open fail or is never looked at again.
    """
    if os.name != "posix":
        return path.read_bytes()
    real = Path(os.path.realpath(path))
    parts = real.parts
    dir_flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
    dir_fd = os.open(parts[0], dir_flags)
    try:
        current = Path(parts[0])
        for name in parts[1:-1]:
            message = _refusal(current, os.fstat(dir_fd), sticky_ok=True)
            if message is not None:
                raise _Refused(current, f"{message}; it is on the real path of {path}")
            try:
                fd = os.open(name, dir_flags, dir_fd=dir_fd)
            except OSError as exc:
                raise _Refused(
                    path, f"cannot open {current / name} on its real path {real}: {exc.strerror}"
                ) from None
            os.close(dir_fd)
            dir_fd, current = fd, current / name
        message = _refusal(current, os.fstat(dir_fd), sticky_ok=True)
        if message is not None:
            raise _Refused(current, f"{message}; it is on the real path of {path}")
        try:
            fd = os.open(
                parts[-1], os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd
            )
        except OSError as exc:
            raise _Refused(path, f"cannot open {real}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(path, f"refused: {real} is not a regular file")
        message = _refusal(path if real == path.absolute() else real, st)
        if message is not None:
            raise _Refused(path, message)
        return file.read()


def _read_manifest(path: Path) -> tuple[str, str, tuple[str, ...]]:
    try:
        text = _read_checked(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Refused(path, f"cannot read: {exc}") from None
    try:
        manifest = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise _Refused(path, f"invalid YAML: {detail}") from None
    if not isinstance(manifest, dict):
        raise _Refused(path, "must be a mapping with name, description and events")
    name = manifest.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Refused(path, "'name' is missing or not a non-empty string")
    if len(name) > _MAX_NAME or has_ascii_controls(name):
        raise _Refused(path, f"'name' {name!r} is too long or contains control characters")
    description = manifest.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise _Refused(path, "'description' must be a string")
    events = manifest.get("events")
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not events:
        raise _Refused(path, "'events' is missing or not a non-empty list of event types")
    for pattern in events:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise _Refused(
                path,
                f"'events' entry {pattern!r} is neither an event type (session:end) "
                "nor a prefix wildcard (session:*)",
            )
    return name, description, tuple(dict.fromkeys(events))


def _load_handler(path: Path, hook_name: str) -> Handler:
    """Run ``handler.py`` in a fresh module, from the bytes ``_read_checked`` read.

    No import machinery: no bytecode is written beside the hook or read from its
    ``__pycache__`` (a cache another user could plant), and the file executed is
    the one whose owner and mode were checked. The hook's directory is not put on
    ``sys.path``: a handler is one file.
    """
    source = _read_checked(path)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"hermes_hook_{re.sub(r'[^0-9A-Za-z_]', '_', hook_name)}_{digest}"
    module = types.ModuleType(module_name)
    module.__file__ = str(path)
    sys.modules[module_name] = module  # dataclasses and pickle look modules up here
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if not isinstance(exc, Exception):
            raise
        raise _Refused(path, f"import failed: {type(exc).__name__}: {exc}") from None
    handle = getattr(module, "handle", None)
    if not callable(handle):
        sys.modules.pop(module_name, None)
        raise _Refused(path, "defines no handle(event_type, context) function")
    return handle  # type: ignore[no-any-return]


def load_hook(hook_dir: str | os.PathLike[str]) -> Hook:
    """Load one hook directory; raises ValueError (with the path) if it is refused."""
    try:
        return _load(Path(hook_dir))
    except _Refused as exc:
        raise ValueError(str(exc.problem)) from None


def _inspect(hook_dir: Path) -> tuple[str, str, tuple[str, ...], Path]:
    """A hook directory's manifest fields and handler path, checked; nothing run."""
    _check_private(hook_dir)
    manifest = hook_dir / "HOOK.yaml"
    handler = hook_dir / "handler.py"
    for required in (manifest, handler):
        if not required.is_file():
            raise _Refused(required, "missing")
        _check_private(required)
    return (*_read_manifest(manifest), handler)


def _load(hook_dir: Path) -> Hook:
    name, description, events, handler = _inspect(hook_dir)
    return Hook(
        name=name,
        description=description,
        events=events,
        handler=_load_handler(handler, name),
        path=hook_dir,
    )


def discover_hooks(
    hooks_dir: str | os.PathLike[str],
) -> tuple[list[Hook], list[HookProblem]]:
    """Load every hook in ``hooks_dir`` (one subdirectory each, in name order).

    Returns the hooks that loaded and the problems (each with its path) of those
    that did not (a dispatcher logs them as warnings; the CLI lists them). A
    missing ``hooks_dir`` means no hooks. Loading a hook imports its ``handler.py``.
    """
    root = Path(hooks_dir)
    hooks: list[Hook] = []
    problems: list[HookProblem] = []
    if not root.is_dir():
        return hooks, problems
    try:
        entries = _entries(root)
    except _Refused as exc:
        problems.append(exc.problem)
        entries = []
    except OSError as exc:
        problems.append(HookProblem(root, f"cannot list: {exc}"))
        entries = []
    seen: dict[str, Path] = {}
    for entry in entries:
        try:
            hook = _load(entry)
        except _Refused as exc:
            problems.append(exc.problem)
            continue
        except OSError as exc:
            problems.append(HookProblem(entry, f"cannot read: {exc}"))
            continue
        if hook.name in seen:
            problems.append(
                HookProblem(entry, f"the name {hook.name!r} is already used by {seen[hook.name]}")
            )
            continue
        seen[hook.name] = entry
        hooks.append(hook)
    return hooks, problems


def _entries(root: Path) -> list[Path]:
    """The hook directories of a hooks directory that passes the checks, in name order."""
    _check_private(root)
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    return [e for e in entries if not e.name.startswith((".", "__")) and e.is_dir()]


def hook_subscriptions(hooks_dir: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """Name → subscriptions of each hook in ``hooks_dir`` that passes discovery's
    checks as far as they go without running it (permissions, files, manifest);
    the first in name order wins a name. No handler is run: this is what a process
    registers before it appends (``HookRegistrar``)."""
    found: dict[str, tuple[str, ...]] = {}
    root = Path(hooks_dir)
    try:
        entries = _entries(root) if root.is_dir() else []
    except (_Refused, OSError):
        return found
    for entry in entries:
        try:
            name, _description, events, _handler = _inspect(entry)
        except (_Refused, OSError):
            continue
        found.setdefault(name, events)
    return found


def hooks_dir_stamp(hooks_dir: str | os.PathLike[str]) -> object:
    """A cheap fingerprint of a hooks directory (its entries' names, owners and
    modes, and the stat of each entry's HOOK.yaml and handler.py): equal stamps
    mean no hook was added, removed, renamed, edited or re-permissioned."""

    def one(path: str, *, contents: bool = True) -> tuple[int, ...] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not contents:  # a directory: what a handler writes beside itself is no change
            return (st.st_ino, st.st_mode, st.st_uid)
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode, st.st_uid)

    root = os.fspath(hooks_dir)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return (one(root, contents=False),)
    parts: list[object] = [one(root, contents=False)]
    for name in names:
        entry = os.path.join(root, name)
        parts.append((name, one(entry, contents=False), one(os.path.join(entry, "HOOK.yaml")),
                      one(os.path.join(entry, "handler.py"))))  # fmt: skip
    return tuple(parts)
