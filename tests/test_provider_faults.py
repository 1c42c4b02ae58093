"""Faults, limits, budget and secrets of the teacher clients, on the real SDKs against the fakes."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_providers import ProviderMedia
from vr_assets.config import (
    GeminiSettings,
    MediaSettings,
    ModelSpec,
    OpenAISettings,
    Pricing,
    RateLimits,
    RetrySettings,
)
from vr_assets.fakes import FakeGemini, FakeOpenAI, FaultPlan, RequestRecord
from vr_assets.providers import (
    BudgetExceeded,
    MediaRef,
    ModelAnswer,
    ModelCall,
    ProviderError,
    UsageLedger,
    get_model,
)
from vr_assets.providers.base import RetryPolicy
from vr_assets.providers.limits import RateLimiter
from vr_assets.providers.usage import LEDGER_FILE
from vr_assets.records import CallUsage, RelevanceVerdict

pytestmark = pytest.mark.usefixtures("clean_providers")

KEY = "sk-VRSECRET-faults-0a1b2c3d4e5f"
Fake = FakeGemini | FakeOpenAI


@dataclass
class Scripted(FaultPlan):
    """Faults in a fixed order (then none), independent of thread timing."""

    script: list[str] = field(default_factory=list)

    def draw(self, applicable: tuple[str, ...]) -> str | None:
        with self._lock:
            return self.script.pop(0) if self.script else None


def plan(*kinds: str, slow_s: float = 2.0) -> Scripted:
    return Scripted(rate=1.0, kinds=tuple(sorted(set(kinds))) or ("500",), slow_s=slow_s, script=list(kinds))


def retry(max_attempts: int = 5, bad: int = 2) -> RetrySettings:
    return RetrySettings(max_attempts=max_attempts, initial_delay_s=0.01, max_delay_s=0.05, bad_output_attempts=bad)


def spec_for(
    fake: Fake,
    *,
    timeout: float = 10.0,
    concurrency: int = 4,
    rpm: int | None = None,
    retry_settings: RetrySettings | None = None,
) -> ModelSpec:
    limits = RateLimits(max_concurrency=concurrency, requests_per_minute=rpm)
    r = retry_settings or retry()
    if isinstance(fake, FakeGemini):
        g = GeminiSettings(api_key=KEY, base_url=fake.base_url, model="gemini-test", timeout=timeout)
        return ModelSpec(backend="gemini", gemini=g, limits=limits, retry=r)
    o = OpenAISettings(api_key=KEY, base_url=fake.base_url, model_name="fake-vlm", timeout=timeout)
    return ModelSpec(backend="openai", openai=o, limits=limits, retry=r)


def route_of(fake: Fake) -> str:
    return "generateContent" if isinstance(fake, FakeGemini) else "chat.completions"


def make_fake(backend: str, **kw: Any) -> Fake:
    return (FakeGemini if backend == "gemini" else FakeOpenAI)(**kw).start()


def call(
    prompt: str = "Describe the clip.",
    media: MediaRef | None = None,
    schema: Any = None,
    key: str = "clip-7",
    step: str = "1b",
) -> ModelCall:
    return ModelCall(
        step=step, prompt_key="chunk_caption", video_key=key, prompt=prompt, media=media, schema_model=schema
    )


@pytest.fixture(params=["gemini", "openai"])
def fake(request: pytest.FixtureRequest) -> Iterator[Fake]:
    server = make_fake(request.param)
    yield server
    server.stop()


# ---------------------------------------------------------------- transient faults


@pytest.mark.parametrize("kind", ["429", "429_retry_after", "500", "503", "timeout", "drop"])
def test_transient_faults_are_retried_then_succeed(fake: Fake, kind: str) -> None:
    model = get_model(spec_for(fake, timeout=0.4))
    fake.faults = plan(kind, kind, slow_s=2.0)
    a = model.generate(call())
    assert a.text
    assert a.usage.retries == 2
    assert fake.counts[route_of(fake)] == 3
    faults = [r.fault for r in fake.records(route_of(fake))] if kind != "timeout" else [kind, kind]
    assert faults[:2] == [kind, kind]
    if kind.startswith("429"):
        assert model.limiter.stats.throttles == 2  # type: ignore[attr-defined]


def test_html_502_is_transient(fake: Fake) -> None:
    model = get_model(spec_for(fake))
    fake.fail_next(route_of(fake), 502, body="<html><body>Bad Gateway</body></html>")
    a = model.generate(call())
    assert a.usage.retries == 1 and a.text


def test_transient_faults_give_up_after_max_attempts(fake: Fake) -> None:
    model = get_model(spec_for(fake, retry_settings=retry(max_attempts=3)))
    fake.fail_next(route_of(fake), 503, times=10)
    with pytest.raises(ProviderError) as info:
        model.generate(call())
    assert fake.counts[route_of(fake)] == 3
    assert "gave up after 3 attempts" in str(info.value)
    assert info.value.kind == "server" and info.value.status == 503


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_fail_at_once_naming_video_step_provider(fake: Fake, status: int) -> None:
    model = get_model(spec_for(fake))
    text = f"provider says: frame {status} is unusable"
    if isinstance(fake, FakeGemini):
        body: dict[str, Any] = {"error": {"code": status, "message": text, "status": "INVALID_ARGUMENT"}}
    else:
        body = {"error": {"message": text, "type": "invalid_request_error", "param": None, "code": None}}
    fake.fail_next(route_of(fake), status, body=body)
    with pytest.raises(ProviderError) as info:
        model.generate(call())
    msg = str(info.value)
    assert fake.counts[route_of(fake)] == 1
    for part in ("clip-7", "1b", model.provider, text, str(status)):
        assert part in msg
    assert info.value.kind == "client"
    assert (info.value.video_key, info.value.step, info.value.status) == ("clip-7", "1b", status)


# ---------------------------------------------------------------- bad outputs


@pytest.mark.parametrize("kind", ["empty", "safety", "truncated"])
def test_bad_output_is_retried_then_succeeds(fake: Fake, kind: str) -> None:
    model = get_model(spec_for(fake))
    fake.faults = plan(kind)
    a = model.generate(call())
    assert a.text and a.usage.retries == 1
    assert a.finish_reason.lower() == "stop"


@pytest.mark.parametrize("kind", ["empty", "safety", "truncated"])
def test_persistent_bad_output_fails_clearly(fake: Fake, kind: str) -> None:
    model = get_model(spec_for(fake, retry_settings=retry(bad=2)))
    fake.faults = plan(*[kind] * 10)
    with pytest.raises(ProviderError) as info:
        model.generate(call())
    assert fake.counts[route_of(fake)] == 3  # first answer + 2 retries
    reason = {
        "empty": "empty",
        "truncated": "truncated",
        "safety": "blocked" if isinstance(fake, FakeGemini) else "refusal",
    }[kind]
    assert info.value.kind == "bad_output"
    assert reason in str(info.value) and "clip-7" in str(info.value)


def _text_reply(fake: Fake, text: str) -> dict[str, Any]:
    if isinstance(fake, FakeGemini):
        return {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        }
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-vlm",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def test_answer_not_matching_the_schema_is_a_bad_output(fake: Fake) -> None:
    model = get_model(spec_for(fake))
    fake.fail_next(route_of(fake), 200, body=_text_reply(fake, "Sorry, I cannot produce JSON."))
    a = model.generate(call("Is this in the domain?", schema=RelevanceVerdict, step="0"))
    assert isinstance(a.parsed, RelevanceVerdict)
    assert a.usage.retries == 1
    assert a.usage.prompt_tokens >= 10  # the rejected answer's tokens were billed too

    fake.fail_next(route_of(fake), 200, body=_text_reply(fake, '{"relevant": "maybe"}'), times=3)
    with pytest.raises(ProviderError, match="invalid_schema"):
        model.generate(call("Is this in the domain?", schema=RelevanceVerdict, step="0"))


def test_think_only_answer_is_a_bad_output(fake: Fake) -> None:
    model = get_model(spec_for(fake))
    fake.fail_next(route_of(fake), 200, body=_text_reply(fake, "<think>still thinking"), times=3)
    with pytest.raises(ProviderError, match="after removing <think>"):
        model.generate(call())


# ---------------------------------------------------------------- Gemini uploads under faults


def test_upload_faults_are_retried_and_the_file_uploaded_once(provider_media: ProviderMedia) -> None:
    clip = provider_media.big_videos[0]
    with FakeGemini(processing_polls=1, probe_durations=False) as gem:
        model = get_model(spec_for(gem), media=MediaSettings(inline_limit_mb=0.05))
        gem.fail_next("upload.start", 503)
        gem.fail_next("upload.chunk", 500)
        gem.fail_next("files.get", 503)
        gem.fail_next("generateContent", 503)  # after the upload: the retry reuses the file
        a = model.generate(call(media=MediaRef(kind="video", paths=[clip], video_key="clip-7")))
        assert a.usage.retries == 3
        assert a.usage.uploaded_bytes == clip.stat().st_size
        assert gem.counts["upload.start"] == 3
        assert gem.live_files() == 1
        assert sum(gem.upload_bytes_by_sha().values()) == clip.stat().st_size


def test_failed_file_processing_is_fatal(provider_media: ProviderMedia) -> None:
    clip = provider_media.big_videos[1]
    with FakeGemini(processing_polls=1, probe_durations=False) as gem:
        model = get_model(spec_for(gem), media=MediaSettings(inline_limit_mb=0.05))
        failed = {
            "name": "files/gone",
            "mimeType": "video/mp4",
            "state": "FAILED",
            "error": {"code": 400, "message": "unsupported codec in stream 0"},
        }
        gem.fail_next("files.get", 200, body=failed)
        with pytest.raises(ProviderError, match="unsupported codec") as info:
            model.generate(call(media=MediaRef(kind="video", paths=[clip], video_key="clip-7")))
        assert info.value.kind == "upload"
        assert gem.counts["generateContent"] == 0
        assert gem.counts["upload.start"] == 1


# ---------------------------------------------------------------- random faults, same answers


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_random_faults_change_nothing_but_retries(backend: str, provider_media: ProviderMedia) -> None:
    frames = MediaRef(kind="frames", paths=provider_media.frames, mime_type="image/jpeg", video_key="f")
    clip = MediaRef(kind="video", paths=[provider_media.small_video], video_key="v")
    calls = [
        call(
            f"Describe moment {i}.",
            [None, frames, clip][i % 3],
            RelevanceVerdict if i % 4 == 0 else None,
            key=f"k{i % 5}",
        )
        for i in range(33)
    ]
    clean = make_fake(backend)
    try:
        expected = [a.text for a in _ok(get_model(spec_for(clean)).generate_many(calls))]
    finally:
        clean.stop()
    noisy = make_fake(backend, faults=FaultPlan(rate=0.2, seed=7, slow_s=1.0))
    try:
        model = get_model(spec_for(noisy, timeout=0.5, retry_settings=retry(max_attempts=8, bad=6)))
        got = _ok(model.generate_many(calls))
        faults = [r.fault for r in noisy.records(route_of(noisy)) if r.fault]
    finally:
        noisy.stop()
    assert [a.text for a in got] == expected
    assert sum(a.usage.retries for a in got) > 0
    assert faults  # the plan did inject faults


def _ok(results: list[ModelAnswer | ProviderError]) -> list[ModelAnswer]:
    errors = [str(r) for r in results if isinstance(r, ProviderError)]
    assert not errors, errors
    return [r for r in results if isinstance(r, ModelAnswer)]


# ---------------------------------------------------------------- limits


def _peak_overlap(records: list[RequestRecord]) -> int:
    edges = sorted(
        [(r.started_at, 1) for r in records] + [(r.started_at + r.duration_s, -1) for r in records],
        key=lambda e: (e[0], e[1]),
    )
    peak = cur = 0
    for _, d in edges:
        cur += d
        peak = max(peak, cur)
    return peak


def test_concurrency_cap_is_shared_by_every_teacher_on_the_endpoint() -> None:
    with FakeGemini(latency_text_s=0.25) as gem:
        vlm = get_model(spec_for(gem, concurrency=2), role="vlm")
        llm = get_model(spec_for(gem, concurrency=2), role="llm")
        assert vlm is not llm
        out: list[list[Any]] = []

        def run(m: Any, tag: str) -> None:
            out.append(m.generate_many([call(f"{tag} {i}") for i in range(4)]))

        threads = [threading.Thread(target=run, args=(m, t)) for m, t in ((vlm, "a"), (llm, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        records = gem.records("generateContent")
    assert len(records) == 8 and all(isinstance(a, ModelAnswer) for batch in out for a in batch)
    assert _peak_overlap(records) == 2
    assert vlm.limiter.stats.peak_in_flight == 2  # type: ignore[attr-defined]


def test_rpm_window_is_never_exceeded() -> None:
    lim = RateLimiter("test", max_concurrency=10, requests_per_minute=3, window_s=0.3)
    starts: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        with lim.slot(1) as permit, lock:
            starts.append(permit.started_at)

    threads = [threading.Thread(target=one) for _ in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    starts.sort()
    assert len(starts) == 9
    # any 4 consecutive starts span at least one window: never 4 requests inside one window
    assert all(starts[i + 3] - starts[i] >= 0.3 - 1e-9 for i in range(len(starts) - 3))


RATE_PROCESS = """
import json, sys, time
from vr_assets.providers.limits import RateLimiter
lim = RateLimiter(sys.argv[1], max_concurrency=10, requests_per_minute=3, window_s=1.0)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
starts = []
for _ in range(3):
    with lim.slot(1) as permit:
        starts.append(permit.shared_at)
