"""The Alpaca-protocol simulator: market-data WebSocket, trade-updates stream, trading and data REST.

In-process (tests, benchmarks)::

    async with Simulator(symbols=10, rate=None, max_trades=10_000) as sim:
        sim.stream_url("iex"), sim.rest_url, sim.trade_updates_url

From the CLI: ``await run_simulator(settings)``. See :mod:`tickvault.sim.server` for the bounds and
:mod:`tickvault.sim.market` for the ground-truth checksum and its SQL.
"""

from tickvault.sim.broker import Broker, BrokerError
from tickvault.sim.calendar import SimClock
from tickvault.sim.market import Market, TruthChecksum, symbol_names
from tickvault.sim.recording import read_recording, record_stream
from tickvault.sim.server import Simulator, run_simulator

__all__ = [
    "Broker",
    "BrokerError",
    "Market",
    "SimClock",
    "Simulator",
    "TruthChecksum",
    "read_recording",
    "record_stream",
    "run_simulator",
    "symbol_names",
]
