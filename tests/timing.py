"""Time in tests: how many intervals overlap at most, and waiting for a condition with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most (start, end) intervals open at one moment: runs or calls in flight at once."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = now = 0
    for _, d in edges:
        now += d
        best = max(best, now)
    return best


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 0.25) -> Any:
    """`check()`'s first truthy value, or an AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
