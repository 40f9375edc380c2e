-- Option trades and quotes (Alpaca's /v1beta1/{indicative,opra} stream), with the OCC symbol's parts as
-- columns a trader filters on: underlying, expiration, option_type (C/P), strike (numeric: the exact
-- strike × 1000 of the symbol, /1000).
--
-- Option trades carry no trade id. Their key is (symbol, time, exchange, price, size, condition): a
-- re-delivered or backfilled print is a no-op; two genuinely identical prints in the same nanosecond
-- would be stored once (the feed gives nothing to tell them apart). NULLS NOT DISTINCT (PostgreSQL 15+)
-- so that a print without exchange or condition is still deduplicated.
--
-- Chunk intervals: option_trades 1 day (OPRA prints: millions a day market-wide, far fewer for a
-- chosen chain), option_quotes 6 hours (quotes outnumber trades by orders of magnitude).
CREATE TABLE option_trades (
    time         timestamptz NOT NULL,
    symbol       text        NOT NULL,      -- the OCC symbol, e.g. AAPL250117C00200000
    underlying   text        NOT NULL,
    expiration   date        NOT NULL,
    option_type  text        NOT NULL CHECK (option_type IN ('C', 'P')),
    strike       numeric     NOT NULL,
    price        double precision NOT NULL,
    size         bigint      NOT NULL,      -- contracts
    exchange     text,
    condition    text,
    time_ns      bigint      NOT NULL
);
SELECT create_hypertable('option_trades', by_range('time', INTERVAL '1 day'), create_default_indexes => false);
CREATE UNIQUE INDEX option_trades_key ON option_trades (symbol, time DESC, exchange, price, size, condition)
    NULLS NOT DISTINCT;
-- "every trade of AAPL's January expiry": by underlying and expiration, newest first.
CREATE INDEX option_trades_underlying_idx ON option_trades (underlying, expiration, time DESC);

CREATE TABLE option_quotes (
    time          timestamptz NOT NULL,
    symbol        text        NOT NULL,
    underlying    text        NOT NULL,
    expiration    date        NOT NULL,
    option_type   text        NOT NULL CHECK (option_type IN ('C', 'P')),
    strike        numeric     NOT NULL,
    bid_exchange  text,
    bid_price     double precision,
    bid_size      bigint,
    ask_exchange  text,
    ask_price     double precision,
    ask_size      bigint,
    condition     text,
    time_ns       bigint      NOT NULL
);
SELECT create_hypertable('option_quotes', by_range('time', INTERVAL '6 hours'), create_default_indexes => false);
CREATE INDEX option_quotes_symbol_time_idx ON option_quotes (symbol, time DESC);
CREATE INDEX option_quotes_underlying_idx ON option_quotes (underlying, expiration, time DESC);
