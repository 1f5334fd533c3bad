"""What the worker scripts (``proc_workers.py``, ``hook_workers.py``) share: a
barrier on marker files, and an entry point that reports any exception.

A worker runs as ``python tests/<worker>.py …``, so this folder is first on its
``sys.path``; test modules import the workers through pytest's ``pythonpath``.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

WAIT = 60.0
"""Seconds a worker waits (at a barrier, or for work to finish) before giving up."""


def wait_for(paths: Iterable[Path], timeout: float = WAIT) -> None:
    """Spin (briefly sleeping) until every path exists: a barrier between processes."""
    paths = list(paths)
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [str(p) for p in paths if not p.exists()]
            raise TimeoutError(f"barrier timed out waiting for {missing}")
        time.sleep(0.0005)


def run_worker(main: Callable[[], object]) -> NoReturn:
    """Run ``main`` and exit 0; on any exception print its traceback to stderr and
    exit 1, so that no error (a "database is locked" included) can be swallowed:
    the parent test asserts a zero exit status and an empty stderr."""
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    sys.exit(0)
