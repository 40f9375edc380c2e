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

-- Which raw hypertable each family of OHLCV relations is computed from. A family <name> has the
-- relations <name>_1m ... <name>_1d, the state table <name>_state (edition-agnostic watermark and
-- last refresh) and, on the apache edition, <name>_invalidations and <name>_{tf}_rollup; retention's
-- drops of its raw relation move that family's raw horizon (raw_horizons.relation).
CREATE TABLE ohlcv_aggregates (
    name         text PRIMARY KEY,
    raw_relation text NOT NULL UNIQUE
);
INSERT INTO ohlcv_aggregates (name, raw_relation) VALUES ('ohlcv', 'trades'), ('crypto_ohlcv', 'crypto_trades');

-- The raw horizon (006) of any raw hypertable: the oldest time from which it is complete.
CREATE FUNCTION tickvault_raw_horizon(p_relation text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN c.oldest IS NULL THEN 'infinity'::timestamptz
                ELSE greatest(c.oldest, (SELECT h.dropped_before FROM raw_horizons h WHERE h.relation = p_relation))
           END
      FROM (SELECT min(range_start) AS oldest
              FROM timescaledb_information.chunks
             WHERE hypertable_schema = current_schema() AND hypertable_name = p_relation) c
$$;
CREATE OR REPLACE FUNCTION tickvault_raw_horizon() RETURNS timestamptz
LANGUAGE sql STABLE AS $$ SELECT tickvault_raw_horizon('trades') $$;

CREATE TABLE crypto_ohlcv_state (LIKE ohlcv_state INCLUDING ALL);
INSERT INTO crypto_ohlcv_state (timeframe, bucket_width) SELECT timeframe, bucket_width FROM ohlcv_state;

CREATE FUNCTION tickvault_crypto_ohlcv_watermark(p_timeframe text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT watermark FROM crypto_ohlcv_state WHERE timeframe = p_timeframe), '-infinity'::timestamptz)
$$;

-- 006's refresh window for any family: whole buckets in [lo, hi), lo never below the family's raw
-- horizon (rounded up to a bucket), hi never past the start of the still-open bucket.
CREATE FUNCTION tickvault_aggregate_window(p_aggregate text, p_timeframe text, p_start timestamptz DEFAULT NULL,
                                           p_end timestamptz DEFAULT NULL,
                                           OUT lo timestamptz, OUT hi timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_raw   text := (SELECT a.raw_relation FROM ohlcv_aggregates a WHERE a.name = p_aggregate);
    v_width interval;
BEGIN
    IF v_raw IS NULL THEN
        RAISE EXCEPTION 'unknown OHLCV aggregate %', p_aggregate USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('SELECT bucket_width FROM %I WHERE timeframe = $1', p_aggregate || '_state')
        INTO v_width USING p_timeframe;
    IF v_width IS NULL THEN
        RAISE EXCEPTION 'unknown OHLCV timeframe %', p_timeframe USING ERRCODE = 'invalid_parameter_value';
    END IF;
    hi := time_bucket(v_width, now());
    IF p_end IS NOT NULL THEN
        hi := least(hi, tickvault_bucket_ceil(v_width, p_end));
    END IF;
    lo := tickvault_bucket_ceil(v_width, tickvault_raw_horizon(v_raw));
    IF p_start IS NOT NULL THEN
        lo := greatest(lo, time_bucket(v_width, p_start));
    END IF;
END $$;
-- The stocks' window (006) is now the same function.
CREATE OR REPLACE FUNCTION tickvault_ohlcv_window(p_timeframe text, p_start timestamptz DEFAULT NULL,
                                                  p_end timestamptz DEFAULT NULL,
                                                  OUT lo timestamptz, OUT hi timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT w.lo, w.hi FROM tickvault_aggregate_window('ohlcv', p_timeframe, p_start, p_end) w
$$;

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
