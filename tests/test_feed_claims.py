"""One worker per feed of an Alpaca account, across machines: a second claim of a held feed is refused
with a message naming the holder; a released or crashed holder frees it; other feeds and accounts are free."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.support.sim import worker_settings
from tests.support.waiting import wait_until
from tickvault.sim.server import Simulator
from tickvault.stream.feed_claims import FeedTaken, account_id, claim_feeds, release_feeds
from tickvault.stream.worker import Worker


async def test_a_held_feed_is_refused_naming_its_holder_until_released(fresh_database):
    url = fresh_database()
    acct = account_id("PKTEST")
    first = await claim_feeds(url, account=acct, feeds=["stocks:iex", "crypto:us"], worker="alpha", pid=111)
    try:
        with pytest.raises(FeedTaken, match=r"feed crypto:us of this Alpaca account is already recorded by worker "
                                            r"'alpha' on .* \(pid 111, since"):
            await claim_feeds(url, account=acct, feeds=["news", "crypto:us"], worker="beta", pid=222)
        # all or nothing: beta's claim of news was released with its refusal
        other = await claim_feeds(url, account=acct, feeds=["news"], worker="gamma", pid=333)
        await release_feeds(other, account=acct, worker="gamma", pid=333)
        # another account's crypto:us is another connection at Alpaca: free
        elsewhere = await claim_feeds(url, account=account_id("PKOTHER"), feeds=["crypto:us"], worker="d", pid=4)
        await elsewhere.close()  # a crash: the connection ends, the row stays, the lock goes
    finally:
        await release_feeds(first, account=acct, worker="alpha", pid=111)
    again = await claim_feeds(url, account=acct, feeds=["crypto:us"], worker="beta", pid=222)
    await release_feeds(again, account=acct, worker="beta", pid=222)
    taken_over = await claim_feeds(url, account=account_id("PKOTHER"), feeds=["crypto:us"], worker="e", pid=5)
    await release_feeds(taken_over, account=account_id("PKOTHER"), worker="e", pid=5)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM feed_claims").fetchone()[0] == 0
    assert "PKTEST" not in acct  # the key id is never stored


async def test_a_second_worker_on_the_same_feed_refuses_to_start(fresh_database, tmp_path):
    url = fresh_database()
    async with Simulator(symbols=["AAA"], rate=100, crypto_pairs=["BTC/USD"]) as sim:
        def settings(name: str, feeds: str):
            return worker_settings(sim, url, tmp_path / name, name, feeds=feeds, stats_interval_s=60)

        first = Worker(settings("one", "stocks:iex,crypto:us"))
        await first.start()
        try:
            second = Worker(settings("two", "crypto:us"))
            with pytest.raises(FeedTaken, match="feed crypto:us .* worker 'one'"):
                await second.start()
            await second.close()  # releases what its start took (pool, registration), nothing of the first's
            assert not (tmp_path / "two" / "worker-two.json").exists()
        finally:
            await first.drain()
            await first.close()


async def test_a_worker_with_only_the_crypto_feed_records_crypto_and_nothing_else(fresh_database, tmp_path):
    url = fresh_database()
    async with Simulator(symbols=["AAA"], rate=500, crypto_pairs=["ETH/USD"], crypto_rate=300) as sim:
        settings = worker_settings(sim, url, tmp_path / "run", "crypto-only", feeds="crypto:us",
                                   crypto_symbols="ETH/USD", stats_interval_s=60)
        worker = Worker(settings)
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.handle.ready.wait(), 60)
            assert list(worker.handle.readers) == ["crypto:us"] and sim.subscribed_clients() == 1

            async def stored() -> bool:
                async with await psycopg.AsyncConnection.connect(url) as conn:
                    cur = await conn.execute("SELECT count(*) FROM crypto_trades")
                    return (await cur.fetchone())[0] >= 200

            await wait_until(stored, 60, "200 crypto trades")
        finally:
            worker.handle.stop()
            await asyncio.wait_for(task, 60)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 0
        feeds = [r[0] for r in conn.execute("SELECT DISTINCT feed FROM ingest_stats WHERE worker = 'crypto-only'")]
    assert feeds == ["crypto:us"]
