"""Feed claims: at most one worker records a feed of an Alpaca account, across machines.

Alpaca allows one market-data connection per account and endpoint; two workers configured for the
same feed would knock each other off with error 406 for ever. Before it opens any stream a worker
claims each of its feeds in the shared database: a session-level advisory lock per (account, feed),
held on one dedicated connection for the worker's life, and a row in ``feed_claims`` naming the
holder. A second worker asking for a held feed is refused with :class:`FeedTaken`, whose message
names the holder (worker, host, pid, since when) and what to do. PostgreSQL releases the locks when
the holder's connection ends (exit, crash, a killed host's TCP timeout), so a stale row is simply
overwritten by the next claimer.

Must never: store an API key (the account is a hash of the key id), or hold any lock but its own.
Limits: a database restart drops the claim connection; the worker then runs unclaimed until it
restarts (logged), which is no worse than before claims existed.
"""

from __future__ import annotations

import hashlib
import logging
import socket

import psycopg

log = logging.getLogger("tickvault.feed_claims")

__all__ = ["FeedTaken", "account_id", "claim_feeds"]


class FeedTaken(RuntimeError):
    """Another live worker records this feed of this account; the message names it."""


def account_id(key_id: str) -> str:
    """A stable, non-reversible name of the Alpaca account behind ``key_id`` (16 hex digits)."""
    return hashlib.sha256(key_id.encode()).hexdigest()[:16]


async def claim_feeds(conninfo: str, *, account: str, feeds: list[str], worker: str,
                      pid: int) -> psycopg.AsyncConnection:
    """Claim every feed or none; returns the connection that holds the claims (close it to release).
    Raises :class:`FeedTaken` naming the first feed another worker holds."""
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=10,
                                                 application_name=f"tickvault-{worker}-claims")
    host = socket.gethostname()
    try:
        for feed in feeds:
            cur = await conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"{account}|{feed}",))
            if not (await cur.fetchone())[0]:
                cur = await conn.execute(
                    "SELECT worker, host, pid, claimed_at FROM feed_claims WHERE account = %s AND feed = %s",
                    (account, feed))
                holder = await cur.fetchone()
                who = (f"worker '{holder[0]}' on {holder[1]} (pid {holder[2]}, since {holder[3]:%Y-%m-%d %H:%M:%S %Z})"
                       if holder else "another worker")
                raise FeedTaken(
                    f"feed {feed} of this Alpaca account is already recorded by {who}: Alpaca allows one stream "
                    "connection per account and feed. Stop that worker, or give this one other TICKVAULT_FEEDS.")
            await conn.execute(
                "INSERT INTO feed_claims (account, feed, worker, host, pid) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (account, feed) DO UPDATE SET worker = excluded.worker, host = excluded.host, "
                "pid = excluded.pid, claimed_at = now()",
                (account, feed, worker, host, pid))
    except BaseException:
        await conn.close()  # releases whatever this call took
        raise
    return conn


async def release_feeds(conn: psycopg.AsyncConnection, *, account: str, worker: str, pid: int) -> None:
    """Remove this worker's rows and close the connection (which drops its locks)."""
    try:
        if not conn.closed:
            await conn.execute("DELETE FROM feed_claims WHERE account = %s AND worker = %s AND pid = %s",
                               (account, worker, pid))
    except psycopg.Error as exc:  # the locks go with the connection anyway
        log.warning("could not remove this worker's feed claims (%s); the next claimer overwrites them", exc)
    finally:
        await conn.close()
