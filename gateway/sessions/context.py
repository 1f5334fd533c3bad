"""The "Current Session Context" section of the agent's system prompt.

``build_session_context(source, config, entry)`` gathers what the agent is told
about where it is; ``build_session_context_prompt(context)`` renders it as the
Markdown the Hermes gateway produces::

    ## Current Session Context

    **Source:** Telegram (DM with ada)
    **User:** ada
    **Connected Platforms:** local (files on this machine), telegram: Connected ✓

    **Home Channels (default destinations):**
      - telegram: Home (ID: 111)

    **Delivery options for scheduled tasks:**
    - `"origin"` → Back to this chat (111)
    - `"local"` → Save to local files only (~/.hermes/cron/output/)
    - `"telegram"` → Home channel (Home)

    *For explicit targeting, use `"platform:chat_id"` format if the user provides a …*

Names, topics and ids come from chat platforms, so line breaks inside them are
flattened to spaces: a display name cannot start a Markdown section of its own.
Ordinary values are rendered unchanged. Hermes' platform-specific notes (which
depend on the agent's tools) are not part of this section.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from hermes_ledger.gateway.config.gateway import GatewayConfig, HomeChannel
from hermes_ledger.gateway.sessions.keys import is_shared_multi_user_session
from hermes_ledger.gateway.sessions.sources import Platform, SessionSource

__all__ = [
    "SessionContext",
    "SessionEntryLike",
    "build_session_context",
    "build_session_context_prompt",
    "display_home",
]

_LINE_BREAKS = re.compile(r"\s*[\r\n\u2028\u2029\x0b\x0c\x85]+\s*")


class SessionEntryLike(Protocol):
    """What the context needs from a session-store entry."""

    @property
    def session_key(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def updated_at(self) -> datetime | None: ...


class SessionContext(BaseModel):
    """Everything the context prompt says, as data (also handy for hooks and logs)."""

    model_config = ConfigDict(frozen=True)

    source: SessionSource
    connected_platforms: tuple[Platform, ...] = ()
    home_channels: dict[Platform, HomeChannel] = Field(default_factory=dict)
    shared_multi_user_session: bool = False
    session_key: str = ""
    session_id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    hermes_home: str = "~/.hermes"


def display_home(path: Path | None) -> str:
    """A Hermes home as people write it: ``~/.hermes`` under the user's home."""
    if path is None:
        return "~/.hermes"
    path = path.expanduser()
    try:
        return "~/" + path.relative_to(Path.home()).as_posix()
    except (ValueError, RuntimeError):
        return str(path)


def build_session_context(
    source: SessionSource, config: GatewayConfig, entry: SessionEntryLike | None = None
) -> SessionContext:
    """The context of a message from ``source`` under ``config``.

    Home channels are listed for connected platforms only, in platform order.
    ``entry`` (the session-store entry, if there is one yet) adds the key, id
    and times of the session.
    """
    connected = config.connected_platforms
    homes = {p: home for p in connected if (home := config.home_channel(p)) is not None}
    shared = is_shared_multi_user_session(
        source,
        group_sessions_per_user=config.group_sessions_per_user,
        thread_sessions_per_user=config.thread_sessions_per_user,
    )
    return SessionContext(
        source=source,
        connected_platforms=connected,
        home_channels=homes,
        shared_multi_user_session=shared,
        hermes_home=display_home(config.hermes_home),
        session_key=entry.session_key if entry else "",
        session_id=entry.session_id if entry else "",
        created_at=entry.created_at if entry else None,
        updated_at=entry.updated_at if entry else None,
    )


def _inline(value: object) -> str:
    return _LINE_BREAKS.sub(" ", str(value))


def build_session_context_prompt(context: SessionContext) -> str:
    """The ``## Current Session Context`` Markdown section for ``context``."""
    src = context.source
    local = src.platform == Platform.LOCAL
    lines = ["## Current Session Context", ""]

    if local:
        lines.append(f"**Source:** {src.platform.title_name} (the machine running this agent)")
    else:
        lines.append(f"**Source:** {src.platform.title_name} ({_inline(src.description)})")
    if src.chat_topic:
        lines.append(f"**Channel Topic:** {_inline(src.chat_topic)}")

    if context.shared_multi_user_session:
        # One conversation, many writers: naming one of them here would be
        # wrong for the others (the gateway prefixes each message instead).
        label = "Multi-user thread" if src.thread_id else "Multi-user session"
        lines.append(
            f"**Session type:** {label} — messages are prefixed with [sender name]. "
            "Multiple users may participate."
        )
    elif src.user_name:
        lines.append(f"**User:** {_inline(src.user_name)}")
    elif src.user_id:
        lines.append(f"**User ID:** {src.user_id}")

    platforms = ["local (files on this machine)"] + [
        f"{p.value}: Connected ✓" for p in context.connected_platforms if p != Platform.LOCAL
    ]
    lines.append(f"**Connected Platforms:** {', '.join(platforms)}")

    if context.home_channels:
        lines += ["", "**Home Channels (default destinations):**"]
        for platform, home in context.home_channels.items():
            lines.append(f"  - {platform.value}: {_inline(home.name)} (ID: {home.chat_id})")

    lines += ["", "**Delivery options for scheduled tasks:**"]
    if local:
        lines.append('- `"origin"` → Local output (saved to files)')
    else:
        origin = _inline(src.chat_name or src.chat_id or "")
        lines.append(f'- `"origin"` → Back to this chat ({origin})')
    lines.append(f'- `"local"` → Save to local files only ({context.hermes_home}/cron/output/)')
    for platform, home in context.home_channels.items():
        lines.append(f'- `"{platform.value}"` → Home channel ({_inline(home.name)})')

    lines += [
        "",
        '*For explicit targeting, use `"platform:chat_id"` format if the user provides a '
        "specific chat ID.*",
    ]
    return "\n".join(lines)
