"""How a runner names itself in the claims and leases it takes (the scheduler's
``session_deadlines`` rows, the hook deliveries): host, process and a random part,
so two runners in one process, or a restarted process with a reused pid, differ."""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["worker_name"]


def worker_name() -> str:
    """``host:pid:random`` for a new scheduler or dispatcher."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
