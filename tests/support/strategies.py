"""Strategies the tests load through TICKVAULT_STRATEGY, as a trader would load theirs."""

from decimal import Decimal

from tickvault.stream.strategy import OrderIntent


class BuyOneShareEachBar:
    """Buys one share of every symbol on every closed bar once its RSI is known."""

    name = "buy-each-bar"

    def on_bar(self, bar, indicators):
        return [OrderIntent(bar.symbol, "buy", Decimal("1"), tag="test")]
