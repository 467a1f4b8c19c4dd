-- Escalation state: one row per condition (its current or last episode), and every message sent.
-- Written by the watchdog and the task-failure callback (include/pgmaint/escalation.py); read by
-- responders. `{schema}` is replaced by the quoted state_schema. See docs/runbook.md.
--
--   SELECT key, severity, first_seen, streak, paged_at, message
--   FROM pgmaint.conditions WHERE resolved_at IS NULL ORDER BY severity DESC, first_seen;

CREATE TABLE IF NOT EXISTS {schema}.conditions (
    key           text PRIMARY KEY,          -- stable: runway:public.events, canary, task:partition_maintenance.table.premake:public.events
    severity      text NOT NULL CHECK (severity IN ('warning', 'critical')),
    message       text NOT NULL,             -- last seen: what, where, PIDs and queries
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen    timestamptz NOT NULL,      -- start of the current (or last) episode
    last_seen     timestamptz NOT NULL,
    streak        integer NOT NULL DEFAULT 1, -- consecutive observations (failures) in this episode
    quiet         boolean NOT NULL DEFAULT false, -- nobody is told until it pages
    notified_at   timestamptz,               -- last message to the `notify` targets in this episode
    paged_at      timestamptz,               -- page opened (NULL: not paged in this episode)
    last_page_at  timestamptz,               -- last page trigger (opening or re-notification)
    resolved_at   timestamptz,               -- NULL while the condition is active
    episodes      integer NOT NULL DEFAULT 1 -- how many times it has opened
);
CREATE INDEX IF NOT EXISTS conditions_active_idx ON {schema}.conditions (first_seen) WHERE resolved_at IS NULL;

CREATE TABLE IF NOT EXISTS {schema}.alerts (
    alert_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sent_at    timestamptz NOT NULL,
    key        text NOT NULL,
    channel    text NOT NULL CHECK (channel IN ('notify', 'page')),
    action     text NOT NULL CHECK (action IN ('open', 'renotify', 'paged', 'trigger', 'retrigger', 'resolve')),
    target     text NOT NULL,                -- log | slack:<conn id> | pagerduty:<conn id> | email:<addresses>
    severity   text NOT NULL,
    message    text NOT NULL,
    delivered  boolean NOT NULL,
    error      text
);
CREATE INDEX IF NOT EXISTS alerts_key_sent_idx ON {schema}.alerts (key, sent_at DESC);
