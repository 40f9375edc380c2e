-- Option events: the exercises, assignments and expiries Alpaca reports as non-trade activities
-- (OPEXC, OPASN, OPEXP) and the share deliveries at the strike that come with an exercise or an
-- assignment (OPTRD). They change positions and cash without any order or fill, so they belong to the
-- trade history next to `fills`: a trader asking "why do I hold 100 AAPL?" finds the answer here.
-- Written by reconciliation, keyed by Alpaca's activity id, so an event fetched again lands once.
-- A plain table (a few rows a day at most), the same on both TimescaleDB editions.
CREATE TABLE option_events (
    activity_id    text        PRIMARY KEY,   -- Alpaca's id, YYYYMMDDhhmmssmmm::uuid
    activity_type  text        NOT NULL CHECK (activity_type IN ('OPEXC', 'OPASN', 'OPEXP', 'OPTRD')),
    symbol         text        NOT NULL,      -- the OCC contract (OPEXC/OPASN/OPEXP) or the underlying (OPTRD)
    qty            numeric     NOT NULL,      -- the change to the position in symbol: contracts, or shares for OPTRD
    price          numeric,                   -- OPTRD: the strike, per share
    net_amount     numeric     NOT NULL,      -- the cash it moved (OPTRD: -qty x price); 0 for a contract's own event
    trade_date     date        NOT NULL,      -- Alpaca's date of the event (New York)
    time           timestamptz NOT NULL,      -- the stamp Alpaca's id starts with, read as UTC (often only the date)
    description    text,
    status         text,
    source         text        NOT NULL DEFAULT 'reconcile',
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    raw            jsonb                      -- the activity as Alpaca sent it
);
CREATE INDEX option_events_symbol_time_idx ON option_events (symbol, time DESC);
CREATE INDEX option_events_time_idx ON option_events (time DESC);

-- A reconciliation run counts apart the position differences option events explain (diff kind
-- 'option_event'): they are no drift, so `diffs` and `repaired` leave them out.
ALTER TABLE reconciliation_runs ADD COLUMN explained integer;
