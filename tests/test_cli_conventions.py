"""What every command shares: --version at every level, tables measured in terminal
columns, one spelling of progress labels, one JSON style, import's progress bar."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from helpers import installed_script, run_on_terminal

from hermes_ledger.gateway.cli import cli as ledger_cli
from hermes_ledger.gateway.cli.output import (
    PROGRESS_LABELS,
    display_width,
    json_text,
    print_json,
    print_json_line,
    print_table,
    progress_bar,
)
from hermes_ledger.ledger import Ledger
from hermes_ledger.ledger.events import MessageAppended, SessionStarted, Source


def _every_command(
    command: click.Command, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += _every_command(sub, (*path, name))
    return found


def test_every_command_and_group_answers_version(cli: Callable[..., Result]) -> None:
    commands = _every_command(ledger_cli)
    assert len(commands) > 15 and ("hooks", "retry") in [p for p, _ in commands]
    version = cli("--version").output
    assert ", version " in version  # "PROG, version X": PROG is how it was invoked
    for path, _ in commands:
        result = cli(*path, "--version")
        assert (result.exit_code, result.output) == (0, version), path


def test_version_inside_a_group_through_the_installed_script() -> None:
    import subprocess

    for args in (["hooks", "--version"], ["events", "--version"]):
        done = subprocess.run(
            [installed_script(), *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("hermes-ledger, version "), args


def test_no_help_points_at_a_file_the_installed_package_lacks() -> None:
    for path, command in _every_command(ledger_cli):
        texts = [command.help or ""] + [
            getattr(param, "help", None) or "" for param in command.params
        ]
        for text in texts:
            assert "docs/" not in text and ".md" not in text, (path, text)


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("abc", 3),
        ("日本語", 6),
        ("ｶﾀｶﾅ", 4),  # halfwidth katakana: one column each
        ("한국어 ok", 9),
        ("😀", 2),
        ("❤️", 2),  # U+2764 + VS16: an emoji, two columns
        ("👍🏽", 2),  # with a skin tone
        ("👨\u200d👩\u200d👧", 2),  # a ZWJ family: one picture
        ("e\u0301", 1),  # a combining accent takes no column
        ("", 0),
    ],
)
def test_display_width(text: str, width: int) -> None:
    assert display_width(text) == width


def test_tables_line_up_with_cjk_and_emoji(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(
        ["name", "note", "n"],
        [("東京", "ok", 1), ("abc", "🎉 done", 22), ("e\u0301te\u0301", "日本語テキスト", 3)],
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "name  note            n",
        "----  --------------  --",
        "東京  ok               1",
        "abc   🎉 done         22",
        "e\u0301te\u0301   日本語テキスト   3",
        "(3 rows)",
    ]
    # The right-aligned last column ends at the same terminal column on every row.
    assert {display_width(line) for line in lines[1:5]} == {24}


def test_one_spelling_for_progress_labels() -> None:
    assert all(label == label.lower() and label.endswith("ing") for label in PROGRESS_LABELS)
    with pytest.raises(ValueError, match="'Exporting' is not one of"), progress_bar("Exporting"):
        pass


def test_one_json_style(capsys: pytest.CaptureFixture[str]) -> None:
    value = {"name": "東京 😀", "n": 1, "at": Path("/x")}
    print_json(value)
    print_json_line(value)
    out = capsys.readouterr().out
    assert out == (
        '{\n  "name": "東京 😀",\n  "n": 1,\n  "at": "/x"\n}\n'
        '{"name": "東京 😀", "n": 1, "at": "/x"}\n'
    )
    assert json_text(value) == out.split("\n{")[0]


def _ledger_with_messages(path: Path, n: int) -> None:
    with Ledger.open(path) as led:
        led.append("k", [SessionStarted(session_id="s", source=Source(platform="cli"))])
        led.append(
            "k", [MessageAppended(session_id="s", role="user", content=f"m{i}") for i in range(n)]
        )


def test_import_shows_progress_on_a_terminal_and_not_with_json(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    _ledger_with_messages(source, 25_000)
    export = tmp_path / "export.jsonl"
    assert CliRunner().invoke(ledger_cli, ["export", "--db", str(source), "-o", str(export)])
    script = installed_script()
    done, shown = run_on_terminal(
        [script, "import", "--db", str(tmp_path / "a.db"), str(export)], "stderr"
    )
    assert done.returncode == 0, shown
    assert done.stdout.startswith("Imported 25001 events into ")
    assert b"importing" in shown and b"20000" in shown, shown
    done, shown = run_on_terminal(
        [script, "import", "--db", str(tmp_path / "b.db"), str(export), "--json"], "stderr"
    )
    assert done.returncode == 0 and json.loads(done.stdout)["count"] == 25_001
    assert b"importing" not in shown, shown
