"""The process's one pooled ``httpx.AsyncClient``: timeouts and pool limits in one place.

Every Alpaca REST call of a process (worker backfills, every task of a Prefect flow run) goes
through the client :func:`get_http_client` returns, so connections are reused (HTTP/1.1
keep-alive) and a flow run of hundreds of calls opens at most ``http_max_connections`` TCP+TLS
connections. Retry policy lives with the caller that knows what is safe to retry
(:mod:`tickvault.alpaca.rest`); this module owns transport settings only.

What this module must never do: create a client per call, put credentials on the shared client
(it is shared with every host the process talks to; Alpaca's auth headers are added per request by
:class:`tickvault.alpaca.rest.AlpacaREST`), or hand a client to an event loop other than the one it
was created on.

Event loops: an ``httpx.AsyncClient``'s pooled connections belong to the loop that opened them.
So "one client per process" is precisely "one client per live event loop" — in the worker and in a
flow run there is one loop, hence one client. When the loop a client was created on has been closed
(``asyncio.run`` called twice, pytest's per-test loops), the next :func:`get_http_client` on the new
loop drops the stale client (its sockets are closed by the garbage collector; it cannot be awaited on
a dead loop) and builds a fresh one. :func:`aclose_http_client` closes the current loop's client.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import httpx

from tickvault.config import Settings

__all__ = [
    "PoolStats",
    "aclose_http_client",
    "build_http_client",
    "get_http_client",
    "http_limits",
    "http_timeout",
    "pool_stats",
]

# Idle keep-alive connections are dropped after 30 s: below the 60 s idle timeout common to cloud
# load balancers (AWS ALB's default), so we close first instead of writing into a connection the far
# side has just dropped.
KEEPALIVE_EXPIRY_S = 30.0
# A TCP+TLS connect that has not completed in 5 s will not; fail it and let the retry policy decide,
# rather than waiting the full (longer) read timeout.
CONNECT_TIMEOUT_CAP_S = 5.0


def http_timeout(settings: Settings) -> httpx.Timeout:
    """Per-request timeouts: connect capped at 5 s, read/write/pool-wait at ``http_timeout_s``."""
    total = settings.http_timeout_s
    return httpx.Timeout(
        connect=min(total, CONNECT_TIMEOUT_CAP_S),
        read=total,
        write=total,
        # Waiting for a free pooled connection counts too: 100 gathered calls on a pool of 10 queue here.
        pool=total,
    )


def http_limits(settings: Settings) -> httpx.Limits:
    """Pool limits: every connection may stay alive, so a burst followed by another reuses all of them."""
    return httpx.Limits(
        max_connections=settings.http_max_connections,
        max_keepalive_connections=settings.http_max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )


@dataclass(slots=True)
class PoolStats:
    """What the pool is doing, for tests and metrics.

    ``connections_opened`` counts distinct TCP connections that have carried a response since the
    client was built (a connection reused by 1000 requests counts once); ``open_connections`` is the
    pool's current size (idle + busy), read from httpcore.
    """

    max_connections: int
    max_keepalive_connections: int
    connections_opened: int = 0
    requests: int = 0
    open_connections: int = 0


class _ConnectionCounter:
    """Response hook counting distinct connections by identity of httpcore's network stream.

    A ``WeakSet`` holds the streams seen so far: it never grows past the live connections, and a
    stream object cannot be confused with a later one. Cost: one set lookup per response.
    """

    __slots__ = ("_seen", "stats")

    def __init__(self, stats: PoolStats) -> None:
        self._seen: weakref.WeakSet[Any] = weakref.WeakSet()
        self.stats = stats

    async def __call__(self, response: httpx.Response) -> None:
        self.stats.requests += 1
        stream = response.extensions.get("network_stream")
        if stream is None:
            return
        if stream not in self._seen:
            self._seen.add(stream)
            self.stats.connections_opened += 1


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """A new pooled client from settings. Prefer :func:`get_http_client`; this is for tests and tools
    that need a private pool (and then own its ``aclose``)."""
    limits = http_limits(settings)
    stats = PoolStats(
        max_connections=limits.max_connections or 0,
        max_keepalive_connections=limits.max_keepalive_connections or 0,
    )
    client = httpx.AsyncClient(
        timeout=http_timeout(settings),
        limits=limits,
        http1=True,
        http2=False,  # HTTP/1.1 keep-alive: Alpaca's REST endpoints; h2 adds a dependency for nothing here
        trust_env=False,  # configuration comes from Settings only, not from *_PROXY variables
        follow_redirects=False,
        event_hooks={"response": [_ConnectionCounter(stats)]},
    )
    client._tickvault_pool_stats = stats  # type: ignore[attr-defined]
    return client


def pool_stats(client: httpx.AsyncClient) -> PoolStats:
    """Snapshot of a client's pool: limits, distinct connections used so far, current pool size."""
    stats: PoolStats | None = getattr(client, "_tickvault_pool_stats", None)
    if stats is None:
        stats = PoolStats(max_connections=0, max_keepalive_connections=0)
    pool = getattr(getattr(client, "_transport", None), "_pool", None)  # httpcore.AsyncConnectionPool
    open_now = len(pool.connections) if pool is not None and hasattr(pool, "connections") else 0
    return PoolStats(
        max_connections=stats.max_connections,
        max_keepalive_connections=stats.max_keepalive_connections,
        connections_opened=stats.connections_opened,
        requests=stats.requests,
        open_connections=open_now,
    )


# One client per live event loop (see the module docstring). Keyed weakly: a loop that is garbage
# collected takes its entry with it; a loop that is closed but still referenced is swept on access.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def get_http_client(settings: Settings) -> httpx.AsyncClient:
    """The shared client for the running event loop, built from ``settings`` on first use.

    Must be called from inside a running loop. Later calls return the same client whatever
    ``settings`` they pass: the pool is configured once, by the first caller (the process's Settings).
    """
    loop = asyncio.get_running_loop()
    with _lock:
        client = _clients.get(loop)
        if client is not None and not client.is_closed:
            return client
        for other in [lp for lp in _clients if lp.is_closed()]:
            # Its connections belong to a dead loop and cannot be closed by awaiting; drop them.
            del _clients[other]
        client = build_http_client(settings)
        _clients[loop] = client
        return client


async def aclose_http_client() -> None:
    """Close the running loop's shared client (idempotent). The next ``get_http_client`` builds anew."""
    loop = asyncio.get_running_loop()
    with _lock:
        client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()
