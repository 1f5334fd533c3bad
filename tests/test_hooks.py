"""Hook discovery, subscriptions and handler calls, on real hook directories."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hook_workers import read_calls, recording_handler, write_hook

from hermes_ledger.gateway.config.paths import default_hooks_dir
from hermes_ledger.gateway.hooks import (
    Hook,
    HookRegistry,
    HookTimeoutError,
    discover_hooks,
    load_hook,
    run_handler,
)

GOOD_MANIFEST = "name: {name}\ndescription: d\nevents: [session:end]\n"
NOOP = "def handle(event_type, context):\n    return None\n"


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hooks"
    path.mkdir(mode=0o700)
    return path


def test_a_good_hook_is_discovered_and_called(hooks_dir: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    hook_dir = write_hook(
        hooks_dir, "logger", recording_handler(calls), events=["session:end", "session:start"]
    )
    hooks, problems = discover_hooks(hooks_dir)
    assert problems == []
    (hook,) = hooks
    assert (hook.name, hook.description, hook.events, hook.path) == (
        "logger",
        "test hook logger",
        ("session:end", "session:start"),
        hook_dir,
    )
    run_handler(hook, "session:end", {"session_id": "s1"}, timeout=5)
    (call,) = read_calls(calls)
    assert (call["event"], call["context"]) == ("session:end", {"session_id": "s1"})


def test_an_async_handler_is_awaited(hooks_dir: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    write_hook(hooks_dir, "async", recording_handler(calls, is_async=True))
    (hook,) = HookRegistry.discover(hooks_dir)
    run_handler(hook, "session:start", {"n": 1}, timeout=5)
    assert [c["context"] for c in read_calls(calls)] == [{"n": 1}]


def test_exact_and_prefix_subscriptions() -> None:
    def hook(*events: str) -> Hook:
        return Hook(name="h", events=events, handler=lambda t, c: None)

    wild = hook("session:*")
    assert wild.subscribes("session:end") and wild.subscribes("session:start")
    assert not wild.subscribes("sessions:end") and not wild.subscribes("agent:start")
    assert wild.log_types == {"session_started", "session_reset", "session_ended"}
    exact = hook("session:end", "agent:start")
    assert exact.subscribes("session:end") and not exact.subscribes("session:start")
    assert exact.log_types == {"session_ended"}
    assert hook("agent:*").log_types == frozenset()
    registry = HookRegistry([Hook("b", ("session:*",), print), Hook("a", ("session:end",), print)])
    assert [h.name for h in registry.matching("session:end")] == ["b", "a"]
    assert [h.name for h in registry.matching("session:reset")] == ["b"]


def test_broken_hooks_are_reported_with_their_path_and_the_others_load(
    hooks_dir: Path,
) -> None:
    write_hook(hooks_dir, "a-good", NOOP)
    write_hook(hooks_dir, "b-yaml", NOOP, manifest="name: [unclosed\nevents: x\n")
    write_hook(hooks_dir, "c-import", "import no_such_module_for_hooks\n")
    write_hook(hooks_dir, "d-nohandle", "def other(event_type, context):\n    pass\n")
    write_hook(hooks_dir, "e-syntax", "def handle(:\n")
    write_hook(hooks_dir, "f-raises", "raise ValueError('at import')\n")
    write_hook(hooks_dir, "g-good", NOOP)
    hooks, problems = discover_hooks(hooks_dir)
    assert [h.name for h in hooks] == ["a-good", "g-good"]
    found = {p.path.relative_to(hooks_dir).as_posix(): p.message for p in problems}
    assert list(found) == [
        "b-yaml/HOOK.yaml",
        "c-import/handler.py",
        "d-nohandle/handler.py",
        "e-syntax/handler.py",
        "f-raises/handler.py",
    ]
    assert found["b-yaml/HOOK.yaml"].startswith("invalid YAML: ")
    assert found["c-import/handler.py"] == (
        "import failed: ModuleNotFoundError: No module named 'no_such_module_for_hooks'"
    )
    assert found["d-nohandle/handler.py"] == "defines no handle(event_type, context) function"
    assert found["e-syntax/handler.py"].startswith("import failed: SyntaxError: ")
    assert found["f-raises/handler.py"] == "import failed: ValueError: at import"
    assert str(problems[0]) == f"{hooks_dir / 'b-yaml' / 'HOOK.yaml'}: {problems[0].message}"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("- a list\n", "must be a mapping with name, description and events"),
        ("description: no name\nevents: [session:end]\n", "'name' is missing or not a non-empty"),
        ("name: x\n", "'events' is missing or not a non-empty list of event types"),
        ("name: x\nevents: []\n", "'events' is missing or not a non-empty list of event types"),
        ("name: x\nevents: [session:end]\ndescription: [1]\n", "'description' must be a string"),
        ("name: x\nevents: ['*']\n", "'events' entry '*' is neither an event type"),
        ("name: x\nevents: ['session:*:end']\n", "'events' entry 'session:*:end' is neither"),
        ("name: x\nevents: [3]\n", "'events' entry 3 is neither"),
    ],
)
def test_invalid_manifests_are_refused(hooks_dir: Path, manifest: str, message: str) -> None:
    write_hook(hooks_dir, "bad", NOOP, manifest=manifest)
    hooks, (problem,) = discover_hooks(hooks_dir)
    assert hooks == []
    assert problem.path == hooks_dir / "bad" / "HOOK.yaml"
    assert problem.message.startswith(message)


def test_a_single_event_string_and_a_missing_description_are_accepted(hooks_dir: Path) -> None:
    write_hook(hooks_dir, "x", NOOP, manifest="name: x\nevents: session:end\n")
    (hook,), _ = discover_hooks(hooks_dir)
    assert (hook.events, hook.description) == (("session:end",), "")


def test_missing_files_are_reported(hooks_dir: Path) -> None:
    (write_hook(hooks_dir, "nohandler", NOOP) / "handler.py").unlink()
    (write_hook(hooks_dir, "nomanifest", NOOP) / "HOOK.yaml").unlink()
    (hooks_dir / "a-file-not-a-dir").write_text("ignored")
    (hooks_dir / ".hidden").mkdir()
    (hooks_dir / "__pycache__").mkdir()
    hooks, problems = discover_hooks(hooks_dir)
    assert hooks == []
    assert [(p.path, p.message) for p in problems] == [
        (hooks_dir / "nohandler" / "handler.py", "missing"),
        (hooks_dir / "nomanifest" / "HOOK.yaml", "missing"),
    ]


def test_two_hooks_with_one_name_keep_the_first(hooks_dir: Path) -> None:
    write_hook(hooks_dir, "one", NOOP, name="same")
    write_hook(hooks_dir, "two", NOOP, name="same")
    (hook,), (problem,) = discover_hooks(hooks_dir)
    assert hook.path == hooks_dir / "one"
    assert problem == problem.__class__(
        hooks_dir / "two", f"the name 'same' is already used by {hooks_dir / 'one'}"
    )


@pytest.mark.parametrize(
    ("target", "mode", "who"),
    [
        ("", 0o757, "everyone"),
        ("", 0o775, "its group"),
        ("handler.py", 0o646, "everyone"),
        ("HOOK.yaml", 0o664, "its group"),
    ],
)
def test_a_hook_others_can_write_to_is_refused(
    hooks_dir: Path, target: str, mode: int, who: str
) -> None:
    write_hook(hooks_dir, "open", NOOP)
    write_hook(hooks_dir, "safe", NOOP)
    path = hooks_dir / "open" / target if target else hooks_dir / "open"
    os.chmod(path, mode)
    hooks, (problem,) = discover_hooks(hooks_dir)
    assert [h.name for h in hooks] == ["safe"]
    assert problem.path == path
    assert problem.message == (
        f"refused: writable by {who} (mode {mode:o}); hooks run as code with the gateway's "
        f"rights, so only their owner may change them (chmod go-w {path})"
    )


def test_a_hooks_directory_others_can_write_to_is_refused_whole(hooks_dir: Path) -> None:
    write_hook(hooks_dir, "fine", NOOP)
    os.chmod(hooks_dir, 0o777)
    hooks, (problem,) = discover_hooks(hooks_dir)
    assert hooks == []
    assert problem.path == hooks_dir
    assert problem.message.startswith("refused: writable by everyone (mode 777)")


def test_a_refused_hook_is_never_imported(hooks_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    write_hook(hooks_dir, "evil", f"open({str(marker)!r}, 'w').close()\n" + NOOP)
    os.chmod(hooks_dir / "evil" / "handler.py", 0o666)
    discover_hooks(hooks_dir)
    assert not marker.exists()


def test_a_missing_hooks_directory_means_no_hooks(tmp_path: Path) -> None:
    assert discover_hooks(tmp_path / "nowhere") == ([], [])


def test_default_hooks_dir_is_under_hermes_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERMES_HOME", str(tmp_path))
    assert default_hooks_dir() == tmp_path / "hooks"
    write_hook(tmp_path / "hooks", "x", NOOP)
    assert [h.name for h in HookRegistry.discover()] == ["x"]


def test_load_hook_raises_with_the_path(hooks_dir: Path) -> None:
    write_hook(hooks_dir, "bad", "import no_such_module_for_hooks\n")
    with pytest.raises(ValueError, match=r"bad/handler\.py: import failed"):
        load_hook(hooks_dir / "bad")


# -- running a handler -------------------------------------------------------------


def test_a_handler_error_is_raised_to_the_caller() -> None:
    def handler(event_type: str, context: dict[str, object]) -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        run_handler(Hook("h", ("session:end",), handler), "session:end", {}, timeout=5)


def test_a_handler_that_exits_fails_the_call_not_the_caller() -> None:
    def handler(event_type: str, context: dict[str, object]) -> None:
        raise SystemExit(3)

    with pytest.raises(RuntimeError, match="handler raised SystemExit: 3"):
        run_handler(Hook("h", ("session:end",), handler), "session:end", {}, timeout=5)


def test_a_slow_handler_times_out_and_is_abandoned() -> None:
    released = threading.Event()

    def handler(event_type: str, context: dict[str, object]) -> None:
        released.wait(60)  # hangs until the test is done with it

    started = time.monotonic()
    try:
        with pytest.raises(HookTimeoutError, match=r"timed out after 0\.1s"):
            run_handler(Hook("h", ("session:end",), handler), "session:end", {}, timeout=0.1)
        assert time.monotonic() - started < 0.9
    finally:
        released.set()


def test_the_handler_gets_its_own_copy_of_the_context() -> None:
    seen: list[dict[str, object]] = []

    def handler(event_type: str, context: dict[str, object]) -> None:
        context["added"] = True
        seen.append(context)

    context = {"session_id": "s1"}
    run_handler(Hook("h", ("session:end",), handler), "session:end", context, timeout=5)
    assert context == {"session_id": "s1"} and seen == [{"session_id": "s1", "added": True}]
