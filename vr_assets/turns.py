"""Start-up turns: a new worker prepares its first video only while it holds one of a few turns.

Workers that all start at once share the CPU evenly, so all of them reach their first model call
together, late, and the provider idles until then (on the benchmark: 16 workers, 2 cores, the
first request ~10 s in). With as many turns as cores, the first workers reach the provider within
a second or two and the rest follow in turn. A worker gives its turn back as its first request is
about to go out (`RateLimiter.slot`), or when its first run ends, whichever comes first; later
videos take no turn. Turns are host-wide file locks, like the provider slots: a dead worker's
turn frees itself.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

_held: list[int] = []


def take(directory: str, turns: int, timeout_s: float) -> bool:
    """Wait for a turn (True), or give up after `timeout_s` and go on without one (False).

    The time-out bounds the harm of a first video that is slow to reach the provider (a huge
    source to re-encode): the others wait for it at most that long.
    """
    from vr_assets.providers.limits import HostSlots

    if _held:
        return True
    fd = HostSlots(directory, "startup-turn", turns).acquire(timeout_s=timeout_s)
    if fd is None:
        log.info("no start-up turn within %.0f s; going on without one", timeout_s)
        return False
    _held.append(fd)
    return True


def end() -> None:
    """Give the turn back (a no-op without one, so every request may call it)."""
    while _held:
        os.close(_held.pop())


def holding() -> bool:
    return bool(_held)
