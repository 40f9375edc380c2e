-- The dashboard's write paths (every use of the kill switch, the halt it sets) and the alert incidents.
--
-- ui_audit: one row per attempt at a dashboard action that changes something (today only the kill
-- switch and lifting it), whether it was allowed or refused (bad token, switch disabled), with the
-- client address and what it did. Never a token: only whether the one given was right.
CREATE TABLE ui_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time        timestamptz NOT NULL DEFAULT now(),
    action      text        NOT NULL,          -- 'kill_switch', 'lift_halt'
    client      text,                          -- remote address of the request
    allowed     boolean     NOT NULL,          -- false: refused (disabled, bad token)
    outcome     text        NOT NULL,          -- what happened, in one line
    detail      jsonb                          -- e.g. orders canceled, errors
);
CREATE INDEX ui_audit_time_idx ON ui_audit (time DESC);

-- trading_halts: while a row has lifted_at NULL, every worker's order gateway refuses to submit
-- new orders (stream/orders.py checks before it records an intent). Account-wide on purpose: the
-- orders of every strategy go to the same broker account.
CREATE TABLE trading_halts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    halted_at   timestamptz NOT NULL DEFAULT now(),
    reason      text        NOT NULL,
    audit_id    bigint      REFERENCES ui_audit (id),
    lifted_at   timestamptz
);
-- The gateway's check is one probe of this partial index (at most a handful of rows in it).
CREATE INDEX trading_halts_active_idx ON trading_halts (halted_at) WHERE lifted_at IS NULL;

-- alert_incidents: what `tickvault.alerts.check_alerts` (the alert-check deployment) has found
-- wrong and announced, so each incident is announced once when it opens and once when it ends,
-- however often the check runs. `key` names the incident ('ingest_silent:worker-1',
-- 'reconcile_drift', 'timescaledb_job:1002'); at most one open incident per key.
CREATE TABLE alert_incidents (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text        NOT NULL,
    kind        text        NOT NULL,          -- ingest_silent, reconcile_drift, timescaledb_job
    title       text        NOT NULL,
    detail      text,
    opened_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE UNIQUE INDEX alert_incidents_open_key ON alert_incidents (key) WHERE resolved_at IS NULL;
