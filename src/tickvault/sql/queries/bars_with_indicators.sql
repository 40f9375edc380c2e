-- One-minute OHLCV bars of a symbol with the indicators computed for them, oldest first.
SELECT b.bucket, b.open, b.high, b.low, b.close, b.volume, b.trade_count, b.vwap,
       i.rsi_14, i.ema_12, i.ema_26, i.sma_20, i.macd, i.macd_signal, i.macd_hist,
       i.bb_upper, i.bb_middle, i.bb_lower, i.atr_14
  FROM ohlcv_1m b
  LEFT JOIN indicators i ON i.symbol = b.symbol AND i.timeframe = '1m' AND i.time = b.bucket
 WHERE b.symbol = %(symbol)s AND b.bucket >= %(start)s AND b.bucket < %(end)s
 ORDER BY b.bucket;
