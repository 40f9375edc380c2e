-- Market data from the Alpaca feed: trades, quotes, bars, trade corrections/cancels, halts,
-- and the messages we could not decode. All times are UTC timestamptz (microseconds); the
-- feed's nanosecond stamp is kept beside it in time_ns so nothing is lost.
--
-- Chunk intervals (rule: a chunk plus its indexes should fit comfortably in shared_buffers
-- while it is being written, and drop_chunks should free whole days):
--   trades  1 day    ~0.5-5 M rows/day for tens to hundreds of IEX symbols ≈ 50-500 MB/day.
--   quotes  6 hours  quotes run ~10x trades; 6 h keeps the hot chunk near the trades chunk's size.
--   bars    7 days   one row per symbol-minute: 500 symbols × 960 extended-hours minutes ≈ 0.5 M rows/day.
--   others  7 days   small, append-only, purged by age.

CREATE TABLE trades (
    time        timestamptz NOT NULL,
    symbol      text        NOT NULL,
    trade_id    bigint      NOT NULL,
    exchange    text        NOT NULL,
    price       double precision NOT NULL,
    size        bigint      NOT NULL,
    conditions  text[],
    tape        text,
    time_ns     bigint      NOT NULL,            -- exact source stamp, ns since epoch
    corrected   boolean     NOT NULL DEFAULT false, -- a 'c' correction replaced price/size/conditions
    canceled    boolean     NOT NULL DEFAULT false  -- an 'x' cancel/error voided this trade
);
SELECT create_hypertable('trades', by_range('time', INTERVAL '1 day'), create_default_indexes => false);
-- One index serves both needs: (symbol, time DESC) lookups, and the idempotency key that makes a
-- re-delivered trade (reconnect, backfill overlap) a no-op. Hypertable unique keys must hold the time.
CREATE UNIQUE INDEX trades_symbol_time_key ON trades (symbol, time DESC, trade_id, exchange);

CREATE TABLE quotes (
    time          timestamptz NOT NULL,
    symbol        text        NOT NULL,
    bid_exchange  text,
    bid_price     double precision,
    bid_size      bigint,
    ask_exchange  text,
    ask_price     double precision,
    ask_size      bigint,
    conditions    text[],
    tape          text,
    time_ns       bigint      NOT NULL
);
SELECT create_hypertable('quotes', by_range('time', INTERVAL '6 hours'), create_default_indexes => false);
-- Quotes carry no id and are never backfilled; a plain index keeps their COPY cheap.
CREATE INDEX quotes_symbol_time_idx ON quotes (symbol, time DESC);

CREATE TABLE bars (
    time        timestamptz NOT NULL,               -- bar start
    symbol      text        NOT NULL,
    timeframe   text        NOT NULL DEFAULT '1Min' CHECK (timeframe IN ('1Min', '1Day')),
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint,
    vwap        double precision,
    updated     boolean     NOT NULL DEFAULT false, -- replaced by a 'u' updated bar
    source      text        NOT NULL DEFAULT 'stream' CHECK (source IN ('stream', 'backfill'))
);
SELECT create_hypertable('bars', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
-- 'u' updated bars and backfilled bars upsert on this key.
CREATE UNIQUE INDEX bars_symbol_time_key ON bars (symbol, time DESC, timeframe);

-- Every 'c' correction and 'x' cancel as received: the original values stay here after the
-- trades row is updated in place.
CREATE TABLE trade_corrections (
    time            timestamptz NOT NULL,
    symbol          text        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('correction', 'cancel', 'error')),
    exchange        text,
    orig_trade_id   bigint      NOT NULL,
    orig_price      double precision,
    orig_size       bigint,
    orig_conditions text[],
    corr_trade_id   bigint,
    corr_price      double precision,
    corr_size       bigint,
    corr_conditions text[],
    tape            text,
    time_ns         bigint      NOT NULL,
    applied         boolean     NOT NULL DEFAULT false -- the matching trades row was found and updated
);
SELECT create_hypertable('trade_corrections', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
CREATE INDEX trade_corrections_symbol_time_idx ON trade_corrections (symbol, time DESC);

-- Trading status messages ('s': halts, resumptions) and LULD bands ('l').
CREATE TABLE trading_statuses (
    time           timestamptz NOT NULL,
    symbol         text        NOT NULL,
    status_code    text,
    status_message text,
    reason_code    text,
    reason_message text,
    tape           text,
    time_ns        bigint      NOT NULL
);
SELECT create_hypertable('trading_statuses', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
CREATE INDEX trading_statuses_symbol_time_idx ON trading_statuses (symbol, time DESC);

CREATE TABLE lulds (
    time        timestamptz NOT NULL,
    symbol      text        NOT NULL,
    limit_up    double precision,
    limit_down  double precision,
    indicator   text,
    tape        text,
    time_ns     bigint      NOT NULL
);
SELECT create_hypertable('lulds', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
CREATE INDEX lulds_symbol_time_idx ON lulds (symbol, time DESC);

-- Input we could not use: kept byte for byte so a person can see what arrived.
CREATE TABLE bad_messages (
    time     timestamptz NOT NULL DEFAULT now(),
    source   text        NOT NULL,   -- 'stream', 'rest', 'trade_updates', ...
    reason   text        NOT NULL,
    payload  bytea       NOT NULL,
    worker   text
);
SELECT create_hypertable('bad_messages', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
CREATE INDEX bad_messages_time_idx ON bad_messages (time DESC);
