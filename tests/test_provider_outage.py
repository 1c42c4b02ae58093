"""A teacher endpoint that is down for a while, or refuses the key or the model: real SDKs against the fakes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_provider_faults import KEY, Fake, call, make_fake, route_of
from vr_assets.config import GeminiSettings, ModelSpec, OpenAISettings, RateLimits, RetrySettings
from vr_assets.fakes import FakeGemini
from vr_assets.providers import (
    ModelAnswer,
    ProviderError,
    ProviderFatalError,
    UsageLedger,
    get_model,
    is_fatal_provider_failure,
    provider_fatal_file,
)
from vr_assets.providers.outage import BreakerState, CircuitBreaker, OutageExpired, open_breakers
from vr_assets.records import UsageSummary

pytestmark = pytest.mark.usefixtures("clean_providers")

ROOT = Path(__file__).resolve().parents[1]


def outage_retry(deadline_s: float = 30.0, **kw: Any) -> RetrySettings:
    """Backoff so short that retrying without a breaker would send hundreds of requests in a 2 s outage."""
    base: dict[str, Any] = dict(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05, outage_deadline_s=deadline_s,
                                breaker_failures=3, probe_interval_s=0.4)
    return RetrySettings(**{**base, **kw})


def spec_of(fake: Fake, retry: RetrySettings, concurrency: int = 4) -> ModelSpec:
    limits = RateLimits(max_concurrency=concurrency)
    if isinstance(fake, FakeGemini):
        g = GeminiSettings(api_key=KEY, base_url=fake.base_url, model="gemini-test", timeout=5.0)
        return ModelSpec(backend="gemini", gemini=g, limits=limits, retry=retry)
    o = OpenAISettings(api_key=KEY, base_url=fake.base_url, model_name="fake-vlm", timeout=5.0)
    return ModelSpec(backend="openai", openai=o, limits=limits, retry=retry)


@pytest.fixture
def slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The breaker lives in a host-wide state file, as in runs `vr-annotate run` launches."""
    d = tmp_path / "slots"
    monkeypatch.setenv("VR_HOST_SLOTS_DIR", str(d))
    return d


@pytest.mark.parametrize(("backend", "how"), [("gemini", "503"), ("openai", "503"), ("gemini", "refused"),
                                              ("openai", "refused")])
def test_calls_wait_out_an_outage_with_few_requests(
    backend: str, how: str, slots: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="vr_assets.providers.outage")
    fake = make_fake(backend)
    url = fake.base_url
    ledger = UsageLedger(tmp_path / "usage")
    try:
        model = get_model(spec_of(fake, outage_retry()), ledger=ledger)
        assert model.generate(call("warm up")).text
        fake.reset()
        t0 = time.monotonic()
        restart = None
        if how == "503":
            fake.outage(2.0)
        else:
            restart = fake.refuse_for(2.0)
        answers = model.generate_many([call(f"moment {i}", key=f"clip-{i}") for i in range(8)])
        took = time.monotonic() - t0
        if restart is not None:
            restart.join()
        # down while it was down: during the outage every request failed, and each one was an attempt
        failed_requests = sum(a.usage.retries for a in answers if isinstance(a, ModelAnswer))
        breaker = BreakerState.model_validate_json(next(slots.glob("*.breaker")).read_text())
    finally:
        fake.stop()
    assert all(isinstance(a, ModelAnswer) and a.text for a in answers), answers
    assert took >= 1.9
    # 4 calls in flight when it went down, 3 failures open the breaker, then one probe every 0.4 s over ~2 s.
    # Without the breaker, 4 threads retrying every <=0.05 s for 2 s make well over 150 requests.
    assert failed_requests <= 4 + 2.0 / 0.4 + 3, failed_requests
    if how == "503":
        assert sum(1 for r in fake.records(route_of(fake)) if r.fault == "outage:503") == failed_requests
    waits = [a.usage.outage_wait_s for a in answers if isinstance(a, ModelAnswer)]
    assert max(waits) >= 1.0 and sum(waits) >= 4.0
    summary = UsageSummary.of([a.usage for a in answers if isinstance(a, ModelAnswer)])
    assert summary.outage_wait_s == pytest.approx(sum(waits), abs=0.01)
    assert ledger.summary().outage_wait_s >= summary.outage_wait_s - 0.01
    assert breaker.opened_at is None and breaker.failures == 0  # closed again, in the host-wide file
    print(f"\n{backend} {how}: 8 calls through a 2 s outage in {took:.2f} s, {failed_requests} failed requests, "
          f"outage_wait_s {summary.outage_wait_s:.2f} (max {max(waits):.2f})")
    lines = [r.getMessage() for r in caplog.records if r.name == "vr_assets.providers.outage"]
    assert sum("circuit breaker open" in m for m in lines) == 1, lines
    assert sum("circuit breaker closed" in m for m in lines) == 1, lines
    assert url in lines[0]


