-- Orders still working at the broker, newest first. Served by the partial index orders_open_idx.
SELECT client_order_id, id, symbol, side, order_type, qty, filled_qty, limit_price, stop_price,
       status, submitted_at
  FROM orders
 WHERE status IN ('pending_submit', 'new', 'accepted', 'pending_new', 'partially_filled',
                  'pending_cancel', 'pending_replace', 'accepted_for_bidding', 'held')
 ORDER BY submitted_at DESC NULLS FIRST;
