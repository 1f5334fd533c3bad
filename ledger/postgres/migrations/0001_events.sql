-- The log on PostgreSQL: one immutable row per event, with the columns and meaning
-- of the SQLite table (migrations/0001_events.sql and 0003_occurred_at.sql; see
-- docs/ledger.md and docs/postgres.md). Applied in one transaction, with
-- search_path = hermes_ledger.

-- Business time: ISO-8601 text with or without an offset (as pydantic writes it)
-- as fixed-width UTC text in the format of recorded_at, as ledger.sql.utc_text does
-- in SQLite. The whole seconds go through timestamptz with the offset always spelled
-- out (no offset means UTC), so the result never depends on the session's TimeZone
-- and IMMUTABLE is true; the fraction is copied as digits, padded or cut to six.
-- Text that is not such a time gives NULL, and then recorded_at is used.
CREATE FUNCTION hl_utc_text(x text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    parts text[] := regexp_match(
        x, '^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]*)?([Zz]|[+-][0-9]{2}:?[0-9]{2})?$');
    zone text;
BEGIN
    IF parts IS NULL THEN
        RETURN NULL;
    END IF;
    zone := CASE WHEN parts[4] IS NULL OR upper(parts[4]) = 'Z' THEN '+00:00' ELSE parts[4] END;
    RETURN to_char(((parts[1] || ' ' || parts[2] || zone)::timestamptz) AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS')
        || '.' || rpad(substr(coalesce(parts[3], '.'), 2, 6), 6, '0') || 'Z';
END
$$;

-- Its ->> decodes every string of the body, and \u0000 cannot be decoded to text;
-- so that escape is read as \u0020 (a space) in the copy occurred_at is read from.
CREATE FUNCTION hl_business_time(data text, recorded_at text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(hl_utc_text(replace(data, '\u0000', '\u0020')::json ->> 'occurred_at'), recorded_at);

-- data and meta are TEXT, checked as JSON, not JSONB: the hash covers the exact text
-- the ledger wrote, and JSONB would re-order keys and re-space it. ::json (not
-- ::jsonb) accepts what SQLite's json_valid accepts, \u0000 included.
CREATE TABLE events (
    position    bigint NOT NULL CHECK (position >= 1),
    event_id    text   NOT NULL CHECK (length(event_id) > 0),
    stream      text   NOT NULL CHECK (length(stream) > 0),
    version     bigint NOT NULL CHECK (version >= 1),
    type        text   NOT NULL CHECK (length(type) > 0),
    session_id  text,
    data        text   NOT NULL CHECK (data::json IS NOT NULL),
    meta        text   NOT NULL CHECK (meta::json IS NOT NULL),
    recorded_at text   NOT NULL
        CHECK (recorded_at ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T.*Z$'),
    hash        text   NOT NULL CHECK (length(hash) = 64),
    -- STORED (PostgreSQL 15 has no virtual columns): computed once, at the INSERT;
    -- the hash covers data and recorded_at, so it covers this column too.
    occurred_at text   GENERATED ALWAYS AS (hl_business_time(data, recorded_at)) STORED,
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream, version)
);

-- "Exactly once" is a property of the database: a session can end only once.
CREATE UNIQUE INDEX events_one_end_per_session
    ON events (session_id) WHERE type = 'session_ended';

-- Events of one transcript, in order; time filters seek on business time.
CREATE INDEX events_by_session ON events (session_id, position) WHERE session_id IS NOT NULL;
CREATE INDEX events_by_occurred_at ON events (occurred_at);

-- Append-only, whoever writes: UPDATE, DELETE and TRUNCATE are refused.
CREATE FUNCTION hl_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: events cannot be %; %', TG_ARGV[0], TG_ARGV[1]
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
    FOR EACH STATEMENT
    EXECUTE FUNCTION hl_refuse_change('updated', 'append a new event instead');
CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
    FOR EACH STATEMENT
    EXECUTE FUNCTION hl_refuse_change('deleted', 'export and start a new ledger instead');
CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT
    EXECUTE FUNCTION hl_refuse_change('truncated', 'export and start a new ledger instead');

-- Where an append starts, under the log's lock: takes EXCLUSIVE on events (other
-- appends wait; readers do not) and returns the stream's version and the head's
-- position and hash. SECURITY DEFINER because LOCK ... EXCLUSIVE needs UPDATE,
-- DELETE or TRUNCATE on the table, which the writer role must not have. Its
-- queries take their snapshot after the lock is granted (READ COMMITTED), so they
-- see every append committed before it.
CREATE FUNCTION hl_append_state(
    p_stream text, OUT stream_version bigint, OUT head_position bigint, OUT head_hash text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = hermes_ledger, pg_temp AS $$
BEGIN
    LOCK TABLE events IN EXCLUSIVE MODE;
    SELECT coalesce(max(e.version), 0) INTO stream_version FROM events e WHERE e.stream = p_stream;
    SELECT e.position, e.hash INTO head_position, head_hash
        FROM events e ORDER BY e.position DESC LIMIT 1;
    head_position := coalesce(head_position, 0);
    head_hash := coalesce(head_hash, repeat('0', 64));
END
$$;
REVOKE EXECUTE ON FUNCTION hl_append_state(text) FROM PUBLIC;
