-- Gateway state on PostgreSQL (docs/postgres.md, "Claims and deliveries across
-- hosts"): the scheduler's deadlines and the hook delivery outbox, as SQLite keeps
-- them in the ledger file (migrations/0002_gateway_state.sql), made safe for many
-- runners on many hosts: rows are claimed with FOR UPDATE SKIP LOCKED and held by
-- a lease (claimed_by, claim_expires, in the database's clock), so a claim whose
-- runner died expires and is taken again. Not projections: they record what was
-- done (claims, attempts, deliveries), which the log alone cannot reproduce.

-- One row per unclosed session key with a deadline (kept inside every append's
-- transaction by gateway.scheduler.postgres.DeadlineProjector; dropped when the
-- session ends), and the lease of the runner closing it.
CREATE TABLE session_deadlines (
    session_key   text        NOT NULL,
    session_id    text        NOT NULL,
    deadline      timestamptz NOT NULL,
    reason        text        NOT NULL CHECK (reason IN ('idle', 'daily', 'cron', 'finish')),
    claimed_by    text,
    claim_expires timestamptz,
    CONSTRAINT session_deadlines_pkey PRIMARY KEY (session_key),
    CHECK ((claimed_by IS NULL) = (claim_expires IS NULL))
) WITH (fillfactor = 80);  -- room on each page: a claim's UPDATE stays HOT (no index change)

-- The due query: deadline <= now, earliest first, LIMIT n.
CREATE INDEX session_deadlines_due ON session_deadlines (deadline);

-- Which hooks take which hook events; a subscription takes the events appended
-- after it was made.
CREATE TABLE hook_subscriptions (
    hook        text        NOT NULL CHECK (length(hook) > 0),
    hook_events text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT hook_subscriptions_pkey PRIMARY KEY (hook),
    CHECK (hook_events <@ ARRAY['session:start', 'session:reset', 'session:end'])
);

-- One row per (hook, session event), inserted in the append's transaction
-- (gateway.hooks.postgres_delivery.HookOutbox); delivery_id is delivery.py's.
CREATE TABLE hook_deliveries (
    delivery_id     text        NOT NULL,
    hook            text        NOT NULL,
    position        bigint      NOT NULL,
    event_id        text        NOT NULL,
    hook_event      text        NOT NULL
                    CHECK (hook_event IN ('session:start', 'session:reset', 'session:end')),
    session_key     text        NOT NULL,
    session_id      text,
    context         text        NOT NULL CHECK (context::json IS NOT NULL),
    status          text        NOT NULL CHECK (status IN ('pending', 'claimed', 'done', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claimed_by      text,
    claim_expires   timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    CONSTRAINT hook_deliveries_pkey PRIMARY KEY (delivery_id),
    CONSTRAINT hook_deliveries_hook_position_key UNIQUE (hook, position),
    CHECK ((status = 'claimed') = (claimed_by IS NOT NULL AND claim_expires IS NOT NULL)),
    CHECK ((status = 'done') = (delivered_at IS NOT NULL))
);

-- The claim: a hook's owed deliveries in log order; and, per session key, whether
-- an earlier one is still owed (a key's deliveries are made in log order).
CREATE INDEX hook_deliveries_queue ON hook_deliveries (hook, position)
    WHERE status IN ('pending', 'claimed');
CREATE INDEX hook_deliveries_by_key ON hook_deliveries (hook, session_key, position)
    WHERE status IN ('pending', 'claimed');
CREATE INDEX hook_deliveries_dead ON hook_deliveries (position) WHERE status = 'dead';

-- Never a delivery for an event that is not in the log (a session that did not end).
CREATE FUNCTION hl_delivery_matches_log() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM events
        WHERE position = NEW.position AND event_id = NEW.event_id AND stream = NEW.session_key
          AND session_id IS NOT DISTINCT FROM NEW.session_id
          AND type = CASE NEW.hook_event WHEN 'session:start' THEN 'session_started'
                                         WHEN 'session:reset' THEN 'session_reset'
                                         WHEN 'session:end' THEN 'session_ended' END)
    THEN
        RAISE EXCEPTION 'a hook delivery must name a session event of the log'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER hook_deliveries_match_the_log BEFORE INSERT ON hook_deliveries
    FOR EACH ROW EXECUTE FUNCTION hl_delivery_matches_log();

REVOKE ALL ON session_deadlines, hook_subscriptions, hook_deliveries FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON session_deadlines TO hermes_ledger_writer;
GRANT SELECT, INSERT, UPDATE ON hook_subscriptions TO hermes_ledger_writer;
GRANT SELECT, INSERT, UPDATE ON hook_deliveries TO hermes_ledger_writer;
