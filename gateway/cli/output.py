"""Output helpers shared by the CLI commands: JSON, aligned tables, sizes and progress bars."""

from __future__ import annotations

import base64
import csv
import itertools
import json
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import click

__all__ = [
    "PROGRESS_LABELS",
    "cell",
    "display_width",
    "json_text",
    "print_csv",
    "print_json",
    "print_json_line",
    "print_json_rows",
    "print_report",
    "print_table",
    "progress_bar",
    "size_text",
]

_TABLE_SAMPLE = 1000  # rows looked at to size a table's columns


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """The one JSON style of every command: non-ASCII kept as it is, times and other
    non-JSON values as their text; indented by 2 (``indent=None``: one line, for
    JSON Lines and for the objects of a streamed list)."""
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def print_json(value: Any) -> None:
    """One JSON document for scripts (``json_text``: indented, non-ASCII kept)."""
    click.echo(json_text(value))


def print_report(report: Any, as_json: bool) -> None:
    """A library report for people (its ``summary()`` lines, then each of its
    ``warnings`` on stderr) or, with ``as_json``, its ``to_dict()``."""
    if as_json:
        print_json(report.to_dict())
        return
    for line in report.summary():
        click.echo(line)
    for warning in report.warnings:
        click.echo(f"Warning: {warning}", err=True)


def print_json_line(value: Any) -> None:
    """One JSON object on one line, for streams read line by line (JSON Lines)."""
    click.echo(json_text(value, indent=None))


def size_text(n: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB`` … ``2.0 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cell(value: Any) -> str:
    """One value as table text: NULL blank, blobs as X'…', newlines escaped."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return "X'" + value.hex().upper() + "'"
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


_ZWJ = "\u200d"  # zero width joiner: joins two emoji into one picture
_VS16 = "\ufe0f"  # variation selector 16: the character before it as an emoji
_SKIN_TONES = range(0x1F3FB, 0x1F400)  # emoji modifiers: part of the emoji before them


def display_width(text: str) -> int:
    """How many terminal columns ``text`` takes: East Asian wide and fullwidth
    characters (CJK, most emoji) count 2, combining marks and other zero-width
    characters 0, an emoji joined to the one before it (ZWJ sequences, skin tones)
    0, a character made an emoji by U+FE0F 2; everything else 1."""
    width = 0
    last = 0  # the width of the last character that took columns
    joined = False
    for ch in text:
        if joined or (ord(ch) in _SKIN_TONES and last == 2):
            joined = False
            continue
        if ch == _ZWJ:
            joined = last == 2
            continue
        if ch == _VS16:
            if last == 1:
                width += 1
                last = 2
            continue
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        last = 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        width += last
    return width


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def print_table(columns: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """Aligned columns, sized by the first rows (later, longer values overflow) in
    terminal columns (``display_width``: CJK and emoji take two); numbers
    right-aligned; a row count at the end."""
    iterator = iter(rows)
    sample = list(itertools.islice(iterator, _TABLE_SAMPLE))
    widths = [display_width(c) for c in columns]
    numeric = [True] * len(columns)
    for row in sample:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], display_width(cell(value)))
            if value is not None and not isinstance(value, int | float):
                numeric[i] = False

    def line(cells: Iterable[str], align: bool) -> str:
        parts = [
            _pad(text, width, align and right)
            for text, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    click.echo(line(columns, False))
    click.echo(line(("-" * w for w in widths), False))
    count = 0
    for row in itertools.chain(sample, iterator):
        click.echo(line((cell(v) for v in row), True))
        count += 1
    click.echo(f"({count} row{'' if count == 1 else 's'})")


PROGRESS_LABELS = ("exporting", "importing", "migrating", "replaying", "vacuuming", "verifying")
"""Every progress bar's label: one lower-case verb in -ing, what the command is doing."""


@contextmanager
def progress_bar(label: str, *, show: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr for the length
    of the ``with`` block, or None when stderr is not a terminal (scripts and pipes
    get no bar) or ``show`` is false (``--json``). ``label`` is one of
    ``PROGRESS_LABELS``. A negative ``total`` is unknown (a stream whose length
    only its end tells): the bar then counts ``done`` instead of filling up.

    The bar opens on the first report and is closed when the block ends, also when
    the work fails or is interrupted: a click bar left open keeps the terminal's
    cursor hidden and the next message on the bar's line.
    """
    if label not in PROGRESS_LABELS:
        raise ValueError(f"progress label {label!r} is not one of {PROGRESS_LABELS}")
    if not show or not sys.stderr.isatty():
        yield None
        return
    with ExitStack() as stack:
        bar: Any = None

        def report(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                if total >= 0:
                    opened = click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
                else:  # no length: click draws a pulse, show_pos the count
                    opened = click.progressbar(
                        itertools.repeat(0), label=label, file=sys.stderr, show_pos=True
                    )
                bar = stack.enter_context(opened)
            bar.update(max(0, done - bar.pos))

        yield report


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": True, "encoded": base64.b64encode(value).decode()}
    return value


def print_json_rows(columns: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """Query rows as a JSON list of objects, one per line, streamed (bytes as base64)."""
    opened = False
    for row in rows:
        item = {c: _json_value(v) for c, v in zip(columns, row, strict=True)}
        text = json_text(item, indent=None)  # one object a line: the list streams
        click.echo((",\n  " if opened else "[\n  ") + text, nl=False)
        opened = True
    click.echo("\n]" if opened else "[]")


def print_csv(columns: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """Query rows as CSV on stdout, with a header line (bytes as ``cell`` shows them)."""
    out = sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(cell(v) if isinstance(v, bytes) else v for v in row)
    out.flush()
