"""Exceptions raised by tickvault's Alpaca REST client.

One class per way a call can fail, each carrying what a user needs to act on it: the HTTP method
and path (never the host's query secrets, never a header), the status, Alpaca's own ``message`` and
``code`` from the error body, and how many attempts were made before giving up.

What this module must never do: put an API key or secret into a message. The client redacts its
credentials from any server text before building one of these.

Hierarchy::

    AlpacaError
    ├── AuthError            401, 403 (bad keys, or an account not allowed to do this)
    ├── NotFoundError        404
    ├── UnprocessableError   422 (Alpaca's validation refusals, duplicate client_order_id, ...)
    ├── RateLimitError       429 still answered after every retry
    ├── ServerError          5xx still answered after every retry
    ├── ClientError          any other 4xx (400, 405, 409, ...)
    └── TransportError       no HTTP answer at all: connect error, timeout, broken connection
"""

from __future__ import annotations

__all__ = [
    "AlpacaError",
    "AuthError",
    "ClientError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "TransportError",
    "UnprocessableError",
    "error_class_for_status",
]


class AlpacaError(Exception):
    """A call to Alpaca's REST API failed.

    Attributes: ``method``, ``path`` (URL path without host or query), ``status`` (None when
    no HTTP answer arrived), ``code`` and ``alpaca_message`` (from Alpaca's JSON error body, when
    present), ``attempts`` (requests sent, retries included), ``retry_after`` (seconds the server
    asked us to wait, when it did).
    """

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int | None = None,
        code: int | str | None = None,
        alpaca_message: str | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.alpaca_message = alpaca_message
        self.attempts = attempts
        self.retry_after = retry_after
        self.detail = detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else (self.detail or "no response")
        text = f"{type(self).__name__}: {self.method} {self.path} -> {what}"
        if self.alpaca_message:
            text += f": {self.alpaca_message}"
        if self.code is not None:
            text += f" (alpaca code {self.code})"
        if self.status is not None and self.detail:
            text += f" [{self.detail}]"
        text += f" after {self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.retry_after is not None:
            text += f"; server asked to retry after {self.retry_after:g}s"
        return text

    def __str__(self) -> str:
        return self._describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()!r})"

    def __reduce__(self):  # keep keyword-only construction picklable (Prefect ships exceptions)
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[AlpacaError], state: dict) -> AlpacaError:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    Exception.__init__(obj, obj._describe())
    return obj


class AuthError(AlpacaError):
    """401/403: the key id or secret is wrong, or this account may not do this.

    Alpaca also answers 403 for some trading refusals (e.g. insufficient buying power, code
    40310000); ``code`` and ``alpaca_message`` tell them apart.
    """


class NotFoundError(AlpacaError):
    """404: no such order, position or path."""


class UnprocessableError(AlpacaError):
    """422: Alpaca understood the request and refused it (validation, duplicate client_order_id)."""


class RateLimitError(AlpacaError):
    """429 answered on every attempt: the account's request budget (200/min on free plans) is spent."""


class ServerError(AlpacaError):
    """5xx answered on every attempt. For an order submit without a client_order_id, the order may
    or may not exist; with one, look it up with ``get_order_by_client_id``."""


class ClientError(AlpacaError):
    """Any other 4xx: the request itself is wrong (400 bad parameter, 405, 409, ...)."""


class TransportError(AlpacaError):
    """No HTTP answer: connection refused or reset, DNS failure, read/connect/pool timeout.

    The underlying ``httpx`` exception is ``__cause__``.
    """


def error_class_for_status(status: int) -> type[AlpacaError]:
    """The exception class for a final (non-retried or retries-exhausted) HTTP status."""
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 422:
        return UnprocessableError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return ClientError
    return AlpacaError
