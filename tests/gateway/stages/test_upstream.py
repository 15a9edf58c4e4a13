"""Backoff between retries: the provider's Retry-After when we will wait that long, else jittered exponential."""

from __future__ import annotations

import pytest

from apps.gateway.stages.upstream import backoff


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    assert backoff(0, "1.5", base=0.2, cap=4) == 1.5
    assert backoff(3, "0", base=0.2, cap=4) == 0


def test_a_longer_retry_after_than_the_cap_moves_on_to_the_next_target() -> None:
    assert backoff(0, "30", base=0.2, cap=4) is None


@pytest.mark.parametrize("retry_after", [None, "", "Wed, 21 Oct 2026 07:28:00 GMT", "-3", "soon"])
@pytest.mark.parametrize("attempt", [0, 1, 5])
def test_otherwise_full_jitter_below_the_exponential_step(retry_after: str | None, attempt: int) -> None:
    step = min(4, 0.2 * 2**attempt)
    waits = [backoff(attempt, retry_after, base=0.2, cap=4) for _ in range(200)]
    assert all(wait is not None and 0 <= wait <= step for wait in waits)
    assert max(w for w in waits if w is not None) > step / 2, "the jitter spans the step"
