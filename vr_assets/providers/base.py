"""What every teacher backend shares: call/answer records, errors, retries, the call loop.

A backend (Gemini, OpenAI-compatible) only knows how to prepare media, send one request
and read one response; the loop here decides what is transient, what is a bad answer,
how long to wait, when the budget stops a call and what goes into the ledger.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import httpx2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vr_assets.config import MediaSettings, ModelSpec, Pricing, RetrySettings
from vr_assets.providers.limits import RateLimiter
from vr_assets.providers.outage import FatalMarker, FatalRecord, OutageExpired, get_breaker
from vr_assets.providers.usage import UsageLedger, cache_write_usd, cost_usd, with_cache_prices
from vr_assets.records import CallUsage

log = logging.getLogger(__name__)
T = TypeVar("T")

# ---------------------------------------------------------------- call / answer records


class MediaRef(BaseModel):
    """The media a call looks at; `video_key` owns it so `release` can drop its uploads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["video", "frames"]
    paths: list[Path] = Field(min_length=1)
    mime_type: str = "video/mp4"
    video_key: str
    start_s: float | None = Field(None, ge=0, description="a time range of the video instead of all of it")
    end_s: float | None = Field(None, gt=0)
    fps: float | None = Field(None, gt=0, description="frames per second the model samples (Gemini)")
    reuses: int | None = Field(
        None, ge=1, description="calls expected on exactly this media (the whole video's questions): lets Gemini "
        "judge whether an explicit context cache pays. Not part of what the model sees (nor of cache keys)",
    )

    @model_validator(mode="after")
    def _range(self) -> MediaRef:
        if (self.start_s is None) != (self.end_s is None):
            raise ValueError("a time range needs both start_s and end_s")
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"empty time range {self.start_s}-{self.end_s} s")
        if self.kind == "frames" and (self.start_s is not None or self.fps is not None):
            raise ValueError("frames take no time range or sampling rate")
        return self

    def between(self, start_s: float, end_s: float) -> MediaRef:
        """The same video, a time range of it (at the model's own sampling rate)."""
        return MediaRef.model_validate(
            {**self.model_dump(), "start_s": start_s, "end_s": end_s, "fps": None, "reuses": None}
        )

    @property
    def sampling(self) -> dict[str, float]:
        """The range and rate, when set: they change what the model sees, so the call cache keys on them."""
        out = {"start_s": self.start_s, "end_s": self.end_s, "fps": self.fps}
        return {k: v for k, v in out.items() if v is not None}


class ModelCall(BaseModel):
    """One request to a teacher; `step` and `video_key` name it in errors and in the ledger."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    step: str
    prompt_key: str
    video_key: str
    prompt: str
    media: MediaRef | None = None
    schema_model: type[BaseModel] | None = None
    system: str = Field("", description="optional system instruction")
    tier: Literal["standard", "flex", "batch"] = Field(
        "standard", description="the price tier it goes on (workflow.tier); not part of the answer's cache key")


class ModelAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    text: str = Field(description="answer text with <think> blocks removed")
    parsed: BaseModel | None = None
    usage: CallUsage
    finish_reason: str = ""


# ---------------------------------------------------------------- errors

FailureKind = Literal[
    "rate_limit",
    "server",
    "timeout",
    "connection",
    "client",
    "bad_output",
    "upload",
    "budget",
    "config",
    "batch",
    "unexpected",
]


class ProviderError(RuntimeError):
    """A call that failed for good; the message names video, step, provider and the provider's text."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        video_key: str = "",
        step: str = "",
        kind: FailureKind = "unexpected",
        status: int | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.video_key = video_key
        self.step = step
        self.kind = kind
        self.status = status
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (Dagster ships errors across processes) without losing the fields.
        return (_rebuild_error, (type(self), str(self), self.__dict__.copy()))


def _rebuild_error(cls: type[ProviderError], message: str, state: dict[str, Any]) -> ProviderError:
    err = cls.__new__(cls)
    RuntimeError.__init__(err, message)
    err.__dict__.update(state)
    return err


class BudgetExceeded(ProviderError):
    """Raised before a call starts once the ledger shows the budget spent."""


class ProviderFatalError(ProviderError):
    """The provider refuses every call alike (a rejected API key, a missing model): no video can succeed,
    so the run stops with this one line (`outage.is_fatal_provider_failure` recognises it)."""


class RetryableError(Exception):
    """Raised by a backend for a transient condition the SDK does not type (e.g. an unfinished upload)."""


