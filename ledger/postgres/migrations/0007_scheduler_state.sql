-- What the scheduler's deadlines were derived under (docs/postgres.md, "Claims and
-- deliveries across hosts"): one row per named piece of state; the row 'deadlines'
-- holds the fingerprint of the reset policies (gateway.scheduler.ticks.policy_hash)
-- that every session_deadlines row was last derived from, as SQLite's scheduler_state
-- keeps it in the ledger file. A runner that starts with other policies (a shortened
-- idle_minutes in config.yaml) re-derives every deadline and stores its fingerprint,
-- in one transaction under the append lock, so runners starting together on several
-- hosts re-derive once.
CREATE TABLE scheduler_state (
    name        text        NOT NULL CHECK (length(name) > 0),
    config_hash text        NOT NULL CHECK (length(config_hash) > 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT scheduler_state_pkey PRIMARY KEY (name)
);

REVOKE ALL ON scheduler_state FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON scheduler_state TO hermes_ledger_writer;
GRANT SELECT ON scheduler_state TO hermes_ledger_reader;  -- migration 6's role
