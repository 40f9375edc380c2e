-- Option exercises, assignments and expiries of an underlying, and the shares they delivered at the
-- strike, between two New York trading days (inclusive), oldest first: what changed positions and cash
-- without an order. qty is the change to the position in symbol (contracts, or shares for OPTRD),
-- net_amount the cash it moved. The underlying's contracts are its OCC symbols (root, YYMMDD, C/P, strike).
SELECT trade_date, time, activity_type, symbol, qty, price, net_amount, description
  FROM option_events
 WHERE trade_date BETWEEN %(from_day)s::date AND %(to_day)s::date
   AND (symbol = %(underlying)s
        OR (left(symbol, length(%(underlying)s)) = %(underlying)s
            AND substr(symbol, length(%(underlying)s) + 1) ~ '^[0-9]{6}[CP][0-9]{8}$'))
 ORDER BY trade_date, time, activity_id;
