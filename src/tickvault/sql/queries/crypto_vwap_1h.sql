-- Last hour's VWAP, volume and trade count of each crypto pair from the crypto_ohlcv_1m aggregate:
-- the 60 whole minutes before %(until)s (now() when NULL), so the still-open minute is left out.
-- Reads 60 stored rows a pair instead of every trade (recipe crypto_vwap reads the raw trades, to the
-- microsecond). Each minute's vwap weighted by its exact numeric volume gives the hour's VWAP.
SELECT s.symbol,
       sum(c.vwap::numeric * c.volume) / nullif(sum(c.volume), 0) AS vwap,
       coalesce(sum(c.volume), 0)                                  AS volume,
       coalesce(sum(c.trade_count), 0)                             AS trades
  FROM unnest(%(symbols)s::text[]) AS s(symbol)
  LEFT JOIN crypto_ohlcv_1m c
    ON c.symbol = s.symbol
   AND c.bucket >= date_trunc('minute', coalesce(%(until)s::timestamptz, now())) - interval '1 hour'
   AND c.bucket <  date_trunc('minute', coalesce(%(until)s::timestamptz, now()))
 GROUP BY s.symbol
 ORDER BY s.symbol;
