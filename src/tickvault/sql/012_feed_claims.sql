-- Which worker records which feed of which Alpaca account: Alpaca allows one stream connection per
-- account and feed, so two workers (on one machine or several, into one database) must not fight over
-- one (each would knock the other off with error 406, forever). The claim itself is a session-level
-- advisory lock a worker holds on a dedicated connection for its whole life (released by PostgreSQL
-- when the worker's process or connection dies, so a crash never leaves a feed claimed); this table
-- says who holds it, for the refusal message and for people. account is a hash of the key id, never
-- the key.
CREATE TABLE feed_claims (
    account     text        NOT NULL,
    feed        text        NOT NULL,   -- 'stocks:iex', 'crypto:us', 'options:opra', 'news'
    worker      text        NOT NULL,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, feed)
);
