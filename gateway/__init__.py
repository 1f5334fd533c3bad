"""The gateway side: session sources and keys, reset policies, the session store,
the scheduler, hooks, and the ``hermes`` command line."""

from gateway.config import ConfigError, GatewayConfig, HomeChannel
from gateway.context import SessionContext, build_session_context, build_session_context_prompt
from gateway.hook_delivery import Delivery, DeliveryReport, HookDeliveryError, HookState
from gateway.hooks import Hook, HookDispatcher, HookProblem, HookRegistry, discover_hooks
from gateway.keys import (
    InvalidSessionIdError,
    build_session_key,
    is_shared_multi_user_session,
    validate_session_id,
    validate_session_key,
)
from gateway.policy import Expiry, ResetPolicy, evaluate_policy, next_deadline
from gateway.sources import CHAT_TYPES, InvalidSourceError, Platform, SessionSource

__all__ = [
    "CHAT_TYPES",
    "ConfigError",
    "Delivery",
    "DeliveryReport",
    "Expiry",
    "GatewayConfig",
    "HomeChannel",
    "Hook",
    "HookDeliveryError",
    "HookDispatcher",
    "HookProblem",
    "HookRegistry",
    "HookState",
    "InvalidSessionIdError",
    "InvalidSourceError",
    "Platform",
    "ResetPolicy",
    "SessionContext",
    "SessionSource",
    "build_session_context",
    "build_session_context_prompt",
    "build_session_key",
    "discover_hooks",
    "evaluate_policy",
    "is_shared_multi_user_session",
    "next_deadline",
    "validate_session_id",
    "validate_session_key",
]
