"""An endpoint that is down, and one that refuses us for good.

Down (connection refused, 5xx): a circuit breaker per endpoint, shared by every thread of a process
and, with `VR_HOST_SLOTS_DIR` set, by every process on the host through a small flock'd JSON file
beside the host slots (`<dir>/<endpoint>.breaker`). After `breaker_failures` consecutive failures it
opens: calls wait without sending, one probe request goes out every `probe_interval_s` (whoever is
due first, in any process), and the first success closes it. Calls wait until the outage is
`outage_deadline_s` old and then fail with one line naming the endpoint and how long it was down.

Refused for good (a rejected API key, a missing model): `ProviderFatalError`, and a record in the
results dir (`cache/provider_fatal.json`) that every later call of any process checks before
sending, so queued videos fail at once with the same line instead of each asking the provider.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)
R = TypeVar("R")

FATAL_FILE = "provider_fatal.json"
_FATAL_LINE = re.compile(r"rejected the API key \(\d{3}\)|model \S+ not found at \S+ \(404\)")


def is_fatal_provider_failure(reason: str) -> bool:
    """Whether a run's failure reason is a rejected API key or a missing model: no later video can do better,
    so the caller (the CLI) cancels the queue instead of failing each video the same way."""
    return bool(_FATAL_LINE.search(reason or ""))


def provider_fatal_file(results_dir: str | Path) -> Path:
    return Path(results_dir) / "cache" / FATAL_FILE


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")


# ---------------------------------------------------------------- state files


def _locked_update(path: Path, fn: Callable[[dict[str, Any]], tuple[R, bool]]) -> R:
    """Read the JSON at `path` under an exclusive flock, let `fn` change it, write it back if it says so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = b""
        while chunk := os.read(fd, 65536):
            raw += chunk
        try:
            state = json.loads(raw) if raw.strip() else {}
        except ValueError:
            state = {}  # a torn file (a crash mid-write) is a fresh start, not an error
        if not isinstance(state, dict):
            state = {}
        result, changed = fn(state)
        if changed:
            data = json.dumps(state, sort_keys=True).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        return result
    finally:
        os.close(fd)  # drops the lock


# ---------------------------------------------------------------- circuit breaker


class BreakerState(BaseModel):
    """What every process on the host knows about one endpoint (times are Unix seconds)."""

    model_config = ConfigDict(extra="ignore")

    failures: int = Field(0, description="consecutive connection failures/5xx")
    opened_at: float | None = Field(None, description="when the breaker opened; None: closed")
    next_probe_at: float = 0.0
    last_error: str = ""
    endpoint: str = ""


