-- News for a symbol next to its 1-minute bars, in [%(start)s, %(end)s): every minute that has a bar
-- or an article, the bar's OHLCV (NULL when no trade) beside each article published in that minute
-- (NULL when none). Articles are found through the GIN index on news.symbols, bars from ohlcv_1m.
WITH bars AS (
    SELECT bucket, open, high, low, close, volume
      FROM ohlcv_1m
     WHERE symbol = %(symbol)s AND bucket >= %(start)s AND bucket < %(end)s
), articles AS (
    SELECT date_trunc('minute', created_at) AS bucket, created_at, id, headline, source, url
      FROM news
     WHERE symbols @> ARRAY[%(symbol)s]::text[] AND created_at >= %(start)s AND created_at < %(end)s
)
SELECT coalesce(b.bucket, a.bucket) AS bucket, b.open, b.high, b.low, b.close, b.volume,
       a.created_at, a.id, a.headline, a.source, a.url
  FROM bars b FULL JOIN articles a ON a.bucket = b.bucket
 ORDER BY 1, a.created_at NULLS FIRST;
