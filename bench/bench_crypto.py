"""Crypto: the crypto feed measured as the stocks feed is (``bench_columnar``, ``bench_ingest``).

1. Decode, in process, ns per message on the SAME replayed frames (crypto trades from the simulator's
   crypto market model: fractional sizes, taker side; encoded as the simulator encodes them; frames of
   100 and 1000 messages):
   - tickvault: ``decode_crypto(frame)`` (compiled ``tickvault._columnar.decode_crypto``): the frame's
     trades as ``crypto_trades`` binary COPY tuple data, sizes as numeric, time range, newest per pair;
   - tickvault Python: ``crypto._decode_python`` (the fallback without the extension), the same result;
   - alpaca-py raw: ``CryptoDataStream(raw_data=True)``'s own consume loop body (``msgpack.unpackb``,
     then per message ``_is_market_data`` and an awaited ``_dispatch`` to a trade handler).
2. Ingest into ``crypto_trades``, in a scratch database (bench_ingest's phases, shorter):
   - bare binary COPY (the peer): the same trades decoded in advance into rows (sizes as the Decimal
     the writer stores), psycopg binary COPY with the writer's statement and types, large batches;
   - raw COPY (context): the pre-encoded COPY data written as it is (the database's ceiling);
   - the worker flat out: ``run_worker`` with the ``crypto:us`` feed only (reader → queue → processor
     → writer) against bench_decode's replay server in its own process; rate = trades / (ack → last
     commit). No paced latency phases here (kept short on a shared 2-core host).

Run alone: ``python -m bench.bench_crypto``. Writes ``bench/results/crypto.json``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import msgpack

from bench.bench_columnar import _alpaca_raw_client, best_of_rounds, each
from bench.bench_decode import machine_info, make_crypto_frames
from bench.bench_ingest import (
    BARE_COPY_BATCH,
    FRAME_SIZE,
    bare_copy,
    count_trades,
    fresh_tables,
    raw_copy,
    worker_phase,
)
from bench.common import scratch_database, write_results

TABLE = "crypto_trades"
PAIRS = 4  # the simulator's default pairs: BTC/USD, ETH/USD, SOL/USD, LTC/USD
FRAME_SIZES = (FRAME_SIZE, 1000)
DECODE_MSGS = 20_000  # distinct trades per frame size, replayed in a loop
ROUNDS = 5
INGEST_TRADES = 500_000  # as the stocks bench: a few seconds per phase, startup under a few %
COPY_ROUNDS = 2
WORKER_ROUNDS = 2
GOALS = {"decode_vs_alpaca_py_raw": 3.0, "worker_vs_bare_copy": 0.90}  # the stocks' goals (columnar, ingest)
BASE_NS = 1_767_225_600_123_456_789  # fixed trade times: every run decodes the same bytes


def _decode() -> dict:
    from tickvault.alpaca import crypto

    consume = _alpaca_raw_client(crypto=True)
    loop = asyncio.new_event_loop()

    clients = {
        "tickvault_decode_crypto": each(crypto.decode_crypto),
        "tickvault_decode_crypto_python": each(crypto._decode_python),
        "alpaca_py_raw": lambda frames: loop.run_until_complete(consume(frames)),
    }
    per_size: dict[str, dict] = {}
    try:
        for size in FRAME_SIZES:
            frames = make_crypto_frames(DECODE_MSGS, PAIRS, size, base_ns=BASE_NS)
            best, rounds = best_of_rounds(clients, frames, size, ROUNDS)
            per_size[str(size)] = {
                "ns_per_msg": best,
                "ratio_vs_alpaca_py_raw": round(best["alpaca_py_raw"] / best["tickvault_decode_crypto"], 2),
                "ratio_c_vs_python": round(best["tickvault_decode_crypto_python"] / best["tickvault_decode_crypto"], 2),
                "rounds_ns_per_msg": rounds,
            }
    finally:
        loop.close()
    return per_size


async def _ingest(url: str) -> dict:
    from tickvault.alpaca.crypto import decode_crypto, size_decimal
    from tickvault.db.tables import CRYPTO_TRADES

    base_ns = time.time_ns()
    frames = make_crypto_frames(INGEST_TRADES, PAIRS, FRAME_SIZE, base_ns=base_ns)
    # The rows the writer's COPY carries: (time, pair, id, price, numeric size, taker side, time_ns).
    rows = [(m["t"], m["S"], m["i"], m["p"], size_decimal(m["s"]), m["tks"], m["t"])
            for f in frames for m in msgpack.unpackb(f, timestamp=2)]
    blocks = [decode_crypto(f).trades.copy for f in frames]
    bare_runs, raw_runs = [], []
    for _ in range(COPY_ROUNDS):
        fresh_tables(url, TABLE)
        bare_runs.append(bare_copy(url, rows, CRYPTO_TRADES) | {"stored": count_trades(url, TABLE)})
        fresh_tables(url, TABLE)
        raw_runs.append(raw_copy(url, blocks, len(rows), CRYPTO_TRADES) | {"stored": count_trades(url, TABLE)})
    n = len(rows)
    del rows, blocks
    worker_runs = []
    for i in range(WORKER_ROUNDS):
        fresh_tables(url, TABLE)
        worker_runs.append(await worker_phase(url, n, base_ns, 0.0, f"bench-crypto-{i}", crypto_pairs=PAIRS))
        worker_runs[-1]["stored"] = count_trades(url, TABLE)

    def best(runs: list[dict]) -> dict:
        return max(runs, key=lambda r: r["rows_per_s"]) | {"rounds": [round(r["rows_per_s"]) for r in runs]}

    return {"bare_copy": best(bare_runs), "raw_copy": best(raw_runs), "worker_flat_out": best(worker_runs)}


def run() -> dict:
    logging.getLogger("tickvault").setLevel(logging.WARNING)
    from tickvault.alpaca.columnar import HAVE_EXTENSION

    started = time.perf_counter()
    machine = machine_info()
    decode = _decode()
    with scratch_database("tickvault_bench_crypto") as url:
        ingest = asyncio.run(_ingest(url))
    bare, raw, worker = ingest["bare_copy"], ingest["raw_copy"], ingest["worker_flat_out"]
    result = {
        "decode_ns_per_msg": {s: r["ns_per_msg"]["tickvault_decode_crypto"] for s, r in decode.items()},
        "alpaca_py_raw_ns_per_msg": {s: r["ns_per_msg"]["alpaca_py_raw"] for s, r in decode.items()},
        "python_fallback_ns_per_msg": {s: r["ns_per_msg"]["tickvault_decode_crypto_python"] for s, r in decode.items()},
        "decode_ratio_vs_alpaca_py_raw": {s: r["ratio_vs_alpaca_py_raw"] for s, r in decode.items()},
        "worker_rows_per_s": round(worker["rows_per_s"]),
        "bare_copy_rows_per_s": round(bare["rows_per_s"]),
        "worker_vs_bare_copy": round(worker["rows_per_s"] / bare["rows_per_s"], 3),
        "raw_copy_rows_per_s": round(raw["rows_per_s"]),
        "worker_vs_raw_copy": round(worker["rows_per_s"] / raw["rows_per_s"], 3),
        "worker_cpu_s_per_million_trades": worker["cpu_s_per_million_trades"],
        "goal": f"as for stocks: decode >= {GOALS['decode_vs_alpaca_py_raw']:g}x alpaca-py raw at every frame size; "
                f"worker >= {GOALS['worker_vs_bare_copy']:.0%} of bare COPY",
        "goals_met": {
            "decode_vs_alpaca_py_raw": all(r["ratio_vs_alpaca_py_raw"] >= GOALS["decode_vs_alpaca_py_raw"]
                                           for r in decode.values()),
            "worker_vs_bare_copy": worker["rows_per_s"] / bare["rows_per_s"] >= GOALS["worker_vs_bare_copy"],
        },
        "rows_exact": bare["stored"] == raw["stored"] == worker["stored"] == bare["rows"],
        "have_extension": HAVE_EXTENSION,
        "frame_sizes": decode,
        "ingest": ingest,
        "setup": {
            "frames": "bench_decode.make_crypto_frames: simulator crypto trades, simulator encoding, fixed times",
            "pairs": PAIRS,
            "decode": f"in process, no socket; best of {ROUNDS} interleaved rounds, {DECODE_MSGS} distinct trades",
            "ingest_trades": INGEST_TRADES,
            "bare_copy_batch_rows": BARE_COPY_BATCH,
            "ingest_rounds": {"copy": COPY_ROUNDS, "worker": WORKER_ROUNDS},
        },
        "machine": machine,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_results("crypto", result)
    return result


if __name__ == "__main__":
    out = run()
    for size, r in out["frame_sizes"].items():
        figures = ", ".join(f"{k} {v:,.0f}" for k, v in r["ns_per_msg"].items())
        print(f"crypto decode, {size}-message frames, ns/msg: {figures}; {r['ratio_vs_alpaca_py_raw']}x alpaca-py raw")
    print(f"crypto ingest: worker {out['worker_rows_per_s']:,} rows/s vs bare COPY {out['bare_copy_rows_per_s']:,} "
          f"({out['worker_vs_bare_copy']:.0%}), raw COPY {out['raw_copy_rows_per_s']:,} "
          f"({out['worker_vs_raw_copy']:.0%}); rows exact: {out['rows_exact']}")
    sys.exit(0)
