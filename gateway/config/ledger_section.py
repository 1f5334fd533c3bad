"""The ledger's own section of a Hermes ``config.yaml``::

    ledger:
      flusher: mypackage.memory:flush   # import path, or an entry point name
      flush_timeout: 30                 # seconds
      flush_attempts: 3                 # failed flushes retried on later ticks
      flush_retry_seconds: 60
      hook_attempts: 5                  # then dead-lettered
      hook_timeout: 10                  # seconds per hook call
      tick_interval: 30                 # seconds between passes of `run`
      anchor_interval: 3600             # seconds between anchors of the chain's head
                                        # (`tick` / `run`); 0 disables
      plugin_interval: 1                # plugin mode: seconds between spool drains
      redact_tools: [terminal]          # plugin mode: tools whose calls are recorded
                                        # without their arguments and results
      db: postgresql://gw@db/ledger     # plugin mode: the ledger to record into, a URI
                                        # or a file (relative to the home); default
                                        # <home>/ledger.db; HERMES_LEDGER_DB wins
      retention:                        # how long message content is kept (see
        default: {content_days: 365}    # gateway.sessions.retention and
        platforms: {telegram: {content_days: 30}}   # docs/retention.md): platform
        chat_types: {group: {content_days: 7}}      # wins, then chat type, then default
        interval: 3600                  # seconds between applications by `run`

Unknown keys and out-of-range values are a ``ConfigError`` naming the key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hermes_ledger.gateway.config.files import ConfigError, config_yaml_path, read_config_yaml
from hermes_ledger.gateway.sessions.retention import RetentionPolicy

__all__ = ["RunnerSettings"]


class RunnerSettings(BaseModel):
    """The ``ledger:`` section of a Hermes ``config.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    flusher: str | None = None
    flush_timeout: float = Field(default=30.0, gt=0, le=3600)
    flush_attempts: int = Field(default=3, ge=1, le=100)
    flush_retry_seconds: float = Field(default=60.0, ge=0, le=86_400)
    hook_attempts: int = Field(default=5, ge=1, le=100)
    hook_timeout: float = Field(default=10.0, gt=0, le=3600)
    tick_interval: float = Field(default=30.0, gt=0, le=86_400)
    anchor_interval: float = Field(default=3600.0, ge=0, le=30 * 86_400)
    plugin_interval: float = Field(default=1.0, gt=0, le=3600)
    redact_tools: tuple[str, ...] = ()
    db: str | None = Field(default=None, min_length=1)  # see gateway.plugin.location
    retention: RetentionPolicy = RetentionPolicy()

    @classmethod
    def load(cls, hermes_home: Path) -> RunnerSettings:
        """Read ``ledger:`` from ``<home>/config.yaml``; defaults when absent."""
        path = config_yaml_path(hermes_home)
        section = read_config_yaml(hermes_home).get("ledger")
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: ledger: must be a mapping")
        try:
            return cls.model_validate(section)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            problems = "; ".join(
                f"{_key(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in errors
            )
            key = _key(errors[0]["loc"]) if errors else None
            raise ConfigError(f"{path}: {problems}", where=str(path), key=key) from None


def _key(loc: tuple[int | str, ...]) -> str:
    """``ledger.retention.platforms.telegram.content_days`` for pydantic's ``loc``
    (a bad mapping key shows as the key itself, not ``telegram.[key]``)."""
    return "ledger." + ".".join(str(p) for p in loc if p != "[key]")
