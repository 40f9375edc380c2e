"""Recordings of a live market-data stream, and their messages for the simulator to replay.

``tickvault sim record`` connects to a stream (Alpaca's, or any that speaks its protocol) as a client
and writes every frame exactly as it arrived, with the time it arrived; ``tickvault sim --replay FILE``
serves those messages again to whoever subscribes, at the recorded pace (or faster), and fills
orders against them, so a bot can be tested on a recorded day.

File format (gzip-compressed; the frames are the stream's own msgpack, about 40 B per trade after
compression)::

    b"TVREC1\\n"                       magic and version
    one JSON line                      {"url", "subscription", "started_at", "content_type"}
    records, each:                     <q recv_ns> <B kind: 0 bytes, 1 text> <I length> <payload>

What this module must never do: write the key or secret (the auth exchange is not recorded), hold a
recording in memory (records are read and written one at a time), or block the loop on a write
(a frame is written when it arrives; gzip buffers).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
from websockets.asyncio.client import connect

from tickvault.alpaca.protocol import (
    auth_message,
    encode_client_message,
    rfc3339_to_ns,
    subscribe_message,
)

MAGIC = b"TVREC1\n"
_RECORD = struct.Struct("<qBI")
_CONTROL = frozenset(("success", "error", "subscription"))


class RecordingError(Exception):
    """A recording that cannot be read, or a stream that refused to be recorded."""


class FrameWriter:
    """Appends frames to a new recording file (one ``write`` per frame; ``close`` flushes)."""

    def __init__(self, path: Path | str, meta: dict) -> None:
        self._file: BinaryIO = gzip.open(path, "wb", compresslevel=6)  # type: ignore[assignment]
        self._file.write(MAGIC)
        self._file.write(json.dumps(meta, separators=(",", ":")).encode() + b"\n")
        self.frames = 0

    def write(self, recv_ns: int, payload: bytes | str) -> None:
        if isinstance(payload, str):
            data, kind = payload.encode(), 1
        else:
            data, kind = payload, 0
        self._file.write(_RECORD.pack(recv_ns, kind, len(data)))
        self._file.write(data)
        self.frames += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_recording(path: Path | str) -> tuple[dict, Iterator[tuple[int, bytes | str]]]:
    """``(meta, frames)``: the recording's header and an iterator of ``(recv_ns, payload)``."""
    f = gzip.open(path, "rb")
    try:
        if f.read(len(MAGIC)) != MAGIC:
            raise RecordingError(f"{path} is not a tickvault recording (no {MAGIC!r} header)")
        meta = json.loads(f.readline())
    except (OSError, ValueError) as exc:
        f.close()
        raise RecordingError(f"{path}: unreadable recording ({exc})") from None

    def frames() -> Iterator[tuple[int, bytes | str]]:
        with f:
            while True:
                head = f.read(_RECORD.size)
                if not head:
                    return
                if len(head) < _RECORD.size:
                    return  # a recording cut short (the recorder was killed): what came before stands
                recv_ns, kind, length = _RECORD.unpack(head)
                data = f.read(length)
                if len(data) < length:
                    return
                yield recv_ns, (data.decode() if kind == 1 else data)

    return meta, frames()


def frame_messages(payload: bytes | str) -> list[dict]:
    """The data messages of one recorded frame (control messages dropped), ``t`` as int ns."""
    if isinstance(payload, str):
        msgs = json.loads(payload)
        for m in msgs:
            if isinstance(m, dict) and isinstance(m.get("t"), str):
                m["t"] = rfc3339_to_ns(m["t"])
    else:
        msgs = msgpack.unpackb(payload, raw=False, timestamp=2)
    if not isinstance(msgs, list):
        return []
    return [m for m in msgs if isinstance(m, dict) and m.get("T") not in _CONTROL]


async def record_stream(
    url: str,
    key: str,
    secret: str,
    path: Path | str,
    *,
    subscription: dict[str, list[str]],
    seconds: float | None = None,
    max_frames: int | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Connect to ``url`` as a client (msgpack), authenticate, subscribe (``{"trades": [...], ...}``),
    and write every data frame to ``path`` until ``seconds`` pass, ``max_frames`` are written or
    ``stop`` is set. Returns the number of frames written."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    meta = {"url": url, "subscription": subscription, "content_type": "application/msgpack",
            "started_at": time.time_ns()}
    async with connect(url, additional_headers={"Content-Type": "application/msgpack"},
                       max_size=2**24, compression=None) as ws:
        await _expect(ws, "success", "connected")
        await ws.send(encode_client_message(auth_message(key, secret)))
        await _expect(ws, "success", "authenticated")
        await ws.send(encode_client_message(subscribe_message(**subscription)))
        await _expect(ws, "subscription", None)
        stopped = asyncio.ensure_future(stop.wait())  # one for the whole recording, not one per frame
        try:
            with FrameWriter(path, meta) as writer:
                while not stop.is_set() and (max_frames is None or writer.frames < max_frames):
                    timeout = None if deadline is None else deadline - loop.time()
                    if timeout is not None and timeout <= 0:
                        break
                    recv = asyncio.ensure_future(ws.recv())
                    done, _ = await asyncio.wait({recv, stopped}, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if recv not in done:
                        recv.cancel()
                        break
                    writer.write(time.time_ns(), recv.result())
                return writer.frames
        finally:
            stopped.cancel()


async def _expect(ws: Any, kind: str, msg: str | None) -> None:
    """Read control frames until one of ``kind`` (and ``msg``) arrives; an error frame raises."""
    async with asyncio.timeout(30):
        while True:
            frame = await ws.recv()
            items = json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame, raw=False, timestamp=2)
            for m in items if isinstance(items, list) else []:
                if m.get("T") == "error":
                    raise RecordingError(f"the stream refused: error {m.get('code')} {m.get('msg')}")
                if m.get("T") == kind and (msg is None or m.get("msg") == msg):
                    return
