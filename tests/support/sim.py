"""A worker pointed at an in-process :class:`~tickvault.sim.server.Simulator`: its settings, as the
``Settings`` of an in-process worker or as the TICKVAULT_* variables of a ``tickvault worker run``.

One list of fields for both, so a setting the config gains or renames is followed in one place.
"""

from __future__ import annotations

from pathlib import Path

from tickvault.config import Settings, load_settings

# A simulator queue no test's worker can fill: ~250 s of frames at 20,000 trades/s in frames of 100
# (~8 KB each; it only fills while the worker falls behind). With the default 256 frames a loaded CI
# host makes the simulator drop the worker as a slow client (407), which an exactness test must not
# depend on: keeping up is a speed question, for bench/.
PATIENT_QUEUE_FRAMES = 50_000


def worker_fields(sim, db_url: str, run_dir: Path, name: str | None = None) -> dict[str, object]:
    """The settings (by field name) of a worker against ``sim``: its URLs and keys, its symbols, the
    test's database and run directory, Prometheus off (several workers of a test must not collide
    on its port); ``name``: the worker's name (None: the default)."""
    fields: dict[str, object] = {
        "database_url": db_url,
        "alpaca_key_id": sim.key,
        "alpaca_secret_key": sim.secret,
        "alpaca_stream_url": sim.ws_url,
        "alpaca_data_url": sim.rest_url,
        "alpaca_trading_url": sim.rest_url,
        "alpaca_trade_stream_url": sim.trade_updates_url,
        "symbols": ",".join(sim.symbols),
        "metrics_port": 0,
        "run_dir": str(run_dir),
    }
    if name is not None:
        fields["worker_name"] = name
    return fields


def worker_settings(sim, db_url: str, run_dir: Path, name: str | None = None, **overrides: object) -> Settings:
    """The :class:`Settings` of an in-process worker against ``sim``; ``overrides`` adds or replaces fields."""
    return load_settings(**{**worker_fields(sim, db_url, run_dir, name), **overrides})


def worker_env(sim, db_url: str, run_dir: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of a ``tickvault worker run`` against ``sim``; ``extra`` adds or overrides
    variables (by their TICKVAULT_* names)."""
    return {**{f"TICKVAULT_{k.upper()}": str(v) for k, v in worker_fields(sim, db_url, run_dir, name).items()},
            **extra}
