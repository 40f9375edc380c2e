-- 1-minute candles of one crypto pair in [%(start)s, %(end)s), from the crypto_ohlcv_1m aggregate
-- (migration 014; continuous aggregate or tickvault's rollup, per edition, current to the newest
-- trade). volume is numeric: the pair's printed sizes summed exactly. A minute without trades has no row.
SELECT bucket, open, high, low, close, volume, trade_count, vwap
  FROM crypto_ohlcv_1m
 WHERE symbol = %(symbol)s
   AND bucket >= %(start)s::timestamptz
   AND bucket <  %(end)s::timestamptz
 ORDER BY bucket;
