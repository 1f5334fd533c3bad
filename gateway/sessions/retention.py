"""Retention: how long message content is kept, per platform and chat type.

A ``RetentionPolicy`` is the ``retention:`` block of the ``ledger:`` config
section::

    ledger:
      retention:
        default: {content_days: 365}
        platforms: {telegram: {content_days: 30}}
        chat_types: {group: {content_days: 7}}
        interval: 3600            # seconds between applications by the runner

Only *content* expires (what was said, tool arguments and results); metadata and
usage (session rows, token counts, cost, times) stay, so spend stays auditable.
``content_days`` absent (or ``null``) keeps content for ever.

**Which rule applies to a session** is resolved as the reset policy's overrides
are (``GatewayConfig.reset_policy``): the session's platform's rule if the
platform has one, else its chat type's rule, else the default. So with the
example above a Telegram group keeps content 30 days, a Discord group 7, a
Discord DM 365.

**What expires** is decided by the erasure's retention scope
(``ledger.erasure``): the content of every event of each session that *ended*
more than ``content_days`` ago (a session still open keeps its content, however
old its first messages). Erased content reads "[erased]" everywhere; the events,
their times, token counts, costs and the session rows stay.

``retention_cutoffs(policy, sources, now)`` turns a policy into the applications
it needs: one ``(platform, chat_type, before)`` per pair of platform and chat type
the ledger has sessions of (``session_sources``), each with its own rule's cutoff.
``apply_retention`` applies them through ``Ledger.erase`` with a retention scope,
which records each application as a ``subject_erased`` event; a pair with no
content left to forget is skipped (no event). ``prune`` is the one-off form
(``hermes-ledger prune --older-than 90d``): one scope, a dry run unless asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from hermes_ledger.gateway.sessions.sources import ChatType, Platform, parse_platform
from hermes_ledger.ledger.backend import EventLog
from hermes_ledger.ledger.erasure import ErasureReport, ErasureScope
from hermes_ledger.ledger.store import Ledger

__all__ = [
    "DEFAULT_RETENTION_INTERVAL",
    "RetentionCutoff",
    "RetentionPolicy",
    "RetentionRule",
    "apply_retention",
    "prune",
    "retention_cutoffs",
    "session_sources",
]

RETENTION_REQUESTER = "ledger.retention"
"""``requested_by`` of the erasures the runner applies (the config's policy)."""

DEFAULT_RETENTION_INTERVAL = 3600.0
"""Seconds between two applications of the policy by the runner (at most hourly)."""

# The (platform, chat type) pairs the ledger has sessions of, from the log itself
# (projections may lag behind it). session_started has one schema version, so the
# source is read where it is stored.
SQL_SESSION_SOURCES = (
    "SELECT DISTINCT data ->> '$.source.platform', data ->> '$.source.chat_type'"
    " FROM events WHERE type = 'session_started' ORDER BY 1, 2"
)
# The same on PostgreSQL (data is JSON text; NUL escapes as hl_business_time reads them;
# sorted by the caller, byte order as SQLite's).
SQL_SESSION_SOURCES_POSTGRES = (
    "SELECT DISTINCT j #>> '{source,platform}' AS platform, j #>> '{source,chat_type}' AS kind"
    " FROM (SELECT replace(data, '\\u0000', '\\u0020')::json AS j FROM events"
    " WHERE type = 'session_started') AS started"
)


def _no_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a whole number of days, not true/false")
    return value


Days = Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=36_500)]


