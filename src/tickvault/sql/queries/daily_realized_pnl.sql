-- Realized P&L per trading day and symbol (average cost), between two dates inclusive.
SELECT day, symbol, realized_pnl, sold_qty, bought_qty, fills
  FROM tickvault_realized_pnl(%(from_day)s::date, %(to_day)s::date);
