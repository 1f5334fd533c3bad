"""Calling user code (flushers, hook handlers) with a time limit.

The call runs in a daemon thread, so a hung callable cannot stall the caller
past its timeout; a coroutine result is awaited there with ``asyncio.run``. A
timed-out call is abandoned, not stopped (Python cannot stop a thread): it may
keep running in the background, and its outcome is ignored.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CallTimeoutError", "call_bounded"]


class CallTimeoutError(TimeoutError):
    """The call outlived its timeout (it is left running in a daemon thread)."""


async def _await(awaitable: Any) -> Any:
    return await awaitable


def call_bounded(fn: Callable[..., Any], *args: Any, timeout: float, name: str) -> Any:
    """``fn(*args)`` (awaited if it returns an awaitable) within ``timeout`` seconds.

    Returns its result; re-raises what it raised (any BaseException, so the
    caller decides what a SystemExit from user code means); raises
    CallTimeoutError when the time is up. ``name`` names the worker thread.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            box["result"] = result
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CallTimeoutError(f"timed out after {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box.get("result")
