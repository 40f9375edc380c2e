-- OHLCV bars at 1m/5m/1h/1d from `trades`, for the Apache-2 (Debian's package; no continuous aggregates) edition of TimescaleDB.
-- Both editions expose the same relations: ohlcv_1m, ohlcv_5m, ohlcv_1h, ohlcv_1d with columns
-- (bucket, symbol, open, high, low, close, volume, trade_count, vwap). Canceled trades are excluded.
-- open/close are ordered by the feed's nanosecond stamp (time_ns), which ties far less often than
-- the microsecond `time`. Daily buckets are UTC days (a US session, 13:30-21:00 UTC, fits in one).
--
-- Here tickvault maintains them itself: a rollup table per timeframe holds the materialized
-- buckets below a watermark; a view adds the not-yet-materialized recent buckets computed live from
-- `trades` (like Timescale's real-time aggregation), so the view always equals a GROUP BY over trades
-- once invalidations are refreshed. Late trades (below the watermark) are noted by writers with
-- tickvault_ohlcv_invalidate(lo, hi) in their transaction; the next refresh recomputes those buckets.

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

-- Late-data ranges noted by writers; consumed (by id) by the refresh.
CREATE TABLE ohlcv_invalidations (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lo        timestamptz NOT NULL,
    hi        timestamptz NOT NULL,
    noted_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (lo <= hi)
);

CREATE FUNCTION tickvault_ohlcv_watermark(p_timeframe text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT watermark FROM ohlcv_state WHERE timeframe = p_timeframe), '-infinity'::timestamptz)
$$;

-- Writers call this inside the transaction that inserts or changes trades in [lo, hi].
-- The shared advisory lock orders it against a running refresh (which holds the lock exclusively):
-- either the refresh sees this transaction's rows, or this call sees the refresh's new watermark.
CREATE FUNCTION tickvault_ohlcv_invalidate(p_lo timestamptz, p_hi timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('tickvault_ohlcv_refresh'));
    IF p_lo < (SELECT max(watermark) FROM ohlcv_state) THEN
        INSERT INTO ohlcv_invalidations (lo, hi) VALUES (p_lo, p_hi);
        RETURN true;
    END IF;
    RETURN false;
END $$;

CREATE TABLE ohlcv_1m_rollup (
    bucket      timestamptz NOT NULL,
    symbol      text        NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint      NOT NULL,
    vwap        double precision
);
SELECT create_hypertable('ohlcv_1m_rollup', by_range('bucket', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX ohlcv_1m_rollup_key ON ohlcv_1m_rollup (symbol, bucket DESC);

CREATE VIEW ohlcv_1m AS
SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap
  FROM ohlcv_1m_rollup
 WHERE bucket < tickvault_ohlcv_watermark('1m')
UNION ALL
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
 WHERE time >= tickvault_ohlcv_watermark('1m') AND NOT canceled
 GROUP BY 1, 2;

CREATE TABLE ohlcv_5m_rollup (
    bucket      timestamptz NOT NULL,
    symbol      text        NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint      NOT NULL,
    vwap        double precision
);
SELECT create_hypertable('ohlcv_5m_rollup', by_range('bucket', INTERVAL '30 days'), create_default_indexes => false);
CREATE UNIQUE INDEX ohlcv_5m_rollup_key ON ohlcv_5m_rollup (symbol, bucket DESC);

CREATE VIEW ohlcv_5m AS
SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap
  FROM ohlcv_5m_rollup
 WHERE bucket < tickvault_ohlcv_watermark('5m')
UNION ALL
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
 WHERE time >= tickvault_ohlcv_watermark('5m') AND NOT canceled
 GROUP BY 1, 2;

CREATE TABLE ohlcv_1h_rollup (
    bucket      timestamptz NOT NULL,
    symbol      text        NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint      NOT NULL,
    vwap        double precision
);
SELECT create_hypertable('ohlcv_1h_rollup', by_range('bucket', INTERVAL '180 days'), create_default_indexes => false);
CREATE UNIQUE INDEX ohlcv_1h_rollup_key ON ohlcv_1h_rollup (symbol, bucket DESC);

CREATE VIEW ohlcv_1h AS
SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap
  FROM ohlcv_1h_rollup
 WHERE bucket < tickvault_ohlcv_watermark('1h')
UNION ALL
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
 WHERE time >= tickvault_ohlcv_watermark('1h') AND NOT canceled
 GROUP BY 1, 2;

CREATE TABLE ohlcv_1d_rollup (
    bucket      timestamptz NOT NULL,
    symbol      text        NOT NULL,
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      bigint      NOT NULL,
    trade_count bigint      NOT NULL,
    vwap        double precision
);
SELECT create_hypertable('ohlcv_1d_rollup', by_range('bucket', INTERVAL '3650 days'), create_default_indexes => false);
CREATE UNIQUE INDEX ohlcv_1d_rollup_key ON ohlcv_1d_rollup (symbol, bucket DESC);

CREATE VIEW ohlcv_1d AS
SELECT bucket, symbol, open, high, low, close, volume, trade_count, vwap
  FROM ohlcv_1d_rollup
 WHERE bucket < tickvault_ohlcv_watermark('1d')
UNION ALL
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
 WHERE time >= tickvault_ohlcv_watermark('1d') AND NOT canceled
 GROUP BY 1, 2;

-- Recompute the buckets of one timeframe in [p_lo, p_hi) from trades. Idempotent.
CREATE FUNCTION tickvault_ohlcv_recompute(p_timeframe text, p_lo timestamptz, p_hi timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_width interval := (SELECT bucket_width FROM ohlcv_state WHERE timeframe = p_timeframe);
    v_rows  bigint;
BEGIN
    IF p_lo >= p_hi THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM %I WHERE bucket >= $1 AND bucket < $2', 'ohlcv_' || p_timeframe || '_rollup')
        USING p_lo, p_hi;
    EXECUTE format($q$
        INSERT INTO %I (bucket, symbol, open, high, low, close, volume, trade_count, vwap)
        SELECT time_bucket($3, time), symbol, first(price, time_ns), max(price), min(price),
               last(price, time_ns), sum(size)::bigint, count(*)::bigint,
               sum(price * size) / nullif(sum(size), 0)
          FROM trades
         WHERE time >= $1 AND time < $2 AND NOT canceled
         GROUP BY 1, 2$q$, 'ohlcv_' || p_timeframe || '_rollup')
        USING p_lo, p_hi, v_width;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END $$;

-- The refresh routine. Without arguments: materialize every complete bucket since the watermark
-- and recompute the buckets late trades touched. With a window: also recompute every bucket that
-- overlaps [p_start, p_end) (aligned outward to bucket edges; never the still-open current bucket).
-- Holds the refresh lock exclusively, so writers noting late data wait for it (milliseconds for a
-- routine per-minute refresh; a large explicit window stalls ingest for its duration: the worker's
-- bounded queue absorbs and counts that).
CREATE FUNCTION tickvault_refresh_ohlcv(p_start timestamptz DEFAULT NULL, p_end timestamptz DEFAULT NULL)
RETURNS TABLE (timeframe text, lo timestamptz, hi timestamptz, rows_written bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    st        record;
    inv       record;
    v_ids     bigint[];
    v_now     timestamptz := now();
    v_first   timestamptz;
    v_lo      timestamptz;
    v_hi      timestamptz;
    v_cap     timestamptz;
    v_rows    bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tickvault_ohlcv_refresh'));
    SELECT array_agg(i.id) INTO v_ids FROM ohlcv_invalidations i;
    SELECT min(t.time) INTO v_first FROM trades t;
    FOR st IN SELECT * FROM ohlcv_state s ORDER BY s.bucket_width FOR UPDATE LOOP
        v_cap := time_bucket(st.bucket_width, v_now);          -- start of the open bucket
        -- 1. late data below the watermark
        FOR inv IN SELECT i.lo, i.hi FROM ohlcv_invalidations i WHERE i.id = ANY (coalesce(v_ids, '{}')) LOOP
            v_lo := time_bucket(st.bucket_width, inv.lo);
            v_hi := least(time_bucket(st.bucket_width, inv.hi) + st.bucket_width, st.watermark);
            IF v_lo < v_hi THEN
                v_rows := tickvault_ohlcv_recompute(st.timeframe, v_lo, v_hi);
                timeframe := st.timeframe; lo := v_lo; hi := v_hi; rows_written := v_rows; RETURN NEXT;
            END IF;
        END LOOP;
        -- 2. an explicit window
        IF p_start IS NOT NULL OR p_end IS NOT NULL THEN
            v_lo := time_bucket(st.bucket_width, coalesce(p_start, v_first, v_cap));
            v_hi := least(coalesce(time_bucket(st.bucket_width, p_end - INTERVAL '1 microsecond') + st.bucket_width, v_cap), v_cap);
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
            v_lo := greatest(st.watermark, time_bucket(st.bucket_width, coalesce(v_first, v_cap)));
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
