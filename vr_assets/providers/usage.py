"""Cost of a call and the append-only ledger every call is written to.

The ledger is one JSONL file per results dir, appended under an exclusive `flock`, so threads
and processes (Dagster's multiprocess executor) can write to it at once. `spent_usd` reads only
the bytes added since the last read, so checking the budget before every call stays cheap.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from vr_assets.config import Pricing
from vr_assets.records import CallUsage, UsageSummary
from vr_assets.storage import reporting_disk_full

LEDGER_FILE = "calls.jsonl"


# Gemini context caching, paid tier, USD per million tokens (text/image/video): (cached input, storage per hour).
# Source: https://ai.google.dev/gemini-api/docs/pricing as quoted in the project's cost notes
# (reference/scale_and_cost.md, section 5b), read 2026-12-02. Input for comparison: 2.5 Flash $0.30, 2.5 Pro $1.25
# (prompts up to 200k tokens). A spec's `prices` entry overrides these; other models need them in the spec.
KNOWN_CACHE_PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.5-flash": (0.03, 1.00),
    "gemini-2.5-pro": (0.125, 4.50),
}


def with_cache_prices(model: str, price: Pricing) -> Pricing:
    """`price` with the context-cache prices it leaves out filled from KNOWN_CACHE_PRICES (exact model name)."""
    known = KNOWN_CACHE_PRICES.get(model.removeprefix("models/"))
    if known is None or (price.cached_input_per_mtok is not None and price.cache_storage_per_mtok_hour is not None):
        return price
    update = {}
    if price.cached_input_per_mtok is None:
        update["cached_input_per_mtok"] = known[0]
    if price.cache_storage_per_mtok_hour is None:
        update["cache_storage_per_mtok_hour"] = known[1]
    return price.model_copy(update=update)


def cost_usd(
    price: Pricing | None, prompt_tokens: int, output_tokens: int, thinking_tokens: int, cached_tokens: int = 0
) -> float:
    """USD for one call; thinking is billed at the output price unless priced separately.

    Both backends report `output_tokens` without the thinking part (OpenAI's completion tokens
    minus reasoning tokens), so nothing is billed twice. `cached_tokens` are part of `prompt_tokens`
    (Gemini's promptTokenCount includes cachedContentTokenCount) and cost the cached-input price.
    """
    if price is None:
        return 0.0
    think = price.thinking_per_mtok if price.thinking_per_mtok is not None else price.output_per_mtok
    cached = min(max(cached_tokens, 0), prompt_tokens)
    cached_price = price.cached_input_per_mtok if price.cached_input_per_mtok is not None else price.input_per_mtok
    total = (
        (prompt_tokens - cached) * price.input_per_mtok + cached * cached_price
        + output_tokens * price.output_per_mtok + thinking_tokens * think
    )
    return round(total / 1_000_000, 8)


def cache_write_usd(price: Pricing | None, tokens: int, ttl_s: float) -> float:
    """USD for making an explicit context cache of `tokens`: written at the input price, stored for its TTL
    (the most it can cost; deleted earlier, it may cost less)."""
    if price is None or tokens <= 0:
        return 0.0
    storage = price.cache_storage_per_mtok_hour or 0.0
    return round(tokens * (price.input_per_mtok + storage * ttl_s / 3600) / 1_000_000, 8)


def context_cache_pays(price: Pricing | None, calls: int, ttl_s: float, tier: str = "standard") -> bool:
    """Whether one explicit cache read by `calls` calls on `tier` costs less than sending its content with each.

    Per cached token, with the cache: its creation (billed as input at the standard price: `caches.create` is
    no flex request), each call's read at the tier's cached price and its storage for the whole TTL; without:
    each call's input price on the tier. The token count cancels out (what the service refuses as too small,
    1,024-4,096 tokens by model, falls back to plain calls). On a half-price tier a cache needs more calls to
    pay: creation and storage are not halved.
    """
    if price is None or calls < 2 or price.cache_storage_per_mtok_hour is None:
        return False
    billed = price.for_tier(tier)
    cached = billed.cached_input_per_mtok if billed.cached_input_per_mtok is not None else billed.input_per_mtok
    with_cache = price.input_per_mtok + calls * cached + price.cache_storage_per_mtok_hour * ttl_s / 3600
    return with_cache < calls * billed.input_per_mtok


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: float
    pid: int
    video_key: str
    ok: bool
    error: str = ""
    usage: CallUsage


class _LedgerState:
    """Shared by every UsageLedger object on the same file in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.offset = 0
        self.spent = 0.0
        self.pending = b""


_STATES: dict[str, _LedgerState] = {}
_STATES_LOCK = threading.Lock()


class UsageLedger:
    """Append-only JSONL of every call (good and failed), safe across threads and processes."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.path = self.dir / LEDGER_FILE
        key = str(self.path.resolve())
        with _STATES_LOCK:
            self._state = _STATES.setdefault(key, _LedgerState())

    def __repr__(self) -> str:
        return f"UsageLedger({str(self.dir)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UsageLedger) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(str(self.path.resolve()))

    def append(self, usage: CallUsage, *, video_key: str, ok: bool, error: str = "") -> None:
        entry = LedgerEntry(ts=time.time(), pid=os.getpid(), video_key=video_key, ok=ok, error=error, usage=usage)
        line = (entry.model_dump_json() + "\n").encode()
        with reporting_disk_full(self.path):
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    self._write_line(fd, line)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @staticmethod
    def _write_line(fd: int, line: bytes) -> None:
        """The whole line or nothing: a write cut short (disk full) is cut off again, so readers never
        meet half an entry. Called under the exclusive lock, so the size before it is this line's start."""
        start = os.fstat(fd).st_size
        view = memoryview(line)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except BaseException:
            os.ftruncate(fd, start)
            raise

    def _catch_up(self) -> None:
        st = self._state
        try:
            if self.path.stat().st_size < st.offset:  # truncated or replaced: start over
                st.offset, st.spent, st.pending = 0, 0.0, b""
            with self.path.open("rb") as fh:
                fh.seek(st.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        st.offset += len(chunk)
        data = st.pending + chunk
        complete, _, st.pending = data.rpartition(b"\n")
        for raw in complete.split(b"\n"):
            if raw.strip():
                try:
                    st.spent += float(json.loads(raw)["usage"]["cost_usd"])
                except (ValueError, KeyError, TypeError):
                    continue

    def spent_usd(self) -> float:
        """Total cost in the ledger, including calls other processes wrote."""
        with self._state.lock:
            self._catch_up()
            return round(self._state.spent, 8)

    def entries(self) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        out: list[LedgerEntry] = []
        for line in self.path.read_text().splitlines():
            if line.strip():
                out.append(LedgerEntry.model_validate_json(line))
        return out

    def summary(self) -> UsageSummary:
        return UsageSummary.of([e.usage for e in self.entries()])
