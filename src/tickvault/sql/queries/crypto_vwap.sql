-- Volume-weighted average price, volume and trade count of each crypto pair over the hour up to
-- %(until)s (now() when NULL), from crypto_trades. size is numeric, so the sums are exact; one
-- index range scan per pair (crypto_trades_symbol_time_key).
SELECT s.symbol, v.vwap, v.volume, v.trades
  FROM unnest(%(symbols)s::text[]) AS s(symbol)
  CROSS JOIN LATERAL (
        SELECT sum(t.price::numeric * t.size) / nullif(sum(t.size), 0) AS vwap,
               coalesce(sum(t.size), 0) AS volume, count(*) AS trades
          FROM crypto_trades t
         WHERE t.symbol = s.symbol
           AND t.time >  coalesce(%(until)s::timestamptz, now()) - interval '1 hour'
           AND t.time <= coalesce(%(until)s::timestamptz, now())) v
 ORDER BY s.symbol;
