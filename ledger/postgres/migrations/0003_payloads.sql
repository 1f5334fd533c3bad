-- Forgettable content (docs/design.md, "Erasure"; docs/postgres.md, "Payloads"), as
-- in the SQLite ledger (migrations/0004_payloads.sql): the personal fields of an
-- event are not in events.data (it holds "[erased]" in their place, an empty list
-- for tool_calls) but one row here, keyed by the event's position. The event's meta
-- holds "payload": HMAC-SHA256(salt, body), so the chain covers the content through
-- its digest and verify checks every row here against it. Rows are never updated;
-- an erasure deletes them, and only a role granted hermes_ledger_eraser may.

CREATE TABLE payloads (
    position bigint NOT NULL,
    salt     bytea  NOT NULL CHECK (length(salt) = 16),
    body     text   NOT NULL CHECK (body::json IS NOT NULL),
    CONSTRAINT payloads_pkey PRIMARY KEY (position)
);

CREATE FUNCTION hl_refuse_payload_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'payloads cannot be %; they are only ever erased', TG_ARGV[0]
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER payloads_refuse_update BEFORE UPDATE ON payloads
    FOR EACH STATEMENT EXECUTE FUNCTION hl_refuse_payload_change('updated');
CREATE TRIGGER payloads_refuse_truncate BEFORE TRUNCATE ON payloads
    FOR EACH STATEMENT EXECUTE FUNCTION hl_refuse_payload_change('truncated');

-- Session starts, found by an erasure of a user (as SQLite's events_session_starts).
CREATE INDEX events_session_starts ON events (session_id) WHERE type = 'session_started';

-- SQLite's json_patch(target, patch) (RFC 7396) over JSON text, giving the same
-- text: the target's members in their order, each value's text as written, a
-- patched member where the target had it, patch members the target lacks appended,
-- null members removed, objects merged recursively; no spaces. json (not jsonb)
-- keeps members and their text as the ledger wrote them. Keys are re-encoded with
-- to_json, which escapes as the ledger's writer does (the keys are field names).
CREATE FUNCTION hl_json_patch(target text, patch text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    t json := target::json;
    p json := patch::json;
    parts text[] := '{}';
    k text;
    v json;
    pv json;
    seen text[] := '{}';
BEGIN
    IF json_typeof(p) IS DISTINCT FROM 'object' THEN
        RETURN patch;
    END IF;
    IF json_typeof(t) IS DISTINCT FROM 'object' THEN
        t := '{}'::json;
    END IF;
    FOR k, v IN SELECT key, value FROM json_each(t) LOOP
        seen := seen || k;
        pv := p -> k;
        IF pv IS NULL THEN
            parts := parts || (to_json(k)::text || ':' || v::text);
        ELSIF json_typeof(pv) = 'null' THEN
            CONTINUE;
        ELSIF json_typeof(pv) = 'object' THEN
            parts := parts || (to_json(k)::text || ':' || hl_json_patch(v::text, pv::text));
        ELSE
            parts := parts || (to_json(k)::text || ':' || pv::text);
        END IF;
    END LOOP;
    FOR k, pv IN SELECT key, value FROM json_each(p) LOOP
        IF k = ANY(seen) OR json_typeof(pv) = 'null' THEN
            CONTINUE;
        END IF;
        seen := seen || k;
        IF json_typeof(pv) = 'object' THEN
            parts := parts || (to_json(k)::text || ':' || hl_json_patch('{}', pv::text));
        ELSE
            parts := parts || (to_json(k)::text || ':' || pv::text);
        END IF;
    END LOOP;
    RETURN '{' || array_to_string(parts, ',') || '}';
END
$$;

-- The merged body of an event (data with its payload body, NULL when there is none
-- or it was erased): personal.merged_sql's result on SQLite. Every JSON function of
-- PostgreSQL refuses text holding the escape \u0000 (it cannot decode it to text),
-- which a message may hold; so hl_nul_out turns each such escape into \ud800\udc00
-- (an escaped pair the ledger's writer never emits: it writes that character
-- unescaped) for the merge, and hl_merged turns them back. hl_nul_out first sets
-- aside every escaped backslash (as chr(1), which JSON text never holds unescaped),
-- so the \u0000 inside a typed "\\u0000" is left alone.
CREATE FUNCTION hl_nul_out(x text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN replace(replace(replace(x, '\\', chr(1)), '\u0000', '\ud800\udc00'), chr(1), '\\');

CREATE FUNCTION hl_merged(data text, body text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN body IS NULL THEN data ELSE replace(
    hl_json_patch(hl_nul_out(data), hl_nul_out(body)), '\ud800\udc00', '\u0000') END;

-- The payload digest an event's meta holds (NULL when it has none); \u0000 read as
-- a space, as hl_business_time does (the digest is hex).
CREATE FUNCTION hl_payload_digest(meta text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN replace(meta, '\u0000', '\u0020')::json ->> 'payload';

-- Every event with its personal fields merged back in: what the event said, or
-- "[erased]" in the fields of an erased event (erased = true). The same columns
-- and merged text as SQLite's event_bodies.
CREATE VIEW event_bodies AS
SELECT e.position, e.event_id, e.stream, e.version, e.type, e.session_id,
    hl_merged(e.data, p.body) AS data, e.meta, e.recorded_at, e.occurred_at, e.hash,
    (hl_payload_digest(e.meta) IS NOT NULL AND p.position IS NULL) AS erased
FROM events AS e LEFT JOIN payloads AS p ON p.position = e.position;

-- The eraser role: a writer (it appends subject_erased) that may also DELETE
-- payload rows, and nothing else. The writer role may only add and read them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hermes_ledger_eraser') THEN
        CREATE ROLE hermes_ledger_eraser NOLOGIN IN ROLE hermes_ledger_writer;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created meanwhile by a migration of another database
END
$$;

REVOKE ALL ON payloads, event_bodies FROM PUBLIC;
GRANT SELECT, INSERT ON payloads TO hermes_ledger_writer;
GRANT SELECT ON event_bodies TO hermes_ledger_writer;
GRANT DELETE ON payloads TO hermes_ledger_eraser;
