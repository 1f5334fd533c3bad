-- The reader role: what `hermes-ledger sql` and `report` run as (SET LOCAL ROLE in
-- their read-only transaction), and what an operator grants an auditor's LOGIN role
-- (CREATE ROLE auditor LOGIN IN ROLE hermes_ledger_reader). It may SELECT the
-- ledger's tables and nothing else: no INSERT, UPDATE, DELETE or TRUNCATE anywhere,
-- no EXECUTE on hl_append_state (revoked from PUBLIC in migration 1), no membership
-- in any role, so whatever function a query calls runs with these privileges only.
-- Roles belong to the cluster: it is created only if it is missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hermes_ledger_reader') THEN
        CREATE ROLE hermes_ledger_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created meanwhile by a migration of another database
END
$$;

-- Everything in the schema, as it is now: the log, schema_migrations, payloads (verify
-- checks each payload row against its event's digest, so an auditor needs its salt and
-- body; the body is what event_bodies shows anyway, and an erasure deletes both), the
-- event_bodies view, the gateway state (session_deadlines, hook_subscriptions,
-- hook_deliveries) and, when they exist already, the projection tables and their
-- checkpoints.
GRANT USAGE ON SCHEMA hermes_ledger TO hermes_ledger_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA hermes_ledger TO hermes_ledger_reader;

-- And every table created in the schema later by the role running this migration (the
-- owner): the projection tables of a first `attach` or a `replay`, whose rebuild
-- creates fresh *__next tables and renames them into place (a rename keeps the grant).
ALTER DEFAULT PRIVILEGES IN SCHEMA hermes_ledger GRANT SELECT ON TABLES TO hermes_ledger_reader;

-- Who may assume it (SET ROLE needs membership): the writer role, whose privileges
-- already include the reader's (so a gateway's `sql` runs as the reader too), and the
-- role migrating (the owner, unless it is a superuser, which may SET ROLE anyway).
-- Granting needs CREATEROLE or ADMIN on the role; an owner without either, on a server
-- where another database's owner created the role, is left out: `sql` then says which
-- GRANT to run.
DO $$
BEGIN
    IF NOT pg_has_role('hermes_ledger_writer', 'hermes_ledger_reader', 'MEMBER') THEN
        GRANT hermes_ledger_reader TO hermes_ledger_writer;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'hermes_ledger_reader', 'MEMBER') THEN
        GRANT hermes_ledger_reader TO CURRENT_USER;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END
$$;
