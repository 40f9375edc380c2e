-- News articles (Alpaca's /v1beta1/news stream and REST history). An article can be sent again with a
-- later updated_at: the row is replaced (upsert on the article id), an older version never overwrites a
-- newer one, and created_at never changes.
--
-- A hypertable on created_at (30-day chunks: a few thousand articles a day, a small table) so that
-- retention drops whole chunks like everywhere else; its unique key must hold the time column, and
-- (id, created_at) is as unique as id, since an update keeps created_at.
CREATE TABLE news (
    id          bigint      NOT NULL,
    headline    text        NOT NULL,
    summary     text,
    author      text,
    source      text,
    url         text,
    content     text,
    symbols     text[]      NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()  -- when this version was stored
);
SELECT create_hypertable('news', by_range('created_at', INTERVAL '30 days'), create_default_indexes => false);
CREATE UNIQUE INDEX news_id_key ON news (id, created_at);
-- "news for a symbol": symbols @> ARRAY['AAPL'] uses the GIN index; then by time.
CREATE INDEX news_symbols_gin ON news USING gin (symbols);
CREATE INDEX news_created_idx ON news (created_at DESC);