class RetentionRule(BaseModel):
    """How long content is kept: ``content_days`` (None: for ever)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    content_days: Days | None = None


def _platform_key(value: object) -> object:
    if isinstance(value, dict):
        return {parse_platform(k): v for k, v in value.items()}
    return value


def _chat_type_key(value: object) -> object:
    if isinstance(value, dict):
        return {str(k).strip().lower() if isinstance(k, str) else k: v for k, v in value.items()}
    return value


class RetentionPolicy(BaseModel):
    """The ``retention:`` block: a default rule, overrides per platform and per
    chat type (precedence: platform, then chat type, then default), and how
    often the runner applies it (``interval``, seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: RetentionRule = RetentionRule()
    platforms: Annotated[dict[Platform, RetentionRule], BeforeValidator(_platform_key)] = Field(
        default_factory=dict
    )
    chat_types: Annotated[dict[ChatType, RetentionRule], BeforeValidator(_chat_type_key)] = Field(
        default_factory=dict
    )
    interval: float = Field(default=DEFAULT_RETENTION_INTERVAL, ge=60, le=30 * 86_400)

    @property
    def enabled(self) -> bool:
        """Whether any rule expires content."""
        rules = (self.default, *self.platforms.values(), *self.chat_types.values())
        return any(rule.content_days is not None for rule in rules)

    def rule_for(self, platform: Platform | str | None, chat_type: str | None) -> RetentionRule:
        """The rule for a session: its platform's, else its chat type's, else the
        default (the reset policy's precedence)."""
        if platform is not None and (found := self.platforms.get(Platform(platform))):
            return found
        if chat_type in self.chat_types:
            return self.chat_types[chat_type]  # type: ignore[index]
        return self.default


@dataclass(frozen=True)
class RetentionCutoff:
    """One application of a policy: what happened before ``before`` in
    ``platform`` / ``chat_type`` sessions is forgotten; ``days`` is the rule."""

    platform: str
    chat_type: str
    days: int
    before: datetime

    @property
    def scope(self) -> ErasureScope:
        return ErasureScope(
            kind="retention", platform=self.platform, chat_type=self.chat_type, before=self.before
        )


def session_sources(led: EventLog) -> list[tuple[str, str]]:
    """The (platform, chat type) pairs the ledger (either backend) has sessions of, sorted."""
    if isinstance(led, Ledger):
        rows = led.query(SQL_SESSION_SOURCES)
    else:
        from hermes_ledger.ledger.postgres import PostgresLog

        assert isinstance(led, PostgresLog)
        with led._lock:  # one connection: take turns with appends
            rows = sorted(
                led.connection.execute(SQL_SESSION_SOURCES_POSTGRES).fetchall(),
                key=lambda r: (r[0] or "", r[1] or ""),
            )
    return [(str(p), str(t or "dm")) for p, t in rows if p is not None]


def retention_cutoffs(
    policy: RetentionPolicy, sources: Sequence[tuple[str, str]], now: datetime
) -> list[RetentionCutoff]:
    """The applications ``policy`` needs at ``now`` for sessions of ``sources``
    (pairs with no expiring rule need none)."""
    cutoffs = []
    for platform, chat_type in sources:
        days = policy.rule_for(platform, chat_type).content_days
        if days is not None:
            cutoffs.append(RetentionCutoff(platform, chat_type, days, now - timedelta(days=days)))
    return cutoffs


def apply_retention(
    led: EventLog,
    policy: RetentionPolicy,
    now: datetime,
    *,
    requested_by: str = RETENTION_REQUESTER,
) -> list[ErasureReport]:
    """Apply ``policy`` at ``now``: for each cutoff with content still to forget
    (a dry run counts it first), one ``Ledger.erase`` (one ``subject_erased``
    event each). Returns the reports of the erasures made, in cutoff order."""
    reports = []
    for cutoff in retention_cutoffs(policy, session_sources(led), now):
        scope = cutoff.scope
        if led.erase(scope, requested_by=requested_by, dry_run=True).payloads:
            reports.append(led.erase(scope, requested_by=requested_by, dry_run=False))
    return reports


def prune(
    led: EventLog,
    before: datetime,
    *,
    platform: str | None = None,
    chat_type: str | None = None,
    requested_by: str,
    dry_run: bool = True,
) -> ErasureReport:
    """Forget the content of what happened before ``before`` (only in sessions on
    ``platform`` / of ``chat_type`` when given); with ``dry_run`` (the default)
    only count what would go. The one-off retention of ``hermes-ledger prune``."""
    scope = ErasureScope(kind="retention", platform=platform, chat_type=chat_type, before=before)
    return led.erase(scope, requested_by=requested_by, dry_run=dry_run)
