"""``hermes ledger …``: the plugin's command line, with the real Hermes Agent 0.19.

No mocks: the installed ``hermes`` script enables the plugin (``hermes plugins
enable ledger``), Hermes's own ``PluginManager`` finds it through our entry
point, and ``hermes ledger <command>`` is checked against ``hermes-ledger
<command>``: the same output, the same exit codes. Every Hermes process runs in a
sandbox whose HOME and HERMES_HOME are a temporary directory (Hermes writes logs
there as soon as it starts, and caches HERMES_HOME at import: hence subprocesses).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from helpers import installed_script
from hermes_fixture import build_standard_home

from hermes_ledger.gateway.cli import cli as ledger_cli
from hermes_ledger.gateway.plugin import cli as plugin_cli

Run = Callable[..., subprocess.CompletedProcess[str]]


def sandbox_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "HERMES_HOME": str(home),
        "PATH": os.defpath,
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_in(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd or home,
        env=sandbox_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def hermes_in(home: Path) -> Run:
    """``hermes(*args)``: the real ``hermes`` script in the sandbox ``home``."""
    script = installed_script("hermes")
    return lambda *args, cwd=None: run_in(home, script, *args, cwd=cwd)


def ledger_in(home: Path) -> Run:
    """``ledger(*args)``: the installed ``hermes-ledger`` script in the sandbox ``home``."""
    script = installed_script("hermes-ledger")
    return lambda *args, cwd=None: run_in(home, script, *args, cwd=cwd)


def enable(hermes: Run, *profile: str) -> None:
    done = hermes(*profile, "plugins", "enable", "ledger", "--no-allow-tool-override")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Plugin ledger enabled" in done.stdout


def same_as_standalone(ours: subprocess.CompletedProcess[str], theirs: Any) -> None:
    """``hermes ledger …`` did what ``hermes-ledger …`` did, except that its usage
    lines call it ``hermes ledger`` (hints and data are the same text)."""
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)

    def renamed(text: str) -> str:
        for before in ("Usage: ", "Try '", "\n  "):
            text = text.replace(f"{before}hermes-ledger", f"{before}hermes ledger")
        return text

    assert (ours.stdout, ours.stderr) == (renamed(theirs.stdout), renamed(theirs.stderr))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hermes home with a state.db (the standard test home) and the plugin enabled."""
    root = tmp_path_factory.mktemp("hermes-home")
    root.chmod(0o700)
    build_standard_home(root)
    enable(hermes_in(root))
    return root


@pytest.fixture(scope="module")
def hermes(home: Path) -> Run:
    return hermes_in(home)


@pytest.fixture(scope="module")
def ledger(home: Path) -> Run:
    return ledger_in(home)


