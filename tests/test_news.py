"""News: the stream's articles decoded (rejects alone, never raising), upserted on the article id (a
newer version replaces, an older never does), and the simulator's news wire through alpaca-py's
``NewsDataStream`` and ``NewsClient``, unchanged."""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.data.historical.news import NewsClient
    from alpaca.data.live.news import NewsDataStream
    from alpaca.data.requests import NewsRequest

from tickvault.alpaca.news import article_row, decode_news
from tickvault.alpaca.protocol import encode_frame, ns_to_datetime, rfc3339_to_ns
from tickvault.db.tables import UPSERT_NEWS
from tickvault.sim import Simulator
from tests.support.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

KEY, SECRET = "key", "secret"
ARTICLE = {"T": "n", "id": 24843171, "headline": "AAPL beats estimates", "summary": "s", "author": "A",
           "created_at": "2026-03-10T14:30:01.123456Z", "updated_at": "2026-03-10T14:30:01.123456Z",
           "url": "https://x/1", "content": "<p>c</p>", "symbols": ["AAPL", "MSFT"], "source": "benzinga"}


def test_an_article_decodes_to_a_row_with_exact_times():
    frame = decode_news(encode_frame([ARTICLE]))
    assert frame.articles == [(24843171, "AAPL beats estimates", "s", "A", "benzinga", "https://x/1", "<p>c</p>",
                               ["AAPL", "MSFT"], 1_773_153_001_123_456_000, 1_773_153_001_123_456_000)]
    assert frame.trades.time_last_ns == 1_773_153_001_123_456_000  # the reader's stream position
    assert decode_news(encode_frame([ARTICLE], use_msgpack=False)).articles == frame.articles


@pytest.mark.parametrize("bad, reason", [
    ({k: v for k, v in ARTICLE.items() if k != "id"}, "news missing field 'id'"),
    (dict(ARTICLE, symbols="AAPL"), "news has a field of the wrong type"),
    (dict(ARTICLE, created_at="yesterday"), "news has a field of the wrong type"),
    ({"T": "t", "S": "AAPL"}, "unknown message type 't' on the news stream"),
])
def test_a_bad_article_is_rejected_alone(bad, reason):
    frame = decode_news(encode_frame([ARTICLE, bad, dict(ARTICLE, id=2)]))
    assert [a[0] for a in frame.articles] == [24843171, 2]
    assert [r.reason for r in frame.rest.rejects] == [reason]


@pytest.mark.parametrize("data", [b"\xc1", b"\x91", "nope", b""])
def test_undecodable_news_frames_never_raise(data):
    frame = decode_news(data)
    assert frame.articles == [] and len(frame.rest.rejects) == 1


def test_an_updated_article_replaces_the_stored_one_and_an_older_version_never_does(conn):
    first = article_row(ARTICLE)
    newer = article_row(dict(ARTICLE, headline="AAPL beats estimates (updated)",
                             updated_at="2026-03-10T15:00:00Z", symbols=["AAPL"]))

    def params(row):
        return row[:8] + (ns_to_datetime(row[8]), ns_to_datetime(row[9]))

    with conn.transaction(force_rollback=True):
        for row in (first, newer, first):  # the old version arrives again last (a backfill, a replay)
            conn.execute(UPSERT_NEWS, params(row))
        stored = conn.execute("SELECT headline, symbols, updated_at, created_at FROM news").fetchall()
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM news WHERE symbols @> ARRAY['AAPL']"))
    assert stored == [("AAPL beats estimates (updated)", ["AAPL"], datetime(2026, 3, 10, 15, tzinfo=UTC),
                       datetime(2026, 3, 10, 14, 30, 1, 123456, tzinfo=UTC))]
    assert "news" in plan


async def test_news_data_stream_gets_every_article_version_for_its_symbols() -> None:
    async with Simulator(symbols=["AAPL", "MSFT", "NVDA"], rate=100, news_interval_s=0.02) as sim:
        stream = NewsDataStream(KEY, SECRET, raw_data=True, url_override=sim.news_stream_url)
        got = []

        async def on_news(article) -> None:
            got.append(article)

        stream.subscribe_news(on_news, "AAPL")
        task = asyncio.create_task(stream._run_forever())
        try:
            await wait_until(lambda: len(got) >= 20, 60, "20 AAPL articles")
        finally:
            await stream.stop_ws()
            sim.drop_connections()
            await asyncio.wait_for(task, 10)
        assert all("AAPL" in a["symbols"] for a in got)
        newest = {a["id"]: a for a in got}
        for article_id, article in newest.items():  # each id's last version received is the wire's truth or older
            assert rfc3339_to_ns(article["updated_at"]) <= rfc3339_to_ns(sim.news.truth[article_id]["updated_at"])
        assert any(a["headline"].endswith("(updated)") for a in got)


async def test_news_client_pages_through_the_newest_versions() -> None:
    async with Simulator(symbols=["AAPL", "MSFT"], rate=100, news_interval_s=0.005) as sim:
        await wait_until(lambda: sim.news.published >= 130, 60, "130 articles")
        sim.finish()
        client = NewsClient(KEY, SECRET, url_override=sim.rest_url)
        news = await asyncio.to_thread(client.get_news, NewsRequest(start=datetime(2000, 1, 1, tzinfo=UTC),
                                                                   include_content=True))
        got = {n.id: (n.headline, n.updated_at, n.content) for n in news.data["news"]}
        truth = {i: (a["headline"], datetime.fromisoformat(a["updated_at"]), a["content"])
                 for i, a in sim.news.truth.items()}
        assert len(got) == len(news.data["news"]) == len(truth) > 100  # several pages of 50, none twice
        assert got == truth
        only_msft = await asyncio.to_thread(client.get_news, NewsRequest(symbols="MSFT", limit=5))
        assert len(only_msft.data["news"]) == 5 and all("MSFT" in n.symbols for n in only_msft.data["news"])
