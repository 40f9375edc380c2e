"""A worker pointed at an in-process :class:`~tickvault.sim.server.Simulator`: its TICKVAULT_* variables."""

from __future__ import annotations

from pathlib import Path


def worker_env(sim, db_url: str, run_dir: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of a ``tickvault worker run`` against ``sim`` (Prometheus off: several workers
    of a test must not collide on its port); ``extra`` adds or overrides variables."""
    return {
        "TICKVAULT_DATABASE_URL": db_url,
        "TICKVAULT_ALPACA_KEY_ID": sim.key,
        "TICKVAULT_ALPACA_SECRET_KEY": sim.secret,
        "TICKVAULT_ALPACA_STREAM_URL": sim.ws_url,
        "TICKVAULT_ALPACA_DATA_URL": sim.rest_url,
        "TICKVAULT_ALPACA_TRADING_URL": sim.rest_url,
        "TICKVAULT_ALPACA_TRADE_STREAM_URL": sim.trade_updates_url,
        "TICKVAULT_SYMBOLS": ",".join(sim.symbols),
        "TICKVAULT_METRICS_PORT": "0",
        "TICKVAULT_RUN_DIR": str(run_dir),
        "TICKVAULT_WORKER_NAME": name,
        **extra,
    }
