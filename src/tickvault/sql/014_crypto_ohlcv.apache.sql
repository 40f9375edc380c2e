-- Crypto OHLCV bars at 1m/5m/1h/1d from `crypto_trades`, for the Apache-2 (Debian's package; no
-- continuous aggregates) edition of TimescaleDB. Both editions expose the same relations:
-- crypto_ohlcv_1m, crypto_ohlcv_5m, crypto_ohlcv_1h, crypto_ohlcv_1d with the stock relations' columns
-- (bucket, symbol, open, high, low, close, volume, trade_count, vwap), computed the same way
-- (open/close by the nanosecond stamp, UTC buckets: crypto trades around the clock), except:
--   volume is numeric: crypto sizes are numeric (009, the decimal the venue printed), and sum() over
--   numeric is exact, so a day's volume is the sum of the printed sizes to the last digit (a float8
--   sum would drift in the last digits, and the stock relations' ::bigint would truncate fractions);
--   vwap stays float8 like the prices it averages (price * size is computed in float8);
--   crypto has no cancels or corrections, so every trade counts.
--
-- The invariant of 006 holds per family: no refresh ever covers time below the family's raw horizon
-- (tickvault_raw_horizon('crypto_trades')), so retention of raw crypto_trades never wipes kept rows.
--
-- How: the stock rollups' refresh routine (004, 007) becomes one routine for every family of
-- ohlcv_aggregates (tickvault_refresh_aggregate), driven by the family's state, invalidations and
-- source function; the stock functions of 004/007 now call it, so both families refresh by the same
-- code. A family's source function is its aggregate query over a time range, the one place it is
-- written: the rollup refresh inserts from it and the view's live part reads it (an SQL function,
-- inlined by the planner, so chunk exclusion still applies).

-- Late-data ranges noted by crypto writers (tickvault_aggregate_invalidate); consumed by the refresh.
CREATE TABLE crypto_ohlcv_invalidations (LIKE ohlcv_invalidations INCLUDING ALL);

