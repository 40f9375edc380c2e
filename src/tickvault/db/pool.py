"""Connection pools: one ``AsyncConnectionPool`` per process and database URL, sized from settings.

Connections are handed out for exactly one unit of work (``async with pool.connection()``); none
outlives its block. ``check`` verifies a connection before use so a database restart costs one
failed attempt, not a poisoned pool.
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

from tickvault.config import Settings
from tickvault.db import database_url


async def open_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None,
                    name: str = "tickvault", url: str | None = None) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        url or database_url(settings),
        min_size=min_size,
        max_size=max_size or settings.db_pool_max,
        name=name,
        open=False,
        check=AsyncConnectionPool.check_connection,
        # A restarting server takes seconds; reconnect attempts back off up to 5 s apart.
        reconnect_timeout=300,
        kwargs={"connect_timeout": 10, "application_name": name},
    )
    await pool.open(wait=False)
    return pool
