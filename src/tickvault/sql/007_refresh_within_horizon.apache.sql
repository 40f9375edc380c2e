-- The Apache edition's refresh routine (004) again, now never below the raw horizon (006): late-data
-- invalidations, explicit windows and new buckets are all clamped to tickvault_ohlcv_window(), so a
-- refresh after a retention purge keeps every rollup row the purge left outside the raw data.
-- Everything else is as in 004: without arguments, materialize every complete bucket since the
-- watermark and recompute the buckets late trades touched; with a window, also recompute every
-- bucket that overlaps [p_start, p_end), aligned outward, never the still-open bucket.
CREATE OR REPLACE FUNCTION tickvault_refresh_ohlcv(p_start timestamptz DEFAULT NULL, p_end timestamptz DEFAULT NULL)
RETURNS TABLE (timeframe text, lo timestamptz, hi timestamptz, rows_written bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    st        record;
    inv       record;
    v_ids     bigint[];
    v_now     timestamptz := now();
    v_first   timestamptz;
    v_floor   timestamptz;
    v_lo      timestamptz;
    v_hi      timestamptz;
    v_cap     timestamptz;
    v_rows    bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tickvault_ohlcv_refresh'));
    SELECT array_agg(i.id) INTO v_ids FROM ohlcv_invalidations i;
    SELECT min(t.time) INTO v_first FROM trades t;
    FOR st IN SELECT * FROM ohlcv_state s ORDER BY s.bucket_width FOR UPDATE LOOP
        SELECT w.lo, w.hi INTO v_floor, v_cap FROM tickvault_ohlcv_window(st.timeframe) w;
        -- 1. late data below the watermark (never below the horizon: a late trade there is kept
        --    raw but cannot be aggregated without the trades retention dropped beside it)
        FOR inv IN SELECT i.lo, i.hi FROM ohlcv_invalidations i WHERE i.id = ANY (coalesce(v_ids, '{}')) LOOP
            v_lo := greatest(time_bucket(st.bucket_width, inv.lo), v_floor);
            v_hi := least(time_bucket(st.bucket_width, inv.hi) + st.bucket_width, st.watermark, v_cap);
            IF v_lo < v_hi THEN
                v_rows := tickvault_ohlcv_recompute(st.timeframe, v_lo, v_hi);
                timeframe := st.timeframe; lo := v_lo; hi := v_hi; rows_written := v_rows; RETURN NEXT;
            END IF;
        END LOOP;
        -- 2. an explicit window
        IF p_start IS NOT NULL OR p_end IS NOT NULL THEN
            SELECT w.lo, w.hi INTO v_lo, v_hi
              FROM tickvault_ohlcv_window(st.timeframe, coalesce(p_start, v_first, v_cap), p_end) w;
            IF v_lo < v_hi THEN
                v_rows := tickvault_ohlcv_recompute(st.timeframe, v_lo, v_hi);
                timeframe := st.timeframe; lo := v_lo; hi := v_hi; rows_written := v_rows; RETURN NEXT;
                IF v_lo <= st.watermark AND v_hi > st.watermark THEN
                    UPDATE ohlcv_state s SET watermark = v_hi WHERE s.timeframe = st.timeframe;
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
                v_rows := tickvault_ohlcv_recompute(st.timeframe, v_lo, v_hi);
                timeframe := st.timeframe; lo := v_lo; hi := v_hi; rows_written := v_rows; RETURN NEXT;
            END IF;
            IF v_hi > st.watermark THEN
                UPDATE ohlcv_state s SET watermark = v_hi WHERE s.timeframe = st.timeframe;
            END IF;
        END IF;
        UPDATE ohlcv_state s SET refreshed_at = v_now WHERE s.timeframe = st.timeframe;
    END LOOP;
    DELETE FROM ohlcv_invalidations i WHERE i.id = ANY (coalesce(v_ids, '{}'));
END $$;
