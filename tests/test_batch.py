"""Cheap tiers: flex on the wire at half price, the batch protocols (real SDKs against the fakes), and a step on
the batch tier end to end on a real Dagster instance: the run ends without it, the sensor submits, polls, fills
the answer cache and asks for the run, which completes without paying again."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types

from vr_assets.config import SpecError, parse_spec
from vr_assets.fakes import FakeGemini, FakeOpenAI
from vr_assets.fakes.usage_log import UsageLog
from vr_assets.providers import ModelCall, UsageLedger, get_model
from vr_assets.providers.usage import cost_usd

KEY = "batch-test-key-0123456789"


def _gemini(fake: FakeGemini) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake.base_url, api_version="v1beta"))


def _wait(fn: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_gemini_batch_protocol_with_the_real_sdk(fake_gemini: FakeGemini, fakes_media: dict[str, Path]) -> None:
    """JSONL through the Files API (a line may point at another uploaded file), batches.create on its name,
    PENDING until the delay is over, results file keyed like the input; a failed entry is an error line; inline
    requests come back inline; cancel and list."""
    fake_gemini.batch_delay_s = 0.4
    fake_gemini.batch_entry_failures = 1
    fake_gemini.processing_polls = 0
    client = _gemini(fake_gemini)
    with open(fakes_media["clip_a"], "rb") as fh:
        video = client.files.upload(file=fh, config=types.UploadFileConfig(mime_type="video/mp4"))
    lines = [{"key": f"k{i}", "request": {"contents": [{"role": "user", "parts": [{"text": f"say {i}"}]}]}}
             for i in range(3)]
    lines[2]["request"]["contents"][0]["parts"].insert(0, {"fileData": {"fileUri": video.uri,
                                                                        "mimeType": "video/mp4"}})
    src = client.files.upload(file=io.BytesIO("\n".join(json.dumps(x) for x in lines).encode()),
                              config=types.UploadFileConfig(mime_type="jsonl", display_name="in"))
    job = client.batches.create(model="gemini-test", src=src.name,
                                config=types.CreateBatchJobConfig(display_name="t"))
    assert job.name and job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert [j.name for j in client.batches.list()] == [job.name]
    done = _wait(lambda: (j := client.batches.get(name=job.name)).state == types.JobState.JOB_STATE_SUCCEEDED and j)
    assert done and done.dest is not None and done.dest.file_name
    rows = [json.loads(x) for x in client.files.download(file=done.dest.file_name).decode().splitlines()]
    assert sorted(r["key"] for r in rows) == ["k0", "k1", "k2"]
    failed = [r for r in rows if "error" in r]
    assert len(failed) == 1 and failed[0]["error"]["code"] == 500
    ok = [r for r in rows if "response" in r]
    assert all(r["response"]["candidates"][0]["content"]["parts"][0]["text"] for r in ok)
    with_video = next(r for r in rows if r["key"] == "k2")  # the entry failed on purpose is the first one
    assert {d["modality"] for d in with_video["response"]["usageMetadata"]["promptTokensDetails"]} == {"TEXT", "VIDEO"}
    assert fake_gemini.counts["generateContent"] == 0  # nothing answered outside the batch

    inline = client.batches.create(model="gemini-test", src=[
        types.InlinedRequest(contents="hello", metadata={"key": "only"})])
    fake_gemini.batch_delay_s = 0.0
    got = client.batches.get(name=inline.name)
    assert got.state == types.JobState.JOB_STATE_SUCCEEDED
    assert got.dest is not None and got.dest.inlined_responses
    assert got.dest.inlined_responses[0].response is not None and got.dest.inlined_responses[0].response.text

    fake_gemini.batch_delay_s = 60
    slow = client.batches.create(model="gemini-test", src=src.name)
    client.batches.cancel(name=slow.name)
    assert client.batches.get(name=slow.name).state == types.JobState.JOB_STATE_CANCELLED


def test_openai_batch_protocol_with_the_real_sdk(fake_openai: FakeOpenAI) -> None:
    """files.create(purpose=batch), batches.create, retrieve until completed, the output and error files by
    custom_id; an endpoint without the Batch API (vLLM) answers 404."""
    fake_openai.batch_delay_s = 0.4
    fake_openai.batch_entry_failures = 1
    client = openai.OpenAI(api_key=KEY, base_url=fake_openai.base_url, max_retries=0)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "fake-vlm", "messages": [{"role": "user", "content": f"say {i}"}]}} for i in range(3)]
    f = client.files.create(file=("in.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "validating" and b.request_counts is not None and b.request_counts.total == 3
    done = _wait(lambda: (x := client.batches.retrieve(b.id)).status == "completed" and x)
    assert done and done.output_file_id and done.error_file_id
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    err = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in out + err) == ["c0", "c1", "c2"]
    assert all(r["response"]["status_code"] == 200 and r["response"]["body"]["choices"] for r in out)
    assert err[0]["response"]["status_code"] == 500
    assert fake_openai.counts["chat.completions"] == 0
    assert [x.id for x in client.batches.list()] == [b.id]
    fake_openai.batch_delay_s = 60
    slow = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.cancel(slow.id).status == "cancelled"

    vllm = FakeOpenAI(batch_api=False).start()
    try:
        with pytest.raises(openai.NotFoundError):
            openai.OpenAI(api_key=KEY, base_url=vllm.base_url, max_retries=0).files.create(
                file=("in.jsonl", b"{}\n"), purpose="batch")
    finally:
        vllm.stop()


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_flex_goes_on_the_wire_at_half_price(backend: str, tmp_path: Path, clean_providers: None,
                                             fake_gemini: FakeGemini, fake_openai: FakeOpenAI) -> None:
    fake = fake_gemini if backend == "gemini" else fake_openai
    model = "gemini-test" if backend == "gemini" else "fake-vlm"
    endpoint = ({"gemini": {"base_url": fake.base_url, "api_key": KEY, "model": model}} if backend == "gemini"
                else {"openai": {"base_url": fake.base_url, "api_key": KEY, "model_name": model, "flex": True}})
    spec = parse_spec({"llm": {"backend": backend, **endpoint}, "results_dir": str(tmp_path),
                       "workflow": {"tier": {"description": "flex"}},
                       "prices": {model: {"input_per_mtok": 1.0, "output_per_mtok": 4.0}}}, "t", tmp_path)
    ledger = UsageLedger(tmp_path / "usage")
    fake.usage_log = UsageLog(tmp_path / "wire.jsonl")  # the bench's bill of the same traffic
    teacher = get_model(spec.llm, role="llm", prices=spec.prices, ledger=ledger)
    prompt = "Describe a loading dock in one paragraph."
    std = teacher.generate(ModelCall(step="2", prompt_key="p", video_key="v", prompt=prompt))
    flex = teacher.generate(ModelCall(step="2", prompt_key="p", video_key="v", prompt=prompt, tier="flex"))
    route = "generateContent" if backend == "gemini" else "chat.completions"
    tiers = [(r.json or {}).get("serviceTier" if backend == "gemini" else "service_tier") for r in fake.records(route)]
    assert tiers == [None, "flex"]
    if backend == "gemini":  # a flex request may take long: its own timeout (flex_timeout_s, 900 s)
        assert [r.headers.get("x-server-timeout") for r in fake.records(route)] == ["120", "900"]
    price = spec.prices[model]
    assert std.usage.cost_usd == cost_usd(price, std.usage.prompt_tokens, std.usage.output_tokens, 0) > 0
    assert flex.usage.cost_usd == pytest.approx(std.usage.cost_usd / 2)
    assert [e.usage.tier for e in ledger.entries()] == ["standard", "flex"]
    assert [w.tier for w in UsageLog.read(tmp_path / "wire.jsonl") if w.kind == "generate"] == ["standard", "flex"]
    assert spec.workflow.tier_of("2") == "flex" and spec.workflow.tier_of("3") == "standard"


def test_a_tier_the_endpoint_does_not_offer_fails_loading(tmp_path: Path) -> None:
    vllm = {"backend": "openai", "openai": {"base_url": "http://vllm:8000/v1"}}
    with pytest.raises(SpecError, match=r"workflow.tier.qa: batch .* set llm.openai.batch_api: true"):
        parse_spec({"llm": vllm, "workflow": {"tier": {"qa": "batch"}}}, "t", tmp_path)
    with pytest.raises(SpecError, match=r"set llm.openai.flex: true"):
        parse_spec({"llm": vllm, "workflow": {"tier": {"description": "flex"}}}, "t", tmp_path)
    with pytest.raises(SpecError, match="batch tier is for description and qa only"):
        parse_spec({"workflow": {"tier": {"captions": "batch"}}}, "t", tmp_path)
    with pytest.raises(SpecError, match="unknown step 'step9'"):
        parse_spec({"workflow": {"tier": {"step9": "flex"}}}, "t", tmp_path)
    ok = parse_spec({"llm": {**vllm, "openai": {"base_url": "http://x/v1", "batch_api": True}},
                     "workflow": {"tier": {"3": "batch"}}}, "t", tmp_path)
    assert ok.workflow.tier == {"qa": "batch"}


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_a_step_on_the_batch_tier_waits_holding_nothing_and_is_paid_once(
    backend: str, make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path
) -> None:
    """description and qa on the batch tier, one video, MCQ only, on a real Dagster instance:
    run 1 materializes steps 0-1c and ends without description (waiting, nothing downstream, an observation
    says so); the sensor submits, sees the batch PENDING, then stores the answer and requests description and
    after; that run answers description from the cache and ends with qa waiting; qa's entry fails once in its
    batch and goes into the next one; then the run completes. No call of steps 2 or 3 goes to the live
    endpoint, each is in the ledger once, ok, at half price."""
    from dagster import AssetKey, DagsterInstance, SensorResult, SkipReason, build_sensor_context, materialize

    from vr_assets.graph import PER_VIDEO_ASSETS, build_definitions
    from vr_assets.partitions import videos_partitions
    from vr_assets.providers.batch import batch_book_for
    from vr_assets.sensors import sync_partitions

    env = make_pipeline(backend, batch_delay_s=0.3)
    fake = env.fake
    env.add_video(synthetic_videos["short_mp4"], "cam/a.mp4")
    model = "gemini-test" if backend == "gemini" else "test-vl"
    llm_opt = {} if backend == "gemini" else {"llm": {"openai": {"batch_api": True}}}
    spec = env.spec(workflow={"qa_types": ["mcq"], "max_workers": 1, "tier": {"description": "batch", "qa": "batch"},
                              "batch": {"max_wait_s": 0}},
                    prices={model: {"input_per_mtok": 1.0, "output_per_mtok": 4.0}}, **llm_opt)
    (key,), _ = sync_partitions(spec, set())
    (tmp_path / "home").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "home"))
    instance.add_dynamic_partitions(videos_partitions.name, [key])
    defs = build_definitions(spec)
    graph = [*defs.assets, *defs.asset_checks]
    sensor = defs.resolve_sensor_def("provider_batches")
    live_route = "generateContent" if backend == "gemini" else "chat.completions"

    def materialized(asset: str) -> bool:
        return instance.get_latest_materialization_event(AssetKey(asset)) is not None

    def run(selection: list[str]) -> None:
        got = materialize(graph, partition_key=key, resources=defs.resources, instance=instance, selection=selection)
        assert got.success

    def tick() -> SensorResult | SkipReason:
        return sensor(build_sensor_context(instance=instance, definitions=defs))

    run(list(PER_VIDEO_ASSETS))
    assert materialized("highlight") and not materialized("description") and not materialized("qa")
    live_calls = fake.counts[live_route]
    book = batch_book_for(spec.results_dir)
    (entry,) = book.entries()
    assert (entry.video_key, entry.step, entry.state) == (key, "2", "queued")
    obs = instance.fetch_observations(AssetKey("description"), limit=5).records
    assert obs and obs[0].asset_observation is not None
    assert obs[0].asset_observation.metadata["batch"].value == "waiting"
    from vr_assets.outcomes import outcome_summary

    (outcome,) = outcome_summary(spec.results_dir, {}).outcomes
    assert (outcome.kind, outcome.reason) == ("not_run", "description waits for the next batch")

    def through_batch(step: str, failures: int = 0) -> list[str]:
        """Ticks until the sensor asks for a run; the selection it asked for."""
        fake.batch_entry_failures = failures
        first = tick()
        assert isinstance(first, SensorResult) and not first.run_requests  # submitted, nothing to run yet
        assert {e.metadata["batch_state"].value for e in first.asset_events} == {"submitted"}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(0.1)
            got = tick()
            if isinstance(got, SensorResult) and got.run_requests:
                (req,) = got.run_requests
                assert req.partition_key == key
                return [k.to_user_string() for k in req.asset_selection or []]
        raise AssertionError(f"step {step}: no run requested; entries {book.entries()}")

    assert through_batch("2") == ["description", "qa", "task_exports"]
    run(["description", "qa", "task_exports"])
    assert materialized("description") and not materialized("qa")
    assert through_batch("3", failures=1) == ["qa", "task_exports"]  # resubmitted once, answered the second time
    run(["qa", "task_exports"])
    assert materialized("qa") and materialized("task_exports")
    assert fake.counts[live_route] == live_calls  # steps 2 and 3 never went to the live endpoint
    assert book.entries() == [] and all(j.done for j in book.jobs()) and len(book.jobs()) == 3
    if isinstance(fake, FakeGemini):  # batch input and results files deleted once stored
        assert not [f for f in fake.uploaded.values() if not f.deleted and not f.mime_type.startswith("video/")]
    else:
        assert not [f for f in fake.files.values() if f.purpose == "batch"]

    ledger = UsageLedger(Path(spec.results_dir) / "usage").entries()
    late = [e for e in ledger if e.usage.step in ("2", "3")]
    # the entry the provider failed carried no answer and no usage: nothing billed, nothing in the ledger
    assert [(e.usage.step, e.ok, e.usage.tier) for e in late] == [("2", True, "batch"), ("3", True, "batch")]
    assert [(j.succeeded, j.failed) for j in book.jobs()] == [(1, 0), (0, 1), (1, 0)]
    price = spec.prices[model]
    for e in late:
        full = cost_usd(price, e.usage.prompt_tokens, e.usage.output_tokens, e.usage.thinking_tokens)
        assert e.usage.cost_usd == pytest.approx(full / 2)
    # the step's own metadata reports the batch call once, with its cost (it was asked ahead of the step)
    meta = instance.get_latest_materialization_event(AssetKey("description")).asset_materialization.metadata
    assert meta["model_calls"].value == 1 and meta["cached_calls"].value == 0
    assert meta["cost_usd"].value == pytest.approx(late[0].usage.cost_usd)
    # a re-run is answered from the cache, paying nothing
    run(["description", "qa"])
    assert len(UsageLedger(Path(spec.results_dir) / "usage").entries()) == len(ledger)


def test_the_estimate_prices_flex_and_batch_steps_at_half(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    from vr_assets.estimate import estimate

    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "a.mp4")
    prices = {"gemini-test": {"input_per_mtok": 1.0, "output_per_mtok": 4.0}}
    plain = {s.step: s.usd for s in estimate(env.spec(prices=prices), use_ledger=False).steps}
    tiered = estimate(env.spec(prices=prices, workflow={"tier": {"qa": "batch", "captions": "flex"}}),
                      use_ledger=False)
    cheap = {s.step: s.usd for s in tiered.steps}
    assert plain["3"] > 0 and cheap["3"] == pytest.approx(plain["3"] / 2, abs=2e-6)
    assert plain["1a"] > 0 and cheap["1a"] == pytest.approx(plain["1a"] / 2, abs=2e-6)
    assert cheap["2"] == plain["2"] and cheap["0"] == plain["0"]
    assert env.calls() == 0


def test_an_entry_failed_in_every_batch_fails_its_step_once_then_waits_again(
    tmp_path: Path, clean_providers: None, fake_gemini: FakeGemini
) -> None:
    from vr_assets.call_cache import spec_teacher
    from vr_assets.providers import ProviderError
    from vr_assets.providers.batch import WaitingForBatch, batch_book_for, tick

    spec = parse_spec({"llm": {"gemini": {"base_url": fake_gemini.base_url, "api_key": KEY, "model": "gemini-test"}},
                       "results_dir": str(tmp_path), "workflow": {"tier": {"qa": "batch"},
                                                                  "batch": {"max_wait_s": 0, "max_resubmits": 1}}},
                      "t", tmp_path)
    model = spec_teacher(spec, "llm")
    call = ModelCall(step="3", prompt_key="mcq", video_key="v1", prompt="Ask one question about a dock.")
    (first,) = model.generate_many([call])
    assert isinstance(first, WaitingForBatch) and "waits for a batch (queued)" in str(first)
    book = batch_book_for(spec.results_dir)
    fake_gemini.batch_entry_failures = 2  # the first batch and the one it is resubmitted in
    reports = [tick(spec, book) for _ in range(4)]  # submit, fail + resubmit, fail for good, nothing left
    assert [len(r.submitted) for r in reports] == [1, 1, 0, 0]
    assert [(r.requeued, r.failed) for r in reports] == [(0, 0), (1, 0), (0, 1), (0, 0)]
    assert reports[2].ready == [("v1", "qa")]  # the step runs again, to fail with the provider's word
    (failed,) = model.generate_many([call])
    assert isinstance(failed, ProviderError) and not isinstance(failed, WaitingForBatch)
    assert "failed in batch" in str(failed) and "INTERNAL" in str(failed)
    (again,) = model.generate_many([call])  # a later run queues it afresh
    assert isinstance(again, WaitingForBatch)
    assert fake_gemini.counts["generateContent"] == 0 and fake_gemini.counts["batches.create"] == 2


def test_the_outbox_is_shared_through_postgres(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the instance on Postgres, two hosts' books are one: a call queued on one is seen (and not queued
    twice) on the other, and nothing is written under either results folder."""
    from vr_assets.execution.instance import POSTGRES_URL_ENV
    from vr_assets.providers.batch import BatchBook, BatchEntry

    monkeypatch.setenv(POSTGRES_URL_ENV, pg_url)
    a, b = BatchBook(tmp_path / "hostA" / "batch"), BatchBook(tmp_path / "hostB" / "batch")
    call = ModelCall(step="2", prompt_key="normal_description", video_key="v", prompt="p")
    assert a.queue(BatchEntry.of(call, "k1", "llm")) and not b.queue(BatchEntry.of(call, "k1", "llm"))
    (seen,) = b.entries()
    assert (seen.key, seen.asset, seen.call().prompt) == ("k1", "description", "p")
    seen.state, seen.error = "failed", "HTTP 500"
    b.save(seen)
    assert a.take_failure("k1") == "HTTP 500" and b.entries() == []
    assert not (tmp_path / "hostA" / "batch" / "entries").exists()


