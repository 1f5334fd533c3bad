"""The transcript row of a ``message_appended`` event, declared once.

A transcript is a session's real messages in log order: one row per
``message_appended`` event, except synthetic turns (the memory-flush prompt),
which stay in the log but are no transcript rows. ``TRANSCRIPT_COLUMNS`` says,
for each column, its name, its SQL type and constraints, and how its value is
computed from the event; everything that holds transcript rows derives its
columns and SQL from it:

* the ``messages`` projection: its DDL (``projections.tables``) and both of its
  projector forms, the range form and the single-event form
  (``projections.statements``), which must produce identical rows;
* the ``messages`` table of a SQLite export (``ledger.export``);
* the gateway's transcript reader (``gateway.sessions.reads``).

Why in ``ledger``: the declaration is about event bodies (how a stored
``message_appended`` becomes a row), like the event models in ``ledger.events``;
and the export, which is part of the ledger, needs it, while imports only go
gateway -> projections -> ledger. The projections take it from here rather than
the other way round.

A column's ``value`` is an SQL template with the placeholders of the event being
turned into a row: ``{position}``, ``{stream}``, ``{session_id}``, ``{body}`` (its
``data`` JSON text, in the current shape) and ``{ts}`` (its business time, see
``ledger.sql.business_time``). ``transcript_values`` fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "SYNTHETIC",
    "TRANSCRIPT_COLUMNS",
    "TRANSCRIPT_KEY",
    "TRANSCRIPT_SEARCHED",
    "TRANSCRIPT_TOKENIZER",
    "TranscriptColumn",
    "transcript_column",
    "transcript_ddl",
    "transcript_names",
    "transcript_values",
]


@dataclass(frozen=True, slots=True)
class TranscriptColumn:
    """One column of a transcript row.

    ``sql_type`` is ``INTEGER`` or ``TEXT``; ``constraint`` follows it in the DDL
    (``PRIMARY KEY``, ``NOT NULL``…); ``value`` is the SQL template computing it
    (see the module docstring); ``json`` marks text holding a JSON document."""

    name: str
    sql_type: str
    value: str
    constraint: str = ""
    json: bool = False

    @property
    def declaration(self) -> str:
        """The column's type and constraints, as they follow its name in the DDL."""
        return f"{self.sql_type} {self.constraint}".rstrip()

    @property
    def python_type(self) -> type:
        """``int`` or ``str``: the type of its non-NULL values."""
        return int if self.sql_type == "INTEGER" else str


def _field(name: str, *, json: bool = False) -> str:
    if json:  # a JSON null is no document: NULL, as ->> gives for a scalar
        return f"nullif({{body}} -> '$.{name}', 'null')"
    return f"{{body}} ->> '$.{name}'"


def _personal(name: str, *, json: bool = False) -> str:
    """A personal field (``ledger.personal``): from the event's payload ``{private}``
    when it is there, else from its body (the marker "[erased]", or NULL if unset)."""
    arrow = "->" if json else "->>"
    value = f"coalesce({{private}} {arrow} '$.{name}', {{body}} {arrow} '$.{name}')"
    return f"nullif({value}, 'null')" if json else value


def _count(name: str) -> str:
    return f"coalesce({{body}} ->> '$.{name}', 0)"


TRANSCRIPT_COLUMNS: tuple[TranscriptColumn, ...] = (
    TranscriptColumn("position", "INTEGER", "{position}", "PRIMARY KEY"),
    TranscriptColumn("session_id", "TEXT", "{session_id}", "NOT NULL"),
    TranscriptColumn("session_key", "TEXT", "{stream}", "NOT NULL"),
    TranscriptColumn("role", "TEXT", _field("role"), "NOT NULL"),
    TranscriptColumn("content", "TEXT", _personal("content")),
    TranscriptColumn("user_id", "TEXT", _field("user_id")),
    TranscriptColumn("user_name", "TEXT", _personal("user_name")),
    TranscriptColumn("tool_calls", "TEXT", _personal("tool_calls", json=True), json=True),
    TranscriptColumn("tool_name", "TEXT", _field("tool_name")),
    TranscriptColumn("tool_call_id", "TEXT", _field("tool_call_id")),
    TranscriptColumn("input_tokens", "INTEGER", _count("input_tokens"), "NOT NULL DEFAULT 0"),
    TranscriptColumn("output_tokens", "INTEGER", _count("output_tokens"), "NOT NULL DEFAULT 0"),
    TranscriptColumn("platform_message_id", "TEXT", _field("platform_message_id")),
    TranscriptColumn("ts", "TEXT", "{ts}", "NOT NULL"),
)
"""The transcript columns, in table order (docs/sql.md describes them)."""

TRANSCRIPT_KEY = "position"
"""The primary key: the event's position (also the full-text index's rowid)."""

TRANSCRIPT_SEARCHED = "content"
"""The column the full-text index covers (a row without it is not indexed)."""

TRANSCRIPT_TOKENIZER = "unicode61 remove_diacritics 2"
"""The full-text index's tokenizer: diacritics folded, so ``cafe`` finds ``café``."""

SYNTHETIC = "coalesce({body} ->> '$.synthetic', 0)"
"""SQL template (placeholder ``{body}``): true for a synthetic turn, which has no
transcript row (and does not count as a message)."""

_BY_NAME = {c.name: c for c in TRANSCRIPT_COLUMNS}


def transcript_column(name: str) -> TranscriptColumn:
    """The column called ``name`` (KeyError for a name that is not a transcript column)."""
    return _BY_NAME[name]


def transcript_names(names: tuple[str, ...] | None = None) -> str:
    """The comma-separated column names: ``names`` (each checked), or all in table order."""
    return ", ".join(transcript_column(n).name for n in (names or tuple(_BY_NAME)))


def transcript_values(
    *,
    position: str,
    stream: str,
    session_id: str,
    body: str,
    ts: str,
    names: tuple[str, ...] | None = None,
    private: str = "NULL",
) -> str:
    """The comma-separated SQL values of a row, given the SQL of the event's position,
    stream, session id, body and business time: of the columns ``names``, or of all
    of them in table order. ``private`` is the SQL of the event's payload body (its
    personal fields, ``ledger.personal``); NULL when ``body`` is already whole."""
    event = {"position": position, "stream": stream, "session_id": session_id,
             "body": body, "ts": ts, "private": private}  # fmt: skip
    columns = [transcript_column(n) for n in names] if names else TRANSCRIPT_COLUMNS
    return ", ".join(c.value.format(**event) for c in columns)


def transcript_ddl(table: str) -> str:
    """``CREATE TABLE table (...) STRICT`` with every transcript column, one per line."""
    lines = ",\n".join(f"    {c.name:<19} {c.declaration}" for c in TRANSCRIPT_COLUMNS)
    return f"CREATE TABLE {table} (\n{lines}\n) STRICT"
