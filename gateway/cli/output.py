"""Output helpers shared by the CLI commands: JSON, aligned tables, sizes and progress bars."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import click

__all__ = [
    "cell",
    "print_json",
    "print_json_line",
    "print_report",
    "print_table",
    "progress_bar",
    "size_text",
]

_TABLE_SAMPLE = 1000  # rows looked at to size a table's columns


def print_json(value: Any) -> None:
    """One JSON document for scripts: indented, non-ASCII kept, times and other
    non-JSON values as their text."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


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
    click.echo(json.dumps(value, ensure_ascii=False, default=str))


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


def print_table(columns: list[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """Aligned columns, sized by the first rows (later, longer values overflow);
    numbers right-aligned; a row count at the end."""
    iterator = iter(rows)
    sample = list(itertools.islice(iterator, _TABLE_SAMPLE))
    widths = [len(c) for c in columns]
    numeric = [True] * len(columns)
    for row in sample:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(cell(value)))
            if value is not None and not isinstance(value, int | float):
                numeric[i] = False

    def line(cells: Iterable[str], align: bool) -> str:
        parts = [
            text.rjust(width) if align and right else text.ljust(width)
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


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr for the length
    of the ``with`` block, or None when stderr is not a terminal (scripts and pipes
    get no bar).

    The bar opens on the first report and is closed when the block ends, also when
    the work fails or is interrupted: a click bar left open keeps the terminal's
    cursor hidden and the next message on the bar's line.
    """
    if not sys.stderr.isatty():
        yield None
        return
    with ExitStack() as stack:
        bar: Any = None

        def report(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(
                    click.progressbar(length=max(total, 1), label=label, file=sys.stderr)
                )
            bar.update(max(0, done - bar.pos))

        yield report
