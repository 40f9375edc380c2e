-- Option trades of an underlying, by expiration, type and strike, since %(since)s: volume (contracts),
-- prints, VWAP premium and the last print, one row per contract. Served by
-- option_trades_underlying_idx (underlying, expiration, time DESC).
SELECT expiration, option_type, strike, symbol,
       sum(size) AS contracts, count(*) AS prints,
       sum(price * size) / nullif(sum(size), 0) AS vwap,
       (array_agg(price ORDER BY time DESC))[1] AS last_price
  FROM option_trades
 WHERE underlying = %(underlying)s AND time >= %(since)s
 GROUP BY expiration, option_type, strike, symbol
 ORDER BY expiration, option_type, strike;
