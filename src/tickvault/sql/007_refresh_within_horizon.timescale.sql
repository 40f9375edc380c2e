-- The Timescale edition: continuous aggregates refresh through tickvault.db.aggregates, which clamps
-- every window to tickvault_ohlcv_window() (006), and the refresh policies' start offsets are kept
-- inside the raw retention window by tickvault.db.policies (they depend on settings, so they are
-- applied at `tickvault db up` and before every retention purge, not here).
--
-- Columnstore compression for the two big raw tables (the compression API, which TimescaleDB keeps
-- supporting beside the newer columnstore names; 2.11+ inserts, upserts and updates into compressed
-- chunks, so late trades, backfills and corrections still land). The policy that compresses chunks
-- older than TICKVAULT_COMPRESS_AFTER_HOURS is added by tickvault.db.policies.
--   segmentby symbol: every query and every uniqueness check names one symbol;
--   orderby time DESC: recent-first scans, as the (symbol, time DESC) indexes;
--   trade_id, exchange after time: the trades key's columns, so a duplicate check on insert
--   decompresses only the batches whose time range can hold the trade.
ALTER TABLE trades SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'time DESC, trade_id, exchange'
);
ALTER TABLE quotes SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'time DESC'
);
