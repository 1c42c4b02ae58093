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


def test_gemini_batch_protocol_with_the_real_sdk(fake_gemini: FakeGemini) -> None:
    """JSONL through the Files API, batches.create on its name, PENDING until the delay is over, results file
    keyed like the input; a failed entry is an error line; inline requests come back inline; cancel and list."""
    fake_gemini.batch_delay_s = 0.4
    fake_gemini.batch_entry_failures = 1
    client = _gemini(fake_gemini)
    lines = [{"key": f"k{i}", "request": {"contents": [{"role": "user", "parts": [{"text": f"say {i}"}]}]}}
             for i in range(3)]
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
    teacher = get_model(spec.llm, role="llm", prices=spec.prices, ledger=ledger)
    prompt = "Describe a loading dock in one paragraph."
    std = teacher.generate(ModelCall(step="2", prompt_key="p", video_key="v", prompt=prompt))
    flex = teacher.generate(ModelCall(step="2", prompt_key="p", video_key="v", prompt=prompt, tier="flex"))
    route = "generateContent" if backend == "gemini" else "chat.completions"
    tiers = [(r.json or {}).get("serviceTier" if backend == "gemini" else "service_tier") for r in fake.records(route)]
    assert tiers == [None, "flex"]
    price = spec.prices[model]
    assert std.usage.cost_usd == cost_usd(price, std.usage.prompt_tokens, std.usage.output_tokens, 0) > 0
    assert flex.usage.cost_usd == pytest.approx(std.usage.cost_usd / 2)
    assert [e.usage.tier for e in ledger.entries()] == ["standard", "flex"]
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
