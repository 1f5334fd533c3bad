"""The hash chain: each row's hash covers the previous row's hash and its own content.

The content is encoded as length-prefixed fields (``<len>:<text>``, NULL as ``-1:``),
so no two different rows can encode the same way. Documented in docs/ledger.md so
an auditor can re-check a ledger with any sha256 tool.
"""

from __future__ import annotations

from hashlib import sha256

__all__ = ["GENESIS", "row_hash"]

GENESIS = "0" * 64
"""The "previous hash" of the first row."""


def row_hash(
    previous: str,
    position: int,
    event_id: str,
    stream: str,
    version: int,
    event_type: str,
    session_id: str | None,
    data: str,
    meta: str,
    recorded_at: str,
) -> str:
    sid = "-1:" if session_id is None else f"{len(session_id)}:{session_id}"
    pos = str(position)
    ver = str(version)
    text = (
        f"{len(previous)}:{previous}{len(pos)}:{pos}{len(event_id)}:{event_id}"
        f"{len(stream)}:{stream}{len(ver)}:{ver}{len(event_type)}:{event_type}{sid}"
        f"{len(data)}:{data}{len(meta)}:{meta}{len(recorded_at)}:{recorded_at}"
    )
    return sha256(text.encode()).hexdigest()
