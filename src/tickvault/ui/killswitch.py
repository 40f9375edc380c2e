"""The dashboard's kill switch: halt strategy orders, cancel open orders, record it.

Off unless ``TICKVAULT_UI_KILL_SWITCH=true``, and then every request must carry
``TICKVAULT_UI_KILL_SWITCH_TOKEN`` (compared in constant time). Every attempt, allowed or refused,
becomes a ``ui_audit`` row (migration 008) with the client address and the outcome; the token
itself is never stored or logged.

Engaging it: (1) in one transaction, a ``ui_audit`` row and a ``trading_halts`` row; from then on
every worker's order gateway refuses new intents (``stream/orders.py`` checks the table before it
records one); (2) every order the broker reports open is canceled through the REST client (the
broker is the truth: orders the database does not know are canceled too); the count and any
errors are written back to the audit row. Lifting the halt is a separate, equally audited action;
it cancels nothing and resubmits nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from tickvault.config import Settings

log = logging.getLogger("tickvault.ui.killswitch")


class KillSwitchRefused(PermissionError):
    """The kill switch is disabled, or the token is wrong; the attempt was recorded."""


@dataclass
class KillSwitchResult:
    audit_id: int
    halted: bool
    canceled: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _token_ok(settings: Settings, token: str | None) -> bool:
    expected = settings.ui_kill_switch_token
    if not settings.ui_kill_switch or expected is None or not token:
        return False
    return hmac.compare_digest(token.encode(), expected.get_secret_value().encode())


async def _audit(pool: AsyncConnectionPool, action: str, client: str | None, allowed: bool, outcome: str,
                 detail: dict | None = None) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO ui_audit (action, client, allowed, outcome, detail) VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (action, client, allowed, outcome, json.dumps(detail) if detail is not None else None),
        )
        return (await cur.fetchone())[0]  # type: ignore[index]


async def _check(settings: Settings, pool: AsyncConnectionPool, action: str, client: str | None,
                 token: str | None) -> None:
    if _token_ok(settings, token):
        return
    why = "kill switch disabled (TICKVAULT_UI_KILL_SWITCH)" if not settings.ui_kill_switch else "wrong or missing token"
    await _audit(pool, action, client, False, f"refused: {why}")
    log.warning("%s refused for %s: %s", action, client, why)
    raise KillSwitchRefused(why)


async def engage(settings: Settings, pool: AsyncConnectionPool, rest, *, client: str | None, token: str | None,
                 reason: str) -> KillSwitchResult:
    """Halt the gateways and cancel every open order at the broker (see the module docstring)."""
    await _check(settings, pool, "kill_switch", client, token)
    reason = (reason or "kill switch").strip()[:200]
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "INSERT INTO ui_audit (action, client, allowed, outcome) VALUES ('kill_switch', %s, true, 'halting') "
            "RETURNING id", (client,))
        audit_id = (await cur.fetchone())[0]  # type: ignore[index]
        await conn.execute("INSERT INTO trading_halts (reason, audit_id) VALUES (%s, %s)", (reason, audit_id))
    result = KillSwitchResult(audit_id=audit_id, halted=True)
    try:
        open_orders = await rest.list_orders(status="open")
    except Exception as exc:  # noqa: BLE001 - recorded; the halt holds either way
        result.errors.append(f"listing open orders: {exc}")
        open_orders = []
    for order in open_orders:
        try:
            await rest.cancel_order(order.id)
            result.canceled.append(order.client_order_id or str(order.id))
        except Exception as exc:  # noqa: BLE001 - one failed cancel must not stop the others
            result.errors.append(f"cancel {order.client_order_id or order.id}: {exc}")
    outcome = f"halted; canceled {len(result.canceled)} open order(s)" + (
        f"; {len(result.errors)} error(s)" if result.errors else "")
    async with pool.connection() as conn:
        await conn.execute("UPDATE ui_audit SET outcome = %s, detail = %s WHERE id = %s",
                           (outcome, json.dumps({"reason": reason, "canceled": result.canceled,
                                                 "errors": result.errors}), audit_id))
    log.warning("kill switch engaged by %s: %s", client, outcome)
    return result


async def lift(settings: Settings, pool: AsyncConnectionPool, *, client: str | None, token: str | None) -> int:
    """End every active halt; returns how many were lifted."""
    await _check(settings, pool, "lift_halt", client, token)
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute("UPDATE trading_halts SET lifted_at = now() WHERE lifted_at IS NULL")
        n = cur.rowcount
        await conn.execute(
            "INSERT INTO ui_audit (action, client, allowed, outcome) VALUES ('lift_halt', %s, true, %s)",
            (client, f"lifted {n} halt(s)"))
    return n
