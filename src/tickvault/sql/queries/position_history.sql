-- How a position evolved: broker snapshots for one symbol over a time range, oldest first.
SELECT time, qty, side, avg_entry_price, cost_basis, market_value, unrealized_pl
  FROM position_snapshots
 WHERE symbol = %(symbol)s AND time >= %(start)s AND time < %(end)s
 ORDER BY time;
