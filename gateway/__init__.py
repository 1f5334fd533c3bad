"""The gateway side of the ledger, in rooms, each with one job:

- ``sessions``  — where a message comes from (sources, keys), when a session closes
  on its own (policies), what the agent is told (the context prompt), the session
  store, and the one close sequence the store and the scheduler share;
- ``scheduler`` — closing every session whose deadline passed, once, and the runner
  that does the background work (ticks and hook deliveries);
- ``hooks``     — discovering hooks, running them, and their durable delivery queue;
- ``config``    — the gateway configuration, the ``ledger:`` section, HERMES_HOME and
  the default paths, each read in one place;
- ``hermes``    — reading a Hermes home, and importing it;
- ``cli``       — the ``hermes-ledger`` command line;
- ``demo``      — a simulated gateway day, in a ledger of its own;
- ``usercode``  — calling operator code (flushers, handlers) with a time limit.

``bootstrap`` is the composition root: it builds the store, scheduler, hooks and
runner from a Hermes home and a ledger, for the CLI, the demo and the tests alike.
"""

from hermes_ledger.gateway.bootstrap import Gateway, build_gateway, open_gateway
from hermes_ledger.gateway.config.gateway import ConfigError, GatewayConfig, HomeChannel
from hermes_ledger.gateway.config.ledger_section import RunnerSettings
from hermes_ledger.gateway.hooks.discovery import Hook, HookProblem, HookRegistry, discover_hooks
from hermes_ledger.gateway.hooks.dispatch import HookDispatcher
from hermes_ledger.gateway.scheduler.runner import PassReport, Runner
from hermes_ledger.gateway.scheduler.ticks import Scheduler, TickReport
from hermes_ledger.gateway.sessions.context import (
    SessionContext,
    build_session_context,
    build_session_context_prompt,
)
from hermes_ledger.gateway.sessions.keys import (
    InvalidSessionIdError,
    build_session_key,
    is_shared_multi_user_session,
    validate_session_id,
    validate_session_key,
)
from hermes_ledger.gateway.sessions.policy import (
    Expiry,
    ResetPolicy,
    evaluate_policy,
    next_deadline,
)
from hermes_ledger.gateway.sessions.sources import (
    CHAT_TYPES,
    InvalidSourceError,
    Platform,
    SessionSource,
)
from hermes_ledger.gateway.sessions.store import SessionEntry, SessionStore

__all__ = [
    "CHAT_TYPES",
    "ConfigError",
    "Expiry",
    "Gateway",
    "GatewayConfig",
    "HomeChannel",
    "Hook",
    "HookDispatcher",
    "HookProblem",
    "HookRegistry",
    "InvalidSessionIdError",
    "InvalidSourceError",
    "PassReport",
    "Platform",
    "ResetPolicy",
    "Runner",
    "RunnerSettings",
    "Scheduler",
    "SessionContext",
    "SessionEntry",
    "SessionSource",
    "SessionStore",
    "TickReport",
    "build_gateway",
    "build_session_context",
    "build_session_context_prompt",
    "build_session_key",
    "discover_hooks",
    "evaluate_policy",
    "is_shared_multi_user_session",
    "next_deadline",
    "open_gateway",
    "validate_session_id",
    "validate_session_key",
]