class OutageExpired(Exception):
    """The endpoint has been down longer than the outage deadline."""

    def __init__(self, endpoint: str, down_s: float, since: float, last_error: str) -> None:
        self.endpoint = endpoint
        self.down_s = down_s
        self.since = since
        self.last_error = last_error
        super().__init__(
            f"{endpoint} down for {down_s:.0f} s (since {_utc(since)}, past retry.outage_deadline_s): {last_error}"
        )


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures -> half-open probes -> closed on a success."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        threshold: int,
        probe_interval_s: float,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.threshold = max(1, threshold)
        self.probe_interval_s = probe_interval_s
        self.path = path
        self._clock = clock
        self._state: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self.probes = 0
        self.opened = 0

    def configure(self, threshold: int, probe_interval_s: float) -> None:
        self.threshold = max(1, threshold)
        self.probe_interval_s = probe_interval_s

    def _update(self, fn: Callable[[BreakerState], tuple[R, bool]]) -> R:
        def on_dict(raw: dict[str, Any]) -> tuple[R, bool]:
            try:
                st = BreakerState.model_validate(raw)
            except ValidationError:
                st = BreakerState()
            result, changed = fn(st)
            if changed:
                raw.clear()
                raw.update(st.model_dump())
            return result, changed

        with self._lock:
            if self.path is None:
                return on_dict(self._state)[0]
            return _locked_update(self.path, on_dict)

    def state(self) -> BreakerState:
        return self._update(lambda st: (st.model_copy(), False))

    def is_open(self) -> bool:
        return self.state().opened_at is not None

    def admit(self, deadline_s: float) -> float:
        """Blocks while the breaker is open and no probe is due; returns the seconds waited.

        Raises OutageExpired once the outage is older than `deadline_s` (a due probe still goes out first,
        so an endpoint that came back is noticed however long it was down)."""
        t0 = time.monotonic()
        slept = False
        while True:
            now = self._clock()

            def decide(st: BreakerState, now: float = now) -> tuple[tuple[str, float], bool]:
                if st.opened_at is None:
                    return ("go", 0.0), False
                if now >= st.next_probe_at:
                    st.next_probe_at = now + self.probe_interval_s
                    return ("probe", 0.0), True
                if now - st.opened_at >= deadline_s:
                    return ("expired", st.opened_at), False
                return ("wait", min(st.next_probe_at, st.opened_at + deadline_s) - now), False

            what, value = self._update(decide)
            if what in ("go", "probe"):
                if what == "probe":
                    with self._lock:
                        self.probes += 1
                return time.monotonic() - t0 if slept else 0.0
            if what == "expired":
                st = self.state()
                raise OutageExpired(self.endpoint, now - value, value, st.last_error)
            slept = True
            with self._changed:  # a thread of this process closing the breaker wakes us; other processes: poll
                self._changed.wait(timeout=max(0.01, min(value, 1.0)))

    def success(self) -> None:
        """The endpoint answered (any HTTP reply but a 5xx): the consecutive count starts over, an open breaker
        closes, and the process that closes it logs how long the endpoint was down."""
        if self.path is None and not self._state.get("failures") and self._state.get("opened_at") is None:
            return  # the common case, without a lock

        def close(st: BreakerState) -> tuple[float | None, bool]:
            if st.opened_at is None and st.failures == 0:
                return None, False
            opened = st.opened_at
            st.failures, st.opened_at, st.next_probe_at, st.last_error = 0, None, 0.0, ""
            return opened, True

        opened = self._update(close)
        if opened is not None:
            log.warning("teacher endpoint %s is back after %.1f s down: circuit breaker closed, calls resume",
                        self.endpoint, max(0.0, self._clock() - opened))
            with self._changed:
                self._changed.notify_all()

    def failure(self, text: str) -> bool:
        """A connection failure or 5xx; returns whether the breaker is open now."""
        now = self._clock()

        def count(st: BreakerState) -> tuple[tuple[bool, bool], bool]:
            st.failures += 1
            st.last_error = text[:300]
            st.endpoint = self.endpoint
            if st.opened_at is None and st.failures >= self.threshold:
                st.opened_at = now
                st.next_probe_at = now + self.probe_interval_s
                return (True, True), True
            return (st.opened_at is not None, False), True

        is_open, opened_now = self._update(count)
        if opened_now:
            with self._lock:
                self.opened += 1
            log.warning("teacher endpoint %s is down (%d consecutive failures, last: %s): circuit breaker open, "
                        "calls wait and one probe goes out every %g s", self.endpoint, self.threshold,
                        text[:200], self.probe_interval_s)
        return is_open


