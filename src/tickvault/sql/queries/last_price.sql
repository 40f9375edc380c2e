-- Latest trade price per symbol: one index probe per symbol (trades_symbol_time_key), however
-- large the table; chunks are scanned newest first and the probe stops at the first row.
SELECT s.symbol, t.time, t.price, t.size
  FROM unnest(%(symbols)s::text[]) AS s(symbol)
  CROSS JOIN LATERAL (
        SELECT time, price, size FROM trades
         WHERE trades.symbol = s.symbol AND NOT canceled
         ORDER BY time DESC LIMIT 1) t
 ORDER BY s.symbol;