@dataclass
class Failure:
    """How the loop treats one exception: retry or not, and how long the server asked us to wait."""

    kind: FailureKind
    retryable: bool
    text: str
    status: int | None = None
    retry_after_s: float | None = None


class BadOutput(Exception):
    """An answer that arrived but must not be used (empty, truncated, blocked, unparsable)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- text helpers

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def strip_think(text: str) -> str:
    """Remove reasoning blocks; a dangling `</think>` (chat templates that pre-open the tag) ends the reasoning,
    and an unclosed `<think>` means the answer never came, so nothing after it is kept."""
    out = _THINK_BLOCK.sub("", text or "")
    closes = list(_THINK_CLOSE.finditer(out))
    if closes:
        out = out[closes[-1].end() :]
    opened = _THINK_OPEN.search(out)
    if opened:
        out = out[: opened.start()]
    return out.strip()


def strip_fences(text: str) -> str:
    """Models wrap JSON in ```json fences even when asked not to."""
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text.strip()


def parse_structured(text: str, schema_model: type[BaseModel]) -> BaseModel:
    """Validate an answer against its schema; a mismatch is a bad output, retried like an empty one."""
    body = strip_fences(text)
    try:
        return schema_model.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())) or "(root)"
        raise BadOutput("invalid_schema", f"{schema_model.__name__} {where}: {first.get('msg', err)}") from None


class Scrubber:
    """Replaces an API key with a mask wherever provider text might echo it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def __call__(self, text: object) -> str:
        out = str(text)
        for s in self._secrets:
            out = out.replace(s, "***")
        return out


def key_fingerprint(api_key: str) -> str:
    """Identifies a key in cache keys and logs without revealing it."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def file_sha256(path: Path, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006
    """Content hash, memoised on (path, size, mtime) so a 100 MB clip is hashed once per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    _cache[key] = digest
    return digest


def media_sha256(media: MediaRef) -> str:
    """One key for a whole media ref (a frame set hashes its frames in order)."""
    if len(media.paths) == 1:
        return file_sha256(media.paths[0])
    h = hashlib.sha256()
    for p in media.paths:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- retry policy


def parse_retry_after(headers: Any) -> float | None:
    """`retry-after-ms`, `retry-after` seconds or HTTP date; None when absent or unparsable."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms:
            return max(0.0, float(ms) / 1000.0)
        ra = headers.get("retry-after")
    except (AttributeError, ValueError):
        return None
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*s\s*$")


def parse_retry_info(details: Any) -> float | None:
    """google.rpc.RetryInfo `retryDelay` ("1.5s") from a Gemini error body."""
    if not isinstance(details, dict):
        return None
    err = details.get("error", details)
    items = err.get("details") if isinstance(err, dict) else None
    if not isinstance(items, list):
        return None
    for item in items:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = item.get("retryDelay") or item.get("retry_delay")
            if isinstance(delay, str) and (m := _DURATION.match(delay)):
                return float(m.group(1))
            if isinstance(delay, dict):
                return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
    return None


class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After is a floor, `max_delay_s` the ceiling."""

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def delay(self, retry_index: int, retry_after_s: float | None = None) -> float:
        s = self.settings
        cap = min(s.max_delay_s, s.initial_delay_s * (2.0**retry_index))
        with self._lock:
            wait = self._rng.uniform(0.0, cap)
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)
        return min(wait, s.max_delay_s)


TRANSIENT_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
DEFAULT_ENDPOINTS = {"gemini": "https://generativelanguage.googleapis.com", "openai": "https://api.openai.com/v1"}

# Gemini answers a bad key with 400 INVALID_ARGUMENT; a 403 about a file or cache is that object, not the key.
_KEY_REJECTED = re.compile(r"API[_ ]key[_ ](not[_ ]valid|invalid|expired)|API_KEY_INVALID", re.IGNORECASE)
_NOT_THE_KEY = re.compile(r"\bFiles?\b|files/|CachedContent|cachedContents/", re.IGNORECASE)
_MODEL_MISSING = re.compile(r"\bmodels?\b", re.IGNORECASE)


def fatal_kind(f: Failure) -> Literal["auth", "model"] | None:
    """Whether a refused request means every call will be refused alike: the key (401, 403, or Gemini's 400
    'API key not valid') or the model (a 404 that talks about the model)."""
    if f.kind != "client" or f.status is None:
        return None
    if f.status == 401 or (f.status == 403 and not _NOT_THE_KEY.search(f.text)):
        return "auth"
    if f.status == 400 and _KEY_REJECTED.search(f.text):
        return "auth"
    if f.status == 404 and _MODEL_MISSING.search(f.text) and not _NOT_THE_KEY.search(f.text):
        return "model"
    return None


def is_outage(f: Failure) -> bool:
    """Failures that say the endpoint is down rather than this request being wrong: they feed the breaker."""
    return f.kind == "connection" or (f.kind == "server" and (f.status is None or f.status >= 500))


def classify_status(status: int, text: str, retry_after_s: float | None) -> Failure:
    if status == 429:
        return Failure("rate_limit", True, text, status, retry_after_s)
    if status in TRANSIENT_STATUS or status >= 500:
        return Failure("server", True, text, status, retry_after_s)
    return Failure("client", False, text, status, None)


def classify_transport(exc: BaseException, scrub: Scrubber) -> Failure | None:
    """httpx2 errors both SDKs let through (genai does not wrap them)."""
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return Failure("timeout", True, f"timeout: {type(exc).__name__} {scrub(exc)}".strip())
    if isinstance(exc, httpx2.TransportError | ConnectionError):
        return Failure("connection", True, f"connection: {type(exc).__name__} {scrub(exc)}".strip())
    if isinstance(exc, RetryableError):
        return Failure("upload", True, scrub(exc))
    if isinstance(exc, json.JSONDecodeError):
        return Failure("server", True, f"unreadable response: {scrub(exc)}")
    return None


# ---------------------------------------------------------------- the protocol


@runtime_checkable
class TeacherModel(Protocol):
    provider: str
    model_name: str

    def generate(self, call: ModelCall) -> ModelAnswer: ...

    def generate_many(self, calls: Sequence[ModelCall]) -> list[ModelAnswer | ProviderError]: ...

    @property
    def clips_in_place(self) -> bool: ...

    def release(self, video_key: str) -> None: ...

    def discard(self, video_key: str) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- shared loop


@dataclass
class Attempt:
    """What one request produced, read by the backend; the loop sums these over attempts."""

    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    bad: BadOutput | None = None
    uploaded_bytes: int = 0
    inline_bytes: int = 0


@dataclass
class Prepared:
    """Media ready to send plus the bytes this call moved (only the call that uploads counts them)."""

    payload: Any = None
    uploaded_bytes: int = 0
    inline_bytes: int = 0
    release: Callable[[], None] = field(default=lambda: None)


@dataclass
class Accounting:
    """Where money is tracked: the ledger is per results dir, the budget per spec."""

    prices: dict[str, Pricing]
    ledger: UsageLedger | None
    budget_usd: float | None
    fatal_file: Path | None = None  # where rejections (bad key, missing model) are recorded for other processes
    local_spent: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class BaseTeacher:
    """The retry / budget / ledger loop; subclasses implement `_prepare`, `_send`, `_classify`."""

    provider: str = ""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        role: str,
        api_key: str,
        limiter: RateLimiter,
        media: MediaSettings,
        accounting: Accounting,
    ) -> None:
        self.model_name = spec.model_name
        self.role = role
        self._spec = spec
        self._limiter = limiter
        self._media = media
        self._acct = accounting
        self._policy = RetryPolicy(spec.retry)
        self._scrub = Scrubber([api_key])
        self._warned_no_price = False
        self.endpoint = _endpoint_of(spec)
        self._breaker = get_breaker(f"{self.provider}/{spec.model_name}/{self.endpoint}", self.endpoint,
                                    spec.retry.breaker_failures, spec.retry.probe_interval_s)
        fp = key_fingerprint(api_key)
        self._fatal_scopes = {
            "auth": f"auth|{self.provider}|{self.endpoint}|{fp}",
            "model": f"model|{self.provider}|{self.endpoint}|{spec.model_name}",
        }
        fatal_file = accounting.fatal_file
        self._fatal = FatalMarker(fatal_file, spec.retry.fatal_hold_s) if fatal_file is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(provider={self.provider!r}, model={self.model_name!r}, role={self.role!r})"

    # -------------------------------------------------- backend hooks

    def _prepare(self, call: ModelCall) -> Prepared:
        raise NotImplementedError

    def _send(self, call: ModelCall, prepared: Prepared) -> Attempt:
        raise NotImplementedError

    def _classify(self, exc: BaseException) -> Failure:
        raise NotImplementedError

    def _estimate_tokens(self, call: ModelCall) -> int:
        return estimate_tokens(call)

    @property
    def clips_in_place(self) -> bool:
        """Whether a chunk goes out as a time range of the whole video's upload (no cutting, no bytes)."""
        return False

    def release(self, video_key: str) -> None:
        """This process is done with the video for now; uploads later steps reuse may stay alive."""
        raise NotImplementedError

    def discard(self, video_key: str) -> None:
        """The video's last model step is done: delete its uploads wherever they were made."""
        self.release(video_key)

    # -------------------------------------------------- public API

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    def generate(self, call: ModelCall) -> ModelAnswer:
        self._check_budget(call)
        self._check_fatal(call)
        retry = self._spec.retry
        start = time.monotonic()
        totals = Attempt()  # tokens and bytes summed over every try: failed tries were billed too
        transient = bad = probes = 0
        waited = 0.0
        while True:
            # (kind, text, status) when the call is over; raised below, outside any `except`, so the
            # ProviderError carries no chained SDK exception whose text might hold unscrubbed secrets.
            fatal: tuple[FailureKind, str, int | None] | None = None
            refused: Literal["auth", "model"] | None = None
            delay = 0.0
            try:
                waited += self._breaker.admit(retry.outage_deadline_s)
            except OutageExpired as down:
                raise self._fail(call, "connection", str(down), None, totals, start, transient + bad + probes,
                                 waited) from None
            try:
                got, parsed = self._attempt(call, totals)
            except BadOutput as b:
                self._breaker.success()  # it answered: the endpoint is up
                bad += 1
                text = self._scrub(b)
                if bad > retry.bad_output_attempts:
                    fatal = ("bad_output", f"bad output after {bad} answers: {text}", None)
                else:
                    delay = self._policy.delay(bad - 1)
                    log.warning("%s: bad output (%s), retry %d/%d in %.2fs",
                                self._where(call), text, bad, retry.bad_output_attempts, delay)
            except ProviderError:
                raise
            except Exception as exc:  # noqa: BLE001 - every SDK error is classified below
                f = self._classify(exc)
                down = is_outage(f)
                if down:
                    down = self._breaker.failure(f.text)
                elif f.status is not None:
                    self._breaker.success()  # any other HTTP answer: the endpoint is up
                if not f.retryable:
                    fatal = (f.kind, f.text, f.status)
                    refused = fatal_kind(f)
                elif down:
                    probes += 1  # the breaker is open: `admit` waits for the endpoint, up to the outage deadline
                elif transient + 1 >= retry.max_attempts:
                    fatal = (f.kind, f"gave up after {transient + 1} attempts: {f.text}", f.status)
                else:
                    transient += 1
                    delay = self._policy.delay(transient - 1, f.retry_after_s)
                    if f.kind == "rate_limit":
                        self._limiter.throttle(delay)
                    log.warning("%s: %s (status %s), retry %d/%d in %.2fs",
                                self._where(call), f.kind, f.status, transient, retry.max_attempts - 1, delay)
            else:
                self._breaker.success()
                if self._fatal is not None:
                    self._fatal.clear(list(self._fatal_scopes.values()))
                usage = self._usage(call, totals, start, transient + bad + probes, waited)
                self._record(call, usage, ok=True, error="")
                return ModelAnswer(text=got.text, parsed=parsed, usage=usage, finish_reason=got.finish_reason)
            if fatal is not None:
                kind, text, status = fatal
                retries = transient + bad + probes - (1 if kind == "bad_output" else 0)
                if refused is not None:
                    raise self._refused(call, refused, text, status, totals, start, retries, waited)
                raise self._fail(call, kind, text, status, totals, start, retries, waited)
            time.sleep(delay)

    def _attempt(self, call: ModelCall, totals: Attempt) -> tuple[Attempt, BaseModel | None]:
        """One try: media, one request under the limiter, then the answer checked (and parsed)."""
        prepared = self._prepare(call)
        totals.uploaded_bytes += prepared.uploaded_bytes
        totals.inline_bytes = max(totals.inline_bytes, prepared.inline_bytes)
        try:
            with self._limiter.slot(self._estimate_tokens(call)) as permit:
                got = self._send(call, prepared)
                permit.settle(got.prompt_tokens + got.output_tokens + got.thinking_tokens or None)
        finally:
            prepared.release()
        totals.prompt_tokens += got.prompt_tokens
        totals.output_tokens += got.output_tokens
        totals.thinking_tokens += got.thinking_tokens
        totals.cached_tokens += got.cached_tokens
        totals.cache_write_tokens += got.cache_write_tokens
        if got.bad is not None:
            raise got.bad
        parsed = parse_structured(got.text, call.schema_model) if call.schema_model is not None else None
        return got, parsed

    def generate_many(self, calls: Sequence[ModelCall]) -> list[ModelAnswer | ProviderError]:
        """Runs calls on a pool as wide as the limiter; the limiter, not the pool, is the real cap."""
        if not calls:
            return []
        width = max(1, min(len(calls), self._limiter.max_concurrency))

        def one(c: ModelCall) -> ModelAnswer | ProviderError:
            try:
                return self.generate(c)
            except ProviderError as err:
                return err

        with ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"{self.provider}-{self.role}") as pool:
            return list(pool.map(one, calls))

    # -------------------------------------------------- internals

    def _where(self, call: ModelCall) -> str:
        return f"{self.provider}/{self.model_name} video {call.video_key!r} step {call.step} ({call.prompt_key})"

    def _price(self) -> Pricing | None:
        prices = self._acct.prices
        p = prices.get(self.model_name) or prices.get(self.model_name.removeprefix("models/"))
        if p is None and not self._warned_no_price and (prices or self._acct.budget_usd):
            self._warned_no_price = True
            log.warning("no price for model %s: its calls cost 0 in the ledger and budget", self.model_name)
        return with_cache_prices(self.model_name, p) if p is not None else None

    def _usage(self, call: ModelCall, t: Attempt, start: float, retries: int, waited: float = 0.0) -> CallUsage:
        standard = self._price()
        price = standard.for_tier(call.tier) if standard is not None else None
        return CallUsage(
            provider=self.provider,
            model=self.model_name,
            step=call.step,
            prompt_key=call.prompt_key,
            prompt_tokens=t.prompt_tokens,
            output_tokens=t.output_tokens,
            thinking_tokens=t.thinking_tokens,
            cached_tokens=t.cached_tokens,
            cache_write_tokens=t.cache_write_tokens,
            latency_s=round(time.monotonic() - start, 4),
            retries=retries,
            cost_usd=cost_usd(price, t.prompt_tokens, t.output_tokens, t.thinking_tokens, t.cached_tokens)
            + cache_write_usd(standard, t.cache_write_tokens, self._spec.context_cache_ttl_s),
            uploaded_bytes=t.uploaded_bytes,
            inline_bytes=t.inline_bytes,
            outage_wait_s=round(waited, 3),
            tier=call.tier,
        )

    def _record(self, call: ModelCall, usage: CallUsage, *, ok: bool, error: str) -> None:
        with self._acct.lock:
            self._acct.local_spent += usage.cost_usd
        if self._acct.ledger is not None:
            self._acct.ledger.append(usage, video_key=call.video_key, ok=ok, error=error)

    def _spent(self) -> float:
        if self._acct.ledger is not None:
            return self._acct.ledger.spent_usd()
        with self._acct.lock:
            return self._acct.local_spent

    def _check_budget(self, call: ModelCall) -> None:
        budget = self._acct.budget_usd
        if budget is None:
            return
        spent = self._spent()
        if spent >= budget:
            raise BudgetExceeded(
                f"budget of ${budget:.4f} is spent (${spent:.4f} so far): not starting {self._where(call)}",
                provider=self.provider,
                model=self.model_name,
                video_key=call.video_key,
                step=call.step,
                kind="budget",
            )

    def _check_fatal(self, call: ModelCall) -> None:
        """A rejection another call recorded (any process, same results dir) fails this one before it sends."""
        if self._fatal is None:
            return
        rec = self._fatal.check(list(self._fatal_scopes.values()))
        if rec is not None:
            raise ProviderFatalError(
                f"{self._where(call)} failed: {rec.message}", provider=self.provider, model=self.model_name,
                video_key=call.video_key, step=call.step, kind="client", status=rec.status, attempts=0,
            )

    def _refused(
        self,
        call: ModelCall,
        what: Literal["auth", "model"],
        text: str,
        status: int | None,
        totals: Attempt,
        start: float,
        retries: int,
        waited: float,
    ) -> ProviderFatalError:
        """The key or the model was refused: one clear line, recorded so queued calls fail without asking."""
        if what == "auth":
            line = self._scrub(f"{self.provider} rejected the API key ({status}): {text} (endpoint {self.endpoint})")
        else:
            line = self._scrub(f"model {self.model_name} not found at {self.endpoint} ({status}): {text}")
        line = " ".join(line.split())
        if self._fatal is not None:
            now = time.time()
            rec = FatalRecord(at=now, at_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                              provider=self.provider, endpoint=self.endpoint, model=self.model_name,
                              status=status, message=line)
            self._fatal.record(self._fatal_scopes[what], rec)
        err = self._fail(call, "client", line, status, totals, start, retries, waited, cls=ProviderFatalError,
                         with_kind=False)
        return err  # type: ignore[return-value]

    def _fail(
        self,
        call: ModelCall,
        kind: FailureKind,
        text: str,
        status: int | None,
        totals: Attempt,
        start: float,
        retries: int,
        waited: float = 0.0,
        *,
        cls: type[ProviderError] = ProviderError,
        with_kind: bool = True,
    ) -> ProviderError:
        message = self._scrub(f"{self._where(call)} failed: {kind + ': ' if with_kind else ''}{text}")
        # Tokens of rejected answers were billed: the ledger keeps them even though the call failed.
        usage = self._usage(call, totals, start, retries, waited)
        self._record(call, usage, ok=False, error=message)
        log.error("%s", message)
        return cls(
            message,
            provider=self.provider,
            model=self.model_name,
            video_key=call.video_key,
            step=call.step,
            kind=kind,
            status=status,
            attempts=retries + 1,
        )


def _endpoint_of(spec: ModelSpec) -> str:
    """The URL requests go to, for messages and the breaker's name."""
    if spec.backend == "gemini":
        return spec.gemini.base_url or DEFAULT_ENDPOINTS["gemini"]
    return spec.openai.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_ENDPOINTS["openai"]


def estimate_tokens(call: ModelCall) -> int:
    """Rough prompt size for the TPM window, settled with real usage afterwards.

    Text ~4 chars/token; an image ~258 tokens; video ~1 token per 1 KB of (downscaled) clip, which is
    within 2-3x of Gemini's 66-258 tokens/s for the clips media.py produces.
    """
    n = (len(call.prompt) + len(call.system)) // 4 + 1
    if call.media is not None:
        if call.media.kind == "frames":
            n += 258 * len(call.media.paths)
        else:
            n += sum(max(258, p.stat().st_size // 1000) for p in call.media.paths if p.exists())
    return n


class KeyedLocks:
    """One lock per key, so work on one video never waits for another video's upload. A key's lock is
    dropped when its last holder or waiter leaves, so the map follows the work in progress, not every
    key ever used."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[key]

    @contextmanager
    def hold_all(self, keys: Iterable[str]) -> Iterator[None]:
        """Every key's lock, taken in key order so two callers sharing keys cannot deadlock."""
        with ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(self.hold(key))
            yield


class PayloadCache(Generic[T]):
    """Encoded media (bytes, data URLs, SDK parts) built once per content hash, owned by video keys.

    `release(owner)` drops entries no other video still owns, so memory follows the videos in work.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[T, int]] = {}
        self._owners: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._build_locks = KeyedLocks()
        self.builds = 0

    def get(self, key: str, owner: str, build: Callable[[], tuple[T, int]]) -> tuple[T, int]:
        """The payload and its size in bytes; `build` runs once per key however many threads ask."""
        with self._build_locks.hold(key):
            with self._lock:
                hit = self._items.get(key)
                if hit is not None:
                    self._owners[key].add(owner)
                    return hit
            made = build()
            with self._lock:
                self._items[key] = made
                self._owners.setdefault(key, set()).add(owner)
                self.builds += 1
            return made

    def release(self, owner: str) -> int:
        with self._lock:
            dropped = 0
            for key in list(self._owners):
                owners = self._owners[key]
                owners.discard(owner)
                if not owners:
                    del self._owners[key]
                    self._items.pop(key, None)
                    dropped += 1
            return dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


__all__ = [
    "KeyedLocks",
    "PayloadCache",
    "Accounting",
    "Attempt",
    "BadOutput",
    "BaseTeacher",
    "BudgetExceeded",
    "Failure",
    "MediaRef",
    "ModelAnswer",
    "ModelCall",
    "Prepared",
    "ProviderError",
    "ProviderFatalError",
    "RetryPolicy",
    "RetryableError",
    "Scrubber",
    "TeacherModel",
    "classify_status",
    "classify_transport",
    "estimate_tokens",
    "fatal_kind",
    "file_sha256",
    "is_outage",
    "key_fingerprint",
    "media_sha256",
    "parse_retry_after",
    "parse_retry_info",
    "parse_structured",
    "strip_fences",
    "strip_think",
]
