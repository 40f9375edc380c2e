-- Trade history: what we asked the broker for and what it did. Quantities and money are numeric
-- (exact decimals, as Alpaca sends them as decimal strings); never float.

CREATE TABLE orders (
    client_order_id   text        PRIMARY KEY,        -- ours (deterministic) or the broker's; known before the ack
    id                uuid        UNIQUE,             -- the broker's order id, NULL until acknowledged
    symbol            text        NOT NULL,
    side              text        NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type        text        NOT NULL,
    time_in_force     text        NOT NULL,
    order_class       text,
    qty               numeric,
    notional          numeric,
    limit_price       numeric,
    stop_price        numeric,
    filled_qty        numeric     NOT NULL DEFAULT 0,
    filled_avg_price  numeric,
    status            text        NOT NULL,           -- pending_submit, new, accepted, partially_filled, filled, canceled, ...
    extended_hours    boolean     NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    updated_at        timestamptz,
    filled_at         timestamptz,
    canceled_at       timestamptz,
    submit_latency_ms double precision,               -- submit → broker ack, measured by the gateway
    source            text        NOT NULL DEFAULT 'worker', -- worker, reconcile, manual
    strategy          text,
    raw               jsonb,                          -- the broker's last order object
    CHECK (qty IS NOT NULL OR notional IS NOT NULL)
);
-- A desk asks "what is open?" constantly: a partial index holds only the open orders, so it stays
-- tiny however long the history grows.
CREATE INDEX orders_open_idx ON orders (symbol, submitted_at DESC)
    WHERE status IN ('pending_submit', 'new', 'accepted', 'pending_new', 'partially_filled',
                     'pending_cancel', 'pending_replace', 'accepted_for_bidding', 'held');
CREATE INDEX orders_status_idx ON orders (status);
CREATE INDEX orders_symbol_submitted_idx ON orders (symbol, submitted_at DESC);

CREATE TABLE fills (
    -- An order's cumulative filled quantity only grows, so (order_id, cum_qty) names one fill event
    -- whichever way it reached us (trade-updates stream, activities API, reconciliation).
    order_id          uuid        NOT NULL,
    cum_qty           numeric     NOT NULL,
    fill_id           text,                            -- the source's own id (activity id / execution id)
    client_order_id   text,
    symbol            text        NOT NULL,
    side              text        NOT NULL CHECK (side IN ('buy', 'sell')),
    qty               numeric     NOT NULL CHECK (qty > 0),
    price             numeric     NOT NULL,
    leaves_qty        numeric,
    fill_type         text        NOT NULL DEFAULT 'fill' CHECK (fill_type IN ('fill', 'partial_fill')),
    transaction_time  timestamptz NOT NULL,
    source            text        NOT NULL DEFAULT 'stream', -- stream, activities, reconcile
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, cum_qty)
);
CREATE INDEX fills_symbol_time_idx ON fills (symbol, transaction_time DESC);
CREATE INDEX fills_time_idx ON fills (transaction_time DESC);

CREATE TABLE position_snapshots (
    time             timestamptz NOT NULL,
    symbol           text        NOT NULL,
    qty              numeric     NOT NULL,
    side             text,
    avg_entry_price  numeric,
    cost_basis       numeric,
    market_value     numeric,
    unrealized_pl    numeric,
    source           text        NOT NULL DEFAULT 'broker'
);
SELECT create_hypertable('position_snapshots', by_range('time', INTERVAL '30 days'), create_default_indexes => false);
CREATE UNIQUE INDEX position_snapshots_symbol_time_key ON position_snapshots (symbol, time DESC, source);

CREATE TABLE account_snapshots (
    time          timestamptz NOT NULL,
    account_id    text        NOT NULL,
    status        text,
    currency      text,
    cash          numeric     NOT NULL,
    equity        numeric,
    buying_power  numeric,
    raw           jsonb
);
SELECT create_hypertable('account_snapshots', by_range('time', INTERVAL '30 days'), create_default_indexes => false);
CREATE INDEX account_snapshots_time_idx ON account_snapshots (account_id, time DESC);