@pytest.fixture(scope="module")
def backfilled(home: Path, hermes: Run) -> dict[str, Any]:
    """``hermes ledger backfill --json`` run once in ``home``: the report."""
    done = hermes("ledger", "backfill", "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


# -- enabling and loading ------------------------------------------------------------


def test_hermes_plugins_enable_ledger_writes_config_yaml(tmp_path: Path) -> None:
    hermes = hermes_in(tmp_path)
    listed = hermes("plugins", "list")
    assert listed.returncode == 0, listed.stderr
    assert any("ledger" in line and "not enabled" in line for line in listed.stdout.splitlines())
    enable(hermes)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["plugins"]["enabled"] == ["ledger"]
    assert config["plugins"]["entries"]["ledger"] == {"allow_tool_override": False}
    assert "ledger" not in config["plugins"]["disabled"]


LOAD_PLUGINS = textwrap.dedent(
    """
    import json
    from hermes_cli.plugins import discover_plugins, get_plugin_manager
    discover_plugins()
    manager = get_plugin_manager()
    loaded = manager._plugins.get("ledger")
    print(json.dumps({
        "known": loaded is not None,
        "source": loaded and loaded.manifest.source,
        "enabled": bool(loaded and loaded.enabled),
        "error": loaded and loaded.error,
        "module": getattr(loaded and loaded.module, "__name__", None),
        "cli": sorted(manager._cli_commands),
        "ledger_cli": {k: v for k, v in manager._cli_commands.get("ledger", {}).items()
                       if isinstance(v, str)},
    }))
    """
)


def test_the_plugin_manager_loads_the_plugin_only_while_enabled(tmp_path: Path) -> None:
    def discover() -> dict[str, Any]:
        done = run_in(tmp_path, sys.executable, "-I", "-c", LOAD_PLUGINS)
        assert done.returncode == 0, done.stderr
        found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return found

    before = discover()
    assert before["known"] and not before["enabled"] and before["module"] is None
    assert "ledger" not in before["cli"]
    enable(hermes_in(tmp_path))
    after = discover()
    assert (after["source"], after["enabled"], after["error"]) == ("entrypoint", True, None)
    assert after["module"] == "hermes_ledger.gateway.plugin"
    assert after["ledger_cli"] == {
        "name": "ledger",
        "help": plugin_cli.HELP,
        "description": plugin_cli.DESCRIPTION,
        "plugin": "ledger",
    }
    disabled = hermes_in(tmp_path)("plugins", "disable", "ledger")
    assert disabled.returncode == 0, disabled.stderr
    again = discover()
    assert again["known"] and not again["enabled"] and "ledger" not in again["cli"]


def test_without_the_plugin_enabled_there_is_no_hermes_ledger(tmp_path: Path) -> None:
    done = hermes_in(tmp_path)("ledger", "status")
    assert done.returncode == 2
    assert "invalid choice: 'ledger'" in done.stderr


# -- hermes ledger … is hermes-ledger … ------------------------------------------------


def test_backfill_imports_the_homes_history(
    home: Path, backfilled: dict[str, Any], hermes: Run, ledger: Run
) -> None:
    assert backfilled["home"] == str(home)
    assert backfilled["ledger"] == str(home / "ledger.db")
    assert backfilled["sessions"] == backfilled["sessions_read"] > 0
    assert backfilled["warnings"] == []
    again = hermes("ledger", "backfill")
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout == (
        f"Nothing new to import from {home}: all {backfilled['sessions_read']} sessions "
        f"are already in {home / 'ledger.db'}\n"
    )
    same_as_standalone(again, ledger("backfill"))


def test_status_json_is_hermes_ledgers(
    home: Path, backfilled: dict[str, Any], hermes: Run, ledger: Run
) -> None:
    ours = hermes("ledger", "status", "--json")
    same_as_standalone(ours, ledger("status", "--json"))
    status = json.loads(ours.stdout)
    assert status["path"] == str(home / "ledger.db")
    assert status["events"] == backfilled["events"]


def test_export_is_hermes_ledgers(backfilled: dict[str, Any], hermes: Run, ledger: Run) -> None:
    def exported(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
        assert (done.returncode, done.stderr) == (0, "")
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        lines[-1]["manifest"].pop("exported_at")  # the one value that differs
        return lines

    ours = exported(hermes("ledger", "export", "--type", "session_started"))
    assert ours == exported(ledger("export", "--type", "session_started"))
    assert len(ours) == backfilled["sessions"] + 1  # the events, then the manifest
    assert ours[-1]["manifest"]["count"] == backfilled["sessions"]


def test_an_error_is_exit_1_with_error_and_try(home: Path, hermes: Run, ledger: Run) -> None:
    missing = home / "missing.db"
    ours = hermes("ledger", "status", "--db", str(missing))
    same_as_standalone(ours, ledger("status", "--db", str(missing)))
    assert ours.returncode == 1 and ours.stdout == ""
    assert ours.stderr.startswith(f"Error: there is no ledger at {missing}\nTry: ")
    assert "Traceback" not in ours.stderr


def test_a_usage_error_is_exit_2_naming_hermes_ledger(hermes: Run, ledger: Run) -> None:
    ours = hermes("ledger", "status", "--no-such-option")
    same_as_standalone(ours, ledger("status", "--no-such-option"))
    assert ours.returncode == 2
    assert ours.stderr.startswith("Usage: hermes ledger status [OPTIONS]\n")
    assert ours.stderr.endswith("\nError: No such option '--no-such-option'.\n")
    unknown = hermes("ledger", "no-such-command")
    assert unknown.returncode == 2 and "No such command 'no-such-command'" in unknown.stderr


def test_hermes_ledger_help_lists_every_command(hermes: Run, ledger: Run) -> None:
    ours = hermes("ledger", "--help")
    same_as_standalone(ours, ledger("--help"))
    assert ours.returncode == 0
    assert ours.stdout.startswith("Usage: hermes ledger [OPTIONS] COMMAND [ARGS]...\n")
    commands = ours.stdout.split("\nCommands:\n", 1)[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.strip()}
    assert listed == set(ledger_cli.commands) and "backfill" in listed
    sub = hermes("ledger", "backfill", "-h")
    assert sub.returncode == 0 and sub.stdout.startswith("Usage: hermes ledger backfill [OPTIONS]")


def test_leading_options_reach_the_ledger(hermes: Run, ledger: Run) -> None:
    version = hermes("ledger", "--version")
    assert (version.returncode, version.stdout) == (0, "hermes ledger, version 0.1.0\n")
    # A group's own option before its subcommand, and --json first of all: the
    # ledger sees them (argparse would refuse a leading option with exit 2).
    listed = hermes("ledger", "hooks", "--json")
    same_as_standalone(listed, ledger("hooks", "--json"))
    assert json.loads(listed.stdout)["plugin_enabled"] is True
    retry = hermes("ledger", "hooks", "--json", "retry")
    assert (retry.returncode, json.loads(retry.stdout)) == (0, {"requeued": []})
    leading = hermes("ledger", "--json", "status")
    same_as_standalone(leading, ledger("--json", "status"))
    assert "No such option '--json'" in leading.stderr  # click's word, not argparse's
    assert "unrecognized arguments" not in leading.stderr


def test_hermes_sessions_list_still_works_with_the_plugin_enabled(
    backfilled: dict[str, Any], hermes: Run
) -> None:
    done = hermes("sessions", "list")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


# -- profiles: -p chooses the home, and so the ledger -----------------------------------


def test_a_profile_has_its_own_ledger(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    hermes = hermes_in(tmp_path)
    created = hermes("profile", "create", "work", "--no-alias", "--no-skills")
    assert created.returncode == 0, created.stderr
    work = tmp_path / "profiles" / "work"
    assert work.is_dir()
    enable(hermes)  # in the default profile only
    assert hermes("-p", "work", "ledger", "status").returncode == 2  # not enabled there
    enable(hermes, "-p", "work")
    assert yaml.safe_load((work / "config.yaml").read_text())["plugins"]["enabled"] == ["ledger"]

    init = hermes("-p", "work", "ledger", "init", "--json")
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["path"] == str(work / "ledger.db")
    status = hermes("-p", "work", "ledger", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["path"] == str(work / "ledger.db")
    # -p after the command is Hermes's too (it takes -p anywhere before a literal --)
    later = hermes("ledger", "status", "--json", "-p", "work")
    assert json.loads(later.stdout)["path"] == str(work / "ledger.db")
    # The default profile's ledger is another file, which does not exist yet.
    default = hermes("ledger", "status")
    assert default.returncode == 1
    assert default.stderr.startswith(f"Error: there is no ledger at {tmp_path / 'ledger.db'}\n")


HOME_INSIDE_HERMES = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import hermes_constants
    from hermes_ledger.gateway.config.paths import default_ledger_path, hermes_home
    seen = {"env": [str(hermes_home()), str(hermes_constants.get_hermes_home())]}
    token = hermes_constants.set_hermes_home_override(sys.argv[1])
    seen["override"] = [str(hermes_home()), str(hermes_constants.get_hermes_home()),
                        str(default_ledger_path())]
    hermes_constants.reset_hermes_home_override(token)
    seen["reset"] = str(hermes_home())
    print(json.dumps(seen))
    """
)


def test_inside_hermes_the_home_is_hermess_answer(tmp_path: Path) -> None:
    other = tmp_path / "task-home"
    done = run_in(tmp_path, sys.executable, "-I", "-c", HOME_INSIDE_HERMES, str(other))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["env"] == [str(tmp_path)] * 2
    assert seen["override"] == [str(other), str(other), str(other / "ledger.db")]
    assert seen["reset"] == str(tmp_path)


def test_standalone_the_home_does_not_import_hermes(tmp_path: Path) -> None:
    code = (
        "import sys; from hermes_ledger.gateway.cli import cli; "
        "from hermes_ledger.gateway.config.paths import hermes_home; "
        "print(hermes_home(), 'hermes_constants' in sys.modules)"
    )
    env = {**sandbox_env(tmp_path), "HERMES_HOME": " "}  # blank: unset, as for Hermes
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout) == (0, f"{tmp_path / '.hermes'} False\n"), done.stderr


# -- the handler's pieces, without Hermes ---------------------------------------------------


def test_setup_keeps_every_argument_for_the_ledger() -> None:
    def handler(args: argparse.Namespace) -> None:
        raise AssertionError("not called here")

    parser = argparse.ArgumentParser(prog="hermes")
    parser.add_argument("-m", "--model")
    sub = parser.add_subparsers(dest="command")
    ledger = sub.add_parser("ledger")
    plugin_cli.setup(ledger)
    ledger.set_defaults(func=handler)
    for argv in (["--json", "x"], ["--help"], ["-v", "--db", "a.db", "status"], []):
        ns = parser.parse_args(["-m", "m1", "ledger", *argv])
        assert (ns.command, ns.model, ns.func, ns.ledger_args) == ("ledger", "m1", handler, argv)


def test_run_exits_with_clicks_code_and_never_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERMES_HOME", str(tmp_path))
    monkeypatch.delenv("HERMES_LEDGER_DB", raising=False)
    assert plugin_cli.run(["schema"]) == 0
    assert plugin_cli.run(["status"]) == 1
    assert plugin_cli.run(["status", "--bogus"]) == 2
    capsys.readouterr()

    def broken(self: click.Group, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(click.Group, "main", broken)
    assert plugin_cli.run(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: hermes ledger failed: RuntimeError: boom\nTry: ")
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exited:
        plugin_cli.handle(argparse.Namespace(ledger_args=["status"]))
    assert exited.value.code == 1


# -- hermes-ledger backfill and hooks, in-process ------------------------------------------


def test_backfill_is_import_from_hermes_of_the_current_home(
    cli: Callable[..., Any], hermes_home: Path, tmp_path: Path
) -> None:
    missing = cli("backfill")
    assert missing.exit_code == 1
    assert missing.output.startswith(f"Error: {hermes_home} does not exist\nTry: ")
    build_standard_home(hermes_home)
    done = cli("backfill")
    assert done.exit_code == 0, done.output
    reference = cli("import", "--from-hermes", str(hermes_home), "--db", str(tmp_path / "r.db"))
    assert done.output == reference.output.replace(
        str(tmp_path / "r.db"), str(hermes_home / "ledger.db")
    )
    again = json.loads(cli("backfill", "--json").output)
    assert (again["events"], again["skipped"]) == (0, again["sessions_read"])


def write_hook(root: Path, name: str, events: list[str]) -> None:
    hook = root / name
    hook.mkdir(mode=0o700, parents=True)
    root.chmod(0o700)
    (hook / "HOOK.yaml").write_text(yaml.safe_dump({"name": name, "events": events}))
    (hook / "handler.py").write_text("def handle(event_type, context):\n    pass\n")


def test_hooks_say_who_delivers_them_once_the_plugin_is_enabled(
    cli: Callable[..., Any], hermes_home: Path
) -> None:
    hermes_home.mkdir(mode=0o700)
    write_hook(hermes_home / "hooks", "notify", ["agent:start", "command:*"])
    write_hook(hermes_home / "ledger-hooks", "audit", ["session:end"])
    standalone = cli("hooks")
    assert (standalone.exit_code, standalone.output) == (
        0,
        f"Hooks in {hermes_home / 'hooks'}:\n"
        "  notify  agent:start, command:*  (not started yet)\n"
        "No dead letters.\n",
    )
    (hermes_home / "config.yaml").write_text(
        yaml.safe_dump({"plugins": {"enabled": ["ledger"], "disabled": []}})
    )
    both = cli("hooks")
    assert (both.exit_code, both.output) == (
        0,
        f"Hooks in {hermes_home / 'ledger-hooks'} (delivered by the ledger):\n"
        "  audit  session:end  (not started yet)\n"
        "No dead letters.\n"
        f"Hooks in {hermes_home / 'hooks'} (delivered by Hermes's gateway, not the ledger):\n"
        "  notify  agent:start, command:*\n",
    )
    listed = json.loads(cli("hooks", "--json").output)
    assert listed["plugin_enabled"] is True
    assert listed["hooks_dir"] == str(hermes_home / "ledger-hooks")
    assert [h["name"] for h in listed["hooks"]] == ["audit"]
    assert listed["hermes_hooks_dir"] == str(hermes_home / "hooks")
    assert [(h["name"], h["events"]) for h in listed["hermes_hooks"]] == [
        ("notify", ["agent:start", "command:*"])
    ]
    # Disabled wins, as in Hermes: the ledger delivers hooks/ again.
    (hermes_home / "config.yaml").write_text(
        yaml.safe_dump({"plugins": {"enabled": ["ledger"], "disabled": ["ledger"]}})
    )
    assert cli("hooks").output == standalone.output