_BREAKERS: dict[tuple[str, str], CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_file(directory: str, name: str) -> Path:
    return Path(directory) / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.breaker"


def get_breaker(name: str, endpoint: str, threshold: int, probe_interval_s: float) -> CircuitBreaker:
    """The process's breaker for `name`; file-backed (shared by the host) when VR_HOST_SLOTS_DIR is set."""
    directory = os.environ.get("VR_HOST_SLOTS_DIR") or ""
    with _BREAKERS_LOCK:
        br = _BREAKERS.get((directory, name))
        if br is None:
            path = breaker_file(directory, name) if directory else None
            br = _BREAKERS[(directory, name)] = CircuitBreaker(name, endpoint, threshold, probe_interval_s, path)
        else:
            br.configure(threshold, probe_interval_s)
        return br


def reset_breakers() -> None:
    with _BREAKERS_LOCK:
        _BREAKERS.clear()


def open_breakers(directory: str | Path, now: float | None = None) -> list[str]:
    """One console line per endpoint that is down right now (for a CLI's progress loop)."""
    now = time.time() if now is None else now
    lines: list[str] = []
    for p in sorted(Path(directory).glob("*.breaker")):
        try:
            st = BreakerState.model_validate_json(p.read_text() or "{}")
        except (OSError, ValidationError):
            continue
        if st.opened_at is not None:
            lines.append(f"teacher endpoint {st.endpoint or p.stem} down for {now - st.opened_at:.0f} s (since "
                         f"{_utc(st.opened_at)}), calls waiting: {st.last_error[:160]}")
    return lines


class BreakerWatch:
    """Console lines from the host-wide breaker files the runs' processes share: one when an endpoint's
    breaker opens (calls wait), one when it closes (how long it was down). A thread of the CLI polls them
    every `every_s`, so the wait shows where the person running `vr-annotate run` looks."""

    def __init__(self, directory: str | Path, say: Callable[[str], None], every_s: float = 0.25) -> None:
        self.directory = Path(directory)
        self.say = say
        self.every_s = every_s
        self.lines: list[str] = []
        self._open: dict[Path, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="breaker-watch", daemon=True)

    def poll(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for p in sorted(self.directory.glob("*.breaker")):
            try:
                st = BreakerState.model_validate_json(p.read_text() or "{}")
            except (OSError, ValidationError):
                continue
            was = self._open.get(p)
            endpoint = st.endpoint or p.stem
            if st.opened_at is not None and was != st.opened_at:
                self._open[p] = st.opened_at
                self._say(f"teacher endpoint {endpoint} down since {_utc(st.opened_at)} ({st.failures} consecutive "
                          f"failures, last: {st.last_error[:160]}): calls wait, a probe goes out now and then")
            elif st.opened_at is None and was is not None:
                del self._open[p]
                self._say(f"teacher endpoint {endpoint} back after {max(0.0, now - was):.0f} s down: calls resume")

    def _say(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def __enter__(self) -> BreakerWatch:
        self.poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # a breaker that closed since the last look


# ---------------------------------------------------------------- fatal rejections


class FatalRecord(BaseModel):
    """A rejection recorded for other processes; `message` is the one line they fail with."""

    model_config = ConfigDict(extra="ignore")

    at: float
    at_utc: str
    provider: str
    endpoint: str
    model: str
    status: int | None = None
    message: str


class FatalMarker:
    """`<results_dir>/cache/provider_fatal.json`: scope -> FatalRecord, older than `hold_s` ignored."""

    def __init__(self, path: Path, hold_s: float = 600.0) -> None:
        self.path = path
        self.hold_s = hold_s

    def check(self, scopes: list[str]) -> FatalRecord | None:
        try:
            raw = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        now = time.time()
        for scope in scopes:
            entry = raw.get(scope) if isinstance(raw, dict) else None
            if not isinstance(entry, dict):
                continue
            try:
                rec = FatalRecord.model_validate(entry)
            except ValidationError:
                continue
            if now - rec.at < self.hold_s:
                return rec
        return None

    def record(self, scope: str, rec: FatalRecord) -> None:
        def put(state: dict[str, Any]) -> tuple[None, bool]:
            state[scope] = rec.model_dump()
            return None, True

        _locked_update(self.path, put)

    def clear(self, scopes: list[str]) -> None:
        """A call on the scope succeeded: whatever was recorded no longer holds."""
        if not self.path.exists():
            return

        def drop(state: dict[str, Any]) -> tuple[None, bool]:
            gone = [s for s in scopes if s in state]
            for s in gone:
                del state[s]
            return None, bool(gone)

        _locked_update(self.path, drop)


def clear_provider_fatal(results_dir: str | Path) -> bool:
    """Forget recorded rejections (a new `vr-annotate run` after the key or model was fixed)."""
    p = provider_fatal_file(results_dir)
    try:
        p.unlink()
    except FileNotFoundError:
        return False
    return True


__all__ = [
    "BreakerWatch",
    "BreakerState",
    "CircuitBreaker",
    "FATAL_FILE",
    "FatalMarker",
    "FatalRecord",
    "OutageExpired",
    "breaker_file",
    "clear_provider_fatal",
    "get_breaker",
    "is_fatal_provider_failure",
    "open_breakers",
    "provider_fatal_file",
    "reset_breakers",
]