print(json.dumps(starts))
"""


def _never_more_than(starts: list[float], rpm: int, window_s: float) -> bool:
    starts = sorted(starts)
    return all(starts[i + rpm] - starts[i] >= window_s - 0.02 for i in range(len(starts) - rpm))


def test_the_rpm_budget_is_shared_by_every_process_on_the_machine(tmp_path: Path) -> None:
    """Three processes, each with its own limiter of 3 requests per window: together they still start at most 3
    per window (the shared window beside the host slots), not 9."""
    import json
    import os
    import time

    env = {**os.environ, "VR_HOST_SLOTS_DIR": str(tmp_path / "slots"), "DAGSTER_HOME": str(tmp_path / "home")}
    env.pop("VR_DAGSTER_POSTGRES_URL", None)
    at = str(time.time() + 2.5)
    procs = [subprocess.Popen([sys.executable, "-c", RATE_PROCESS, "endpoint-x", at], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-600:] for _, e in outs]
    starts = [t for out, _ in outs for t in json.loads(out)]
    assert len(starts) == 9 and _never_more_than(starts, 3, 1.0), sorted(starts)


def test_the_rpm_budget_is_shared_through_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hosts' limiters of one endpoint (the instance on Postgres): one budget between them."""

    from vr_assets.execution.instance import POSTGRES_URL_ENV

    monkeypatch.setenv(POSTGRES_URL_ENV, pg_url)
    monkeypatch.delenv("VR_HOST_SLOTS_DIR", raising=False)
    hosts = [RateLimiter("endpoint-pg", max_concurrency=10, requests_per_minute=2, window_s=1.0) for _ in range(2)]
    starts: list[float] = []
    lock = threading.Lock()

    def one(lim: RateLimiter) -> None:
        with lim.slot(1) as permit, lock:
            starts.append(permit.shared_at)

    threads = [threading.Thread(target=one, args=(hosts[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(starts) == 6 and _never_more_than(starts, 2, 1.0), sorted(starts)


def test_tpm_estimate_is_settled_with_real_usage() -> None:
    lim = RateLimiter("test", max_concurrency=4, tokens_per_minute=100)
    with lim.slot(90) as permit:
        permit.settle(10)  # the response used far fewer tokens than estimated
    done = threading.Event()

    def second() -> None:
        with lim.slot(80):
            done.set()

    t = threading.Thread(target=second, daemon=True)
    t.start()
    # Unsettled, 90 + 80 > 100 would wait for the 60 s window; settled, 10 + 80 fits now.
    assert done.wait(timeout=10)


def test_throttle_pauses_everyone_and_halves_concurrency() -> None:
    lim = RateLimiter("test", max_concurrency=4)
    before = lim._clock()
    lim.throttle(0.2)
    assert lim.effective_concurrency == 2
    with lim.slot() as permit:
        assert permit.started_at >= before + 0.2
    for _ in range(4):
        with lim.slot():
            pass
    assert lim.effective_concurrency > 2  # grows back with successful requests


def test_retry_delay_honours_retry_after_within_the_cap() -> None:
    pol = RetryPolicy(RetrySettings(initial_delay_s=0.1, max_delay_s=5.0))
    assert all(0 <= pol.delay(i) <= min(5.0, 0.1 * 2**i) for i in range(8) for _ in range(20))
    assert pol.delay(0, retry_after_s=1.5) >= 1.5
    assert pol.delay(0, retry_after_s=30.0) == 5.0


# ---------------------------------------------------------------- budget and ledger


def test_budget_stops_new_calls_and_the_ledger_adds_up(tmp_path: Path) -> None:
    prices = {"gemini-test": Pricing(input_per_mtok=1000.0, output_per_mtok=1000.0)}
    ledger = UsageLedger(tmp_path / "usage")
    budget = 0.1
    with FakeGemini() as gem:
        model = get_model(spec_for(gem), prices=prices, ledger=ledger, budget_usd=budget)
        costs: list[float] = []
        with pytest.raises(BudgetExceeded) as info:
            for i in range(100):
                costs.append(model.generate(call(f"Describe moment {i}.")).usage.cost_usd)
        requests = gem.counts["generateContent"]
        later = model.generate_many([call("one more"), call("and another")])
    assert all(c > 0 for c in costs)
    assert sum(costs[:-1]) < budget <= sum(costs)  # the last call started under budget, then crossed it
    assert requests == len(costs)  # the refused call never reached the provider
    assert "budget of $0.1000" in str(info.value) and "spent" in str(info.value)
    assert all(isinstance(r, BudgetExceeded) for r in later)
    assert ledger.spent_usd() == pytest.approx(sum(costs))
    entries = ledger.entries()
    assert len(entries) == len(costs) and all(e.ok for e in entries)
    assert ledger.summary().calls == len(costs)


def test_ledger_records_failed_calls_and_other_processes(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path / "usage")
    with FakeOpenAI() as oai:
        model = get_model(
            spec_for(oai), ledger=ledger, prices={"fake-vlm": Pricing(input_per_mtok=100.0, output_per_mtok=100.0)}
        )
        model.generate(call())
        oai.fail_next("chat.completions", 400)
        with pytest.raises(ProviderError):
            model.generate(call())
    ok, failed = ledger.entries()
    assert ok.ok and not failed.ok and "clip-7" in failed.error
    before = ledger.spent_usd()
    usage = CallUsage(provider="openai", model="fake-vlm", step="2", prompt_key="p", cost_usd=0.25)
    script = (
        "import sys; from vr_assets.providers import UsageLedger; from vr_assets.records import CallUsage; "
        "UsageLedger(sys.argv[1]).append(CallUsage.model_validate_json(sys.argv[2]), video_key='x', ok=True)"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "usage"), usage.model_dump_json()],
        check=True,
        cwd=root,
        env={"PYTHONPATH": str(root)},
    )
    assert UsageLedger(tmp_path / "usage").spent_usd() == pytest.approx(before + 0.25)
    assert (tmp_path / "usage" / LEDGER_FILE).read_text().count("\n") == 3


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_api_key_never_leaks(backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ledger = UsageLedger(tmp_path / "usage")
    fake = make_fake(backend, latency_text_s=0.0)
    errors: list[BaseException] = []
    try:
        model = get_model(spec_for(fake, timeout=0.3, retry_settings=retry(max_attempts=2, bad=1)), ledger=ledger)
        route = route_of(fake)
        assert model.generate(call()).text
        echo = f"API key not valid: {KEY}. Please pass a valid API key."
        for status in (400, 401, 429):
            body = (
                {"error": {"code": status, "message": echo, "status": "INVALID_ARGUMENT"}}
                if isinstance(fake, FakeGemini)
                else {"error": {"message": echo, "type": "invalid_request_error", "param": None, "code": None}}
            )
            fake.fail_next(route, status, body=body, times=2)
            with pytest.raises(ProviderError) as info:
                model.generate(call())
            errors.append(info.value)
        fake.fail_next(route, 200, body=_text_reply(fake, f"<think>{KEY}"), times=2)
        fake.faults = plan("timeout", "timeout", slow_s=1.0)
        for _ in range(2):
            with pytest.raises(ProviderError) as info:
                model.generate(call())
            errors.append(info.value)
    finally:
        fake.stop()
    assert len(errors) == 5
    for err in errors:
        rendered = "".join(traceback.format_exception(err))
        assert KEY not in rendered and KEY not in repr(err)
        assert err.__cause__ is None and err.__context__ is None  # no SDK exception chained behind it
    assert "***" in str(errors[0])  # the echoed key was masked, the rest of the provider text kept
    assert KEY not in repr(model)
    for rec in caplog.records:
        assert KEY not in rec.getMessage()
        assert KEY not in (rec.exc_text or "")
    assert KEY not in (tmp_path / "usage" / LEDGER_FILE).read_text()
    assert caplog.records  # the run did log (retries, failures)
