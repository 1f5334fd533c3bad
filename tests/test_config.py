"""GatewayConfig: loading a Hermes home (config.yaml, gateway.json, environment)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pydantic
import pytest

from hermes_ledger.gateway.config.gateway import ConfigError, GatewayConfig, HomeChannel
from hermes_ledger.gateway.sessions.policy import ResetPolicy
from hermes_ledger.gateway.sessions.sources import Platform, SessionSource
from hermes_ledger.ledger import LedgerError


def home_with(
    tmp_path: Path, yaml_text: str | None = None, gateway: dict[str, Any] | None = None
) -> Path:
    home = tmp_path / "hermes"
    home.mkdir(parents=True, exist_ok=True)
    if yaml_text is not None:
        (home / "config.yaml").write_text(textwrap.dedent(yaml_text), encoding="utf-8")
    if gateway is not None:
        (home / "gateway.json").write_text(json.dumps(gateway), encoding="utf-8")
    return home


def load(home: Path, **env: str) -> GatewayConfig:
    return GatewayConfig.load(home, env=env)


def config_error(home: Path, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(home, **env)
    assert isinstance(info.value, LedgerError) and info.value.hint
    return str(info.value)


# --- defaults and files ----------------------------------------------------------


def test_an_empty_home_gives_the_hermes_defaults(tmp_path: Path) -> None:
    config = load(home_with(tmp_path))
    assert config.default_reset_policy == ResetPolicy()
    assert config.default_reset_policy.mode == "none"
    assert config.group_sessions_per_user is True
    assert config.thread_sessions_per_user is False
    assert config.reset_by_type == {} and config.reset_by_platform == {}
    assert config.connected_platforms == () and config.home_channels == {}
    assert config.profile is None and config.timezone is None
    assert config.hermes_home == tmp_path / "hermes"


def test_session_reset_from_config_yaml(tmp_path: Path) -> None:
    home = home_with(
        tmp_path,
        """
        model: anthropic/claude-sonnet-4
        toolsets: [web, files]
        session_reset:
          mode: both
          idle_minutes: 90
          at_hour: 3
          notify: false
          timezone: Europe/Berlin
        """,
    )
    policy = load(home).default_reset_policy
    assert (policy.mode, policy.idle_minutes, policy.at_hour, policy.notify) == (
        "both",
        90,
        3,
        False,
    )
    assert policy.timezone == "Europe/Berlin"


def test_yaml_nulls_mean_defaults(tmp_path: Path) -> None:
    home = home_with(tmp_path, "session_reset:\n  mode: idle\n  at_hour: null\n  idle_minutes: ~\n")
    policy = load(home).default_reset_policy
    assert (policy.mode, policy.at_hour, policy.idle_minutes) == ("idle", 4, 1440)


def test_nested_gateway_session_reset(tmp_path: Path) -> None:
    home = home_with(tmp_path, "gateway:\n  session_reset:\n    mode: idle\n    idle_minutes: 30\n")
    assert load(home).default_reset_policy.idle_minutes == 30


def test_config_yaml_replaces_gateway_json_policy_as_a_whole(tmp_path: Path) -> None:
    home = home_with(
        tmp_path,
        "session_reset:\n  mode: idle\n",
        {"default_reset_policy": {"mode": "daily", "at_hour": 2}},
    )
    policy = load(home).default_reset_policy
    assert (policy.mode, policy.at_hour) == ("idle", 4)  # not merged with gateway.json's


def test_empty_top_level_section_keeps_gateway_json(tmp_path: Path) -> None:
    home = home_with(
        tmp_path,
        "session_reset: {}\ngateway:\n  session_reset:\n    mode: idle\n",
        {"default_reset_policy": {"mode": "daily", "at_hour": 2}},
    )
    # Top-level key present (even empty) hides the nested one; empty means "not set".
    policy = load(home).default_reset_policy
    assert (policy.mode, policy.at_hour) == ("daily", 2)


def test_overrides_by_type_and_platform(tmp_path: Path) -> None:
    home = home_with(
        tmp_path,
        "timezone: America/New_York\nsession_reset:\n  mode: daily\n",
        {
            "reset_by_type": {"group": {"mode": "idle", "idle_minutes": 120}},
            "reset_by_platform": {
                "discord": {"mode": "none"},
                "irc": {"mode": "cron", "schedule": "0 6 * * 1", "timezone": "UTC"},
            },
        },
    )
    config = load(home)
    assert config.timezone == "America/New_York"
    # Platform wins, then chat type, then the default.
    assert config.reset_policy("discord", "group").mode == "none"
    assert config.reset_policy(Platform.TELEGRAM, "group").mode == "idle"
    assert config.reset_policy("telegram", "dm").mode == "daily"
    assert config.reset_policy(None, None).mode == "daily"
    # The config's zone fills in policies that name none; a policy's own zone wins.
    assert config.reset_policy("telegram", "dm").timezone == "America/New_York"
    assert config.reset_policy("irc", "channel").timezone == "UTC"
    group = SessionSource(platform="telegram", chat_type="group", chat_id="1")
    assert config.policy_for(group).idle_minutes == 120


def test_flat_isolation_flags(tmp_path: Path) -> None:
    home = home_with(
        tmp_path,
        "group_sessions_per_user: no\ngateway:\n  thread_sessions_per_user: true\n",
        {"group_sessions_per_user": True, "thread_sessions_per_user": False},
    )
    config = load(home)
    assert config.group_sessions_per_user is False  # config.yaml over gateway.json
    assert config.thread_sessions_per_user is True  # nested gateway.* over gateway.json
    only_json = home_with(tmp_path / "j", None, {"group_sessions_per_user": False})
    assert load(only_json).group_sessions_per_user is False


def test_environment_overrides_the_default_policy(tmp_path: Path) -> None:
    home = home_with(tmp_path, "session_reset:\n  mode: both\n  idle_minutes: 60\n")
    config = load(home, SESSION_IDLE_MINUTES="15", SESSION_RESET_HOUR="23")
    assert (config.default_reset_policy.idle_minutes, config.default_reset_policy.at_hour) == (
        15,
        23,
    )
    assert load(home, SESSION_IDLE_MINUTES="").default_reset_policy.idle_minutes == 60


def test_timezone_from_the_environment(tmp_path: Path) -> None:
    home = home_with(tmp_path, "timezone: Europe/Berlin\n")
    assert load(home).timezone == "Europe/Berlin"
    assert load(home, HERMES_TIMEZONE="Asia/Tokyo").timezone == "Asia/Tokyo"


def test_default_home_is_hermes_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = home_with(tmp_path, "session_reset:\n  mode: idle\n")
    monkeypatch.setenv("HERMES_HOME", str(home))
    config = GatewayConfig.load(env={})
    assert config.hermes_home == home and config.default_reset_policy.mode == "idle"


def test_profile_from_a_profile_home(tmp_path: Path) -> None:
    home = tmp_path / ".hermes" / "profiles" / "coder"
    home.mkdir(parents=True)
    config = GatewayConfig.load(home, env={})
    assert config.profile == "coder"
    source = SessionSource(platform="telegram", chat_id="99")
    assert config.session_key(source) == "agent:coder:telegram:dm:99"
    assert GatewayConfig.load(home, env={}, profile="default").session_key(source) == (
        "agent:main:telegram:dm:99"
    )


def test_session_key_uses_the_isolation_flags(tmp_path: Path) -> None:
    config = load(home_with(tmp_path, "group_sessions_per_user: false\n"))
    source = SessionSource(platform="discord", chat_type="group", chat_id="g", user_id="u")
    assert config.session_key(source) == "agent:main:discord:group:g"


# --- bad values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "pattern"),
    [
        (
            "session_reset:\n  mode: daily\n  at_hour: 25\n",
            r"config\.yaml: session_reset\.at_hour = 25 is not allowed "
            r"\(expected a whole hour from 0 to 23\)",
        ),
        (
            "session_reset:\n  mode: sometimes\n",
            r"session_reset\.mode = 'sometimes' is not allowed "
            r"\(expected one of none, idle, daily, both, cron\)",
        ),
        (
            "session_reset:\n  idle_minutes: 0\n",
            r"session_reset\.idle_minutes = 0 is not allowed "
            r"\(expected a whole number of minutes, 1 or more\)",
        ),
        (
            "session_reset:\n  idle_minutes: yes\n",
            r"session_reset\.idle_minutes = True is not allowed",
        ),
        (
            "gateway:\n  session_reset:\n    mode: cron\n    schedule: every day\n",
            r"gateway\.session_reset\.schedule = 'every day' is not allowed "
            r"\(expected a five-field cron expression",
        ),
        (
            "session_reset:\n  mode: cron\n",
            r"session_reset\.schedule: mode 'cron' needs a schedule",
        ),
        (
            "session_reset:\n  mode: daily\n  timezone: Mars/Base\n",
            r"session_reset\.timezone = 'Mars/Base' is not allowed \(expected an IANA time zone",
        ),
        (
            "session_reset:\n  mode: daily\n  idle_minute: 5\n",
            r"session_reset\.idle_minute: unknown setting \(known: mode, idle_minutes",
        ),
        ("session_reset: daily\n", r"session_reset: expected a mapping, got str"),
        ("group_sessions_per_user: sometimes\n", r"group_sessions_per_user: 'sometimes' is not"),
        ("timezone: Nowhere/Special\n", r"config\.yaml: timezone: 'Nowhere/Special' is not"),
        ("platforms:\n  'bad name':\n    enabled: true\n", r"platforms\.bad name: platform"),
        (
            "platforms:\n  telegram:\n    enabled: true\n    home_channel: {name: x}\n",
            r"platforms\.telegram\.home_channel: chat_id: Field required",
        ),
        ("session_reset:\n  mode: [unclosed\n", r"config\.yaml: not valid YAML"),
        ("- just\n- a list\n", r"config\.yaml: \(top level\): expected a mapping, got list"),
    ],
)
def test_bad_config_yaml_values(tmp_path: Path, yaml_text: str, pattern: str) -> None:
    home = home_with(tmp_path, yaml_text)
    message = config_error(home)
    assert str(home / "config.yaml") in message
    assert re.search(pattern, message), message


@pytest.mark.parametrize(
    ("gateway", "pattern"),
    [
        (
            {"reset_by_type": {"dm": {"mode": "idle", "idle_minutes": -5}}},
            r"gateway\.json: reset_by_type\.dm\.idle_minutes = -5 is not allowed",
        ),
        (
            {"reset_by_type": {"forum": {"mode": "idle"}}},
            r"reset_by_type\.forum: not a chat type \(allowed: dm, group, channel, thread\)",
        ),
        (
            {"reset_by_platform": {"tele gram": {"mode": "idle"}}},
            r"reset_by_platform\.tele gram: .* is not a valid platform name",
        ),
        (
            {"default_reset_policy": {"at_hour": "noon"}},
            r"default_reset_policy\.at_hour = 'noon' is not allowed",
        ),
    ],
)
def test_bad_gateway_json_values(tmp_path: Path, gateway: dict[str, Any], pattern: str) -> None:
    home = home_with(tmp_path, None, gateway)
    message = config_error(home)
    assert str(home / "gateway.json") in message
    assert re.search(pattern, message), message


def test_every_bad_setting_of_a_policy_is_listed(tmp_path: Path) -> None:
    home = home_with(tmp_path, "session_reset:\n  at_hour: 30\n  idle_minutes: 0\n")
    message = config_error(home)
    assert "session_reset.at_hour" in message and "session_reset.idle_minutes" in message


def test_broken_gateway_json(tmp_path: Path) -> None:
    home = home_with(tmp_path)
    (home / "gateway.json").write_text("{not json", encoding="utf-8")
    assert "gateway.json: not valid JSON" in config_error(home)


@pytest.mark.parametrize(
    ("env", "pattern"),
    [
        (
            {"SESSION_RESET_HOUR": "24"},
            r"environment variable SESSION_RESET_HOUR = '24' is not allowed "
            r"\(expected a whole hour from 0 to 23\)",
        ),
        (
            {"SESSION_IDLE_MINUTES": "an hour"},
            r"SESSION_IDLE_MINUTES = 'an hour' is not allowed \(expected a whole number",
        ),
        ({"SESSION_IDLE_MINUTES": "0"}, r"SESSION_IDLE_MINUTES = '0' is not allowed"),
        ({"HERMES_TIMEZONE": "Moon/Tranquility"}, r"HERMES_TIMEZONE: timezone: 'Moon"),
    ],
)
def test_bad_environment_values(tmp_path: Path, env: dict[str, str], pattern: str) -> None:
    message = config_error(home_with(tmp_path), **env)
    assert re.search(pattern, message), message


# --- platforms and home channels -------------------------------------------------

PLATFORMS_YAML = """
platforms:
  telegram:
    enabled: true
    token: "123:abc"
    home_channel:
      platform: telegram
      chat_id: 111
      name: Family
  discord:
    enabled: true
  irc:
    enabled: true
    home_channel: {chat_id: "#home", name: IRC home}
