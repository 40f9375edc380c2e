"""TICKVAULT_FEEDS: which streams one worker records; a wrong value stops before anything starts."""

from __future__ import annotations

import pytest

from tickvault.config import ConfigError, load_settings
from tickvault.stream.worker import crypto_stream_url, stream_url


def test_unset_feeds_mean_the_stocks_feed_as_before():
    assert load_settings(feeds="").feeds == ["stocks:iex"]
    assert load_settings(feeds="", alpaca_feed="sip").feeds == ["stocks:sip"]


def test_feeds_name_each_stream_url():
    settings = load_settings(feeds="stocks:sip,crypto:eu-1", alpaca_stream_url="ws://127.0.0.1:1")
    assert settings.feeds == ["stocks:sip", "crypto:eu-1"]
    assert settings.alpaca_feed == "sip"  # the REST history and latest prices follow the stocks feed
    assert stream_url(settings) == "ws://127.0.0.1:1/v2/sip"
    assert crypto_stream_url(settings, "eu-1") == "ws://127.0.0.1:1/v1beta3/crypto/eu-1"


@pytest.mark.parametrize("value, says", [
    ("crypto:mars", "'crypto:mars' is not a feed"),
    ("stocks:iex,stocks:sip", "one connection per endpoint"),
    ("crypto:us,crypto:us-1", "one connection per endpoint"),
    ("options:opra", "TICKVAULT_OPTION_SYMBOLS is empty"),
])
def test_a_wrong_feed_is_refused_with_a_message_naming_the_variable(value, says):
    with pytest.raises(ConfigError) as err:
        load_settings(feeds=value)
    assert "TICKVAULT_FEEDS" in str(err.value) and says in str(err.value)


def test_unknown_crypto_channel_is_refused():
    with pytest.raises(ConfigError, match="TICKVAULT_CRYPTO_CHANNELS: .*unknown crypto channel"):
        load_settings(crypto_channels="trades,lulds")


def test_option_symbols_must_be_occ():
    assert load_settings(feeds="options:opra", option_symbols="aapl250117c00200000").option_symbols == [
        "AAPL250117C00200000"]
    with pytest.raises(ConfigError, match="TICKVAULT_OPTION_SYMBOLS: .*'AAPL' is not an OCC option symbol"):
        load_settings(option_symbols="AAPL")


def test_prometheus_text_labels_each_feed_and_types_each_metric_once():
    from tickvault.stream.metrics import Metrics, prometheus_text

    stocks, crypto = Metrics(), Metrics()
    stocks.add("trades", 5)
    crypto.add("trades", 7)
    text = prometheus_text("w", [("stocks:iex", stocks), ("crypto:us", crypto)])
    assert 'tickvault_trades_total{worker="w",feed="stocks:iex"} 5' in text
    assert 'tickvault_trades_total{worker="w",feed="crypto:us"} 7' in text
    assert text.count("# TYPE tickvault_trades_total counter") == 1
    single = prometheus_text("w", [(None, stocks)])
    assert 'tickvault_trades_total{worker="w"} 5' in single and "feed=" not in single
    assert single == stocks.prometheus("w")


def test_a_stocks_feed_that_contradicts_the_alpaca_feed_is_refused():
    with pytest.raises(ConfigError, match="TICKVAULT_FEEDS says stocks:sip but TICKVAULT_ALPACA_FEED says iex"):
        load_settings(feeds="stocks:sip", alpaca_feed="iex")
