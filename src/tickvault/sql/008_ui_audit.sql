-- The dashboard's write paths: every use of the kill switch, and the halt it sets.
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
