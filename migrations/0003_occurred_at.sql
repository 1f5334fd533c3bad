-- Business time as a column: when the event happened at the gateway (its data's
-- occurred_at, as UTC text in the format of recorded_at), else when it was recorded.
-- Public SQL contract (see docs/sql.md); the time filters (--since, --until, --at)
-- use it.
--
-- VIRTUAL: computed from data and recorded_at when read, so no row is rewritten and
-- the hash chain (which covers data) is unaffected. The expression is
-- ledger.sql.business_time('data', 'recorded_at'), frozen here as migrations are
-- (tests/test_business_time.py checks that they agree), behind json_valid(data): a
-- row whose data is not JSON is then refused by its CHECK constraint, as before,
-- not by a JSON error from this column.

ALTER TABLE events ADD COLUMN occurred_at TEXT GENERATED ALWAYS AS (
    CASE WHEN json_valid(data) THEN
        coalesce(CASE
            WHEN (data ->> '$.occurred_at') IS NULL THEN NULL
            WHEN substr((data ->> '$.occurred_at'), 20, 1) = '.' THEN strftime('%Y-%m-%dT%H:%M:%S', substr((data ->> '$.occurred_at'), 1, 19) || ltrim(substr((data ->> '$.occurred_at'), 21), '0123456789')) || '.' || substr(substr((data ->> '$.occurred_at'), 21, length((data ->> '$.occurred_at')) - 20 - length(ltrim(substr((data ->> '$.occurred_at'), 21), '0123456789'))) || '000000', 1, 6) || 'Z'
            ELSE strftime('%Y-%m-%dT%H:%M:%S', (data ->> '$.occurred_at')) || '.000000Z'
        END, recorded_at)
    ELSE recorded_at END
) VIRTUAL;

-- Time filters seek on business time.
CREATE INDEX events_by_occurred_at ON events (occurred_at);
