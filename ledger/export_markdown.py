"""A readable export: the selected events as Markdown, one section per session.

What a person asking for their data (``hermes-ledger export --user ID --format
markdown``) can read without tools. Each session gets a heading with its id, then
its key, platform and chat type, when it started (and who started it, when that
event is in the export) and when and why it ended; then its messages in order,
each with its time, speaker and text. Tool calls are summarised (the tools an
assistant turn called; a tool result's size), not printed. Usage is summed per
session. All times are business time (when it happened at the gateway), in UTC.

For a session whose start is not in the export (someone else opened it: the
export has only this person's messages there), its platform, chat type and start
time are looked up (``ExportRows.session_start``) for the heading, without the name of
whoever started it.

The JSONL export is the backup format; this one is for reading and cannot be
imported. It holds the selected events in memory (one person's history, not a
whole ledger).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from hermes_ledger.ledger.personal import ERASED
from hermes_ledger.ledger.query import EventFilter
from hermes_ledger.ledger.records import Recorded
from hermes_ledger.ledger.sql import business_time_of

if TYPE_CHECKING:
    from hermes_ledger.ledger.export_rows import ExportRows

__all__ = ["write_markdown"]

_EVENT_NOTES = {
    "session_reset": lambda d: f"session reset ({d.get('trigger', '?')})",
    "session_expired": lambda d: f"session expired ({d.get('reason', '?')})",
    "memory_flushed": lambda d: f"memory flushed to {d.get('provider', '?')}",
    "memory_flush_failed": lambda d: f"memory flush to {d.get('provider', '?')} failed",
    "memory_flush_skipped": lambda d: f"memory flush skipped ({d.get('reason', '?')})",
}


def _when(text: str) -> str:
    """``2026-11-22T09:00:05.000000Z`` -> ``2026-11-22 09:00:05 UTC``."""
    return f"{text[:10]} {text[11:19]} UTC"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _escape(text: str) -> str:
    """A name or id safe inside Markdown emphasis and tables."""
    for char in ("\\", "*", "_", "`", "[", "]", "|"):
        text = text.replace(char, "\\" + char)
    return text


def _code(text: str) -> str:
    """``text`` as an inline code span (which shows backslashes as typed)."""
    return "`" + text.replace("`", "'") + "`"


def _indented(text: str) -> str:
    """Message text as the body of a list item: later lines indented under it."""
    lines = text.splitlines() or [""]
    return "\n".join([lines[0], *(f"  {line}" if line else "" for line in lines[1:])])


@dataclass
class _Session:
    session_id: str
    key: str
    events: list[Recorded] = field(default_factory=list)


def _speaker(data: dict[str, Any]) -> str:
    role = str(data.get("role", "?"))
    if role == "user":
        named = data.get("user_name")
        name = named if named and named != ERASED else data.get("user_id")
        return f"{_escape(str(name))} (user)" if name else "user"
    return role


def _tool_names(calls: Any) -> list[str]:
    names = []
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, dict):
            function = call.get("function")
            name = call.get("name") or (
                function.get("name") if isinstance(function, dict) else None
            )
            names.append(str(name or "?"))
    return names


def _message_line(when: str, data: dict[str, Any]) -> str:
    content = data.get("content")
    text = content if isinstance(content, str) else ""
    notes = []
    if data.get("role") == "tool":
        tool = data.get("tool_name") or "a tool"
        text = f"_result of {_code(str(tool))}: {_plural(len(text), 'character')}_"
    elif data.get("tool_calls"):
        called = ", ".join(_code(n) for n in _tool_names(data["tool_calls"]))
        notes.append(f"_calls {called}_")
    if data.get("synthetic"):
        notes.append("_(memory flush turn)_")
    body = " ".join(part for part in (_indented(text) if text else "", *notes) if part)
    return f"- {when} **{_speaker(data)}**: {body}".rstrip()


def _heading(rows: ExportRows, session: _Session, subject: bool) -> list[str]:
    start = next((r for r in session.events if r.type == "session_started"), None)
    end = next((r for r in session.events if r.type == "session_ended"), None)
    lines = [f"## Session {_code(session.session_id)}", ""]
    lines.append(f"- Key: {_code(session.key)}")
    started: str | None
    if start is not None:
        data, started, mine = start.data, business_time_of(start.data, start.recorded_at_text), True
    else:
        found = rows.session_start(session.session_id)
        data = json.loads(found[0]) if found else {}
        started = business_time_of(data, found[1]) if found else None
        mine = False
    source = data.get("source") or {}
    if source:
        chat = source.get("chat_type", "dm")
        chat_name = source.get("chat_name")
        name = f' "{_escape(str(chat_name))}"' if chat_name and chat_name != ERASED else ""
        lines.append(f"- Platform: {_escape(str(source.get('platform', '?')))} ({chat}{name})")
    if started is not None:
        by = ""
        if mine:
            named = source.get("user_name")
            who = named if named and named != ERASED else source.get("user_id")
            by = f" by {_escape(str(who))}" if who else ""
        elif subject:
            by = " (by someone else: only this person's messages are exported)"
        lines.append(f"- Started: {_when(started)}{by}")
    if end is not None:
        ended = business_time_of(end.data, end.recorded_at_text)
        lines.append(f"- Ended: {_when(ended)} ({end.data.get('reason', '?')})")
    usage = [r.data for r in session.events if r.type == "usage_recorded"]
    if usage:
        tokens_in = sum(int(u.get("input_tokens") or 0) for u in usage)
        tokens_out = sum(int(u.get("output_tokens") or 0) for u in usage)
        costs = [float(u["cost_usd"]) for u in usage if u.get("cost_usd") is not None]
        cost = f", ${sum(costs):.4f}" if costs else ""
        lines.append(f"- Usage: {tokens_in} input tokens, {tokens_out} output tokens{cost}")
    return [*lines, ""]


def _session_lines(rows: ExportRows, session: _Session, subject: bool) -> list[str]:
    lines = _heading(rows, session, subject)
    shown = 0
    for rec in session.events:
        when = _when(business_time_of(rec.data, rec.recorded_at_text))[11:]
        if rec.type == "message_appended":
            lines.append(_message_line(when, rec.data))
            shown += 1
        elif rec.type in _EVENT_NOTES:
            lines.append(f"- {when} _{_EVENT_NOTES[rec.type](rec.data)}_")
            shown += 1
    if not shown:
        lines.append("_No messages._")
    return [*lines, ""]


def _sessions(records: Iterable[Recorded]) -> tuple[list[_Session], list[Recorded]]:
    sessions: dict[str, _Session] = {}
    other: list[Recorded] = []
    for rec in records:
        if rec.session_id is None:
            other.append(rec)
            continue
        found = sessions.setdefault(rec.session_id, _Session(rec.session_id, rec.stream))
        found.events.append(rec)
    return list(sessions.values()), other


def write_markdown(
    rows: ExportRows,
    out: IO[bytes],
    events: EventFilter,
    *,
    count: int,
    exported_at: str,
    generator: str,
) -> None:
    """Write the events ``events`` selects (read from ``rows``) as Markdown to
    ``out`` (UTF-8): a title naming the filter, one section per session in order
    of its first event, then any events that belong to no session. ``count``, ``exported_at`` and
    ``generator`` are the export's manifest figures, for the title block."""
    described = events.describe()
    subject = f"user {_escape(str(described.pop('user')))}" if "user" in described else "the ledger"
    lines = [f"# Ledger export: {subject}", ""]
    conditions = ", ".join(
        f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in described.items()
    )
    lines.append(
        f"{_plural(count, 'event')}, exported {_when(exported_at)} by {generator}"
        + (f"; {_escape(conditions)}" if conditions else "")
        + ". Times are UTC."
    )
    lines.append("")
    sessions, other = _sessions(rows.bodies())
    for session in sessions:
        lines.extend(_session_lines(rows, session, events.user is not None))
    if other:
        lines.extend(["## Other events", ""])
        for rec in other:
            when = _when(business_time_of(rec.data, rec.recorded_at_text))
            lines.append(f"- {when} {rec.type} ({_code(rec.stream)})")
        lines.append("")
    out.write(("\n".join(lines).rstrip("\n") + "\n").encode())
