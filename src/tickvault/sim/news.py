"""The simulated news wire: seeded articles about the simulated symbols, some updated later; its truth.

:class:`NewsWire` makes an article each time :meth:`NewsWire.publish` is called (the server calls it
every ``news_interval_s``), and every ``update_every``-th call also re-sends an earlier article with a
new headline and a later ``updated_at`` (Alpaca sends updated articles again, same id). ``truth`` is
the newest version of every article, which a store that upserts on the id must equal. The REST
history (``GET /v1beta1/news``) serves the same newest versions, paged like Alpaca (≤ 50 a page,
``sort`` desc by default, an opaque ``next_page_token``).

Bounds: at most ``keep`` articles are retained (the oldest forgotten first); what is forgotten stays
counted in ``forgotten``. Never reads the environment, never blocks.
"""

from __future__ import annotations

import base64
import random
from collections import OrderedDict

from tickvault.alpaca.protocol import ns_to_rfc3339, rfc3339_to_ns

__all__ = ["NewsWire", "MAX_NEWS_PAGE"]

MAX_NEWS_PAGE = 50  # Alpaca's page limit for news
_SOURCES = ("benzinga", "tickvault-sim")
_VERBS = ("beats estimates", "misses estimates", "announces buyback", "names new CFO", "expands in Asia",
          "recalls product", "wins contract", "faces probe")


class NewsWire:
    def __init__(self, symbols: list[str], *, seed: int = 42, update_every: int = 4, keep: int = 10_000) -> None:
        if not symbols:
            raise ValueError("the news wire needs symbols to write about")
        self.rng = random.Random(seed)
        self.symbols = list(symbols)
        self.update_every = update_every
        self.keep = keep
        self.truth: OrderedDict[int, dict] = OrderedDict()  # id -> newest version (wire form, "T" excluded)
        self.next_id = 24_000_001  # Alpaca's ids are 8-digit integers
        self.published = 0  # publish() calls
        self.forgotten = 0
        self.versions_sent = 0  # every message made, first versions and updates

    def publish(self, now_ns: int) -> list[dict]:
        """New article(s) at ``now_ns``: one new, and every ``update_every``-th call an update of an earlier one."""
        rng = self.rng
        self.published += 1
        out = []
        about = rng.sample(self.symbols, k=min(len(self.symbols), rng.choice((1, 1, 2, 3))))
        when = ns_to_rfc3339(now_ns - now_ns % 1000)  # Alpaca's times: whole µs at most
        article = {
            "id": self.next_id, "headline": f"{about[0]} {rng.choice(_VERBS)}", "summary": f"{about[0]}: summary",
            "author": rng.choice(("A. Writer", "B. Reporter")), "created_at": when, "updated_at": when,
            "url": f"https://news.example/{self.next_id}", "content": f"<p>{' '.join(about)} article</p>",
            "symbols": about, "source": rng.choice(_SOURCES),
        }
        self.next_id += 1
        self.truth[article["id"]] = article
        out.append(dict(article, T="n"))
        if self.update_every and self.published % self.update_every == 0 and len(self.truth) > 1:
            old_id = rng.choice(list(self.truth)[-20:-1])
            updated = dict(self.truth[old_id], headline=self.truth[old_id]["headline"] + " (updated)",
                           updated_at=ns_to_rfc3339(now_ns - now_ns % 1000 + 1000))
            self.truth[old_id] = updated
            out.append(dict(updated, T="n"))
        while len(self.truth) > self.keep:
            self.truth.popitem(last=False)
            self.forgotten += 1
        self.versions_sent += len(out)
        return out

    # ---------------------------------------------------------------- REST
    def page(self, *, symbols: set[str] | None, start_ns: int, end_ns: int, limit: int, asc: bool,
             token: str | None, include_content: bool) -> dict:
        """``{"news": [...], "next_page_token": ...}`` of the newest versions created in [start, end]."""
        if not 1 <= limit <= MAX_NEWS_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_NEWS_PAGE}")
        keyed = sorted(((rfc3339_to_ns(a["created_at"]), a["id"]), a) for a in self.truth.values()
                       if start_ns <= rfc3339_to_ns(a["created_at"]) <= end_ns
                       and (not symbols or symbols & set(a["symbols"])))
        if not asc:
            keyed.reverse()
        if token is not None:
            after = _decode(token)
            keyed = [(k, a) for k, a in keyed if (k > after if asc else k < after)]
        page = keyed[:limit]
        items = [a if include_content else dict(a, content="") for _k, a in page]
        more = len(keyed) > limit
        return {"news": items, "next_page_token": _encode(page[-1][0]) if more else None}


def _encode(key: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}|{key[1]}".encode()).decode()


def _decode(token: str) -> tuple[int, int]:
    try:
        t, i = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return int(t), int(i)
    except Exception:  # noqa: BLE001
        raise ValueError("invalid page_token") from None
