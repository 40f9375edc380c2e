"""The strategy hook: a documented protocol a trader implements, loaded from settings.

A strategy sees every closed one-minute bar with its indicator values and may return order
intents. It runs on the worker's event loop, inside the processor, so it must be quick (well
under a millisecond) and must never block: no I/O, no sleeping. Intents go to the order gateway,
which submits them asynchronously with a deterministic ``client_order_id`` (a retry, a restart or a
duplicate bar never submits twice).

Example (``TICKVAULT_STRATEGY=mybot.rsi:RsiReversion``)::

    class RsiReversion:
        name = "rsi-reversion"
        def on_bar(self, bar, indicators):
            if indicators["rsi_14"] < 30:
                return [OrderIntent(bar.symbol, "buy", Decimal("1"))]
            return None
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    time_ns: int  # bar start, UTC ns
    open: float
    high: float
    low: float
    close: float
    volume: int
    trade_count: int | None
    vwap: float | None


@dataclass(frozen=True, slots=True)
class OrderIntent:
    symbol: str
    side: Literal["buy", "sell"]
    qty: Decimal
    type: Literal["market", "limit"] = "market"
    limit_price: Decimal | None = None
    time_in_force: Literal["day", "gtc", "ioc", "fok"] = "day"
    tag: str = ""  # distinguishes two intents of one strategy on the same bar and symbol

    def __post_init__(self) -> None:
        if self.side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', not {self.side!r}")
        if not isinstance(self.qty, Decimal) or self.qty <= 0:
            raise ValueError("qty must be a positive Decimal")
        if self.type == "limit" and self.limit_price is None:
            raise ValueError("a limit intent needs limit_price")


@runtime_checkable
class Strategy(Protocol):
    name: str

    def on_bar(self, bar: Bar, indicators: Mapping[str, float]) -> Iterable[OrderIntent] | None: ...


class StrategyLoadError(ImportError):
    """TICKVAULT_STRATEGY names something that cannot be loaded or is not a Strategy."""


def load_strategy(spec: str) -> Strategy:
    """Load ``module:attribute``; a class or factory is called with no arguments."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise StrategyLoadError(f"TICKVAULT_STRATEGY must look like 'package.module:Name', got {spec!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StrategyLoadError(f"cannot load strategy {spec!r}: {exc}") from exc
    except Exception as exc:  # the user's module failed while importing: say so, not a traceback later
        raise StrategyLoadError(f"cannot load strategy {spec!r}: importing {module_name} raised "
                                f"{type(exc).__name__}: {exc}") from exc
    try:
        obj = target() if isinstance(target, type) or (callable(target) and not hasattr(target, "on_bar")) else target
    except Exception as exc:
        raise StrategyLoadError(f"cannot load strategy {spec!r}: {attr}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Strategy):
        raise StrategyLoadError(f"{spec!r} has no `name` and `on_bar(bar, indicators)`: not a Strategy")
    return obj
