"""Gateway configuration, read from a Hermes home the way the Hermes gateway reads it.

``GatewayConfig.load(hermes_home)`` layers, lowest to highest:

1. built-in defaults (no automatic reset, per-user group sessions, shared threads);
2. ``gateway.json`` — ``default_reset_policy``, ``reset_by_type``,
   ``reset_by_platform``, ``group_sessions_per_user``,
   ``thread_sessions_per_user``, ``platforms``;
3. ``config.yaml`` — ``session_reset`` (or ``gateway.session_reset`` when there is
   no top-level one; it replaces gateway.json's default policy as a whole),
   ``group_sessions_per_user`` / ``thread_sessions_per_user`` (top level, else
   under ``gateway:``), ``timezone``, and platform blocks under ``platforms:``,
   ``gateway.platforms:``, ``gateway.<platform>:`` and ``<platform>: {enabled}``;
4. the environment — ``SESSION_IDLE_MINUTES`` / ``SESSION_RESET_HOUR`` (default
   policy), ``HERMES_TIMEZONE``, platform credentials (``TELEGRAM_BOT_TOKEN`` …,
   which enable a platform unless the config disables it explicitly) and home
   channels (``TELEGRAM_HOME_CHANNEL`` with ``…_NAME`` and ``…_THREAD_ID``).

Unlike Hermes, which falls back to defaults with a log line, a bad value stops
the load with a ``ConfigError`` naming the file (or variable), the key, the
value and what is allowed. Secrets are never kept: a token only marks its
platform as having credentials.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hermes_ledger.gateway.config.files import (
    ConfigError,
    config_yaml_path,
    gateway_json_path,
    read_config_yaml,
    read_gateway_json,
)
from hermes_ledger.gateway.sessions.keys import build_session_key
from hermes_ledger.gateway.sessions.policy import FIELD_RULES, ResetPolicy
from hermes_ledger.gateway.sessions.sources import (
    CHAT_TYPES,
    ChatType,
    Platform,
    SessionSource,
    parse_platform,
)

__all__ = ["ConfigError", "GatewayConfig", "HomeChannel"]


class HomeChannel(BaseModel):
    """A platform's default destination (where scheduled output goes)."""

    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    platform: Platform
    chat_id: str = Field(min_length=1)
    name: str = "Home"
    thread_id: str | None = None


class GatewayConfig(BaseModel):
    """What the session layer needs from a gateway's configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_reset_policy: ResetPolicy = ResetPolicy()
    reset_by_type: dict[ChatType, ResetPolicy] = Field(default_factory=dict)
    reset_by_platform: dict[Platform, ResetPolicy] = Field(default_factory=dict)
    group_sessions_per_user: bool = True
    thread_sessions_per_user: bool = False
    profile: str | None = None
    timezone: str | None = Field(
        default=None, description="zone for policies that name none (default: the system's)"
    )
    connected_platforms: tuple[Platform, ...] = ()
    home_channels: dict[Platform, HomeChannel] = Field(default_factory=dict)
    hermes_home: Path | None = None

    @field_validator("connected_platforms", mode="after")
    @classmethod
    def _sorted(cls, value: tuple[Platform, ...]) -> tuple[Platform, ...]:
        # Sorted by name: a stable prompt whatever order the config lists them in.
        return tuple(sorted(set(value) - {Platform.LOCAL}, key=lambda p: p.value))

    @field_validator("timezone", mode="after")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return ResetPolicy(timezone=value).timezone

    @model_validator(mode="after")
    def _home_platforms_match(self) -> GatewayConfig:
        for platform, home in self.home_channels.items():
            if home.platform != platform:
                raise ValueError(f"home_channels[{platform.value}] is for {home.platform.value}")
        return self

    def reset_policy(self, platform: Platform | str | None, chat_type: str | None) -> ResetPolicy:
        """The policy for a session: the platform's override, else the chat type's,
        else the default; the config's ``timezone`` fills in a policy without one."""
        policy = self.default_reset_policy
        if platform is not None and (found := self.reset_by_platform.get(Platform(platform))):
            policy = found
        elif chat_type in self.reset_by_type:
            policy = self.reset_by_type[chat_type]  # type: ignore[index]
        return policy.with_timezone(self.timezone)

    def policy_for(self, source: SessionSource) -> ResetPolicy:
        return self.reset_policy(source.platform, source.chat_type)

    def session_key(self, source: SessionSource) -> str:
        """``build_session_key`` with this config's isolation flags and profile."""
        return build_session_key(
            source,
            group_sessions_per_user=self.group_sessions_per_user,
            thread_sessions_per_user=self.thread_sessions_per_user,
            profile=self.profile if self.profile is not None else source.profile,
        )

    def home_channel(self, platform: Platform | str) -> HomeChannel | None:
        return self.home_channels.get(Platform(platform))

    @classmethod
    def load(
        cls,
        hermes_home: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        profile: str | None = None,
    ) -> GatewayConfig:
        """Read ``config.yaml``, ``gateway.json`` and the environment of a Hermes home.

        ``hermes_home`` defaults to ``$HERMES_HOME`` (or ``~/.hermes``); ``env``
        to ``os.environ``. The profile is ``profile`` if given, else the name of a
        ``…/profiles/<name>`` home, else the default. Missing files are fine.
        """
        from hermes_ledger.gateway.config.paths import hermes_home as default_home

        home = Path(hermes_home).expanduser() if hermes_home is not None else default_home()
        return _Loader(home, os.environ if env is None else env).load(profile)


