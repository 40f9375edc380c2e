"""Columnar decode: ns per message from a msgpack frame to what each client hands on, in process.

The SAME replayed frames for every client: trades from the simulator's market model, encoded as
the simulator encodes them (``bench_decode.make_frames``), in frames of 100 and of 1000 messages.
No socket: this isolates the decoding that ``bench_decode`` measures behind a WebSocket.

- tickvault columnar: ``decode_columnar(frame)``: the frame's trades as binary COPY tuple data,
  time range and newest trade per symbol (compiled ``tickvault._columnar``).
- tickvault decode_frame: ``decode_frame(frame)``: one tuple per trade (today's worker path).
- tickvault decode_frame + COPY: the same plus ``encode_trade_copy`` (the Python encoder), i.e. the
  columnar result the slow way.
- alpaca-py raw: ``StockDataStream(raw_data=True)``'s own consume loop body: ``msgpack.unpackb``
  then, per message, ``_is_market_data`` and an awaited ``_dispatch`` to a trade handler.
- msgspec (only when installed, not a dependency): ``msgspec.msgpack.Decoder`` into tagged
  ``Struct``s with a ``msgspec.Raw`` time, alone and with the exact int ns made from the raw bytes
  in Python (what a msgspec decoder would still need before any COPY encoding).

Timing: each client runs ROUNDS interleaved rounds of about ROUND_S seconds over the frames; the
figure is the best round (see bench/README.md). Run alone: ``python -m bench.bench_columnar``.
"""

from __future__ import annotations

import asyncio
import sys
import time

from bench.bench_decode import FRAME_SIZE, SYMBOLS, machine_info, make_frames
from bench.common import write_results

FRAME_SIZES = (FRAME_SIZE, 1000)  # the simulator's frame size, and Alpaca's largest
MSGS = 20_000  # distinct trades per frame size (20 or 200 distinct frames, replayed in a loop)
ROUNDS = 7
ROUND_S = 0.25
GOAL_RATIO = 3.0  # the decode goal: >= 3x alpaca-py's raw path
BASE_NS = 1_704_205_800_123_456_789  # fixed trade times, so every run decodes the same bytes


def _alpaca_raw_client(crypto: bool = False):
    """One frame through alpaca-py's raw consume loop (its code, minus the socket): ``StockDataStream``'s,
    or with ``crypto`` ``CryptoDataStream``'s (the same loop in their common base class)."""
    import msgpack
    from alpaca.data.live.crypto import CryptoDataStream
    from alpaca.data.live.stock import StockDataStream
    from alpaca.data.live.websocket import _CHANNEL_TYPES, _is_market_data

    stream = (CryptoDataStream if crypto else StockDataStream)("key", "secret", raw_data=True)
    seen = [0]

    async def on_trade(trade) -> None:
        seen[0] += 1

    stream.subscribe_trades(on_trade, "*")
    unpackb = msgpack.unpackb
    dispatch = stream._dispatch

    async def consume(frames: list[bytes]) -> None:
        for r in frames:
            for msg in unpackb(r):
                is_market_data = _is_market_data(msg)
                if msg.get("T") in _CHANNEL_TYPES and not is_market_data:
                    continue
                if is_market_data:
                    stream._data_received = True
                await dispatch(msg)

    return consume


def _msgspec_clients():
    try:
        import msgspec
    except ImportError:
        return None

    # defstruct, not class syntax: this module's postponed annotations would name a local import.
    optional = (list[str] | None, None)
    Trade = msgspec.defstruct("Trade", [("S", str), ("i", int), ("x", str), ("p", float), ("s", int),
                                        ("t", msgspec.Raw), ("c", *optional), ("z", str | None, None)],
                              tag_field="T", tag="t")
    Quote = msgspec.defstruct("Quote", [("S", str), ("bx", str), ("bp", float), ("bs", int), ("ax", str),
                                        ("ap", float), ("as", int), ("t", msgspec.Raw), ("c", *optional),
                                        ("z", str | None, None)], tag_field="T", tag="q")

    decode = msgspec.msgpack.Decoder(list[Trade | Quote]).decode
    from_bytes = int.from_bytes

    def ts_ns(raw: msgspec.Raw) -> int:
        b = bytes(raw)
        if b[0] == 0xD6:  # 4-byte form
            return from_bytes(b[2:6], "big") * 1_000_000_000
        if b[0] == 0xD7:  # 8-byte form
            v = from_bytes(b[2:10], "big")
            return (v & 0x3FFFFFFFF) * 1_000_000_000 + (v >> 34)
        return from_bytes(b[7:15], "big", signed=True) * 1_000_000_000 + from_bytes(b[3:7], "big")

    def with_ns(frame: bytes) -> list[int]:
        return [ts_ns(m.t) for m in decode(frame)]

    return {"msgspec_structs": decode, "msgspec_structs_with_ns": with_ns, "version": msgspec.__version__}


