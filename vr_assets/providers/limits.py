"""Process-wide rate limiting per teacher endpoint.

One `RateLimiter` per (provider, model, endpoint) lives for the whole process, so every asset
and every thread that talks to the same model shares it: a cap on requests in flight, a
sliding-window requests-per-minute and tokens-per-minute budget (tokens are estimated before
the request and settled with the real usage after), and a shared cool-down after a 429 so
all threads back off together instead of each one hammering the endpoint.

Across processes: with `VR_HOST_SLOTS_DIR` set (the daemon `vr-annotate run` and `vr-annotate ui`
start has it, and so every run it launches), each request also holds one of `max_concurrency`
host-wide slots, file locks that every process on the machine shares and that a crashed process
gives back. When the Dagster instance is on Postgres the slots are advisory locks in its database
instead, shared by every process on every host (`vr_assets.shared_state`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vr_assets.shared_state import Slots

log = logging.getLogger(__name__)


@dataclass
class LimiterStats:
    started: int = 0
    peak_in_flight: int = 0
    throttles: int = 0
    waited_s: float = 0.0


class Permit:
    """One admitted request; `settle` replaces the token estimate with what the response reported."""

    def __init__(self, limiter: RateLimiter, entry: list[float], started_at: float) -> None:
        self._limiter = limiter
        self._entry = entry
        self.started_at = started_at
        self.shared_at: float | None = None  # wall-clock time the shared per-minute window admitted it, if any

    def settle(self, tokens: int | None) -> None:
        if tokens is not None and tokens >= 0:
            self._limiter._settle(self._entry, tokens)


class RateLimiter:
    """Thread-safe concurrency + RPM + TPM limiter with a shared 429 cool-down.

    After a 429 the effective concurrency is halved (never below 1) and grows back by one
    per window of successful requests, so a saturated endpoint sees fewer parallel calls.
    """

    def __init__(
        self,
        name: str,
        max_concurrency: int,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._cond = threading.Condition()
        self._clock = clock
        self.window_s = window_s
        self.max_concurrency = max(1, max_concurrency)
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._limit = self.max_concurrency
        self._ok_since_cut = 0
        self._in_flight = 0
        self._starts: deque[float] = deque()
        self._tokens: deque[list[float]] = deque()  # [start time, tokens]
        self._cool_until = 0.0
        self.stats = LimiterStats()

    def configure(self, max_concurrency: int, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        """A later spec for the same endpoint wins; requests in flight keep their slots."""
        with self._cond:
            if (max_concurrency, requests_per_minute, tokens_per_minute) != (
                self.max_concurrency,
                self.requests_per_minute,
                self.tokens_per_minute,
            ):
                log.info("limiter %s: concurrency %d, rpm %s, tpm %s", self.name, max_concurrency,
                         requests_per_minute, tokens_per_minute)
            if max(1, max_concurrency) != self.max_concurrency:
                self.max_concurrency = max(1, max_concurrency)
                self._limit = self.max_concurrency
            self.requests_per_minute = requests_per_minute
            self.tokens_per_minute = tokens_per_minute
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def effective_concurrency(self) -> int:
        with self._cond:
            return self._limit

    def _purge(self, now: float) -> None:
        edge = now - self.window_s
        while self._starts and self._starts[0] <= edge:
            self._starts.popleft()
        while self._tokens and self._tokens[0][0] <= edge:
            self._tokens.popleft()

    def _wait_needed(self, now: float, tokens: int) -> float | None:
        """Seconds until a slot may open (0 = now), or None when only a release can free one."""
        if now < self._cool_until:
            return self._cool_until - now
        if self._in_flight >= self._limit:
            return None
        self._purge(now)
        waits = [0.0]
        rpm = self.requests_per_minute
        if rpm is not None and len(self._starts) >= rpm:
            waits.append(self._starts[len(self._starts) - rpm] + self.window_s - now)
        tpm = self.tokens_per_minute
        if tpm is not None and self._tokens:
            used = sum(e[1] for e in self._tokens)
            if used + tokens > tpm:
                # Wait until enough old entries leave the window; a single oversized request goes alone.
                need = used + tokens - tpm
                freed = 0.0
                for e in self._tokens:
                    freed += e[1]
                    if freed >= need:
                        waits.append(e[0] + self.window_s - now)
                        break
                else:
                    waits.append(self._tokens[-1][0] + self.window_s - now)
        return max(waits)

    @contextmanager
    def slot(self, est_tokens: int = 0) -> Iterator[Permit]:
        permit = self._acquire(max(0, est_tokens))
        window = shared_window(self.name, self.requests_per_minute, self.tokens_per_minute, self.window_s)
        if window is not None:  # the per-minute budgets of every process on every host, not this one's alone
            permit.shared_at = window.admit(max(0, est_tokens))
        host = host_slots(self.name, self.max_concurrency)
        release = host.acquire() if host is not None else None
        try:
            yield permit
        finally:
            if release is not None:
                release()
            self._release()

    def _acquire(self, tokens: int) -> Permit:
        t0 = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                wait = self._wait_needed(now, tokens)
                if wait is not None and wait <= 0:
                    break
                self._cond.wait(timeout=wait)
            self._in_flight += 1
            self._starts.append(now)
            entry = [now, float(tokens)]
            self._tokens.append(entry)
            st = self.stats
            st.started += 1
            st.peak_in_flight = max(st.peak_in_flight, self._in_flight)
            st.waited_s += now - t0
            return Permit(self, entry, now)

    def _release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._limit < self.max_concurrency:
                self._ok_since_cut += 1
                if self._ok_since_cut >= self._limit:
                    self._limit += 1
                    self._ok_since_cut = 0
            self._cond.notify_all()

    def _settle(self, entry: list[float], tokens: int) -> None:
        with self._cond:
            entry[1] = float(tokens)
            self._cond.notify_all()

    def throttle(self, seconds: float) -> None:
        """A 429 was seen: nobody starts a request for `seconds`, and fewer run in parallel afterwards."""
        with self._cond:
            self._cool_until = max(self._cool_until, self._clock() + max(0.0, seconds))
            self._limit = max(1, self._limit // 2)
            self._ok_since_cut = 0
            self.stats.throttles += 1
            self._cond.notify_all()


_REGISTRY: dict[tuple[str, ...], RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def get_limiter(
    key: tuple[str, ...],
    max_concurrency: int,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> RateLimiter:
    """The one limiter for `key` in this process, (re)configured with the given limits."""
    with _REGISTRY_LOCK:
        lim = _REGISTRY.get(key)
        if lim is None:
            lim = RateLimiter("/".join(key), max_concurrency, requests_per_minute, tokens_per_minute)
            _REGISTRY[key] = lim
            return lim
    lim.configure(max_concurrency, requests_per_minute, tokens_per_minute)
    return lim


class HostSlots:
    """`n` request slots shared by every process on the machine, one lock file per slot.

    flock locks belong to an open file, so threads and processes compete alike, and the
    kernel frees a slot when its holder dies; no cleanup, no stale counters.
    """

    def __init__(self, directory: str, name: str, n: int, poll_s: float = 0.002) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        os.makedirs(directory, exist_ok=True)
        self.paths = [os.path.join(directory, f"{safe}.{i}.slot") for i in range(max(1, n))]
        self.queue_path = os.path.join(directory, f"{safe}.queue")
        self.poll_s = poll_s

    def _try_any(self) -> int | None:
        start = random.randrange(len(self.paths))
        for i in range(len(self.paths)):
            fd = os.open(self.paths[(start + i) % len(self.paths)], os.O_CREAT | os.O_RDWR, 0o644)
            if _lock(fd, blocking=False):
                return fd
            os.close(fd)
        return None

    def acquire(self, timeout_s: float | None = None) -> int | None:
        """Blocks until a slot is free; returns the fd that holds it (close it to release), or None
        once `timeout_s` has passed.

        When all slots are taken, waiters queue on one more lock file: the kernel keeps all but
        one asleep, and only that one polls the slots. (Every waiter polling every slot burnt a
        noticeable share of a small machine's CPU with a few dozen requests waiting.)
        """
        fd = self._try_any()
        if fd is not None:
            return fd
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        queue = os.open(self.queue_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            delay = self.poll_s
            while not _lock(queue, blocking=deadline is None):
                if time.monotonic() >= deadline:  # type: ignore[operator]
                    return None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.02)
            delay = self.poll_s
            while (fd := self._try_any()) is None:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.02)
            return fd
        finally:
            os.close(queue)  # closing drops the queue lock: the next waiter starts polling


def _lock(fd: int, *, blocking: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


_HOST: dict[tuple[str, str, int], HostSlots] = {}


def host_slots(name: str, n: int) -> Slots | None:
    """The slots every process sharing this one's coordinator counts against (None: this process alone)."""
    from vr_assets.shared_state import coordinator

    return coordinator().slots(name, n)


class SharedRateWindow:
    """Requests and (estimated) tokens per minute counted over every process that shares this one's coordinator:
    the last minute's starts are one record (a file beside the host slots, or a row in Postgres), read and
    rewritten under the record namespace's lock. Each process's own `RateLimiter` still paces its threads and
    settles actual token counts; this keeps N processes on M hosts from each spending the whole budget."""

    def __init__(self, records: Any, rpm: int | None, tpm: int | None, window_s: float = 60.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.records, self.rpm, self.tpm, self.window_s = records, rpm, tpm, window_s
        self._clock, self._sleep = clock, sleep

    def _wait(self, starts: list[list[float]], now: float, tokens: int) -> float:
        waits = [0.0]
        if self.rpm is not None and len(starts) >= self.rpm:
            waits.append(starts[len(starts) - self.rpm][0] + self.window_s - now)
        if self.tpm is not None and starts:
            over = sum(n for _, n in starts) + tokens - self.tpm
            for t, n in starts:  # the oldest starts leave the window first
                if over <= 0:
                    break
                over -= n
                waits.append(t + self.window_s - now)
        return max(waits)

    def admit(self, tokens: int) -> float:
        """Block until a request of `tokens` fits in the shared minute, record it; the time it was recorded at."""
        while True:
            with self.records.locked():
                now = self._clock()
                raw = self.records.get("window")
                starts = [e for e in (json.loads(raw) if raw else []) if e[0] > now - self.window_s]
                wait = self._wait(starts, now, tokens)
                if wait <= 0:
                    starts.append([now, float(tokens)])
                    self.records.put("window", json.dumps(starts))
                    return now
            self._sleep(min(max(wait, 0.01), 1.0))


def shared_window(name: str, rpm: int | None, tpm: int | None, window_s: float = 60.0) -> SharedRateWindow | None:
    """The shared per-minute window of an endpoint, when it has a budget and other processes share the
    coordinator (Postgres, or the machine's `VR_HOST_SLOTS_DIR`); None: this process's limiter alone."""
    if rpm is None and tpm is None:
        return None
    from vr_assets.shared_state import coordinator

    coord = coordinator()
    directory = os.environ.get("VR_HOST_SLOTS_DIR")
    if coord.kind == "files" and not directory:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    root = Path(directory or ".") / f"{safe}.rate"
    return SharedRateWindow(coord.records(f"rate:{name}", root), rpm, tpm, window_s)


def file_host_slots(name: str, n: int) -> HostSlots | None:
    """The machine's slot files under `VR_HOST_SLOTS_DIR` (None when it is not set)."""
    directory = os.environ.get("VR_HOST_SLOTS_DIR")
    if not directory:
        return None
    key = (directory, name, n)
    with _REGISTRY_LOCK:
        if key not in _HOST:
            _HOST[key] = HostSlots(directory, name, n)
        return _HOST[key]
