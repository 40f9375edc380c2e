-- Functions behind the trader's SQL recipes (src/tickvault/sql/queries/).

-- Realized P&L per symbol and trading day (America/New_York), average-cost method: a buy adds to
-- the position at its price, a sell realizes (sell price - average cost) × qty; shorts mirror it.
-- It walks every fill in time order (the cost basis depends on all history), which is fine for a
-- trade history of a bot (thousands to millions of fills, one pass, O(n)).
CREATE FUNCTION tickvault_realized_pnl(p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS TABLE (day date, symbol text, realized_pnl numeric, sold_qty numeric, bought_qty numeric, fills bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    f      record;
    cur    text := NULL;
    q      numeric := 0;    -- signed position
    c      numeric := 0;    -- average cost of the open position
    d      date;
    x      numeric;
    closing numeric;
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS pg_temp.tv_pnl (day date, symbol text, realized_pnl numeric,
        sold_qty numeric, bought_qty numeric, fills bigint, PRIMARY KEY (day, symbol)) ON COMMIT DROP;
    DELETE FROM pg_temp.tv_pnl;
    FOR f IN SELECT fl.symbol, fl.side, fl.qty, fl.price, fl.transaction_time
               FROM fills fl ORDER BY fl.symbol, fl.transaction_time, fl.order_id, fl.cum_qty LOOP
        IF cur IS DISTINCT FROM f.symbol THEN
            cur := f.symbol; q := 0; c := 0;
        END IF;
        d := (f.transaction_time AT TIME ZONE 'America/New_York')::date;
        x := CASE WHEN f.side = 'buy' THEN f.qty ELSE -f.qty END;
        closing := 0;
        IF q <> 0 AND sign(x) <> sign(q) THEN
            closing := least(abs(x), abs(q));                 -- quantity that closes the open position
        END IF;
        INSERT INTO pg_temp.tv_pnl AS p VALUES (d, f.symbol,
                CASE WHEN closing = 0 THEN 0 WHEN q > 0 THEN (f.price - c) * closing ELSE (c - f.price) * closing END,
                CASE WHEN f.side = 'sell' THEN f.qty ELSE 0 END,
                CASE WHEN f.side = 'buy' THEN f.qty ELSE 0 END, 1)
            ON CONFLICT (day, symbol) DO UPDATE SET realized_pnl = p.realized_pnl + excluded.realized_pnl,
                sold_qty = p.sold_qty + excluded.sold_qty, bought_qty = p.bought_qty + excluded.bought_qty,
                fills = p.fills + 1;
        IF closing > 0 THEN
            q := q + sign(x) * closing;
            x := x - sign(x) * closing;
            IF q = 0 THEN c := 0; END IF;
        END IF;
        IF x <> 0 THEN                                         -- opens or adds to a position
            c := (abs(q) * c + abs(x) * f.price) / (abs(q) + abs(x));
            q := q + x;
        END IF;
    END LOOP;
    RETURN QUERY SELECT p.day, p.symbol, p.realized_pnl, p.sold_qty, p.bought_qty, p.fills FROM pg_temp.tv_pnl p
                  WHERE (p_from IS NULL OR p.day >= p_from) AND (p_to IS NULL OR p.day <= p_to)
                  ORDER BY p.day, p.symbol;
END $$;
