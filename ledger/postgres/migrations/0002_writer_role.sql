-- The writer role: what a gateway logs in as (a LOGIN role granted membership in
-- it). It may SELECT and INSERT on the log and start an append; it owns nothing,
-- so it can neither UPDATE, DELETE or TRUNCATE events nor drop or disable the
-- triggers that refuse those. Roles belong to the cluster, so one role serves
-- every ledger database on the server; it is created only if it is missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hermes_ledger_writer') THEN
        CREATE ROLE hermes_ledger_writer NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created meanwhile by a migration of another database
END
$$;

REVOKE ALL ON SCHEMA hermes_ledger FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA hermes_ledger FROM PUBLIC;
GRANT USAGE ON SCHEMA hermes_ledger TO hermes_ledger_writer;
GRANT SELECT, INSERT ON events TO hermes_ledger_writer;
GRANT SELECT ON schema_migrations TO hermes_ledger_writer;
GRANT EXECUTE ON FUNCTION hl_append_state(text) TO hermes_ledger_writer;
