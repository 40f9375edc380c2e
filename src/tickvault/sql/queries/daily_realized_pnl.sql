-- Realized P&L per trading day and symbol (average cost), between two dates inclusive: option contracts
-- count 100 shares each, option events (expiries, exercises, assignments, their share deliveries at the
-- strike) change positions like fills; fills counts fills only (docs/database.md, "Realized P&L").
SELECT day, symbol, realized_pnl, sold_qty, bought_qty, fills
  FROM tickvault_realized_pnl(%(from_day)s::date, %(to_day)s::date);
