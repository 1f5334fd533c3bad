"""The hash chain: each row's hash covers the previous row's hash and its own content.

The content is encoded as length-prefixed fields (``<len>:<text>``, NULL as ``-1:``),
so no two different rows can encode the same way. Documented in docs/ledger.md so
an auditor can re-check a ledger with any sha256 tool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from hashlib import sha256

from hermes_ledger.ledger.records import Recorded, VerifyReport

__all__ = ["GENESIS", "row_hash", "walk_chain"]

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


def walk_chain(
    rows: Iterable[Recorded],
    head: int,
    after: tuple[int, str] = (0, GENESIS),
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check ``rows`` (the log as stored, in position order, after ``after`` =
    (position, hash)): gap-free positions, versions 1..n per stream (only for
    streams that start after ``after``), and every row's hash against its content
    and the previous row's hash (``Ledger.verify``)."""
    previous_position, previous_hash = after
    partial = previous_position > 0
    versions: dict[str, int] = {}
    checked = 0
    for rec in rows:
        problem = None
        if rec.position != previous_position + 1:
            problem = f"gap: position {previous_position} is followed by {rec.position}"
        elif not (partial and rec.stream not in versions) and (
            rec.version != versions.get(rec.stream, 0) + 1
        ):
            problem = (
                f"stream {rec.stream!r} jumps from version {versions.get(rec.stream, 0)} "
                f"to {rec.version}"
            )
        else:
            expected = row_hash(
                previous_hash, rec.position, rec.event_id, rec.stream, rec.version, rec.type,
                rec.session_id, rec.data_json, rec.meta_json, rec.recorded_at_text,
            )  # fmt: skip
            if expected != rec.hash:
                problem = "hash does not match the row's content and the previous hash"
        if problem is not None:
            return VerifyReport(False, checked, head, rec.position, problem)
        versions[rec.stream] = rec.version
        previous_hash = rec.hash
        previous_position = rec.position
        checked += 1
        if progress is not None and checked % 10_000 == 0:
            progress(checked, head)
    if progress is not None:
        progress(checked, head)
    return VerifyReport(True, checked, previous_position)
