"""Async client for Alpaca's trading and market-data REST APIs, on the process's pooled httpx client.

alpaca-py's ``TradingClient`` is blocking (``requests``); tickvault's flows and worker are async,
so this module speaks the same REST paths (see ``/work/shared/alpaca-protocol.md``) over the one
``httpx.AsyncClient`` of :mod:`tickvault.http`. Calls that do not depend on each other can go out
together with ``asyncio.gather``; the pool bounds the connections they open.

Retry policy (all of it is here, in :meth:`AlpacaREST._request`, over :class:`tickvault.retry.RetryPolicy`,
the one policy of every retry loop; Alpaca's free plan allows 200 requests/min, so a burst that hits
429 backs off from 0.25 s doubling to at most 8 s; four retries span ~15 s):

* Retried: HTTP 429, 500, 502, 503, 504 and transport failures (connect errors and timeouts, read
  timeouts, dropped connections), at most ``http_max_retries`` times, with exponential backoff and
  full jitter (``uniform(0, min(cap, base * 2**n))``). A ``Retry-After`` header (seconds or an HTTP
  date) — or, on a 429 without one, Alpaca's ``X-RateLimit-Reset`` — sets the wait instead; a wait
  longer than ``RetryPolicy.max_retry_after_s`` is not slept through, the error is raised at once
  with ``retry_after`` set so a scheduler can come back later.
* Never retried: any other 4xx (401/403/404/422/...): they raise their exception class at once.
* ``POST /v2/orders`` is not idempotent. Without a ``client_order_id`` it is retried only when the
  request provably never reached Alpaca (429, connect error, connect or pool timeout). With one, it
  is retried like a GET; if a retry after an ambiguous failure (timeout, 5xx, dropped connection)
  is refused with 422 "client_order_id must be unique", the first attempt landed: the order is
  fetched by its client id and returned. Submitting is then idempotent.

Every JSON body is parsed exactly once, with ``parse_float=Decimal`` (prices stay exact).

What this module must never do: log or raise an API key or secret (headers are never logged, server
text is redacted before it reaches an exception), create an HTTP client per call, or retry an order
submit that might double-fill.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from tickvault.alpaca.errors import AlpacaError, TransportError, UnprocessableError, error_class_for_status
from tickvault.alpaca.models import (
    Account,
    Asset,
    FillActivity,
    HistBar,
    HistQuote,
    HistTrade,
    OPTION_ACTIVITY_TYPES,
    OptionActivity,
    Order,
    OrderRequest,
    Position,
    format_rfc3339,
)
from tickvault.config import Settings
from tickvault.http import get_http_client
from tickvault.retry import RetryPolicy

__all__ = ["RETRY_STATUSES", "AlpacaREST", "RetryPolicy", "collect"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# httpx failures after which the request surely never reached the server: safe to resend anything.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# httpx failures that are our own bug or configuration, not a flaky network: never retried.
_NOT_TRANSIENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)

T = TypeVar("T")
A = TypeVar("A", FillActivity, OptionActivity)  # an activity model: the pages of one paged list
TimeArg = datetime | str | int  # aware datetime (naive = UTC), RFC 3339 text, or epoch nanoseconds


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date. None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _parse_json(content: bytes) -> Any:
    return json.loads(content, parse_float=Decimal) if content else None


def _csv(symbols: str | Iterable[str]) -> str:
    return symbols if isinstance(symbols, str) else ",".join(symbols)


async def collect(pages: AsyncIterator[list[T]]) -> list[T]:
    """All items of a paged iterator in one list (for small windows; large ones should stream)."""
    out: list[T] = []
    async for page in pages:
        out.extend(page)
    return out


class AlpacaREST:
    """Alpaca trading + market-data REST calls, async, typed, retried.

    ``client``: an ``httpx.AsyncClient`` to use; by default the process's shared one from
    :func:`tickvault.http.get_http_client` (looked up per call, so one ``AlpacaREST`` may be used
    from successive event loops). ``trading_url``/``data_url`` override the settings (the
    simulator serves both on one URL). ``retry`` overrides the retry policy built from settings.
    """

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient | None = None,
        *,
        trading_url: str | None = None,
        data_url: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self.trading_url = _base(trading_url or settings.alpaca_trading_url)
        self.data_url = _base(data_url or settings.alpaca_data_url)
        self.retry = retry or RetryPolicy.from_settings(settings)
        self.default_feed = settings.alpaca_feed
        self._secrets: tuple[str, ...] = ()
        headers: dict[str, str] = {"Accept": "application/json"}
        if settings.alpaca_key_id is not None:
            key_id = settings.alpaca_key_id.get_secret_value()
            headers["APCA-API-KEY-ID"] = key_id
            self._secrets += (key_id,)
        if settings.alpaca_secret_key is not None:
            secret = settings.alpaca_secret_key.get_secret_value()
            headers["APCA-API-SECRET-KEY"] = secret
            self._secrets += (secret,)
        # Longest first, so a secret containing the key id is still fully redacted; very short
        # values would redact innocent text and are not real credentials anyway.
        self._secrets = tuple(sorted((s for s in self._secrets if len(s) >= 4), key=len, reverse=True))
        self._headers = headers  # built once; never logged, never in repr

    def __repr__(self) -> str:
        keyed = "set" if self._secrets else "unset"
        return f"AlpacaREST(trading_url={self.trading_url!r}, data_url={self.data_url!r}, keys={keyed})"

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The pooled client calls go through (for :func:`tickvault.http.pool_stats`, event hooks)."""
        return self._http()

    # ----------------------------------------------------------------------------- account

    async def get_account(self) -> Account:
        return Account.model_validate(await self._request("GET", self.trading_url, "/v2/account"))

    async def get_positions(self) -> list[Position]:
        rows = await self._request("GET", self.trading_url, "/v2/positions")
        return [Position.model_validate(row) for row in rows or ()]

    # ----------------------------------------------------------------------------- assets

    async def list_assets(
        self,
        status: Literal["active", "inactive"] | None = "active",
        asset_class: Literal["us_equity", "us_option", "crypto"] = "us_equity",
    ) -> list[Asset]:
        """``GET /v2/assets``: the broker's asset list (one response, ~12k US equities, ~3 MB; Alpaca
        does not page it). ``status=None`` asks for every status."""
        params: dict[str, Any] = {"asset_class": asset_class}
        if status is not None:
            params["status"] = status
        rows = await self._request("GET", self.trading_url, "/v2/assets", params=params)
        return [Asset.model_validate(row) for row in rows or ()]

    # ----------------------------------------------------------------------------- calendar

    async def calendar(self, start: date, end: date) -> list[dict[str, Any]]:
        """``GET /v2/calendar``: the exchange's trading days in ``[start, end]`` (New York dates),
        each ``{date, open, close, session_open, session_close, settlement_date}`` with New York
        wall-clock times as Alpaca writes them (``"09:30"``, ``"0400"``); holidays have no item.
        Read by :mod:`tickvault.indicators.sessions`."""
        params = {"start": start.isoformat(), "end": end.isoformat()}
        rows = await self._request("GET", self.trading_url, "/v2/calendar", params=params)
        return rows  # checked item by item by the reader (sessions.SessionCalendar.from_alpaca)

    # ----------------------------------------------------------------------------- orders

    async def list_orders(
        self,
        status: Literal["open", "closed", "all"] = "open",
        limit: int = 500,  # Alpaca's maximum; its default is 50
        after: TimeArg | None = None,
        until: TimeArg | None = None,
        direction: Literal["asc", "desc"] = "desc",
        symbols: str | Sequence[str] | None = None,
        nested: bool | None = None,
    ) -> list[Order]:
        params: dict[str, Any] = {"status": status, "limit": limit, "direction": direction}
        if after is not None:
            params["after"] = format_rfc3339(after)
        if until is not None:
            params["until"] = format_rfc3339(until)
        if symbols:
            params["symbols"] = _csv(symbols)
        if nested is not None:
            params["nested"] = "true" if nested else "false"
        rows = await self._request("GET", self.trading_url, "/v2/orders", params=params)
        return [Order.model_validate(row) for row in rows or ()]

    async def get_order(self, order_id: str) -> Order:
        path = f"/v2/orders/{quote(str(order_id), safe='')}"
        return Order.model_validate(await self._request("GET", self.trading_url, path))

    async def get_order_by_client_id(self, client_order_id: str) -> Order:
        raw = await self._request(
            "GET",
            self.trading_url,
            "/v2/orders:by_client_order_id",
            params={"client_order_id": client_order_id},
        )
        return Order.model_validate(raw)

    async def submit_order(self, order: OrderRequest) -> Order:
        """Submit an order; idempotent when it carries a ``client_order_id`` (see the module docstring)."""
        cid = order.client_order_id
        try:
            raw = await self._request(
                "POST",
                self.trading_url,
                "/v2/orders",
                body=order.to_wire(),
                idempotent=cid is not None,
                duplicate_landed=cid is not None,
            )
        except _FirstAttemptLanded:
            log.info(
                "order submit: client_order_id %s already accepted by an earlier attempt; fetching it", cid
            )
            return await self.get_order_by_client_id(cid)  # type: ignore[arg-type]
        return Order.model_validate(raw)

    async def cancel_order(self, order_id: str) -> None:
        """Request cancellation (Alpaca answers 204). A 422 means the order is no longer cancelable."""
        await self._request("DELETE", self.trading_url, f"/v2/orders/{quote(str(order_id), safe='')}")

    # ----------------------------------------------------------------------------- activities

    def fill_activities(
        self,
        after: TimeArg | None = None,
        page_size: int = 100,
        until: TimeArg | None = None,
    ) -> AsyncIterator[list[FillActivity]]:
        """Fill activities oldest first, one page per iteration; the next page starts after the last id."""
        return self._activities("/v2/account/activities/FILL", {}, FillActivity, after, until, page_size)

    def option_activities(
        self,
        after: TimeArg | None = None,
        page_size: int = 100,
        until: TimeArg | None = None,
    ) -> AsyncIterator[list[OptionActivity]]:
        """Option exercises, assignments, expiries and their share deliveries (``OPEXC``, ``OPASN``,
        ``OPEXP``, ``OPTRD``) oldest first, one page per iteration, in one paged list."""
        params = {"activity_types": ",".join(OPTION_ACTIVITY_TYPES)}
        return self._activities("/v2/account/activities", params, OptionActivity, after, until, page_size)

    async def _activities(
        self,
        path: str,
        params: dict[str, Any],
        model: type[A],
        after: TimeArg | None,
        until: TimeArg | None,
        page_size: int,
    ) -> AsyncIterator[list[A]]:
        """``GET /v2/account/activities…`` oldest first; a page shorter than ``page_size`` is the last,
        and each next page starts after the previous page's last id (Alpaca's ``page_token``)."""
        params = {**params, "direction": "asc", "page_size": page_size}
        if after is not None:
            params["after"] = format_rfc3339(after)
        if until is not None:
            params["until"] = format_rfc3339(until)
        while True:
            rows = await self._request("GET", self.trading_url, path, params=params)
            page = [model.model_validate(row) for row in rows or ()]
            if page:
                yield page
            if len(page) < page_size:
                return
            params["page_token"] = page[-1].id

    # ----------------------------------------------------------------------------- market data

    def historical_trades(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg | None = None,
        feed: str | None = None,
        limit: int = 10_000,
    ) -> AsyncIterator[list[HistTrade]]:
        """Trades in ``[start, end]``, ascending, one page (≤ ``limit`` items, all symbols) per iteration."""
        return self._historical(
            "/v2/stocks/trades", "trades", HistTrade.from_wire, symbols, start, end, feed, limit
        )

    def historical_quotes(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg | None = None,
        feed: str | None = None,
        limit: int = 10_000,
    ) -> AsyncIterator[list[HistQuote]]:
        return self._historical(
            "/v2/stocks/quotes", "quotes", HistQuote.from_wire, symbols, start, end, feed, limit
        )

    def historical_bars(
        self,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg | None = None,
        feed: str | None = None,
        limit: int = 10_000,
        timeframe: str = "1Min",
    ) -> AsyncIterator[list[HistBar]]:
        return self._historical(
            "/v2/stocks/bars",
            "bars",
            HistBar.from_wire,
            symbols,
            start,
            end,
            feed,
            limit,
            timeframe=timeframe,
        )

    def crypto_trades(
        self, location: str, symbols: str | Sequence[str], start: TimeArg, end: TimeArg | None = None,
        limit: int = 10_000,
    ) -> AsyncIterator[list[tuple]]:
        """``GET /v1beta3/crypto/{location}/trades``: pages of ``CRYPTO_TRADE_FIELDS`` tuples (the
        stream's rows: fractional size, taker side), ascending, ≤ ``limit`` items a page."""
        from tickvault.alpaca.crypto import trade_row_from_rest

        return self._historical(f"/v1beta3/crypto/{location}/trades", "trades", trade_row_from_rest, symbols,
                                start, end, None, limit, with_feed=False)

    async def crypto_latest_trades(self, location: str, symbols: str | Sequence[str]) -> dict[str, tuple]:
        """``GET /v1beta3/crypto/{location}/latest/trades``: pair → its CRYPTO_TRADE_FIELDS tuple."""
        from tickvault.alpaca.crypto import trade_row_from_rest

        body = await self._request("GET", self.data_url, f"/v1beta3/crypto/{location}/latest/trades",
                                   params={"symbols": _csv(symbols)})
        return {sym: trade_row_from_rest(sym, raw) for sym, raw in ((body or {}).get("trades") or {}).items()}

    def crypto_bars(
        self, location: str, symbols: str | Sequence[str], start: TimeArg, end: TimeArg | None = None,
        limit: int = 10_000, timeframe: str = "1Min",
    ) -> AsyncIterator[list[tuple]]:
        """``GET /v1beta3/crypto/{location}/bars``: pages of ``CRYPTO_BAR_FIELDS`` tuples."""
        from tickvault.alpaca.crypto import bar_row_from_rest

        return self._historical(f"/v1beta3/crypto/{location}/bars", "bars", bar_row_from_rest, symbols, start, end,
                                None, limit, with_feed=False, timeframe=timeframe)

    def option_trades(
        self, symbols: str | Sequence[str], start: TimeArg, end: TimeArg | None = None, feed: str = "indicative",
        limit: int = 10_000,
    ) -> AsyncIterator[list[tuple]]:
        """``GET /v1beta1/options/trades``: pages of ``OPTION_TRADE_FIELDS`` tuples, ascending."""
        from tickvault.alpaca.options import trade_row_from_rest

        return self._historical("/v1beta1/options/trades", "trades", trade_row_from_rest, symbols, start, end, feed,
                                limit)

    async def news(
        self, start: TimeArg, end: TimeArg | None = None, symbols: Sequence[str] = (), limit: int = 50,
    ) -> AsyncIterator[list[tuple]]:
        """``GET /v1beta1/news``: pages of ``NEWS_FIELDS`` tuples (content included), oldest first, ≤ 50 an
        item page (Alpaca's limit). Only one page is alive at a time."""
        from tickvault.alpaca.news import article_row

        params: dict[str, Any] = {"start": format_rfc3339(start), "limit": limit, "sort": "asc",
                                  "include_content": "true"}
        if end is not None:
            params["end"] = format_rfc3339(end)
        if symbols:
            params["symbols"] = _csv(symbols)
        while True:
            body = await self._request("GET", self.data_url, "/v1beta1/news", params=params) or {}
            page = [article_row(raw) for raw in body.get("news") or ()]
            if page:
                yield page
            token = body.get("next_page_token")
            if not token:
                return
            params["page_token"] = token

    async def _historical(
        self,
        path: str,
        key: str,
        build: Any,
        symbols: str | Sequence[str],
        start: TimeArg,
        end: TimeArg | None,
        feed: str | None,
        limit: int,
        with_feed: bool = True,  # the crypto paths name their venue in the path instead
        **extra: str,
    ) -> AsyncIterator[list[Any]]:
        # Only one page is alive at a time: memory stays bounded by `limit` whatever the window.
        params: dict[str, Any] = {
            "symbols": _csv(symbols),
            "start": format_rfc3339(start),
            "limit": limit,
            "sort": "asc",
            **extra,
        }
        if with_feed:
            params["feed"] = feed or self.default_feed
        if end is not None:
            params["end"] = format_rfc3339(end)
        while True:
            body = await self._request("GET", self.data_url, path, params=params) or {}
            by_symbol = body.get(key) or {}
            page = [build(symbol, raw) for symbol, rows in by_symbol.items() for raw in rows or ()]
            if page:
                yield page
            token = body.get("next_page_token")
            if not token:
                return
            params["page_token"] = token

    async def latest_trades(
        self, symbols: str | Sequence[str], feed: str | None = None
    ) -> dict[str, HistTrade]:
        body = await self._request(
            "GET",
            self.data_url,
            "/v2/stocks/trades/latest",
            params={"symbols": _csv(symbols), "feed": feed or self.default_feed},
        )
        return {sym: HistTrade.from_wire(sym, raw) for sym, raw in ((body or {}).get("trades") or {}).items()}

    async def latest_quotes(
        self, symbols: str | Sequence[str], feed: str | None = None
    ) -> dict[str, HistQuote]:
        body = await self._request(
            "GET",
            self.data_url,
            "/v2/stocks/quotes/latest",
            params={"symbols": _csv(symbols), "feed": feed or self.default_feed},
        )
        return {sym: HistQuote.from_wire(sym, raw) for sym, raw in ((body or {}).get("quotes") or {}).items()}

    # ----------------------------------------------------------------------------- transport

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else get_http_client(self._settings)

    async def _request(
        self,
        method: str,
        base: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool = True,
        duplicate_landed: bool = False,
    ) -> Any:
        """Send one call with the retry policy; return its parsed JSON body (None when empty).

        ``idempotent=False``: retry only failures where the request never reached the server.
        ``duplicate_landed``: a 422 duplicate-client_order_id after an ambiguous failure raises
        :class:`_FirstAttemptLanded` (the caller fetches the order instead of failing).
        """
        client = self._http()
        url = base + path
        policy = self.retry
        attempts = 0
        ambiguous = False  # an earlier attempt may have been processed by Alpaca
        while True:
            attempts += 1
            try:
                response = await client.request(method, url, params=params, json=body, headers=self._headers)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, _NEVER_SENT)
                transient = not isinstance(exc, _NOT_TRANSIENT)
                if transient and (idempotent or never_sent) and not policy.gives_up(attempts - 1):
                    ambiguous = ambiguous or not never_sent
                    delay = policy.backoff(attempts - 1)
                    log.warning(
                        "%s %s: %s, retry %d/%d in %.3fs",
                        method, path, type(exc).__name__, attempts, policy.max_retries, delay,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                    continue
                raise TransportError(
                    method=method,
                    path=path,
                    attempts=attempts,
                    detail=self._redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__),
                ) from exc

            status = response.status_code
            if status < 400:
                return _parse_json(response.content)

            if status in RETRY_STATUSES and (idempotent or status == 429) and not policy.gives_up(attempts - 1):
                delay, asked = self._retry_delay(response, attempts)
                if asked is None or policy.honours(asked):
                    ambiguous = ambiguous or status != 429
                    log.warning(
                        "%s %s: HTTP %d, retry %d/%d in %.3fs%s",
                        method, path, status, attempts, policy.max_retries, delay,
                        f" (Retry-After {asked:g}s)" if asked is not None else "",
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                    continue

            error = self._error(method, path, response, attempts)
            if (
                duplicate_landed
                and ambiguous
                and isinstance(error, UnprocessableError)
                and _is_duplicate(error)
            ):
                raise _FirstAttemptLanded from error
            raise error

    def _retry_delay(self, response: httpx.Response, attempts: int) -> tuple[float, float | None]:
        """(seconds to sleep, seconds the server asked for or None)."""
        asked = parse_retry_after(response.headers.get("Retry-After"))
        if asked is None and response.status_code == 429:
            reset = response.headers.get("X-RateLimit-Reset")  # Alpaca: epoch seconds when the budget refills
            if reset and response.headers.get("X-RateLimit-Remaining", "0") == "0":
                try:
                    asked = max(0.0, float(reset) - time.time())
                except ValueError:
                    asked = None
        if asked is None:
            return self.retry.backoff(attempts - 1), None
        # Wait at least what was asked; a little jitter so 100 gathered calls do not return in one burst.
        return asked + random.uniform(0.0, min(0.1 * asked, 1.0)), asked

    def _error(self, method: str, path: str, response: httpx.Response, attempts: int) -> AlpacaError:
        status = response.status_code
        code: int | str | None = None
        message: str | None = None
        try:
            parsed = _parse_json(response.content)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            code = parsed.get("code")
            message = parsed.get("message") or parsed.get("msg")
            message = str(message) if message is not None else None
        elif response.content:
            message = response.content[:300].decode("utf-8", "replace").strip() or None
        cls = error_class_for_status(status)
        return cls(
            method=method,
            path=path,
            status=status,
            code=code,
            alpaca_message=self._redact(message) if message else None,
            attempts=attempts,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "****")
        return text


class _FirstAttemptLanded(Exception):
    """Internal: a retried submit was refused as a duplicate, so an earlier attempt created the order."""


def _is_duplicate(error: AlpacaError) -> bool:
    text = (error.alpaca_message or "").lower()
    return "client_order_id" in text and ("unique" in text or "duplicate" in text or "exists" in text)


def _base(url: str) -> str:
    url = url.rstrip("/")
    # alpaca-py's base URLs carry no /v2; accept one given with it.
    return url.removesuffix("/v2")
