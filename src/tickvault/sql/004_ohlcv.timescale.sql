-- OHLCV bars at 1m/5m/1h/1d from `trades`, for the Timescale-licensed (official images, Timescale Cloud) edition of TimescaleDB.
-- Both editions expose the same relations: ohlcv_1m, ohlcv_5m, ohlcv_1h, ohlcv_1d with columns
-- (bucket, symbol, open, high, low, close, volume, trade_count, vwap). Canceled trades are excluded.
-- open/close are ordered by the feed's nanosecond stamp (time_ns), which ties far less often than
-- the microsecond `time`. Daily buckets are UTC days (a US session, 13:30-21:00 UTC, fits in one).
--
-- Here they are continuous aggregates with real-time aggregation (materialized_only = false) and
-- refresh policies; Timescale tracks late data itself. tickvault_ohlcv_invalidate exists as a
-- no-op so writers stay edition-agnostic. NOTE: this file cannot be exercised on the Apache-only
-- Debian package CI runs; it follows Timescale's documented cagg API.

-- How far each timeframe is materialized, and when it was last refreshed (both editions keep it,
-- so flows can ask "since when?" without knowing the edition).
CREATE TABLE ohlcv_state (
    timeframe    text        PRIMARY KEY,
    bucket_width interval    NOT NULL,
    watermark    timestamptz NOT NULL DEFAULT '-infinity',  -- every bucket before it is materialized
    refreshed_at timestamptz
);
INSERT INTO ohlcv_state (timeframe, bucket_width) VALUES
    ('1m', '1 minute'), ('5m', '5 minutes'), ('1h', '1 hour'), ('1d', '1 day');

CREATE FUNCTION tickvault_ohlcv_watermark(p_timeframe text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT watermark FROM ohlcv_state WHERE timeframe = p_timeframe), '-infinity'::timestamptz)
$$;

CREATE FUNCTION tickvault_ohlcv_invalidate(p_lo timestamptz, p_hi timestamptz) RETURNS boolean
LANGUAGE sql VOLATILE AS $$ SELECT false $$;

CREATE MATERIALIZED VIEW ohlcv_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)::bigint                           AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM trades
 WHERE NOT canceled
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX ohlcv_1m_symbol_bucket_idx ON ohlcv_1m (symbol, bucket DESC);
SELECT add_continuous_aggregate_policy('ohlcv_1m',
    start_offset => INTERVAL '2 hours', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute');

CREATE MATERIALIZED VIEW ohlcv_5m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '5 minutes', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)::bigint                           AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM trades
 WHERE NOT canceled
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX ohlcv_5m_symbol_bucket_idx ON ohlcv_5m (symbol, bucket DESC);
SELECT add_continuous_aggregate_policy('ohlcv_5m',
    start_offset => INTERVAL '6 hours', end_offset => INTERVAL '5 minutes', schedule_interval => INTERVAL '5 minutes');

CREATE MATERIALIZED VIEW ohlcv_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)::bigint                           AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM trades
 WHERE NOT canceled
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX ohlcv_1h_symbol_bucket_idx ON ohlcv_1h (symbol, bucket DESC);
SELECT add_continuous_aggregate_policy('ohlcv_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes');

CREATE MATERIALIZED VIEW ohlcv_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', time) AS bucket,
       symbol,
       first(price, time_ns)                       AS open,
       max(price)                                  AS high,
       min(price)                                  AS low,
       last(price, time_ns)                        AS close,
       sum(size)::bigint                           AS volume,
       count(*)::bigint                            AS trade_count,
       sum(price * size) / nullif(sum(size), 0)    AS vwap
  FROM trades
 WHERE NOT canceled
 GROUP BY 1, 2
WITH NO DATA;
CREATE INDEX ohlcv_1d_symbol_bucket_idx ON ohlcv_1d (symbol, bucket DESC);
SELECT add_continuous_aggregate_policy('ohlcv_1d',
    start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour');