def test_the_cli_road_waits_then_finishes_from_the_cache(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    """`vr-annotate run` with qa on the batch tier: its run (launched by the daemon, forked warm) ends with qa
    waiting and says so; `--wait-batches` (`vr-annotate batches --wait`) submits, polls and stores, then runs
    again: qa and the dataset finish without a live call of step 3."""
    from vr_assets.cli import finish_batches

    env = make_pipeline("gemini", batch_delay_s=0.2)
    env.add_video(synthetic_videos["short_mp4"], "a.mp4")
    spec = env.spec(workflow={"qa_types": ["mcq"], "max_workers": 1, "tier": {"qa": "batch"},
                              "batch": {"max_wait_s": 0, "poll_interval_s": 0.1}})
    first = env.run(spec)
    assert first.failed == {} and first.dataset_items in (0, None)
    assert any("qa waits for the next batch" in line for line in env.log)
    live = env.calls()
    said: list[str] = []
    second = finish_batches(spec, lambda: env.run(spec), first, said.append)  # `vr-annotate run --wait-batches`
    assert said[-1] == "0 call(s) waiting; answers in for 1 video step(s): `vr-annotate run` finishes them"
    assert second.failed == {} and second.succeeded[:1] == ["a.mp4"] and second.dataset_items
    assert env.calls() == live and env.fake.counts["batches.create"] == 1  # qa: one batch, no live call


def test_nothing_is_submitted_once_the_budget_is_spent(
    tmp_path: Path, clean_providers: None, fake_gemini: FakeGemini
) -> None:
    from vr_assets.call_cache import spec_teacher
    from vr_assets.providers import ProviderError
    from vr_assets.providers.batch import batch_book_for, tick
    from vr_assets.records import CallUsage

    spec = parse_spec({"llm": {"gemini": {"base_url": fake_gemini.base_url, "api_key": KEY, "model": "gemini-test"}},
                       "results_dir": str(tmp_path), "budget_usd": 0.01,
                       "workflow": {"tier": {"description": "batch"}, "batch": {"max_wait_s": 0}}}, "t", tmp_path)
    UsageLedger(tmp_path / "usage").append(CallUsage(provider="gemini", model="gemini-test", step="1a",
                                                     prompt_key="x", cost_usd=0.02), video_key="v0", ok=True)
    model = spec_teacher(spec, "llm")
    call = ModelCall(step="2", prompt_key="normal_description", video_key="v1", prompt="Describe it.")
    model.generate_many([call])
    report = tick(spec, batch_book_for(spec.results_dir))
    assert report.submitted == [] and report.failed == 1 and report.ready == [("v1", "description")]
    (got,) = model.generate_many([call])
    assert isinstance(got, ProviderError) and "budget of $0.0100 is spent" in str(got)
    assert fake_gemini.counts["batches.create"] == 0 and fake_gemini.counts["upload.start"] == 0
