"""Open backfill windows on disk (tickvault.stream.gaps): what a restart must redo after a crash."""

from __future__ import annotations

import pytest

from tickvault.stream.gaps import MAX_WINDOWS, GapLedger


def test_a_window_open_at_a_crash_is_inherited_by_the_next_start_and_dropped_once_covered(tmp_path):
    path = tmp_path / "gaps" / "w.json"
    first = GapLedger(path)
    first.with_assets = True
    done = first.open(100, 200)
    first.open(300, 400)  # still running when the process dies
    first.close(done)

    second = GapLedger(path)  # the restart
    assert second.oldest_inherited(not_before_ns=0) == (300, True)
    assert second.oldest_inherited(not_before_ns=401) == (None, False)  # outside the resume window
    token = second.open(300, 500)  # its own first backfill covers the inherited window
    assert GapLedger(path).inherited == [(300, 500, False)]
    second.close(token)
    assert GapLedger(path).oldest_inherited(0) == (None, False)


def test_windows_past_the_bound_merge_into_one_covering_them(tmp_path):
    ledger = GapLedger(tmp_path / "w.json")
    for i in range(MAX_WINDOWS + 5):
        ledger.open(1_000 + i, 2_000 + i)
    kept = GapLedger(tmp_path / "w.json").inherited
    assert len(kept) <= MAX_WINDOWS and min(w[0] for w in kept) == 1_000


def test_a_file_that_is_not_a_gap_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "w.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=str(path)):
        GapLedger(path)