def test_an_outage_past_the_deadline_fails_with_one_line(slots: Path) -> None:
    fake = make_fake("openai")
    url = fake.base_url
    try:
        model = get_model(spec_of(fake, outage_retry(deadline_s=1.0)))
        fake.outage(60.0)
        t0 = time.monotonic()
        with pytest.raises(ProviderError) as info:
            model.generate(call())
        took = time.monotonic() - t0
        assert open_breakers(slots)[0].startswith(f"teacher endpoint {url} down for 1 s")
        t1 = time.monotonic()
        with pytest.raises(ProviderError) as later:  # the outage is past its deadline: no wait, at most a probe
            model.generate(call(key="clip-8"))
        later_took = time.monotonic() - t1
        requests = fake.counts["chat.completions"]
    finally:
        fake.stop()
    msg = str(info.value)
    assert "\n" not in msg and "clip-7" in msg
    assert f"{url} down for 1 s" in msg and "outage_deadline_s" in msg and "HTTP 503" in msg
    assert info.value.kind == "connection" and not is_fatal_provider_failure(msg)
    assert 1.0 <= took < 2.5
    assert later_took < 0.5 and "clip-8" in str(later.value) and "down for" in str(later.value)
    assert requests <= 3 + 1.0 / 0.4 + 2


def test_processes_share_one_breaker_and_one_probe_at_a_time(tmp_path: Path) -> None:
    """Two breakers on one state file behave as two processes do (flock locks belong to the open file)."""
    path = tmp_path / "ep.breaker"
    a = CircuitBreaker("ep", "http://ep", threshold=2, probe_interval_s=0.3, path=path)
    b = CircuitBreaker("ep", "http://ep", threshold=2, probe_interval_s=0.3, path=path)
    assert a.admit(5.0) == 0.0 and not a.failure("connection: refused")
    assert b.failure("connection: refused")  # the second consecutive failure on the host opens it, wherever
    assert a.is_open() and b.is_open()
    t0 = time.monotonic()
    a.admit(5.0)  # waits for the first probe
    waited = time.monotonic() - t0
    assert 0.2 <= waited < 0.6 and a.probes == 1
    a.failure("connection: refused")
    t1 = time.monotonic()
    b.admit(5.0)  # a's probe took that slot: b's turn is the next one
    assert 0.2 <= time.monotonic() - t1 < 0.6 and b.probes == 1
    b.success()
    assert not a.is_open() and a.admit(5.0) < 0.05 and BreakerState.model_validate_json(path.read_text()).failures == 0
    with pytest.raises(OutageExpired) as info:
        c = CircuitBreaker("ep", "http://ep", threshold=1, probe_interval_s=10.0, path=path)
        c.failure("HTTP 503: down")
        c.admit(0.2)
    assert str(info.value).startswith("http://ep down for 0 s") and "HTTP 503: down" in str(info.value)


def _other_process(spec: ModelSpec, fatal_file: Path) -> dict[str, Any]:
    """A second run process: same teacher, same results dir."""
    script = (
        "import json, sys; from pathlib import Path\n"
        "from vr_assets.config import ModelSpec\n"
        "from vr_assets.providers import ModelCall, ProviderError, get_model\n"
        "m = get_model(ModelSpec.model_validate_json(sys.argv[1]), fatal_file=Path(sys.argv[2]))\n"
        "try:\n"
        "    m.generate(ModelCall(step='2', prompt_key='p', video_key='queued-9', prompt='hi'))\n"
        "    print(json.dumps({'ok': True}))\n"
        "except ProviderError as e:\n"
        "    print(json.dumps({'ok': False, 'error': str(e), 'type': type(e).__name__}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, spec.model_dump_json(), str(fatal_file)],
        check=True, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


REFUSALS: dict[tuple[str, int], tuple[Any, str]] = {
    ("openai", 401): (
        {"error": {"message": "Incorrect API key provided: sk-VRSE***. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.", "type": "invalid_request_error",
                   "param": None, "code": "invalid_api_key"}},
        "openai rejected the API key (401): ",
    ),
    ("gemini", 400): (
        {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                   "status": "INVALID_ARGUMENT"}},
        "gemini rejected the API key (400): ",
    ),
    ("gemini", 404): (
        {"error": {"code": 404, "message": "models/gemini-test is not found for API version v1beta, or is not "
                   "supported for generateContent.", "status": "NOT_FOUND"}},
        "model gemini-test not found at ",
    ),
    ("openai", 404): (
        {"error": {"message": "The model `fake-vlm` does not exist.", "type": "NotFoundError", "param": None,
                   "code": 404}},
        "model fake-vlm not found at ",
    ),
}