-- Each family's aggregate over [p_lo, p_hi) in buckets of p_width.
CREATE FUNCTION tickvault_ohlcv_source(p_width interval, p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (bucket timestamptz, symbol text, open double precision, high double precision,
               low double precision, close double precision, volume bigint, trade_count bigint,
               vwap double precision)
LANGUAGE sql STABLE AS $$
    SELECT time_bucket(p_width, t.time), t.symbol, first(t.price, t.time_ns), max(t.price), min(t.price),
           last(t.price, t.time_ns), sum(t.size)::bigint, count(*)::bigint,
           sum(t.price * t.size) / nullif(sum(t.size), 0)
      FROM trades t
     WHERE t.time >= p_lo AND t.time < p_hi AND NOT t.canceled
     GROUP BY 1, 2
$$;

CREATE FUNCTION tickvault_crypto_ohlcv_source(p_width interval, p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (bucket timestamptz, symbol text, open double precision, high double precision,
               low double precision, close double precision, volume numeric, trade_count bigint,
               vwap double precision)
LANGUAGE sql STABLE AS $$
    SELECT time_bucket(p_width, t.time), t.symbol, first(t.price, t.time_ns), max(t.price), min(t.price),
           last(t.price, t.time_ns), sum(t.size), count(*)::bigint,
           sum(t.price * t.size) / nullif(sum(t.size), 0)
      FROM crypto_trades t
     WHERE t.time >= p_lo AND t.time < p_hi
     GROUP BY 1, 2
$$;

-- One rollup hypertable and one view per timeframe (chunk intervals as the stocks' rollups, 004):
-- the view is the rollup below the watermark plus the source computed live from there on.
DO $$
DECLARE
    tf record;
BEGIN
    FOR tf IN SELECT * FROM (VALUES ('1m', '1 minute', '7 days'), ('5m', '5 minutes', '30 days'),
                                    ('1h', '1 hour', '180 days'), ('1d', '1 day', '3650 days'))
                            AS v(name, width, chunk) LOOP
        EXECUTE format($f$
            CREATE TABLE %1$I (
                bucket      timestamptz NOT NULL,
                symbol      text        NOT NULL,
                open        double precision NOT NULL,
                high        double precision NOT NULL,
                low         double precision NOT NULL,
                close       double precision NOT NULL,
                volume      numeric     NOT NULL,
                trade_count bigint      NOT NULL,
                vwap        double precision
            );
            SELECT create_hypertable(%1$L, by_range('bucket', %2$L::interval), create_default_indexes => false);
            CREATE UNIQUE INDEX %3$I ON %1$I (symbol, bucket DESC);
            CREATE VIEW %4$I AS
            SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap
              FROM %1$I
             WHERE bucket < tickvault_crypto_ohlcv_watermark(%5$L)
            UNION ALL
            SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap
              FROM tickvault_crypto_ohlcv_source(%6$L::interval, tickvault_crypto_ohlcv_watermark(%5$L), 'infinity')
            $f$, 'crypto_ohlcv_' || tf.name || '_rollup', tf.chunk, 'crypto_ohlcv_' || tf.name || '_rollup_key',
                 'crypto_ohlcv_' || tf.name, tf.name, tf.width);
    END LOOP;
END $$;

-- Writers call this inside the transaction that inserts or changes raw trades in [lo, hi] (004's
-- tickvault_ohlcv_invalidate, for any family). The shared advisory lock orders it against a running
-- refresh of the family (which holds it exclusively): either the refresh sees this transaction's
-- rows, or this call sees the refresh's new watermark.
CREATE FUNCTION tickvault_aggregate_invalidate(p_aggregate text, p_lo timestamptz, p_hi timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_rows bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('tickvault_' || p_aggregate || '_refresh'));
    EXECUTE format('INSERT INTO %I (lo, hi) SELECT $1, $2 WHERE $1 < (SELECT max(watermark) FROM %I)',
                   p_aggregate || '_invalidations', p_aggregate || '_state')
        USING p_lo, p_hi;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows > 0;
END $$;

-- Recompute one family's buckets of one timeframe in [p_lo, p_hi) from its source. Idempotent.
CREATE FUNCTION tickvault_aggregate_recompute(p_aggregate text, p_timeframe text, p_lo timestamptz,
                                              p_hi timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_rollup text := format('%s_%s_rollup', p_aggregate, p_timeframe);
    v_width  interval;
    v_rows   bigint;
BEGIN
    IF p_lo >= p_hi THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT bucket_width FROM %I WHERE timeframe = $1', p_aggregate || '_state')
        INTO v_width USING p_timeframe;
    EXECUTE format('DELETE FROM %I WHERE bucket >= $1 AND bucket < $2', v_rollup) USING p_lo, p_hi;
    EXECUTE format('INSERT INTO %I (bucket, symbol, open, high, low, close, volume, trade_count, vwap) '
                   'SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap FROM %I($1, $2, $3)',
                   v_rollup, 'tickvault_' || p_aggregate || '_source')
        USING v_width, p_lo, p_hi;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END $$;

-- 007's refresh routine for any family, unchanged in what it does: without a window, materialize
-- every complete bucket since the watermark and recompute the buckets late trades touched; with a
-- window, also recompute every bucket that overlaps [p_start, p_end) (aligned outward, never the
-- still-open bucket); everything clamped to tickvault_aggregate_window(), never below the family's
-- raw horizon. Holds the family's refresh lock exclusively (writers noting late data wait for it).
CREATE FUNCTION tickvault_refresh_aggregate(p_aggregate text, p_start timestamptz DEFAULT NULL,
                                            p_end timestamptz DEFAULT NULL)
RETURNS TABLE (timeframe text, lo timestamptz, hi timestamptz, rows_written bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_raw     text := (SELECT a.raw_relation FROM ohlcv_aggregates a WHERE a.name = p_aggregate);
    v_state   text := p_aggregate || '_state';
    v_invals  text := p_aggregate || '_invalidations';
    st        record;
    inv       record;
    v_ids     bigint[];
    v_now     timestamptz := now();
    v_first   timestamptz;
    v_oldest_end timestamptz;
    v_floor   timestamptz;
    v_lo      timestamptz;
    v_hi      timestamptz;
    v_cap     timestamptz;
    v_rows    bigint;
BEGIN
    IF v_raw IS NULL THEN
        RAISE EXCEPTION 'unknown OHLCV aggregate %', p_aggregate USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('tickvault_' || p_aggregate || '_refresh'));
    EXECUTE format('SELECT array_agg(id) FROM %I', v_invals) INTO v_ids;
    v_ids := coalesce(v_ids, '{}');
    -- The oldest stored trade. No index leads with time, so min(time) over the hypertable would read
    -- every chunk on every refresh: the oldest chunk's end comes from the catalog first and bounds the
    -- scan to that chunk (a constant, so chunks are excluded at plan time); all of it only if that
    -- chunk holds no row.
    SELECT min(range_end) INTO v_oldest_end FROM timescaledb_information.chunks
     WHERE hypertable_schema = current_schema() AND hypertable_name = v_raw;
    IF v_oldest_end IS NOT NULL THEN
        EXECUTE format('SELECT min(time) FROM %I WHERE time < $1', v_raw) INTO v_first USING v_oldest_end;
        IF v_first IS NULL THEN
            EXECUTE format('SELECT min(time) FROM %I', v_raw) INTO v_first;
        END IF;
    END IF;
    FOR st IN EXECUTE format('SELECT * FROM %I ORDER BY bucket_width FOR UPDATE', v_state) LOOP
        SELECT w.lo, w.hi INTO v_floor, v_cap FROM tickvault_aggregate_window(p_aggregate, st.timeframe) w;
        -- 1. late data below the watermark (never below the horizon: a late trade there is kept
        --    raw but cannot be aggregated without the trades retention dropped beside it)
        FOR inv IN EXECUTE format('SELECT lo, hi FROM %I WHERE id = ANY ($1)', v_invals) USING v_ids LOOP
            v_lo := greatest(time_bucket(st.bucket_width, inv.lo), v_floor);
            v_hi := least(time_bucket(st.bucket_width, inv.hi) + st.bucket_width, st.watermark, v_cap);
            IF v_lo < v_hi THEN
                v_rows := tickvault_aggregate_recompute(p_aggregate, st.timeframe, v_lo, v_hi);
                timeframe := st.timeframe; lo := v_lo; hi := v_hi; rows_written := v_rows; RETURN NEXT;
            END IF;
        END LOOP;
        -- 2. an explicit window
        IF p_start IS NOT NULL OR p_end IS NOT NULL THEN
            SELECT w.lo, w.hi INTO v_lo, v_hi
              FROM tickvault_aggregate_window(p_aggregate, st.timeframe, coalesce(p_start, v_first, v_cap), p_end) w;
            IF v_lo < v_hi THEN
                v_rows := tickvault_aggregate_recompute(p_aggregate, st.timeframe, v_lo, v_hi);
                timeframe := st.timeframe; lo := v_lo; hi := v_hi; rows_written := v_rows; RETURN NEXT;
                IF v_lo <= st.watermark AND v_hi > st.watermark THEN
                    EXECUTE format('UPDATE %I SET watermark = $1 WHERE timeframe = $2', v_state)
                        USING v_hi, st.timeframe;
                    st.watermark := v_hi;
                END IF;
            END IF;
        END IF;
        -- 3. new complete buckets since the watermark (only without a window: a window is a request
        --    to recompute that range, not to move the watermark past data it did not cover)
        IF p_start IS NULL AND p_end IS NULL THEN
            v_lo := greatest(st.watermark, time_bucket(st.bucket_width, coalesce(v_first, v_cap)), v_floor);
            v_hi := v_cap;
            IF v_lo < v_hi THEN
                v_rows := tickvault_aggregate_recompute(p_aggregate, st.timeframe, v_lo, v_hi);
                timeframe := st.timeframe; lo := v_lo; hi := v_hi; rows_written := v_rows; RETURN NEXT;
            END IF;
            IF v_hi > st.watermark THEN
                EXECUTE format('UPDATE %I SET watermark = $1 WHERE timeframe = $2', v_state) USING v_hi, st.timeframe;
            END IF;
        END IF;
        EXECUTE format('UPDATE %I SET refreshed_at = $1 WHERE timeframe = $2', v_state) USING v_now, st.timeframe;
    END LOOP;
    EXECUTE format('DELETE FROM %I WHERE id = ANY ($1)', v_invals) USING v_ids;
END $$;

-- The stock functions of 004/007, now the family routines above: one implementation for both.
CREATE OR REPLACE FUNCTION tickvault_ohlcv_invalidate(p_lo timestamptz, p_hi timestamptz) RETURNS boolean
LANGUAGE sql VOLATILE AS $$ SELECT tickvault_aggregate_invalidate('ohlcv', p_lo, p_hi) $$;

CREATE OR REPLACE FUNCTION tickvault_ohlcv_recompute(p_timeframe text, p_lo timestamptz, p_hi timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE AS $$ SELECT tickvault_aggregate_recompute('ohlcv', p_timeframe, p_lo, p_hi) $$;

CREATE OR REPLACE FUNCTION tickvault_refresh_ohlcv(p_start timestamptz DEFAULT NULL, p_end timestamptz DEFAULT NULL)
RETURNS TABLE (timeframe text, lo timestamptz, hi timestamptz, rows_written bigint)
LANGUAGE sql VOLATILE AS $$ SELECT * FROM tickvault_refresh_aggregate('ohlcv', p_start, p_end) $$;
