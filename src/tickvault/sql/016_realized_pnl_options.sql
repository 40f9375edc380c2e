-- Realized P&L that knows options (replaces 005's tickvault_realized_pnl; same signature and columns, so
-- the daily_realized_pnl recipe and every trader's query keep working). Two money errors fixed:
--
-- 1. An option fill's qty is in contracts and its price the premium per share: a contract moves
--    tickvault_contract_multiplier(symbol) = 100 × price in cash (Alpaca's standard equity option,
--    the simulator's and reconcile's SHARES_PER_CONTRACT). fills and orders store no asset class column
--    (orders.raw may, but a fill from the activities API can have no orders row), so the multiplier is
--    read from what every fill does store: its symbol. An OCC contract symbol (root, YYMMDD, C/P, strike
--    × 1000 in 8 digits, the form tickvault.alpaca.options.parse_occ accepts) is 100 shares a contract;
--    any other symbol (a stock, a crypto pair) is 1.
-- 2. Option events (015's option_events, written by reconciliation) change positions without a fill, and
--    the walk now takes them as trades: OPEXC/OPASN/OPEXP close the contracts at price 0 (a long that
--    expires or is exercised realizes −premium × 100, a short that expires or is assigned +premium × 100);
--    OPTRD moves the underlying's shares at the strike (option_events.price), so the shares enter the
--    position at the strike and a later sale realizes against it. The premium is realized on the option
--    leg and never folded into the shares' cost basis (the simulator's convention too).
--
-- Order of the walk, per symbol: by New York day (a fill's transaction_time in New York, an event's
-- trade_date: Alpaca's own date of it), then within a day every fill (by transaction_time, order_id,
-- cum_qty, as 005 walked them) before every event (by time, activity_id). An event's `time` cannot place
-- it among the day's fills: it is the stamp of Alpaca's activity id (New York time), often the date
-- alone (midnight, before the session), and Alpaca books expiries, exercises and assignments after the
-- close (the OCC settles them overnight), dated the trading day.
--
-- Columns: sold_qty and bought_qty count what left and entered the position by fills and events alike
-- (an expired long of 2 contracts: sold_qty 2; an exercise's 200 delivered shares: bought_qty 200), so
-- Σ bought_qty − Σ sold_qty over all days is the position (contracts for an OCC symbol). `fills` counts
-- fills only, as in 005: a row with fills = 0 is a day changed by option events alone (option_events
-- lists them).
--
-- Bad input stops the walk with an error naming the event, never a silently wrong figure: an OPTRD
-- without a price (the strike its shares moved at), or an OPEXC/OPASN/OPEXP whose symbol is no contract.
-- Identical on both TimescaleDB editions (plain tables, plain SQL).

CREATE FUNCTION tickvault_contract_multiplier(p_symbol text) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN p_symbol ~ '^[A-Z][A-Z0-9.]{0,5}[0-9]{6}[CP][0-9]{8}$' THEN 100 ELSE 1 END::numeric
$$;
COMMENT ON FUNCTION tickvault_contract_multiplier(text) IS
    'Cash per unit of qty per 1.00 of price: 100 for an OCC option contract symbol (standard equity option), else 1';

CREATE OR REPLACE FUNCTION tickvault_realized_pnl(p_from date DEFAULT NULL, p_to date DEFAULT NULL)
RETURNS TABLE (day date, symbol text, realized_pnl numeric, sold_qty numeric, bought_qty numeric, fills bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    f       record;
    cur     text := NULL;
    m       numeric := 1;    -- the symbol's multiplier: cash per unit of qty per 1.00 of price
    q       numeric := 0;    -- signed position (contracts for an option)
    c       numeric := 0;    -- average cost of the open position (per share for an option: the premium)
    x       numeric;
    closing numeric;
BEGIN
    SELECT e.activity_id, e.activity_type, e.symbol INTO f FROM option_events e
     WHERE (e.activity_type = 'OPTRD' AND e.price IS NULL)
        OR (e.activity_type <> 'OPTRD' AND tickvault_contract_multiplier(e.symbol) = 1)
     ORDER BY e.trade_date, e.activity_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'option event % (% %) cannot be valued: %', f.activity_id, f.activity_type, f.symbol,
              CASE WHEN f.activity_type = 'OPTRD' THEN 'a share delivery without its price (the strike)'
                   ELSE 'its symbol is not an OCC option contract' END
            USING ERRCODE = 'data_exception',
                  HINT = 'Correct or delete that option_events row (reconciliation records Alpaca''s activity as sent).';
    END IF;

    CREATE TEMP TABLE IF NOT EXISTS pg_temp.tv_pnl (day date, symbol text, realized_pnl numeric,
        sold_qty numeric, bought_qty numeric, fills bigint, PRIMARY KEY (day, symbol)) ON COMMIT DROP;
    TRUNCATE pg_temp.tv_pnl;  -- not DELETE: a call's dead rows would slow every later call in the transaction
    FOR f IN
        SELECT t.symbol, t.day, t.x, t.price, t.n_fills FROM (
            SELECT fl.symbol, (fl.transaction_time AT TIME ZONE 'America/New_York')::date AS day, 0 AS rank,
                   fl.transaction_time AS at, fl.order_id, fl.cum_qty, NULL::text AS activity_id,
                   CASE WHEN fl.side = 'buy' THEN fl.qty ELSE -fl.qty END AS x, fl.price, 1 AS n_fills
              FROM fills fl
            UNION ALL
            SELECT e.symbol, e.trade_date, 1, e.time, NULL::uuid, NULL::numeric, e.activity_id,
                   e.qty, CASE WHEN e.activity_type = 'OPTRD' THEN e.price ELSE 0 END, 0
              FROM option_events e
        ) t ORDER BY t.symbol, t.day, t.rank, t.at, t.order_id, t.cum_qty, t.activity_id
    LOOP
        IF cur IS DISTINCT FROM f.symbol THEN
            cur := f.symbol; q := 0; c := 0; m := tickvault_contract_multiplier(f.symbol);
        END IF;
        x := f.x;
        closing := 0;
        IF q <> 0 AND sign(x) <> sign(q) THEN
            closing := least(abs(x), abs(q));                 -- quantity that closes the open position
        END IF;
        INSERT INTO pg_temp.tv_pnl AS p VALUES (f.day, f.symbol,
                CASE WHEN closing = 0 THEN 0 WHEN q > 0 THEN (f.price - c) * closing * m
                     ELSE (c - f.price) * closing * m END,
                CASE WHEN x < 0 THEN -x ELSE 0 END,
                CASE WHEN x > 0 THEN x ELSE 0 END, f.n_fills)
            ON CONFLICT (day, symbol) DO UPDATE SET realized_pnl = p.realized_pnl + excluded.realized_pnl,
                sold_qty = p.sold_qty + excluded.sold_qty, bought_qty = p.bought_qty + excluded.bought_qty,
                fills = p.fills + excluded.fills;
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

-- 015 said option_events.time reads the id's stamp as UTC; Alpaca's stamps are New York time (its
-- documented FILL activity 20210510100104650 has transaction_time 2021-05-10T14:01:04.650Z), and
-- tickvault reads them so. Said where a SQL user looks (\d+ option_events).
COMMENT ON COLUMN option_events.time IS
    'The stamp Alpaca''s activity id starts with (YYYYMMDDhhmmssmmm, New York time), as UTC; an id without one: midnight New York of trade_date. Often only the date: it cannot order an event among the day''s fills (tickvault_realized_pnl puts events after them).';