gateway:
  webhook:
    enabled: true
whatsapp:
  enabled: true
  require_mention: true
"""


def test_platforms_and_home_channels(tmp_path: Path) -> None:
    config = load(home_with(tmp_path, PLATFORMS_YAML))
    # Discord is enabled but has no token: not connected (as in Hermes).
    assert config.connected_platforms == (
        Platform("irc"),
        Platform.TELEGRAM,
        Platform.WEBHOOK,
        Platform.WHATSAPP,
    )
    assert config.home_channel("telegram") == HomeChannel(
        platform="telegram", chat_id="111", name="Family"
    )
    assert config.home_channel("irc") == HomeChannel(
        platform="irc", chat_id="#home", name="IRC home"
    )
    assert config.home_channel("discord") is None
    dumped = config.model_dump_json()
    assert "123:abc" not in dumped  # tokens are never kept


def test_environment_credentials_and_home_channels(tmp_path: Path) -> None:
    config = load(
        home_with(tmp_path, PLATFORMS_YAML),
        DISCORD_BOT_TOKEN="xyz",
        DISCORD_HOME_CHANNEL="555",
        TELEGRAM_HOME_CHANNEL="222",
        TELEGRAM_HOME_CHANNEL_THREAD_ID="9",
        SLACK_HOME_CHANNEL="C01",
        WHATSAPP_ENABLED="false",
        MATRIX_ACCESS_TOKEN="tok",
        MATRIX_HOME_ROOM="!room:example.org",
        MATRIX_HOME_ROOM_NAME="Ops",
    )
    connected = {p.value for p in config.connected_platforms}
    assert connected == {"discord", "irc", "matrix", "telegram", "webhook"}
    assert config.home_channel("discord") == HomeChannel(
        platform="discord", chat_id="555", name="Home"
    )
    assert config.home_channel("telegram") == HomeChannel(
        platform="telegram", chat_id="222", name="Home", thread_id="9"
    )
    assert config.home_channel("matrix") == HomeChannel(
        platform="matrix", chat_id="!room:example.org", name="Ops"
    )
    # Hermes records Slack's home channel even when Slack is off, with an empty name.
    assert config.home_channel("slack") == HomeChannel(platform="slack", chat_id="C01", name="")


def test_explicitly_disabled_platform_stays_off(tmp_path: Path) -> None:
    home = home_with(tmp_path, "telegram:\n  enabled: false\n")
    assert load(home, TELEGRAM_BOT_TOKEN="123:abc").connected_platforms == ()
    assert load(home_with(tmp_path / "b"), TELEGRAM_BOT_TOKEN="123:abc").connected_platforms == (
        Platform.TELEGRAM,
    )


def test_platform_blocks_merge_in_hermes_order(tmp_path: Path) -> None:
    home = home_with(
        tmp_path,
        """
        gateway:
          platforms:
            slack: {enabled: true, token: x, home_channel: {chat_id: C1, name: nested}}
        platforms:
          slack: {home_channel: {chat_id: C2, name: top}}
        """,
        {"platforms": {"slack": {"enabled": False, "home_channel": {"chat_id": "C0"}}}},
    )
    config = load(home)
    assert config.connected_platforms == (Platform.SLACK,)
    assert config.home_channel("slack") == HomeChannel(platform="slack", chat_id="C2", name="top")


def test_constructed_config_is_normalised() -> None:
    config = GatewayConfig(connected_platforms=["telegram", "local", "discord", "telegram"])
    assert config.connected_platforms == (Platform.DISCORD, Platform.TELEGRAM)
    with pytest.raises(pydantic.ValidationError, match="home_channels"):
        GatewayConfig(home_channels={"telegram": HomeChannel(platform="discord", chat_id="1")})
    with pytest.raises(pydantic.ValidationError, match="unknown time zone"):
        GatewayConfig(timezone="Nowhere/Special")
