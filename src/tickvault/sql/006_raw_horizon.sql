-- The raw horizon: the oldest time from which `trades` (the raw data every OHLCV aggregate is
-- computed from) is known to be complete. Below it, retention has dropped whole chunks, and a
-- refresh there would recompute buckets from what is left — on both editions it would delete or
-- shrink kept aggregate rows. So no refresh, manual, flow or policy, ever covers time below it.
--
--   horizon = greatest(newest end of any trades chunk retention dropped,   -- recorded with the drop
--                      start of the oldest trades chunk that exists)        -- covers drops by others
--
-- With no trades chunk at all there is no raw data to refresh from: the horizon is 'infinity'.
-- Trades inserted below the horizon later (a backfill into purged history) are stored but never
-- aggregated: the aggregates kept there stay as they were.

CREATE TABLE raw_horizons (
    relation       text        PRIMARY KEY,   -- the raw hypertable ('trades')
    dropped_before timestamptz NOT NULL,      -- every chunk ending at or before it may be gone
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION tickvault_raw_horizon() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN c.oldest IS NULL THEN 'infinity'::timestamptz
                ELSE greatest(c.oldest, (SELECT dropped_before FROM raw_horizons WHERE relation = 'trades'))
           END
      FROM (SELECT min(range_start) AS oldest
              FROM timescaledb_information.chunks
             WHERE hypertable_schema = current_schema() AND hypertable_name = 'trades') c
$$;

-- Round a time up to the next bucket edge of `width` (unchanged when already on one).
CREATE FUNCTION tickvault_bucket_ceil(p_width interval, p_time timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN NOT isfinite(p_time) OR time_bucket(p_width, p_time) = p_time THEN p_time
                ELSE time_bucket(p_width, p_time) + p_width END
$$;

-- The window a refresh of one timeframe may cover: whole buckets in [lo, hi).
--   lo: the requested start (rounded down to a bucket), never below the raw horizon (rounded up);
--   hi: the requested end (rounded up), never past the start of the still-open bucket.
-- No start means "from the horizon": what is pending there is decided by the edition's own
-- bookkeeping (Timescale's invalidation log, or tickvault's watermark and invalidations).
-- lo >= hi means there is nothing this refresh may touch.
CREATE FUNCTION tickvault_ohlcv_window(p_timeframe text, p_start timestamptz DEFAULT NULL,
                                       p_end timestamptz DEFAULT NULL,
                                       OUT lo timestamptz, OUT hi timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_width interval := (SELECT bucket_width FROM ohlcv_state WHERE timeframe = p_timeframe);
BEGIN
    IF v_width IS NULL THEN
        RAISE EXCEPTION 'unknown OHLCV timeframe %', p_timeframe USING ERRCODE = 'invalid_parameter_value';
    END IF;
    hi := time_bucket(v_width, now());
    IF p_end IS NOT NULL THEN
        hi := least(hi, tickvault_bucket_ceil(v_width, p_end));
    END IF;
    lo := tickvault_bucket_ceil(v_width, tickvault_raw_horizon());
    IF p_start IS NOT NULL THEN
        lo := greatest(lo, time_bucket(v_width, p_start));
    END IF;
END $$;
