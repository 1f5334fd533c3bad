"""Transcripts as the gateway hands them out: message dicts read from the projection."""

from __future__ import annotations

import json
from typing import Any

from ledger import Ledger

__all__ = ["load_transcript"]

SQL_TRANSCRIPT = (
    "SELECT role, content, tool_calls, tool_name, tool_call_id, ts FROM messages"
    " WHERE session_id = ? ORDER BY position"
)


def load_transcript(ledger: Ledger, session_id: str) -> list[dict[str, Any]]:
    """The session's messages in order, synthetic flush turns excluded (Hermes shape:
    role, content, timestamp, and tool_calls / tool_name / tool_call_id when set)."""
    out = []
    for role, content, tool_calls, tool_name, tool_call_id, ts in ledger.query(
        SQL_TRANSCRIPT, (session_id,)
    ):
        message: dict[str, Any] = {"role": role, "content": content, "timestamp": ts}
        if tool_calls is not None:
            message["tool_calls"] = json.loads(tool_calls)
        if tool_name is not None:
            message["tool_name"] = tool_name
        if tool_call_id is not None:
            message["tool_call_id"] = tool_call_id
        out.append(message)
    return out