def _round(run_all, frames: list[bytes], msgs_per_frame: int) -> float:
    """ns per message for one round of about ROUND_S seconds; ``run_all(frames)`` decodes them all."""
    n = 0
    started = time.perf_counter_ns()
    deadline = started + int(ROUND_S * 1e9)
    while True:
        run_all(frames)
        n += len(frames)
        now = time.perf_counter_ns()
        if now >= deadline:
            return (now - started) / (n * msgs_per_frame)


def each(fn):
    """A client that decodes a list of frames with ``fn``, one call per frame."""
    def run_all(frames: list[bytes]) -> None:
        for f in frames:
            fn(f)
    return run_all


def best_of_rounds(clients: dict, frames: list[bytes], msgs_per_frame: int, rounds: int) -> tuple[dict, dict]:
    """(best ns/msg per client, every round's) over ``rounds`` interleaved rounds: a noisy moment hits
    every client alike, and only ever slows a round down."""
    times: dict[str, list[float]] = {k: [] for k in clients}
    for _ in range(rounds):
        for name, run_all in clients.items():
            times[name].append(_round(run_all, frames, msgs_per_frame))
    return ({k: round(min(v), 1) for k, v in times.items()},
            {k: [round(x, 1) for x in v] for k, v in times.items()})


def run() -> dict:
    from tickvault.alpaca.columnar import HAVE_EXTENSION, decode_columnar, encode_trade_copy
    from tickvault.alpaca.protocol import decode_frame

    started = time.perf_counter()
    machine = machine_info()
    alpaca_consume = _alpaca_raw_client()
    loop = asyncio.new_event_loop()
    msgspec_clients = _msgspec_clients()

    def frame_then_copy(f: bytes) -> bytes:
        return encode_trade_copy(decode_frame(f).trades)

    clients = {
        "tickvault_columnar": each(decode_columnar),
        "tickvault_decode_frame": each(decode_frame),
        "tickvault_decode_frame_plus_copy": each(frame_then_copy),
        # One coroutine per round, as alpaca-py's consume loop runs: no event-loop start per frame.
        "alpaca_py_raw": lambda frames: loop.run_until_complete(alpaca_consume(frames)),
    }
    if msgspec_clients:
        clients["msgspec_structs"] = each(msgspec_clients["msgspec_structs"])
        clients["msgspec_structs_with_ns"] = each(msgspec_clients["msgspec_structs_with_ns"])

    per_size: dict[str, dict] = {}
    try:
        for size in FRAME_SIZES:
            frames = make_frames(MSGS, SYMBOLS, size, base_ns=BASE_NS)
            best, rounds = best_of_rounds(clients, frames, size, ROUNDS)
            per_size[str(size)] = {
                "ns_per_msg": best,
                "speedup_vs_alpaca_py_raw": round(best["alpaca_py_raw"] / best["tickvault_columnar"], 2),
                "speedup_vs_decode_frame": round(
                    best["tickvault_decode_frame"] / best["tickvault_columnar"], 2),
                "speedup_vs_decode_frame_plus_copy": round(
                    best["tickvault_decode_frame_plus_copy"] / best["tickvault_columnar"], 2),
                "rounds_ns_per_msg": rounds,
            }
    finally:
        loop.close()
    ratios = {size: r["speedup_vs_alpaca_py_raw"] for size, r in per_size.items()}
    result = {
        "columnar_ns_per_msg": {s: r["ns_per_msg"]["tickvault_columnar"] for s, r in per_size.items()},
        "alpaca_py_raw_ns_per_msg": {s: r["ns_per_msg"]["alpaca_py_raw"] for s, r in per_size.items()},
        "decode_frame_ns_per_msg": {
            s: r["ns_per_msg"]["tickvault_decode_frame"] for s, r in per_size.items()},
        "ratio_vs_alpaca_py_raw": ratios,
        "have_extension": HAVE_EXTENSION,
        "frame_sizes": per_size,
        "goal": f"decode_columnar >= {GOAL_RATIO:g}x alpaca-py raw per message, at every frame size",
        "goal_met": all(r >= GOAL_RATIO for r in ratios.values()),
        "setup": {
            "frames": "bench_decode.make_frames: simulator trades, simulator encoding, fixed times",
            "symbols": SYMBOLS,
            "distinct_trades_per_size": MSGS,
            "timing": f"in process, no socket; best of {ROUNDS} interleaved rounds of ~{ROUND_S} s",
            "msgspec": msgspec_clients["version"] if msgspec_clients else "not installed (optional peer)",
        },
        "machine": machine,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_results("columnar", result)
    return result


if __name__ == "__main__":
    out = run()
    for size, r in out["frame_sizes"].items():
        figures = ", ".join(f"{k} {v:,.0f}" for k, v in r["ns_per_msg"].items())
        ratio = r["speedup_vs_alpaca_py_raw"]
        print(f"{size}-message frames, ns/msg: {figures}; columnar {ratio}x alpaca-py raw")
    print(f"goal {'met' if out['goal_met'] else 'NOT met'}")
    sys.exit(0)
