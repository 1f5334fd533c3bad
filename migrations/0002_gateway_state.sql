-- Gateway state kept next to the log: the scheduler's deadlines and the hook
-- delivery queue. Not projections: they record what was done (claims, attempts,
-- deliveries), which the log alone cannot reproduce (see docs/scheduler.md and
-- docs/hooks.md).
--
-- Ledgers created before this migration may already hold these tables, created
-- with exactly these definitions by the scheduler's and the dispatcher's
-- constructors of that version; IF NOT EXISTS keeps them and their rows.

-- The scheduler: its checkpoint in the log and the policy configuration it last
-- derived deadlines from.
CREATE TABLE IF NOT EXISTS scheduler_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    position    INTEGER NOT NULL,
    config_hash TEXT NOT NULL
) STRICT;

-- Each unclosed session's next deadline, and the claim of the scheduler closing it.
CREATE TABLE IF NOT EXISTS session_deadlines (
    session_key   TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    deadline      TEXT NOT NULL,
    reason        TEXT NOT NULL CHECK (reason IN ('idle', 'daily', 'cron', 'finish')),
    claimed_by    TEXT,
    claimed_until TEXT
) STRICT;

CREATE INDEX IF NOT EXISTS session_deadlines_due ON session_deadlines (deadline);

-- Hook delivery: each hook's checkpoint in the log ...
CREATE TABLE IF NOT EXISTS hook_checkpoints (
    hook        TEXT PRIMARY KEY CHECK (length(hook) > 0),
    position    INTEGER NOT NULL CHECK (position >= 0),
    updated_at  TEXT NOT NULL
) STRICT;

-- ... and one row per (hook, session event): the outbox.
CREATE TABLE IF NOT EXISTS hook_deliveries (
    delivery_id      TEXT PRIMARY KEY,
    hook             TEXT NOT NULL,
    position         INTEGER NOT NULL,
    event_id         TEXT NOT NULL,
    hook_event       TEXT NOT NULL
                     CHECK (hook_event IN ('session:start', 'session:reset', 'session:end')),
    session_key      TEXT NOT NULL,
    session_id       TEXT,
    context          TEXT NOT NULL CHECK (json_valid(context)),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'claimed', 'done', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claimed_by       TEXT,
    claimed_until    TEXT,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    delivered_at     TEXT,
    UNIQUE (hook, position),
    CHECK ((status = 'claimed') = (claimed_by IS NOT NULL AND claimed_until IS NOT NULL)),
    CHECK ((status = 'done') = (delivered_at IS NOT NULL))
) STRICT;

CREATE INDEX IF NOT EXISTS hook_deliveries_queue ON hook_deliveries (hook, position)
    WHERE status IN ('pending', 'claimed');

CREATE INDEX IF NOT EXISTS hook_deliveries_dead ON hook_deliveries (position)
    WHERE status = 'dead';

-- Never a delivery for an event that is not in the log (a session that did not end).
CREATE TRIGGER IF NOT EXISTS hook_deliveries_match_the_log
BEFORE INSERT ON hook_deliveries
WHEN NOT EXISTS (
    SELECT 1 FROM events
    WHERE position = NEW.position AND event_id = NEW.event_id AND stream = NEW.session_key
      AND session_id IS NEW.session_id
      AND type = CASE NEW.hook_event WHEN 'session:start' THEN 'session_started'
                                     WHEN 'session:reset' THEN 'session_reset'
                                     WHEN 'session:end' THEN 'session_ended' END)
BEGIN
    SELECT RAISE(ABORT, 'a hook delivery must name a session event of the log');
END;