# --- loading -------------------------------------------------------------------

_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})

# Platforms that need a token to connect, and the variables that carry one.
_TOKEN_ENV: Final[dict[Platform, tuple[str, ...]]] = {
    Platform.TELEGRAM: ("TELEGRAM_BOT_TOKEN",),
    Platform.DISCORD: ("DISCORD_BOT_TOKEN",),
    Platform.SLACK: ("SLACK_BOT_TOKEN",),
    Platform.MATTERMOST: ("MATTERMOST_TOKEN",),
    Platform.MATRIX: ("MATRIX_ACCESS_TOKEN", "MATRIX_PASSWORD"),
    Platform.HOMEASSISTANT: ("HASS_TOKEN",),
}


_ENV_POLICY: Final = (("SESSION_IDLE_MINUTES", "idle_minutes"), ("SESSION_RESET_HOUR", "at_hour"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def _env_enables(env: Mapping[str, str]) -> dict[Platform, bool]:
    """Platforms the environment turns on (True) or, for WhatsApp, off (False)."""
    found: dict[Platform, bool] = {p: True for p, names in _TOKEN_ENV.items() if _any(env, names)}
    if env.get("TWILIO_ACCOUNT_SID"):
        found[Platform.SMS] = True
    if env.get("SIGNAL_HTTP_URL") and env.get("SIGNAL_ACCOUNT"):
        found[Platform.SIGNAL] = True
    email = ("EMAIL_ADDRESS", "EMAIL_PASSWORD", "EMAIL_IMAP_HOST", "EMAIL_SMTP_HOST")
    if all(env.get(name) for name in email):
        found[Platform.EMAIL] = True
    if len(env.get("API_SERVER_KEY", "").strip()) >= 16:
        found[Platform.API_SERVER] = True
    if _truthy(env.get("WEBHOOK_ENABLED")):
        found[Platform.WEBHOOK] = True
    whatsapp = env.get("WHATSAPP_ENABLED", "").strip().lower()
    if whatsapp in _TRUE or whatsapp in {"false", "0", "no"}:
        found[Platform.WHATSAPP] = whatsapp in _TRUE
    return found


def _enabled(platform: Platform, config: bool | None, env: bool | None) -> bool:
    """Whether a platform is on. The environment turns a platform on unless the
    config turns it off explicitly; ``WHATSAPP_ENABLED`` decides either way."""
    if platform == Platform.WHATSAPP and env is not None:
        return env
    if config is False:
        return False
    return bool(env or config)


def _any(env: Mapping[str, str], names: tuple[str, ...]) -> bool:
    return any(env.get(name, "").strip() for name in names)


def _home_env_names(platform: Platform) -> tuple[str, str, str]:
    base = {
        Platform.MATRIX: "MATRIX_HOME_ROOM",
        Platform.EMAIL: "EMAIL_HOME_ADDRESS",
    }.get(platform, f"{platform.value.upper().replace('-', '_')}_HOME_CHANNEL")
    return base, f"{base}_NAME", f"{base}_THREAD_ID"


def _describe_value(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Loader:
    """One load of one Hermes home; keeps track of where each value came from."""

    def __init__(self, home: Path, env: Mapping[str, str]) -> None:
        self.home = home
        self.env = env
        self.yaml_path = config_yaml_path(home)
        self.json_path = gateway_json_path(home)

    def fail(self, where: Path | str, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {problem}", where=str(where), key=key)

    # files

    def read_json(self) -> dict[str, Any]:
        return read_gateway_json(self.home)

    def read_yaml(self) -> dict[str, Any]:
        return read_config_yaml(self.home)

    def mapping(self, value: object, where: Path | str, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, key, f"expected a mapping, got {type(value).__name__}")
        return {str(k): v for k, v in value.items()}

    # values

    def policy(self, data: object, where: Path | str, key: str) -> ResetPolicy:
        settings = {k: v for k, v in self.mapping(data, where, key).items() if v is not None}
        try:
            return ResetPolicy.model_validate(settings)
        except pydantic.ValidationError as err:
            raise ConfigError(
                "; ".join(self._policy_problem(item, where, key) for item in err.errors()),
                where=str(where),
                key=key,
            ) from None

    @staticmethod
    def _policy_problem(item: Any, where: Path | str, key: str) -> str:
        field = str(item["loc"][0]) if item["loc"] else "schedule"  # model-level: cron
        if item["type"] == "extra_forbidden":
            known = ", ".join(FIELD_RULES)
            return f"{where}: {key}.{field}: unknown setting (known: {known})"
        if not item["loc"]:
            return f"{where}: {key}.{field}: {item['msg'].removeprefix('Value error, ')}"
        value = _describe_value(item["input"])
        return f"{where}: {key}.{field} = {value} is not allowed (expected {FIELD_RULES[field]})"

    def boolean(self, value: object, where: Path | str, key: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.fail(
            where, key, f"{_describe_value(value)} is not allowed (expected true or false)"
        )

    def platform(self, name: object, where: Path | str, key: str) -> Platform:
        try:
            return parse_platform(name)
        except ValueError as err:
            raise self.fail(where, key, str(err)) from None

    def env_policy_value(self, name: str, field: str) -> int | None:
        """``$name`` as a value for the default policy's ``field``, checked on its own."""
        raw = self.env.get(name, "").strip()
        if not raw:
            return None
        try:
            value = int(raw, 10)
            ResetPolicy.model_validate({field: value})
        except (ValueError, pydantic.ValidationError):
            raise ConfigError(
                f"environment variable {name} = {raw!r} is not allowed "
                f"(expected {FIELD_RULES[field]})",
                where=f"${name}",
                key=field,
            ) from None
        return value

    # the load

    def load(self, profile: str | None) -> GatewayConfig:
        gw = self.read_json()
        cfg = self.read_yaml()
        nested = cfg.get("gateway")
        nested = self.mapping(nested, self.yaml_path, "gateway") if nested is not None else {}
        return GatewayConfig(
            default_reset_policy=self.default_policy(gw, cfg, nested),
            reset_by_type=self.by_type(gw),
            reset_by_platform=self.by_platform(gw),
            group_sessions_per_user=self.flag("group_sessions_per_user", True, gw, cfg, nested),
            thread_sessions_per_user=self.flag("thread_sessions_per_user", False, gw, cfg, nested),
            profile=profile if profile is not None else self.profile_from_home(),
            timezone=self.timezone(cfg),
            hermes_home=self.home,
            **self.platforms(gw, cfg, nested),
        )

    def default_policy(
        self, gw: dict[str, Any], cfg: dict[str, Any], nested: dict[str, Any]
    ) -> ResetPolicy:
        where: Path | str = self.json_path
        key, data = "default_reset_policy", gw.get("default_reset_policy") or {}
        if "session_reset" in cfg:
            yaml_key, section = "session_reset", cfg["session_reset"]
        else:
            yaml_key, section = "gateway.session_reset", nested.get("session_reset")
        if section:  # an empty section leaves gateway.json's policy in place, as in Hermes
            where, key, data = self.yaml_path, yaml_key, section
        policy = self.policy(data, where, key)
        overrides = {
            field: value
            for name, field in _ENV_POLICY
            if (value := self.env_policy_value(name, field)) is not None
        }
        return policy.model_copy(update=overrides) if overrides else policy

    def by_type(self, gw: dict[str, Any]) -> dict[ChatType, ResetPolicy]:
        section = self.mapping(gw.get("reset_by_type") or {}, self.json_path, "reset_by_type")
        result: dict[ChatType, ResetPolicy] = {}
        for chat_type, data in section.items():
            key = f"reset_by_type.{chat_type}"
            if chat_type not in CHAT_TYPES:
                allowed = ", ".join(CHAT_TYPES)
                raise self.fail(self.json_path, key, f"not a chat type (allowed: {allowed})")
            result[chat_type] = self.policy(data, self.json_path, key)  # type: ignore[index]
        return result

    def by_platform(self, gw: dict[str, Any]) -> dict[Platform, ResetPolicy]:
        section = self.mapping(
            gw.get("reset_by_platform") or {}, self.json_path, "reset_by_platform"
        )
        result: dict[Platform, ResetPolicy] = {}
        for name, data in section.items():
            key = f"reset_by_platform.{name}"
            result[self.platform(name, self.json_path, key)] = self.policy(
                data, self.json_path, key
            )
        return result

    def flag(
        self,
        name: str,
        default: bool,
        gw: dict[str, Any],
        cfg: dict[str, Any],
        nested: dict[str, Any],
    ) -> bool:
        for where, key, section in (
            (self.yaml_path, name, cfg),
            (self.yaml_path, f"gateway.{name}", nested),
            (self.json_path, name, gw),
        ):
            if name in section and section[name] is not None:
                return self.boolean(section[name], where, key)
        return default

    def timezone(self, cfg: dict[str, Any]) -> str | None:
        for where, key, value in (
            ("environment variable HERMES_TIMEZONE", "timezone", self.env.get("HERMES_TIMEZONE")),
            (str(self.yaml_path), "timezone", cfg.get("timezone")),
        ):
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            if not isinstance(value, str):
                raise self.fail(where, key, f"expected {FIELD_RULES['timezone']}")
            try:
                return ResetPolicy(timezone=value).timezone
            except pydantic.ValidationError:
                raise self.fail(
                    where, key, f"{value!r} is not allowed (expected {FIELD_RULES['timezone']})"
                ) from None
        return None

    def profile_from_home(self) -> str | None:
        return self.home.name if self.home.parent.name == "profiles" else None

    # platforms

    def platforms(
        self, gw: dict[str, Any], cfg: dict[str, Any], nested: dict[str, Any]
    ) -> dict[str, Any]:
        blocks: dict[Platform, dict[str, Any]] = {}
        explicit: dict[Platform, bool] = {}
        home_origin: dict[Platform, tuple[Path, str]] = {}

        def merge(section: object, where: Path, prefix: str) -> None:
            for name, block in self.mapping(section, where, prefix.rstrip(".")).items():
                key = f"{prefix}{name}"
                platform = self.platform(name, where, key)
                block = self.mapping(block, where, key)
                blocks[platform] = {**blocks.get(platform, {}), **block}
                if "enabled" in block:
                    explicit[platform] = self.boolean(block["enabled"], where, f"{key}.enabled")
                if block.get("home_channel") is not None:
                    home_origin[platform] = (where, f"{key}.home_channel")

        merge(gw.get("platforms") or {}, self.json_path, "platforms.")
        merge(nested.get("platforms") or {}, self.yaml_path, "gateway.platforms.")
        merge(cfg.get("platforms") or {}, self.yaml_path, "platforms.")
        for platform in (p for p in Platform if p != Platform.LOCAL):
            for where_key, section in (
                (f"gateway.{platform.value}", nested),
                (platform.value, cfg),
            ):
                block = section.get(platform.value)
                if not isinstance(block, dict):
                    continue
                if section is nested:
                    merge({platform.value: block}, self.yaml_path, "gateway.")
                elif "enabled" in block:  # top-level blocks only switch a platform on or off
                    explicit[platform] = self.boolean(
                        block["enabled"], self.yaml_path, f"{where_key}.enabled"
                    )
                    blocks.setdefault(platform, {})

        from_env = _env_enables(self.env)
        enabled = {p: _enabled(p, explicit.get(p), from_env.get(p)) for p in {*blocks, *from_env}}
        homes = {
            p: self.home_channel(p, blocks[p]["home_channel"], where, key)
            for p, (where, key) in home_origin.items()
        }
        # Hermes reads a home channel variable only for a configured platform
        # (Slack's always).
        env_homes: set[Platform] = {*enabled, Platform.SLACK}
        for target in env_homes:
            home = self.home_from_env(target)
            if home is not None:
                homes[target] = home
        connected = [
            p for p, on in enabled.items() if on and self.has_credentials(p, blocks.get(p, {}))
        ]
        return {"connected_platforms": tuple(connected), "home_channels": homes}

    def home_channel(self, platform: Platform, data: object, where: Path, key: str) -> HomeChannel:
        settings = {**self.mapping(data, where, key), "platform": platform.value}
        try:
            return HomeChannel.model_validate(settings)
        except pydantic.ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_url=False)
            )
            raise self.fail(where, key, problems) from None

    def home_from_env(self, platform: Platform) -> HomeChannel | None:
        chat_var, name_var, thread_var = _home_env_names(platform)
        chat_id = self.env.get(chat_var, "").strip()
        if not chat_id:
            return None
        default_name = "" if platform == Platform.SLACK else "Home"
        return HomeChannel(
            platform=platform,
            chat_id=chat_id,
            name=self.env.get(name_var, default_name),
            thread_id=self.env.get(thread_var) or None,
        )

    def has_credentials(self, platform: Platform, block: dict[str, Any]) -> bool:
        extra: dict[str, Any] = block["extra"] if isinstance(block.get("extra"), dict) else {}
        if platform in _TOKEN_ENV:
            return bool(block.get("token") or block.get("api_key")) or _any(
                self.env, _TOKEN_ENV[platform]
            )
        if platform == Platform.SIGNAL:
            return bool(extra.get("http_url") or self.env.get("SIGNAL_HTTP_URL"))
        if platform == Platform.API_SERVER:
            key = str(extra.get("key") or block.get("key") or self.env.get("API_SERVER_KEY", ""))
            return len(key.strip()) >= 16
        return True
