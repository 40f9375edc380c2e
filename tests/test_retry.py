"""The one retry policy (tickvault.retry): bounds, jitter, reset, give-up, Retry-After cap, and the
limits of each loop that uses it. Pure: no sleeping, no clock."""

from __future__ import annotations

import random

import pytest

from tickvault import retry
from tickvault.retry import Backoff, RetryPolicy


def test_backoff_draws_full_jitter_under_a_doubling_capped_bound() -> None:
    policy = RetryPolicy(backoff_base_s=0.25, backoff_cap_s=2.0, rng=random.Random(1))
    assert [policy.bound(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert policy.bound(10_000) == 2.0  # no overflow far out
    for n in range(6):
        samples = [policy.backoff(n) for _ in range(500)]
        assert 0.0 <= min(samples) and max(samples) <= policy.bound(n)
        assert min(samples) < policy.bound(n) * 0.1 and max(samples) > policy.bound(n) * 0.9  # spread over [0, bound]


def test_without_jitter_the_wait_is_the_bound() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base_s=1.0, backoff_cap_s=16.0, jitter=False)
    backoff = policy.start()
    delays = []
    while not backoff.exhausted:
        delays.append(backoff.next_delay())
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_a_loop_resets_after_success_and_raises_its_bound_when_told_to_stay_away() -> None:
    backoff = Backoff(RetryPolicy(max_retries=None, backoff_base_s=0.25, backoff_cap_s=30.0, jitter=False))
    assert [backoff.next_delay() for _ in range(9)] == [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30]
    assert not backoff.exhausted  # forever
    backoff.reset()
    assert (backoff.retries, backoff.bound) == (0, 0.25)
    backoff.at_least(5.0)  # error 406
    assert backoff.next_delay() == 5.0 and backoff.bound == 10.0
    backoff.at_least(1.0)  # never lowers it
    assert backoff.bound == 10.0


def test_gives_up_after_max_retries() -> None:
    policy = RetryPolicy(max_retries=2)
    assert [policy.gives_up(n) for n in range(4)] == [False, False, True, True]
    assert not RetryPolicy(max_retries=None).gives_up(10**9)
    assert RetryPolicy(max_retries=0).gives_up(0)


def test_retry_after_is_honoured_only_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retry_after_s=60.0)
    assert policy.honours(0.0) and policy.honours(60.0)
    assert not policy.honours(60.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"backoff_base_s": 0}, {"backoff_base_s": 2.0, "backoff_cap_s": 1.0}],
)
def test_a_nonsensical_policy_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_each_loop_keeps_its_documented_limits() -> None:
    assert (retry.RECONNECT.backoff_base_s, retry.RECONNECT.backoff_cap_s, retry.RECONNECT.max_retries) == (0.25, 30.0, None)
    assert (retry.COMMIT.backoff_base_s, retry.COMMIT.backoff_cap_s, retry.COMMIT.max_retries) == (0.1, 5.0, None)
    backfill = retry.BACKFILL.start()
    waits = []
    while not backfill.exhausted:
        waits.append(backfill.next_delay())
    assert waits == [1, 2, 4, 8, 16]  # six attempts, ~31 s: rides out a ~30 s outage
    rest = RetryPolicy()  # the REST client's defaults (max_retries comes from settings)
    assert (rest.max_retries, rest.backoff_base_s, rest.backoff_cap_s, rest.max_retry_after_s) == (4, 0.25, 8.0, 60.0)


def test_the_rest_client_uses_the_same_policy_class() -> None:
    from tickvault.alpaca import rest

    assert rest.RetryPolicy is RetryPolicy
