-- The log: one immutable row per event. Public SQL contract (see docs/sql.md).

CREATE TABLE events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE CHECK (length(event_id) > 0),
    stream      TEXT    NOT NULL CHECK (length(stream) > 0),
    version     INTEGER NOT NULL CHECK (version >= 1),
    type        TEXT    NOT NULL CHECK (length(type) > 0),
    session_id  TEXT,
    data        TEXT    NOT NULL CHECK (json_valid(data)),
    meta        TEXT    NOT NULL CHECK (json_valid(meta)),
    recorded_at TEXT    NOT NULL CHECK (recorded_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*Z'),
    hash        TEXT    NOT NULL CHECK (length(hash) = 64),
    UNIQUE (stream, version)
) STRICT;

-- "Exactly once" is a property of the database: a session can end only once.
CREATE UNIQUE INDEX events_one_end_per_session
    ON events (session_id) WHERE type = 'session_ended';

-- Events of one transcript, in order (transcripts, flush lookups, audits).
CREATE INDEX events_by_session ON events (session_id, position) WHERE session_id IS NOT NULL;

CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only: events cannot be updated; append a new event instead');
END;

CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only: events cannot be deleted; export and start a new ledger instead');
END;