@pytest.mark.parametrize(("backend", "status"), list(REFUSALS))
def test_a_rejected_key_or_missing_model_stops_at_once_in_every_process(
    backend: str, status: int, tmp_path: Path
) -> None:
    body, head = REFUSALS[(backend, status)]
    fake = make_fake(backend)
    url = fake.base_url
    fatal_file = provider_fatal_file(tmp_path / "results")
    try:
        spec = spec_of(fake, outage_retry(fatal_hold_s=600.0))
        model = get_model(spec, fatal_file=fatal_file)
        fake.fail_next(route_of(fake), status, body=body, times=50)
        with pytest.raises(ProviderFatalError) as info:
            model.generate(call())
        assert fake.counts[route_of(fake)] == 1  # not retried
        msg = str(info.value)
        with pytest.raises(ProviderFatalError) as same:  # this process too: no request
            model.generate(call(key="clip-8"))
        other = _other_process(spec, fatal_file)
        requests = fake.counts[route_of(fake)]
        # the same key and model elsewhere in a fresh results dir still asks (and is refused again)
        with pytest.raises(ProviderFatalError):
            get_model(spec, fatal_file=provider_fatal_file(tmp_path / "other")).generate(call())
    finally:
        fake.stop()
    assert head in msg and "\n" not in msg and is_fatal_provider_failure(msg), msg
    assert "clip-7" in msg and url in msg and KEY not in msg
    assert same.value.status == status and str(same.value).endswith(msg.split(" failed: ", 1)[1])
    assert other["ok"] is False and other["type"] == "ProviderFatalError" and head in other["error"]
    assert "queued-9" in other["error"] and is_fatal_provider_failure(other["error"])
    assert requests == 1  # neither later call reached the provider
    rec = json.loads(fatal_file.read_text())
    (entry,) = rec.values()
    assert entry["endpoint"] == url and entry["status"] == status and entry["at"] <= time.time()


def test_a_recorded_refusal_expires_and_a_success_clears_it(tmp_path: Path) -> None:
    fake = make_fake("openai")
    fatal_file = provider_fatal_file(tmp_path)
    try:
        model = get_model(spec_of(fake, outage_retry(fatal_hold_s=0.3)), fatal_file=fatal_file)
        fake.fail_next(route_of(fake), 401)
        with pytest.raises(ProviderFatalError):
            model.generate(call())
        assert json.loads(fatal_file.read_text())
        time.sleep(0.35)
        assert model.generate(call(key="clip-8")).text  # the key works again: asked, answered, record dropped
    finally:
        fake.stop()
    assert json.loads(fatal_file.read_text()) == {}


@pytest.mark.parametrize(
    ("reason", "fatal"),
    [
        ("video 'a' step 0 failed: gemini rejected the API key (403): HTTP 403 PERMISSION_DENIED: x", True),
        ("step 2: 1 of 3 model calls failed: openai/m video 'b' step 2 (p) failed: model m/x not found at "
         "http://h:1/v1 (404): HTTP 404: nope", True),
        ("gemini/m video 'a' step 0 failed: client: HTTP 404 NOT_FOUND: File abc not found", False),
        ("openai/m video 'a' step 1b failed: server: gave up after 6 attempts: HTTP 503", False),
    ],
)
def test_fatal_failure_reasons_are_recognised(reason: str, fatal: bool) -> None:
    assert is_fatal_provider_failure(reason) is fatal


# ---------------------------------------------------------------- the console of `vr-annotate run`


def test_the_breaker_watch_says_once_down_and_once_back(tmp_path: Path) -> None:
    from vr_assets.providers.outage import BreakerWatch

    breaker = CircuitBreaker("ep", "http://ep", threshold=2, probe_interval_s=0.1, path=tmp_path / "ep.breaker")
    said: list[str] = []
    watch = BreakerWatch(tmp_path, said.append)
    watch.poll()
    breaker.failure("HTTP 503")
    watch.poll()
    breaker.failure("HTTP 503")  # opens
    watch.poll()
    watch.poll()
    opened = breaker.state().opened_at
    assert opened is not None
    breaker.success()
    watch.poll(now=opened + 3.2)
    watch.poll()
    assert len(said) == 2, said
    assert said[0].startswith("teacher endpoint http://ep down since ") and "2 consecutive failures" in said[0]
    assert said[1] == "teacher endpoint http://ep back after 3 s down: calls resume"


def test_vr_annotate_run_shows_the_wait_on_its_console_and_in_the_run_metadata(
    make_pipeline: Any, tmp_path: Path
) -> None:
    from dagster import AssetKey, DagsterInstance

    from bench.input_catalogue import _clip

    env = make_pipeline("openai")
    _clip(env.videos / "clip.mp4")
    env.fake.fail_next("chat.completions", 503, times=4)  # 2 open the breaker, 2 probes fail, the third answers
    retry = {"max_attempts": 6, "initial_delay_s": 0.01, "max_delay_s": 0.05, "breaker_failures": 2,
             "probe_interval_s": 0.5}
    spec = env.spec(workflow={"qa_types": ["mcq"]}, vlm={"retry": retry}, llm={"retry": retry})
    summary = env.run(spec)
    assert summary.succeeded == ["clip.mp4"] and not summary.failed
    down = [line for line in env.log if line.startswith("teacher endpoint ")]
    assert len(down) == 2, env.log
    assert " down since " in down[0] and "503" in down[0], down
    assert " back after " in down[1] and down[1].endswith(" s down: calls resume"), down
    assert env.log.index(down[0]) < env.log.index(down[1]) < next(
        i for i, line in enumerate(env.log) if line.startswith("done in "))
    mats = DagsterInstance.get().fetch_materializations(AssetKey("filter_result"), limit=1).records
    meta = mats[0].asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["outage_wait_s"].value >= 0.5  # type: ignore[operator]
