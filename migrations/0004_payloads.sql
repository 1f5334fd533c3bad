-- Forgettable content (docs/design.md, "Erasure"). The personal fields of an event
-- (message text, tool calls, user and chat names, free text) are not stored in
-- events.data: data holds the marker "[erased]" in their place (an empty list for
-- tool_calls), and the fields themselves are one row here, keyed by the event's
-- position. The event's meta holds "payload": HMAC-SHA256(salt, body), so the hash
-- chain covers the content through its digest, and verify checks every row here
-- against it. An erasure deletes rows (with secure_delete); nothing else may.
-- Public SQL contract (see docs/sql.md).

CREATE TABLE payloads (
    position INTEGER PRIMARY KEY,
    salt     BLOB NOT NULL CHECK (length(salt) = 16),
    body     TEXT NOT NULL CHECK (json_valid(body))
) STRICT;

CREATE TRIGGER payloads_refuse_update BEFORE UPDATE ON payloads
BEGIN
    SELECT RAISE(ABORT, 'payloads cannot be updated; they are only ever erased');
END;

-- The sessions an erasure of a user covers are found by their session_started
-- (source.user_id): a partial index keeps that from scanning the log.
CREATE INDEX events_session_starts ON events (session_id) WHERE type = 'session_started';

-- Every event with its personal fields merged back in: what the event said, or
-- "[erased]" in the fields of an erased event (erased = 1).
CREATE VIEW event_bodies AS
SELECT e.position, e.event_id, e.stream, e.version, e.type, e.session_id,
    CASE WHEN p.body IS NULL THEN e.data ELSE json_patch(e.data, p.body) END AS data,
    e.meta, e.recorded_at, e.occurred_at, e.hash,
    ((e.meta ->> '$.payload') IS NOT NULL AND p.position IS NULL) AS erased
FROM events AS e LEFT JOIN payloads AS p ON p.position = e.position;
