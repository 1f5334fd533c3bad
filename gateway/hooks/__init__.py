"""Hooks: finding them (``discovery``), running them (``dispatch``), and the
durable delivery queue (``queue.HookQueue``): in the ledger file on SQLite
(``delivery``; the log is the outbox), an outbox filled by every append on
PostgreSQL (``postgres_delivery``); what both return is in ``records``."""

from hermes_ledger.gateway.hooks.delivery import (
    HOOK_EVENTS,
    Delivery,
    DeliveryReport,
    HookDeliveryError,
    HookState,
    dead_letters,
    delivery_id_for,
    hook_states,
    requeue_dead_letters,
)
from hermes_ledger.gateway.hooks.discovery import (
    Hook,
    HookProblem,
    HookRegistry,
    discover_hooks,
    load_hook,
)
from hermes_ledger.gateway.hooks.dispatch import (
    HermesSideHook,
    HookDispatcher,
    HookRegistrar,
    HooksOverview,
    HookTimeoutError,
    hermes_side_hooks,
    hooks_overview,
    run_handler,
)

__all__ = [
    "HOOK_EVENTS",
    "Delivery",
    "DeliveryReport",
    "HermesSideHook",
    "Hook",
    "HookDeliveryError",
    "HookDispatcher",
    "HookProblem",
    "HookRegistrar",
    "HookRegistry",
    "HookState",
    "HookTimeoutError",
    "HooksOverview",
    "dead_letters",
    "delivery_id_for",
    "discover_hooks",
    "hermes_side_hooks",
    "hook_states",
    "hooks_overview",
    "load_hook",
    "requeue_dead_letters",
    "run_handler",
]
