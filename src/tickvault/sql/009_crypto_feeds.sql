-- Crypto market data (Alpaca's /v1beta3/crypto/{loc} stream and REST history) and the feed label
-- of ingest_stats, for a worker that records several feeds (TICKVAULT_FEEDS).
--
-- Sizes: crypto sizes are fractional. Trade sizes and bar volumes are numeric, written as the
-- shortest decimal that reads back as the wire's float (the decimal the venue printed, for any size
-- of at most 15 significant digits), so sum(size) over a day is exact; a float8 sum would drift in
-- the last digits. Quote and orderbook sizes are float8: they are a book's state at one instant,
-- never summed, and float8 holds the wire's value exactly.
--
-- Chunk intervals (same rule as 001: the hot chunk and its indexes stay well inside shared_buffers):
--   crypto_trades      1 day    a handful of pairs on Alpaca's venues: ~0.1-1 M trades/day.
--   crypto_quotes      6 hours  quotes run ~10x trades, as for stocks.
--   crypto_orderbooks  6 hours  one row per book change (arrays of levels): the widest rows here.
--   crypto_bars        7 days   one row per pair-minute: 24 × 60 × pairs per day.

CREATE TABLE crypto_trades (
    time        timestamptz NOT NULL,
    symbol      text        NOT NULL,            -- the pair, e.g. 'BTC/USD'
    trade_id    bigint      NOT NULL,
    price       double precision NOT NULL,
    size        numeric     NOT NULL CHECK (size >= 0),
    taker_side  text        CHECK (taker_side IN ('B', 'S')),  -- 'tks': B buyer took, S seller took
    time_ns     bigint      NOT NULL
);
SELECT create_hypertable('crypto_trades', by_range('time', INTERVAL '1 day'), create_default_indexes => false);
-- (symbol, time DESC) lookups and the key that makes a re-delivered or backfilled trade a no-op.
-- Crypto trades carry no exchange: the venue is the location, one per stream.
CREATE UNIQUE INDEX crypto_trades_symbol_time_key ON crypto_trades (symbol, time DESC, trade_id);

CREATE TABLE crypto_quotes (
    time        timestamptz NOT NULL,
    symbol      text        NOT NULL,
    bid_price   double precision,
    bid_size    double precision,
    ask_price   double precision,
    ask_size    double precision,
    time_ns     bigint      NOT NULL
);
SELECT create_hypertable('crypto_quotes', by_range('time', INTERVAL '6 hours'), create_default_indexes => false);
CREATE INDEX crypto_quotes_symbol_time_idx ON crypto_quotes (symbol, time DESC);

CREATE TABLE crypto_bars (
    time        timestamptz NOT NULL,               -- bar start
    symbol      text        NOT NULL,
    timeframe   text        NOT NULL DEFAULT '1Min' CHECK (timeframe IN ('1Min', '1Day')),
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      numeric     NOT NULL,
    trade_count bigint,
    vwap        double precision,
    updated     boolean     NOT NULL DEFAULT false, -- replaced by a 'u' updated bar
    source      text        NOT NULL DEFAULT 'stream' CHECK (source IN ('stream', 'backfill'))
);
SELECT create_hypertable('crypto_bars', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX crypto_bars_symbol_time_key ON crypto_bars (symbol, time DESC, timeframe);

-- Order books: a row per 'o' message. reset = true is the whole book (the first message after a
-- subscription); otherwise the changed levels, a size of 0 removing its level.
CREATE TABLE crypto_orderbooks (
    time        timestamptz NOT NULL,
    symbol      text        NOT NULL,
    reset       boolean     NOT NULL,
    bid_prices  double precision[] NOT NULL,
    bid_sizes   double precision[] NOT NULL,
    ask_prices  double precision[] NOT NULL,
    ask_sizes   double precision[] NOT NULL,
    time_ns     bigint      NOT NULL
);
SELECT create_hypertable('crypto_orderbooks', by_range('time', INTERVAL '6 hours'), create_default_indexes => false);
CREATE INDEX crypto_orderbooks_symbol_time_idx ON crypto_orderbooks (symbol, time DESC);

-- Which feed an ingest_stats row measures ('stocks:iex', 'crypto:us', 'news'): a worker writes one
-- row per feed per interval. Rows written before this migration were all the stocks feed.
ALTER TABLE ingest_stats ADD COLUMN feed text NOT NULL DEFAULT 'stocks';
