"""Hermes-side processes for the plugin tests (``python -I plugin_workers.py CMD …``).

Each command runs in its own interpreter with ``HERMES_HOME`` set by the test
(Hermes caches it at import) and ``-I``, so that only the installed ``gateway``
package — Hermes's — can be imported; this folder is put on ``sys.path`` by hand
for ``worker_support``. The plugin is registered through Hermes's real
``PluginManager`` (a real ``PluginContext``), and hooks are fired with
``PluginManager.invoke_hook`` and the keyword arguments Hermes's own call sites
pass (gateway/run.py, agent/*.py, model_tools.py, slash_commands.py,
tools/delegate_tool.py in Hermes 0.19).

``StandIn`` is the recorder stand-in the worker is given instead of
``LiveRecorder`` (dependency injection through ``apply_factory``): it writes
every record it is handed into a table of the real ledger file, in one
``Ledger.write`` transaction per batch (so a locked ledger stops it as it
stops the real recorder), and turns ``dispatch``/``finalize`` records into
``session_started``/``session_ended`` events so that hooks have something to
deliver. It is deliberately *not* idempotent for its table: a record applied
twice shows up twice.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from worker_support import run_worker, wait_for

HOME = Path(os.environ.get("HERMES_HOME", "."))
TABLE = "standin_applied"
_NS = uuid.UUID("3d1c0a52-9f1e-4c7b-8d0e-5b1a2c3d4e5f")


class StandIn:
    """A recording stand-in for ``LiveRecorder.apply`` over a real ledger."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def apply(self, records: Sequence[Mapping[str, Any]]) -> int:
        def work(conn: Any) -> None:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (seq INTEGER PRIMARY KEY, pid INTEGER,"
                " kind TEXT, ident TEXT, body TEXT)"
            )
            for record in records:
                conn.execute(
                    f"INSERT INTO {TABLE} (pid, kind, ident, body) VALUES (?, ?, ?, ?)",
                    (os.getpid(), record.get("kind"), ident(record), json.dumps(record)),
                )

        self.ledger.write(work)
        for record in records:
            self._events(record)
        return len(records)

    def _events(self, record: Mapping[str, Any]) -> None:
        session_id = record.get("session_id")
        if not isinstance(session_id, str):
            return
        if record.get("kind") == "dispatch" and record.get("session_key"):
            source = dict(record.get("source") or {"platform": "telegram"})
            event = {
                "type": "session_started",
                "event_id": str(uuid.uuid5(_NS, session_id + ":start")),
                "session_id": session_id,
                "source": source,
            }
            self.ledger.append(record["session_key"], [event])
        elif record.get("kind") == "finalize":
            rows = self.ledger.query(
                "SELECT stream FROM events WHERE session_id = ? LIMIT 1", (session_id,)
            )
            if rows:
                event = {
                    "type": "session_ended",
                    "event_id": str(uuid.uuid5(_NS, session_id + ":end")),
                    "session_id": session_id,
                    "reason": "idle_expiry",
                }
                self.ledger.append(rows[0][0], [event])


def standin_factory(gateway: Any, home: Path) -> Any:
    return StandIn(gateway.ledger).apply


def ident(record: Mapping[str, Any]) -> str | None:
    """What makes a test record unique: its message id, else its session id."""
    return record.get("message_id") or record.get("session_id") or record.get("child_session_id")


# -- Hermes ---------------------------------------------------------------------


def plugin_context() -> Any:
    from hermes_cli.plugins import PluginContext, PluginManifest, get_plugin_manager

    manager = get_plugin_manager()
    manifest = PluginManifest(name="ledger", source="entrypoint", key="ledger")
    return manager, PluginContext(manifest, manager)


def hermes_source(chat_id: str = "123") -> Any:
    from gateway.session import SessionSource

    from gateway.config import Platform

    return SessionSource(
        platform=Platform.TELEGRAM, chat_id=chat_id, chat_type="dm", user_id="u1", user_name="al"
    )


def gateway_runner() -> Any:
    """A real, not started, Hermes ``GatewayRunner`` over this home."""
    from gateway.run import GatewayRunner

    from gateway.config import GatewayConfig

    return GatewayRunner(config=GatewayConfig(sessions_dir=HOME / "sessions"))


def message(source: Any, message_id: str, *, internal: bool = False) -> Any:
    from gateway.platforms.base import MessageEvent

    return MessageEvent(text="hello", source=source, message_id=message_id, internal=internal)


