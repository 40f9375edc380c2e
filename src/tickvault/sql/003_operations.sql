-- What tickvault knows about itself: indicator values, ingest figures, reconciliation runs,
-- profiling reports, and the ledger of committed writer batches.

CREATE TABLE indicators (
    time        timestamptz NOT NULL,    -- bar start the values belong to
    symbol      text        NOT NULL,
    timeframe   text        NOT NULL,    -- '1m', '5m', '1h', '1d'
    close       double precision,
    rsi_14      double precision,
    ema_12      double precision,
    ema_26      double precision,
    sma_20      double precision,
    macd        double precision,
    macd_signal double precision,
    macd_hist   double precision,
    bb_upper    double precision,
    bb_middle   double precision,
    bb_lower    double precision,
    atr_14      double precision,
    vwap        double precision,
    source      text        NOT NULL DEFAULT 'worker', -- worker (incremental) or flow (vectorized)
    computed_at timestamptz NOT NULL DEFAULT now()
);
SELECT create_hypertable('indicators', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
CREATE UNIQUE INDEX indicators_symbol_time_key ON indicators (symbol, timeframe, time DESC);

CREATE TABLE ingest_stats (
    time                    timestamptz NOT NULL,
    worker                  text        NOT NULL,
    interval_s              double precision NOT NULL,
    trades                  bigint NOT NULL DEFAULT 0,
    quotes                  bigint NOT NULL DEFAULT 0,
    bars                    bigint NOT NULL DEFAULT 0,
    other_messages          bigint NOT NULL DEFAULT 0,
    rows_committed          bigint NOT NULL DEFAULT 0,
    rejects                 bigint NOT NULL DEFAULT 0,
    drops                   bigint NOT NULL DEFAULT 0,
    stalls                  bigint NOT NULL DEFAULT 0,
    reconnects              bigint NOT NULL DEFAULT 0,
    backfilled              bigint NOT NULL DEFAULT 0,
    queue_depth             integer,
    queue_max               integer,
    exchange_to_received_p50_ms   double precision,
    exchange_to_received_p99_ms   double precision,
    received_to_processed_p50_ms  double precision,
    received_to_processed_p99_ms  double precision,
    received_to_processed_max_ms  double precision,
    received_to_committed_p50_ms  double precision,
    received_to_committed_p99_ms  double precision,
    received_to_committed_max_ms  double precision,
    rss_mb                  double precision,
    cpu_percent             double precision,
    extra                   jsonb
);
SELECT create_hypertable('ingest_stats', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
CREATE INDEX ingest_stats_worker_time_idx ON ingest_stats (worker, time DESC);

CREATE TABLE reconciliation_runs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    status          text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
    orders_checked  integer,
    fills_checked   integer,
    positions_checked integer,
    diffs           integer,
    repaired        integer,
    fetch_ms        double precision,
    duration_ms     double precision,
    error           text
);
CREATE INDEX reconciliation_runs_started_idx ON reconciliation_runs (started_at DESC);

CREATE TABLE reconciliation_diffs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          bigint      NOT NULL REFERENCES reconciliation_runs (id) ON DELETE CASCADE,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    kind            text        NOT NULL,  -- missing_fill, order_status_drift, position_mismatch, unknown_order, ...
    symbol          text,
    order_id        uuid,
    client_order_id text,
    db_value        jsonb,
    broker_value    jsonb,
    repaired        boolean     NOT NULL DEFAULT false
);
CREATE INDEX reconciliation_diffs_run_idx ON reconciliation_diffs (run_id);

CREATE TABLE profiles (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time            timestamptz NOT NULL DEFAULT now(),
    worker          text        NOT NULL,
    pid             integer,
    duration_s      double precision,
    location        text        NOT NULL,  -- s3://bucket/prefix/... or a local directory
    speedscope_key  text,
    flamegraph_key  text,
    dump_key        text,
    summary_key     text,
    cpu_percent     double precision,
    rss_mb          double precision,
    summary         jsonb,                 -- top functions by own and total share
    regressions     jsonb                  -- functions whose share grew past the threshold
);
CREATE INDEX profiles_worker_time_idx ON profiles (worker, time DESC);

-- Each writer batch commits its id in the same transaction as its rows. After an ambiguous
-- failure (connection lost during COMMIT) the writer asks here whether the batch landed, so a
-- retry never writes a batch twice, even into tables without a natural key (quotes).
CREATE TABLE ingest_batches (
    batch_id      uuid        PRIMARY KEY,
    committed_at  timestamptz NOT NULL DEFAULT now(),
    worker        text,
    rows          integer     NOT NULL
);
CREATE INDEX ingest_batches_committed_idx ON ingest_batches (committed_at);
