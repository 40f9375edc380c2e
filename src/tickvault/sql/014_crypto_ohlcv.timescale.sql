-- Crypto OHLCV bars at 1m/5m/1h/1d from `crypto_trades`, for the Timescale-licensed (official images,
-- Timescale Cloud) edition of TimescaleDB. Both editions expose the same relations: crypto_ohlcv_1m,
-- crypto_ohlcv_5m, crypto_ohlcv_1h, crypto_ohlcv_1d with the stock relations' columns
-- (bucket, symbol, open, high, low, close, volume, trade_count, vwap), computed the same way
-- (open/close by the nanosecond stamp, UTC buckets: crypto trades around the clock), except:
--   volume is numeric: crypto sizes are numeric (009, the decimal the venue printed), and sum() over
--   numeric is exact, so a day's volume is the sum of the printed sizes to the last digit (a float8
--   sum would drift in the last digits, and the stock relations' ::bigint would truncate fractions);
--   vwap stays float8 like the prices it averages (price * size is computed in float8);
--   crypto has no cancels or corrections, so every trade counts.
--
-- Here they are continuous aggregates with real-time aggregation (materialized_only = false, which
-- is no longer the default since TimescaleDB 2.13), created WITH NO DATA. Timescale tracks late data
-- itself (its invalidation log), so tickvault_aggregate_invalidate is a no-op that keeps writers
-- edition-agnostic. No refresh policy is added here: like the stock aggregates' (007), the policies
-- depend on the crypto_trades retention setting and are applied by tickvault.db.policies at
-- `tickvault db up` and before every retention purge, with start_offset inside the raw window.
-- Manual refreshes (tickvault.db.aggregates) clamp every window to tickvault_aggregate_window(), never
-- below the raw horizon of crypto_trades. NOTE: this file cannot be exercised on the Apache-only
-- Debian package CI runs; it follows Timescale's documented continuous aggregate API.

CREATE FUNCTION tickvault_aggregate_invalidate(p_aggregate text, p_lo timestamptz, p_hi timestamptz) RETURNS boolean
LANGUAGE sql VOLATILE AS $$ SELECT false $$;

-- One continuous aggregate per timeframe, as the stocks' (004): plain top-level statements, the form
-- Timescale documents (a DO block would be shorter but is not a documented way to create them).
CREATE MATERIALIZED VIEW crypto_ohlcv_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)                                   AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM crypto_trades
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX crypto_ohlcv_1m_symbol_bucket_idx ON crypto_ohlcv_1m (symbol, bucket DESC);

CREATE MATERIALIZED VIEW crypto_ohlcv_5m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '5 minutes', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)                                   AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM crypto_trades
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX crypto_ohlcv_5m_symbol_bucket_idx ON crypto_ohlcv_5m (symbol, bucket DESC);

CREATE MATERIALIZED VIEW crypto_ohlcv_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)                                   AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM crypto_trades
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX crypto_ohlcv_1h_symbol_bucket_idx ON crypto_ohlcv_1h (symbol, bucket DESC);

CREATE MATERIALIZED VIEW crypto_ohlcv_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)                                   AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM crypto_trades
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX crypto_ohlcv_1d_symbol_bucket_idx ON crypto_ohlcv_1d (symbol, bucket DESC);
