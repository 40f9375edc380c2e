-- Trades of one symbol on one trading day (America/New_York), oldest first, canceled ones excluded.
-- Served by trades_symbol_time_key (symbol, time DESC) and chunk exclusion on time.
SELECT time, price, size, exchange, conditions, trade_id, corrected
  FROM trades
 WHERE symbol = %(symbol)s
   AND time >= (%(day)s::date)::timestamp AT TIME ZONE 'America/New_York'
   AND time <  (%(day)s::date + 1)::timestamp AT TIME ZONE 'America/New_York'
   AND NOT canceled
 ORDER BY time, trade_id;
