"""Gap backfills not yet done, kept in a file, so that a restart backfills them again.

A restart resumes from the newest stored trade. That is only safe when every older gap was
backfilled: a worker killed (SIGKILL, OOM, power) or stopped past its shutdown deadline while a
backfill was running has committed the stream's newer trades but not all of the gap's older ones,
and the newest stored trade lies beyond the hole. So each backfill window is written to
``run_dir/gaps/<worker>.json`` before it starts and removed when it is done; a backfill that fails
all its attempts stays there. The next start resumes from the oldest window left (if it is older than
the newest stored trade and within the resume window) and backfills from there; overlap is free,
the trades key removes duplicates.

Bound: at most ``MAX_WINDOWS`` (64) windows are kept; past that they are merged into one covering
them all (a restart only needs the oldest start). The file is rewritten whole (write, fsync, rename)
on each change: once per gap, never per message.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("tickvault.gaps")

MAX_WINDOWS = 64  # open gaps at once: a reconnect spawns two; more means backfills keep failing


class GapLedger:
    """Open backfill windows ``[start_ns, end_ns]`` of one worker, mirrored in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.with_assets = False  # windows opened now need the tradable assets (a wildcard first start)
        self._open: dict[int, tuple[int, int, bool]] = {}
        self._next = 0
        self.inherited: list[tuple[int, int, bool]] = []  # left open by the previous run
        try:
            raw = json.loads(path.read_text())
            self.inherited = [(int(w[0]), int(w[1]), bool(w[2])) for w in raw["open"]]
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{path} is not a tickvault gap file ({exc}); move it away to start") from None

    def oldest_inherited(self, not_before_ns: int) -> tuple[int | None, bool]:
        """(oldest start left open by the previous run, whether it needs the tradable assets); windows
        that ended before ``not_before_ns`` (outside the resume window) are dropped with a warning."""
        kept = [w for w in self.inherited if w[1] >= not_before_ns]
        if len(kept) < len(self.inherited):
            log.warning("%d backfill windows in %s ended before the resume window and are not retried",
                        len(self.inherited) - len(kept), self.path)
        if not kept:
            return None, False
        return min(w[0] for w in kept), any(w[2] for w in kept)

    def open(self, start_ns: int, end_ns: int) -> int:
        token = self._next
        self._next += 1
        self._open[token] = (start_ns, end_ns, self.with_assets)
        if len(self._open) > MAX_WINDOWS:
            windows = list(self._open.values())
            self._open = {token: (min(w[0] for w in windows), max(w[1] for w in windows), any(w[2] for w in windows))}
        self._save()
        return token

    def close(self, token: int) -> None:
        if self._open.pop(token, None) is not None:
            self._save()

    def _save(self) -> None:
        # What this run opened covers what the previous run left: the first window starts at or
        # before the oldest inherited start (the worker resumes from there), so those are replaced.
        self.inherited = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"open": sorted(self._open.values())}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
