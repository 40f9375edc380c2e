-- Families of OHLCV relations and their raw horizons, for both editions (the edition-specific
-- relations of the crypto family follow in 014). Both families keep the invariant of 006: no refresh
-- ever covers time below the family's raw horizon (tickvault_raw_horizon(<raw relation>)), so
-- retention of a raw hypertable never wipes the aggregate rows kept beyond it.

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
