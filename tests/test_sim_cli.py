"""`tickvault sim` as a command: its options override the settings, it prints what a bot needs, and
`tickvault sim record` / `--replay` let a bot run on a recorded stream. Clients are alpaca-py's."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import warnings
from datetime import UTC, datetime

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.data.live import StockDataStream
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

from tickvault.sim import Simulator
from tickvault.sim.recording import frame_messages, read_recording, record_stream

pytestmark = pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")

TICKVAULT = [sys.executable, "-m", "tickvault.cli"]
KEY, SECRET = "rec-key", "rec-secret"


async def _banner(proc: asyncio.subprocess.Process) -> list[str]:
    lines = []
    async with asyncio.timeout(60):
        while line := (await proc.stdout.readline()).decode():
            if not line.strip():
                return lines
            lines.append(line.rstrip())
    raise AssertionError(f"no banner: {lines} {(await proc.stderr.read()).decode()[-2000:]}")


async def _record(live: Simulator, *args: str) -> bytes:
    """Run a `tickvault sim` recording command against ``live`` with its keys; its stdout once it succeeded."""
    env = {**os.environ, "TICKVAULT_ALPACA_KEY_ID": KEY, "TICKVAULT_ALPACA_SECRET_KEY": SECRET}
    proc = await asyncio.create_subprocess_exec(
        *TICKVAULT, "sim", *args, "--url", live.stream_url("iex"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.terminate()
    return await asyncio.wait_for(proc.wait(), 30)


async def test_cli_options_override_the_settings_and_the_banner_says_where_and_how() -> None:
    env = {**os.environ, "TICKVAULT_SIM_PORT": "1", "TICKVAULT_SIM_SYMBOLS": "7"}  # overridden below
    for name in ("TICKVAULT_ALPACA_KEY_ID", "TICKVAULT_ALPACA_SECRET_KEY"):
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(
        *TICKVAULT, "sim", "--port", "0", "--rest-port", "0", "--symbols", "AAPL,MSFT", "--rate", "200",
        "--seed", "3", "--frame-size", "10", "--hours", "calendar", "--clock-start", "2025-03-04T10:00:00-05:00",
        "--latency-ms", "1", "--rate-500", "0", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        banner = await _banner(proc)
        text = "\n".join(banner)
        assert "2 symbols" in text and "200.0 trades/s, frames of 10" in text
        assert "key id sim-key  secret sim-secret" in text and "hours calendar" in text
        assert "faults       --latency-ms 1" in text
        rest = next(line.split()[-1] for line in banner if line.strip().startswith("REST"))
        stream = next(line.split()[-1] for line in banner if line.strip().startswith("market data"))
        assert not stream.startswith("ws://127.0.0.1:1/")
        client = TradingClient("sim-key", "sim-secret", paper=True, url_override=rest)
        clock = await asyncio.to_thread(client.get_clock)
        assert clock.is_open and clock.timestamp.astimezone(UTC).date() == datetime(2025, 3, 4).date()
        assert sorted(a.symbol for a in await asyncio.to_thread(client.get_all_assets)) == ["AAPL", "MSFT"]
    finally:
        assert await _stop(proc) == 0


async def test_bad_option_is_a_configuration_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        *TICKVAULT, "sim", "--hours", "sometimes", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"TICKVAULT_SIM_HOURS" in err


async def test_record_a_live_stream_then_replay_it_to_a_bot(tmp_path) -> None:
    recording = tmp_path / "day.tvrec"
    # The "live" Alpaca here is another simulator; `tickvault sim record` connects to it as a client.
    async with Simulator(symbols=["AAPL", "MSFT"], rate=3_000, frame_size=50, key=KEY, secret=SECRET) as live:
        out = await _record(live, "record", str(recording), "--symbols", "*", "--channels", "trades,quotes",
                            "--frames", "40")
        assert b"recorded 40 frames" in out
    assert KEY.encode() not in recording.read_bytes() and SECRET.encode() not in recording.read_bytes()
    meta, frames = read_recording(recording)
    recorded = [(t, frame_messages(p)) for t, p in frames]
    assert meta["subscription"] == {"trades": ["*"], "quotes": ["*"]} and len(recorded) == 40
    trades = [(m["S"], m["i"], m["p"]) for _, msgs in recorded for m in msgs if m["T"] == "t"]
    quotes = [m for _, msgs in recorded for m in msgs if m["T"] == "q"]
    assert trades and quotes

    # Replayed as fast as the bot reads: every recorded trade, in order, and orders fill on its quotes.
    opened = time.monotonic_ns()
    async with Simulator(replay=recording, replay_speed=0, key=KEY, secret=SECRET) as replay:
        client = TradingClient(KEY, SECRET, paper=True, url_override=replay.rest_url)
        clock = await asyncio.to_thread(client.get_clock)
        # The recorded day's time: the replay's clock starts at the first frame and runs in real
        # time, so it reads no later than the first frame plus the time since the simulator opened.
        clock_ns = clock.timestamp.timestamp() * 1e9  # a float: microseconds survive, hence 1 ms either side
        assert recorded[0][0] - 1e6 <= clock_ns <= recorded[0][0] + (time.monotonic_ns() - opened) + 1e6
        stream = StockDataStream(KEY, SECRET, url_override=replay.stream_url("iex"))
        got = []
        done = asyncio.Event()

        async def on_trade(t) -> None:
            got.append((t.symbol, t.id, t.price))
            if len(got) == len(trades):
                done.set()

        stream.subscribe_trades(on_trade, "*")
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(done.wait(), 60)
            await asyncio.wait_for(replay.finished.wait(), 60)
        finally:
            await stream.stop_ws()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert got == trades and replay.truth_count() == len(trades)
        assert sorted(replay.symbols) == sorted({s for s, _, _ in trades})
        last_quote = next(m for m in reversed(quotes) if m["S"] == "AAPL")
        order = await asyncio.to_thread(client.submit_order, MarketOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert order.status == OrderStatus.FILLED and float(order.filled_avg_price) == last_quote["ap"]


async def test_paced_replay_follows_the_recorded_times(tmp_path) -> None:
    recording = tmp_path / "paced.tvrec"
    async with Simulator(symbols=["AAPL"], rate=500, frame_size=5, key=KEY, secret=SECRET) as live:
        await record_stream(live.stream_url("iex"), KEY, SECRET, recording, subscription={"trades": ["AAPL"]},
                            max_frames=40)
    _, frames = read_recording(recording)
    times = [t for t, _ in frames]
    span_s = (times[-1] - times[0]) / 1e9
    loop = asyncio.get_running_loop()
    started = loop.time()  # the replay's clock starts with the simulator
    async with Simulator(replay=recording, replay_speed=4, key=KEY, secret=SECRET) as replay:
        stream = StockDataStream(KEY, SECRET, url_override=replay.stream_url("iex"))

        async def on_trade(t) -> None:
            pass

        stream.subscribe_trades(on_trade, "AAPL")
        task = asyncio.create_task(stream._run_forever())
        try:
            await asyncio.wait_for(replay.finished.wait(), 60)
        finally:
            await stream.stop_ws()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        took = loop.time() - started
        assert took >= span_s / 4 * 0.9  # never faster than asked (a slow machine may take longer)
        assert replay.clock() >= times[-1]


async def test_record_flag_records_like_the_record_command_and_wrong_mixes_are_refused(tmp_path) -> None:
    recording = tmp_path / "flag.tvrec"
    async with Simulator(symbols=["AAPL"], rate=2_000, frame_size=20, key=KEY, secret=SECRET) as live:
        out = await _record(live, "--record", str(recording), "--symbols", "AAPL", "--channels", "trades",
                            "--frames", "5")
        assert b"recorded 5 frames" in out
    meta, frames = read_recording(recording)
    assert meta["subscription"] == {"trades": ["AAPL"]} and len(list(frames)) == 5
    for args, why in ((["--record", str(tmp_path / "x"), "--symbols", "AAPL", "--port", "0"], b"--port"),
                      (["--record", str(tmp_path / "x")], b"--symbols"),
                      (["--frames", "3"], b"--record only")):
        proc = await asyncio.create_subprocess_exec(
            *TICKVAULT, "sim", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2 and why in err, err
    assert not (tmp_path / "x").exists()
    proc = await asyncio.create_subprocess_exec(  # a calendar file that is not there is said, not ignored
        *TICKVAULT, "sim", "--port", "0", "--rest-port", "0", "--hours", "calendar", "--calendar-file",
        str(tmp_path / "holidays.txt"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0 and b"cannot read the calendar file" in err, err
