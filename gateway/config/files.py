"""Reading a Hermes home's configuration files, once each, with the errors users see.

``config.yaml`` and ``gateway.json`` are read here and nowhere else: the gateway
configuration (``config.gateway``) and the ``ledger:`` section
(``config.ledger_section``) both take their data from these functions. A file
that is absent reads as empty; one that cannot be parsed is a ``ConfigError``
naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from hermes_ledger.ledger.errors import LedgerError

__all__ = ["PLUGIN_NAME", "ConfigError", "config_yaml_path", "gateway_json_path",
           "ledger_plugin_enabled", "read_config_yaml", "read_gateway_json"]  # fmt: skip

PLUGIN_NAME = "ledger"
"""The name Hermes knows the plugin by (the ``hermes_agent.plugins`` entry point)."""


class ConfigError(LedgerError, ValueError):
    """A configuration value that cannot be used; says where it is and what is allowed."""

    hint = "fix the value (or unset the variable) and try again"

    def __init__(self, message: str, *, where: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.where = where
        self.key = key


def config_yaml_path(home: Path) -> Path:
    return home / "config.yaml"


def gateway_json_path(home: Path) -> Path:
    return home / "gateway.json"


def _top_level(data: object, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: (top level): expected a mapping, got {type(data).__name__}",
            where=str(path),
            key="(top level)",
        )
    return {str(k): v for k, v in data.items()}


def read_config_yaml(home: Path) -> dict[str, Any]:
    """``<home>/config.yaml`` as a mapping ({} when there is none)."""
    path = config_yaml_path(home)
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        problem = " ".join(str(err).split())
        raise ConfigError(f"{path}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    return _top_level(data or {}, path)


def read_gateway_json(home: Path) -> dict[str, Any]:
    """``<home>/gateway.json`` as a mapping ({} when there is none)."""
    path = gateway_json_path(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON: nested too deeply") from None
    return _top_level(data or {}, path)


def ledger_plugin_enabled(home: Path) -> bool:
    """Whether Hermes loads the ledger plugin in ``home``: ``plugins.enabled`` in
    ``config.yaml`` names it and ``plugins.disabled`` does not (Hermes lets
    disabled win), as ``hermes plugins enable ledger`` / ``disable`` write them."""
    plugins = read_config_yaml(home).get("plugins")
    if not isinstance(plugins, dict):
        return False

    def names(key: str) -> list[str]:
        value = plugins.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    return PLUGIN_NAME in names("enabled") and PLUGIN_NAME not in names("disabled")