def activity_calls(session_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Each activity hook with exactly the keyword arguments of its Hermes call site."""
    history: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
    return [
        ("on_session_start", {"session_id": session_id, "model": "m", "platform": "telegram"}),
        (
            "pre_llm_call",
            {
                "session_id": session_id, "task_id": "t", "turn_id": "tu", "user_message": "hi",
                "conversation_history": history, "is_first_turn": True, "model": "m",
                "platform": "telegram", "sender_id": "u1",
            },
        ),
        (
            "post_api_request",
            {
                "task_id": "t", "turn_id": "tu", "api_request_id": "r1", "session_id": session_id,
                "platform": "telegram", "model": "m", "provider": "p", "base_url": "http://x",
                "api_mode": "chat", "api_call_count": 1, "api_duration": 0.5, "started_at": 1.0,
                "ended_at": 1.5, "finish_reason": "stop", "message_count": 2,
                "response_model": "m", "response": object(), "usage": {"input_tokens": 3},
                "assistant_message": {"role": "assistant"}, "assistant_content_chars": 5,
                "assistant_tool_call_count": 0,
            },
        ),
        (
            "post_tool_call",
            {
                "tool_name": "terminal", "args": {"cmd": "ls"}, "result": "secret", "task_id": "t",
                "session_id": session_id, "tool_call_id": "c1", "turn_id": "tu",
                "api_request_id": "r1", "duration_ms": 3, "status": "ok", "error_type": None,
                "error_message": None, "middleware_trace": [],
            },
        ),
        (
            "post_llm_call",
            {
                "session_id": session_id, "task_id": "t", "turn_id": "tu", "user_message": "hi",
                "assistant_response": "hello", "conversation_history": history, "model": "m",
                "platform": "telegram",
            },
        ),
        (  # agent/turn_finalizer.py: the end of every run_conversation (a turn)
            "on_session_end",
            {
                "session_id": session_id, "task_id": "t", "turn_id": "tu", "completed": True,
                "interrupted": False, "model": "m", "platform": "telegram",
            },
        ),
    ]  # fmt: skip


class Boom:
    """Garbage that raises whatever is asked of it."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"boom: {name}")

    def __str__(self) -> str:
        raise RuntimeError("boom: str")

    def __bool__(self) -> bool:
        raise RuntimeError("boom: bool")


def log_to_stderr() -> None:
    """The plugin's log lines on stderr, where the test reads them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.getLogger("hermes_plugins.ledger").addHandler(handler)
    logging.getLogger("hermes_plugins.ledger").setLevel(logging.INFO)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


# -- commands ---------------------------------------------------------------------------


def hooks() -> None:
    """Every hook as Hermes calls it, then garbage; prints what the test checks."""
    from hermes_ledger.gateway.plugin.capture import install_capture

    collect = Collect()
    logging.getLogger().addHandler(collect)
    logging.getLogger().setLevel(logging.DEBUG)
    manager, ctx = plugin_context()
    install_capture(ctx, workers=False)
    runner = gateway_runner()
    store = runner.session_store
    source = hermes_source()
    returned: list[Any] = []

    def fire(hook: str, **kwargs: Any) -> None:
        returned.extend(manager.invoke_hook(hook, **kwargs))

    fire("pre_gateway_dispatch", event=message(source, "m0"), gateway=runner, session_store=store)
    entry = store.get_or_create_session(source)
    fire("pre_gateway_dispatch", event=message(source, "m1"), gateway=runner, session_store=store)
    fire("pre_gateway_dispatch", event=message(source, "mi", internal=True), gateway=runner,
         session_store=store)  # fmt: skip
    from gateway.session_context import set_session_vars

    def in_turn() -> None:  # what the gateway's executor thread sees
        set_session_vars(platform="telegram", session_key=store._generate_session_key(source),
                         session_id=entry.session_id)  # fmt: skip
        for hook, kwargs in activity_calls(entry.session_id):
            fire(hook, **kwargs)

    turn = threading.Thread(target=contextvars.copy_context().run, args=(in_turn,))
    turn.start()
    turn.join()
    for hook, kwargs in activity_calls("cli-session"):  # outside a gateway turn
        fire(hook, **kwargs)
    fire("on_session_finalize", session_id=entry.session_id, platform="telegram",
         reason="session_expired")  # fmt: skip
    new = store.reset_session(store._generate_session_key(source))
    rotation = {"old_session_id": entry.session_id, "new_session_id": new.session_id}
    fire("on_session_finalize", session_id=entry.session_id, platform="telegram",
         reason="new_session", **rotation)  # fmt: skip
    fire("on_session_reset", session_id=new.session_id, platform="telegram",
         reason="new_session", **rotation)  # fmt: skip
    fire("on_session_finalize", session_id=None, platform="gateway", reason="shutdown")
    fire("subagent_start", parent_session_id=new.session_id, parent_turn_id="tu",
         parent_subagent_id=None, child_session_id="child-1", child_subagent_id="sa1",
         child_role="worker", child_goal="g")  # fmt: skip
    good = len(returned)
    # garbage: wrong types, raising objects, missing and unknown arguments
    boom = Boom()
    for hook in (
        "pre_gateway_dispatch", "on_session_start", "pre_llm_call", "post_llm_call",
        "post_tool_call", "post_api_request", "on_session_end", "on_session_finalize",
        "on_session_reset", "subagent_start",
    ):  # fmt: skip
        fire(hook)
        fire(hook, event=boom, gateway=boom, session_store=boom, session_id=boom,
             platform=boom, reason=boom, parent_session_id=boom, child_session_id=boom,
             old_session_id=[1], new_session_id={"a": 1}, surprise=boom)  # fmt: skip
        fire(hook, session_id=12345, platform=3.5, reason=b"bytes", event="not an event")
    fire("pre_gateway_dispatch", event=message(boom, "m9"), gateway=boom, session_store=boom)
    fire("subagent_start", parent_session_id="p-after", child_session_id="child-after")
    raised = [line for line in collect.lines if "raised" in line]
    print(json.dumps({
        "session_id": entry.session_id, "new_session_id": new.session_id,
        "session_key": store._generate_session_key(source), "returned": returned,
        "good_returned": good, "raised": raised,
        "threads": [t.name for t in threading.enumerate()],
    }), flush=True)  # fmt: skip


def spool_until_killed() -> None:
    """Fire dispatch hooks forever, printing each index once its call returned."""
    from hermes_ledger.gateway.plugin.capture import install_capture

    manager, ctx = plugin_context()
    install_capture(ctx, workers=False)

    class Store:  # a key and no session yet: all a dispatch record needs here
        def _generate_session_key(self, source: Any) -> str:
            return "agent:main:telegram:dm:123"

        def peek_session_id(self, key: str) -> None:
            return None

    source, store = hermes_source(), Store()
    i = 0
    while True:
        manager.invoke_hook("pre_gateway_dispatch", event=message(source, f"m{i}"),
                            gateway=None, session_store=store)  # fmt: skip
        print(i, flush=True)
        i += 1


def spool_with_worker(prefix: str, count: int, go: str | None, options: str) -> None:
    """A process that captures ``count`` records (ids ``<prefix><i>``) while its own
    worker drains the home's spool with the stand-in; reports callback times."""
    from hermes_ledger.gateway.plugin.capture import install_capture

    log_to_stderr()
    manager, ctx = plugin_context()
    capture = install_capture(
        ctx, apply_factory=standin_factory, worker_options=json.loads(options), workers=True
    )
    print("ready", flush=True)
    if go:
        wait_for([Path(go)])
    slowest = 0.0
    for i in range(count):
        started = time.perf_counter()
        manager.invoke_hook("subagent_start", parent_session_id=f"{prefix}parent",
                            parent_turn_id="t", parent_subagent_id=None,
                            child_session_id=f"{prefix}{i}", child_subagent_id="s",
                            child_role="r", child_goal="g")  # fmt: skip
        slowest = max(slowest, time.perf_counter() - started)
        if i % 50 == 0:
            time.sleep(0.001)
    worker = capture.worker()
    print(json.dumps({"spooled": count, "slowest": slowest,
                      "worker": worker is not None and worker.running}), flush=True)  # fmt: skip
    line = sys.stdin.readline()  # the test says when to exit (atexit then drains)
    assert line.strip() in ("exit", ""), line


def gateway(kind: str, hook_calls: str) -> None:
    """``capture``: spool a dispatch and a finalize as a non-gateway process
    would, without a worker, then wait to be killed. ``serve``: a gateway
    (a real GatewayRunner) registering the plugin; waits until a ledger hook was
    called (or a second later for ``again``), then reports its threads."""
    from hermes_ledger.gateway.plugin import capture as capture_module
    from hermes_ledger.gateway.plugin.capture import install_capture

    log_to_stderr()
    manager, ctx = plugin_context()
    if kind == "capture":
        install_capture(ctx, workers=False)
        runner = gateway_runner()  # its SessionStore gives the session; no worker runs
        source = hermes_source()
        entry = runner.session_store.get_or_create_session(source)
        manager.invoke_hook("pre_gateway_dispatch", event=message(source, "m1"), gateway=runner,
                            session_store=runner.session_store)  # fmt: skip
        manager.invoke_hook("on_session_finalize", session_id=entry.session_id,
                            platform="telegram", reason="session_expired")  # fmt: skip
        print(json.dumps({"session_id": entry.session_id}), flush=True)
        time.sleep(600)
        return
    before = [t.name for t in threading.enumerate()]
    runner = gateway_runner()  # as in `hermes gateway run`: the runner, then discovery
    install_capture(ctx, apply_factory=standin_factory,
                    worker_options={"interval": 0.05, "max_retry_delay": 0.2})  # fmt: skip
    started = [t.name for t in threading.enumerate()]
    deadline = time.monotonic() + 60
    calls = Path(hook_calls)
    if kind == "serve":
        while not (calls.exists() and calls.read_text().strip()):
            if time.monotonic() > deadline:
                raise TimeoutError("the ledger hook was never called")
            time.sleep(0.02)
    worker = capture_module._installed.worker() if capture_module._installed else None
    assert worker is not None
    outcome = worker.run_pass()  # one more pass: nothing is delivered twice
    print(json.dumps({
        "before": before, "after_register": started, "runner": runner is not None,
        "last_pass": {"applied": outcome.drained.applied if outcome.drained else None,
                      "delivered": outcome.delivered.delivered if outcome.delivered else None,
                      "error": repr(outcome.error)},
    }), flush=True)  # fmt: skip


def plain(hook_calls: str) -> None:
    """A Hermes process that is no gateway (``hermes chat``, ``hermes ledger …``):
    the real ``register`` and activity hooks spool, but start no thread."""
    from hermes_ledger.gateway.plugin import register

    manager, ctx = plugin_context()
    before = {t.name for t in threading.enumerate()}
    register(ctx)
    registered = {t.name for t in threading.enumerate()} - before
    for hook, kwargs in activity_calls("cli-1"):
        manager.invoke_hook(hook, **kwargs)
    manager.invoke_hook("on_session_finalize", session_id="cli-1", platform="cli",
                        reason="session_boundary")  # fmt: skip
    after = {t.name for t in threading.enumerate()} - before
    print(json.dumps({"registered_threads": sorted(registered), "threads": sorted(after),
                      "hooks": sorted(h for h, cbs in manager._hooks.items() if cbs),
                      "cli_commands": sorted(manager._cli_commands)}), flush=True)  # fmt: skip


def live(hook_calls: str) -> None:
    """A gateway with the plugin as Hermes loads it (``register``: the real
    ``LiveRecorder``), through two turns and a ``/new``, each hook fired as its
    call site does; returns once the ledger hook has heard of both sessions."""
    from gateway.session_context import set_session_vars

    from hermes_ledger.gateway.plugin import register

    log_to_stderr()
    manager, ctx = plugin_context()
    runner = gateway_runner()
    register(ctx)
    store, source = runner.session_store, hermes_source("99")
    key = store._generate_session_key(source)

    def turn(text: str, message_id: str) -> str:
        manager.invoke_hook("pre_gateway_dispatch", event=message(source, message_id),
                            gateway=runner, session_store=store)  # fmt: skip
        entry = store.get_or_create_session(source)

        def agent() -> None:  # the executor thread, with the gateway's context variables
            set_session_vars(platform="telegram", session_key=key, session_id=entry.session_id)
            manager.invoke_hook("on_session_start", session_id=entry.session_id, model="m",
                                platform="telegram")  # fmt: skip
            store.append_to_transcript(entry.session_id, {"role": "user", "content": text})
            store.append_to_transcript(entry.session_id, {"role": "assistant", "content": "ok"})
            for hook, kwargs in activity_calls(entry.session_id)[1:]:
                manager.invoke_hook(hook, **kwargs)

        thread = threading.Thread(target=contextvars.copy_context().run, args=(agent,))
        thread.start()
        thread.join()
        return entry.session_id

    first = turn("hello", "m1")
    new = store.reset_session(key)  # /new, as slash_commands does it
    rotation = {"old_session_id": first, "new_session_id": new.session_id}
    manager.invoke_hook("on_session_finalize", session_id=first, platform="telegram",
                        reason="new_session", **rotation)  # fmt: skip
    manager.invoke_hook("on_session_reset", session_id=new.session_id, platform="telegram",
                        reason="new_session", **rotation)  # fmt: skip
    second = turn("fresh start", "m2")
    calls = Path(hook_calls)
    deadline = time.monotonic() + 60
    while not calls.exists() or len(calls.read_text().splitlines()) < 4:
        if time.monotonic() > deadline:
            raise TimeoutError("the ledger hook did not hear of both sessions")
        time.sleep(0.02)
    print(json.dumps({"first": first, "second": second, "key": key,
                      "threads": [t.name for t in threading.enumerate()]}), flush=True)  # fmt: skip


def hermes_day(mode: str, calls_path: str, chat_id: str = "77") -> None:
    """Hermes's gateway through a day, as the headline test needs it: the plugin
    loaded by Hermes's own ``PluginManager.discover_and_load()`` (config.yaml
    enables it), Hermes's real ``GatewayRunner``/``SessionStore`` with the home's
    idle policy, and each hook fired as its call site does. A virtual clock (a
    day ago, moved by ``advance``) stands in for waiting: Hermes reads
    ``time.time``/``gateway.session._now``, the plugin's callbacks
    ``capture._now``.

    1. a turn; 2. the idle expiry watcher's finalize + ``set_expiry_finalized``;
    3. a turn (lazy rotation: a new id, no hook); 4. a turn much later (an
    auto-reset the watcher never saw: no hook); 5. ``/new`` (``reset_session``,
    finalize ``new_session``, ``on_session_reset``); 6. an interrupted turn
    (no ``post_llm_call``; its messages are persisted after the last hook but
    ``on_session_end``).

    ``mode`` ``live``: the plugin's worker drains as it goes; returns once the
    ledger hook heard three ``session:end``. ``killed``: prints the ids once
    every callback returned, then waits to be killed (the test holds the
    ledger's write lock, so nothing is drained before). ``shared`` (a ledger
    other gateways record into too, whose hooks may deliver this one's closes):
    returns once the spool is drained and the ledger holds the key's three
    ends. ``unreachable`` (the ledger cannot be reached): prints the ids once
    every callback returned and exits. ``chat_id`` is the Telegram chat talked in
    (the key ``agent:main:telegram:dm:<chat_id>``).
    """
    from datetime import UTC, datetime

    clock = [time.time() - 86400]
    time.time = lambda: clock[0]  # type: ignore[assignment]
    import gateway.session as hermes_session

    hermes_session._now = lambda: datetime.fromtimestamp(clock[0])  # type: ignore[attr-defined]
    from hermes_ledger.gateway.plugin import capture as capture_module
    from hermes_ledger.gateway.plugin.spool import pending_records
    from hermes_ledger.ledger.clock import format_utc

    capture_module._now = lambda: format_utc(datetime.fromtimestamp(clock[0], UTC))

    def advance(minutes: float) -> None:
        clock[0] += minutes * 60

    log_to_stderr()
    from gateway.run import GatewayRunner
    from gateway.session_context import set_session_vars
    from hermes_cli.plugins import get_plugin_manager

    from gateway.config import load_gateway_config

    config = load_gateway_config()  # the home's config.yaml: the idle policy
    runner = GatewayRunner(config=config)  # as `hermes gateway run`: the runner, then discovery
    manager = get_plugin_manager()
    manager.discover_and_load()
    loaded = manager._plugins.get("ledger")
    assert loaded is not None and loaded.enabled and loaded.error is None, loaded
    store, source = runner.session_store, hermes_source(chat_id)
    key = store._generate_session_key(source)

    def drained() -> None:
        if mode not in ("live", "shared"):
            return
        deadline = time.monotonic() + 60
        while pending_records(HOME):
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not drain the spool")
            time.sleep(0.01)

    def turn(text: str, message_id: str, *, interrupted: bool = False) -> str:
        manager.invoke_hook("pre_gateway_dispatch", event=message(source, message_id),
                            gateway=runner, session_store=store)  # fmt: skip
        entry = store.get_or_create_session(source)
        sid = entry.session_id
        calls = dict(activity_calls(sid))
        calls["pre_llm_call"]["user_message"] = text

        def agent() -> None:  # the executor thread, with the gateway's context variables
            set_session_vars(platform="telegram", session_key=key, session_id=sid)
            manager.invoke_hook("on_session_start", **calls["on_session_start"])
            manager.invoke_hook("pre_llm_call", **calls["pre_llm_call"])
            if interrupted:
                drained()  # what the hooks so far said is recorded before the messages exist
            advance(1)
            store.append_to_transcript(sid, {"role": "user", "content": text})
            advance(1)
            if not interrupted:
                store.append_to_transcript(sid, {"role": "assistant", "content": "ok"})
                store.update_session(key, last_prompt_tokens=10)
                manager.invoke_hook("post_api_request", **calls["post_api_request"])
                manager.invoke_hook("post_llm_call", **calls["post_llm_call"])
            end = {**calls["on_session_end"], "completed": not interrupted,
                   "interrupted": interrupted}  # fmt: skip
            manager.invoke_hook("on_session_end", **end)

        thread = threading.Thread(target=contextvars.copy_context().run, args=(agent,))
        thread.start()
        thread.join()
        return sid

    e1 = turn("hello", "m1")
    advance(90)  # the expiry watcher's pass (idle_minutes: 60)
    entry = store._entries[key]
    assert store._is_session_expired(entry)
    manager.invoke_hook("on_session_finalize", session_id=entry.session_id, platform="telegram",
                        reason="session_expired")  # fmt: skip
    store.set_expiry_finalized(entry)
    advance(5)
    e2 = turn("back again", "m2")  # rotated lazily: a new id, no hook
    advance(120)
    e3 = turn("much later", "m3")  # an auto-reset the watcher never saw: no hook
    advance(1)
    new = store.reset_session(key)  # /new, as slash_commands does it
    rotation = {"old_session_id": e3, "new_session_id": new.session_id}
    manager.invoke_hook("on_session_finalize", session_id=e3, platform="telegram",
                        reason="new_session", **rotation)  # fmt: skip
    manager.invoke_hook("on_session_reset", session_id=new.session_id, platform="telegram",
                        reason="new_session", **rotation)  # fmt: skip
    advance(1)
    e4 = turn("fresh start", "m4", interrupted=True)
    assert e4 == new.session_id and len({e1, e2, e3, e4}) == 4
    worker = capture_module._installed.worker() if capture_module._installed else None
    out = {"ids": [e1, e2, e3, e4], "key": key, "worker": worker is not None}
    if mode == "killed":
        print(json.dumps(out), flush=True)
        time.sleep(600)
        return
    if mode == "unreachable":  # every callback returned; the worker's pass has failed
        deadline = time.monotonic() + 60
        while worker is None or not worker.incidents.failing("recording the spool in the ledger"):
            if time.monotonic() > deadline:
                raise TimeoutError("the worker's pass did not fail")
            time.sleep(0.02)
        print(json.dumps(out), flush=True)
        return
    if mode == "shared":
        drained()
        print(json.dumps({**out, "ends": ledger_ends(key, 3)}), flush=True)
        return
    calls_file = Path(calls_path)

    def ends_heard() -> int:
        lines = calls_file.read_text().splitlines() if calls_file.exists() else []
        return sum('"session:end"' in line for line in lines)

    deadline = time.monotonic() + 60
    while ends_heard() < 3:
        if time.monotonic() > deadline:
            raise TimeoutError("the ledger hook did not hear of three session ends")
        time.sleep(0.02)
    assert worker is not None
    drained()
    last = worker.run_pass()  # one more pass: nothing is applied or delivered twice
    out["last_pass"] = {
        "applied": last.drained.applied if last.drained else None,
        "delivered": last.delivered.delivered if last.delivered else None,
    }
    print(json.dumps(out), flush=True)


def ledger_ends(key: str, count: int) -> int:
    """Wait until the plugin's ledger holds ``count`` session ends on ``key``."""
    from hermes_ledger.gateway.plugin.location import plugin_ledger
    from hermes_ledger.ledger import open_log

    deadline = time.monotonic() + 60
    with open_log(plugin_ledger(HOME)) as log:
        while True:
            ends = sum(r.type == "session_ended" for r in log.read_stream(key))
            if ends >= count:
                return ends
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ledger holds {ends} ends on {key}, not {count}")
            time.sleep(0.02)


COMMANDS = {
    "hooks": lambda args: hooks(),
    "spool-until-killed": lambda args: spool_until_killed(),
    "spool-with-worker": lambda args: spool_with_worker(
        args[0], int(args[1]), args[2] or None, args[3]
    ),
    "gateway": lambda args: gateway(args[0], args[1]),
    "plain": lambda args: plain(args[0]),
    "live": lambda args: live(args[0]),
    "hermes-day": lambda args: hermes_day(*args),
}


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    run_worker(lambda: COMMANDS[command](rest))
