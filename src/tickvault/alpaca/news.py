"""Alpaca's news stream (``/v1beta1/news``) and news history (``GET /v1beta1/news``) as pure functions.

Wire (Alpaca's docs, alpaca-py's ``News``): a news message is ``{"T": "n", "id": int, "headline",
"summary", "author", "created_at", "updated_at", "url", "content", "symbols": [str], "source"}`` with
RFC 3339 times as strings (no ``t``); the REST history returns the same objects (plus ``images``) in
``{"news": [...], "next_page_token"}``. An article can be sent again with a later ``updated_at``: it
replaces the earlier version (the ``news`` table upserts on its id).

Guarantees as for the market streams: a frame decodes as one unit, times become exact int ns, a
malformed article is one :class:`~tickvault.alpaca.protocol.Reject` with its bytes while the rest is
kept, and nothing raises on server input, blocks, logs or touches a socket. Bounds: memory O(frame).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tickvault.alpaca.protocol import _CONTROL_TYPES, Reject, _load_frame, _reencode, _reject_reason, rfc3339_to_ns

__all__ = ["NEWS_FIELDS", "NewsFrame", "NewsPosition", "article_row", "decode_news"]

#: An article as a row of the ``news`` table (times as int ns).
NEWS_FIELDS = ("id", "headline", "summary", "author", "source", "url", "content", "symbols", "created_at_ns",
               "updated_at_ns")
_REQUIRED = ("id", "headline", "created_at", "updated_at", "symbols")


@dataclass(slots=True)
class NewsPosition:
    """Where the stream stands, as the reader's gap logic reads it (the ``TradeColumns`` shape it uses):
    the articles' ``updated_at`` range. ``latest`` stays empty (no symbol universe to learn)."""

    n: int
    time_min_ns: int
    time_max_ns: int
    time_last_ns: int
    latest: dict = field(default_factory=dict)


@dataclass(slots=True)
class NewsRest:
    control: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def market_count(self) -> int:
        return 0


@dataclass(slots=True)
class NewsFrame:
    """One decoded news frame: article rows (``NEWS_FIELDS`` order), control messages, rejects."""

    articles: list[tuple] = field(default_factory=list)
    rest: NewsRest = field(default_factory=NewsRest)

    @property
    def trades(self) -> NewsPosition | None:  # the reader's stream position (see NewsPosition)
        if not self.articles:
            return None
        times = [a[9] for a in self.articles]
        return NewsPosition(len(times), min(times), max(times), times[-1])

    @property
    def quotes(self) -> None:
        return None

    def market_count(self) -> int:
        return len(self.articles)


def _text(value: Any, name: str, nullable: bool = True) -> str | None:
    if value is None and nullable:
        return None
    if value.__class__ is not str or "\0" in value:
        raise ValueError(f"{name} must be text")
    return value


def article_row(raw: dict) -> tuple:
    """One article (stream message or REST item) as a NEWS_FIELDS tuple. Raises ValueError/TypeError/
    KeyError on an article the table cannot take (missing id, times, symbols; text that is not text)."""
    article_id = raw["id"]
    if article_id.__class__ is not int:
        raise TypeError("id must be an integer")
    symbols = raw["symbols"]
    if symbols.__class__ is not list or not all(s.__class__ is str and "\0" not in s for s in symbols):
        raise TypeError("symbols must be a list of text")
    return (
        article_id, _text(raw["headline"], "headline", False), _text(raw.get("summary"), "summary"),
        _text(raw.get("author"), "author"), _text(raw.get("source"), "source"), _text(raw.get("url"), "url"),
        _text(raw.get("content"), "content"), symbols,
        rfc3339_to_ns(_text(raw["created_at"], "created_at", False)),
        rfc3339_to_ns(_text(raw["updated_at"], "updated_at", False)),
    )


def _reason(msg: Any) -> str:
    return _reject_reason(msg, {"n": ("news", _REQUIRED)}, stream="news")


def decode_news(data: bytes | str) -> NewsFrame:
    """Decode one news frame (msgpack ``bytes`` or JSON ``str``). Never raises."""
    out = NewsFrame()
    msgs = _load_frame(data, out.rest)  # type: ignore[arg-type]  # needs only .rejects
    use_msgpack = not isinstance(data, str)
    for m in msgs or ():
        try:
            kind = m["T"]
            if kind == "n":
                out.articles.append(article_row(m))
            elif kind in _CONTROL_TYPES:
                out.rest.control.append(m)
            else:
                out.rest.rejects.append(Reject(_reason(m), _reencode(m, use_msgpack)))
        except Exception:  # noqa: BLE001 - this message only
            out.rest.rejects.append(Reject(_reason(m), _reencode(m, use_msgpack)))
    return out
