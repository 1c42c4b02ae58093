"""The fakes against the REAL google-genai and openai SDKs: protocol, faults, teacher determinism."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx2
import jsonschema
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from pydantic import BaseModel

from vr_assets.fakes import ALL_FAULTS, FakeGemini, FakeOpenAI, FaultPlan, Teacher, instance_from_schema
from vr_assets.records import (
    AnomalyTime,
    AnomalyVerdict,
    MultipleChoiceSet,
    OpenQASet,
    RelevanceVerdict,
    TimeSpanSet,
    YesNoSet,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "gemini-2.5-flash"
SET_MODELS: list[type[BaseModel]] = [MultipleChoiceSet, YesNoSet, TimeSpanSet, OpenQASet]


def gclient(server: FakeGemini, timeout_ms: int | None = None) -> genai.Client:
    opts = types.HttpOptions(base_url=server.base_url, api_version="v1beta", timeout=timeout_ms)
    return genai.Client(api_key="test-key", http_options=opts)


def oclient(server: FakeOpenAI, timeout: float = 30.0) -> openai.OpenAI:
    return openai.OpenAI(api_key="test-key", base_url=server.base_url, max_retries=0, timeout=timeout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def video_part(path: Path) -> types.Part:
    return types.Part.from_bytes(data=path.read_bytes(), mime_type="video/mp4")


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def chat_video(prompt: str, path: Path) -> list[dict[str, Any]]:
    parts = [{"type": "text", "text": prompt}, {"type": "video_url", "video_url": {"url": data_url(path, "video/mp4")}}]
    return [{"role": "user", "content": parts}]


def check_set(obj: BaseModel, n: int = 2) -> None:
    items = obj.items  # type: ignore[attr-defined]
    assert len(items) == n
    assert len({i.question for i in items}) == n
    for item in items:
        assert item.reasoning.strip()
        assert "caption" not in item.question.lower() and "description" not in item.question.lower()
        if isinstance(obj, MultipleChoiceSet):
            assert len(item.options) == 4 and len(set(item.options)) == 4
            assert item.answer in "ABCD" and len(item.answer) == 1


# ---------------------------------------------------------------- Gemini: generate


def test_gemini_inline_video_structured_parsed(fake_gemini: FakeGemini, fakes_media: dict[str, Path]) -> None:
    client = gclient(fake_gemini)
    prompt = "Write questions about this clip."
    config = types.GenerateContentConfig(response_mime_type="application/json", response_schema=MultipleChoiceSet)
    r = client.models.generate_content(model=MODEL, contents=[video_part(fakes_media["clip_a"]), prompt], config=config)
    assert isinstance(r.parsed, MultipleChoiceSet)
    check_set(r.parsed)
    rec = fake_gemini.log[-1]
    assert rec.route == "generateContent" and rec.status == 200 and rec.fault is None
    assert rec.media_sha256 == [sha(fakes_media["clip_a"])]
    assert rec.model == MODEL and rec.schema_title == "MultipleChoiceSet" and rec.prompt_text == prompt
    assert rec.json["contents"][0]["parts"][0]["inlineData"]["mime_type"] == "video/mp4"
    u = r.usage_metadata
    assert u is not None
    assert u.prompt_token_count == len(prompt) // 4 + 258
    assert u.candidates_token_count == len(r.text or "") // 4 > 0
    assert u.thoughts_token_count == 0
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count
    modalities = {d.modality.value: d.token_count for d in u.prompt_tokens_details or []}
    assert modalities == {"TEXT": len(prompt) // 4, "VIDEO": 258}
    assert fake_gemini.inline_bytes_by_sha() == {sha(fakes_media["clip_a"]): fakes_media["clip_a"].stat().st_size}


@pytest.mark.parametrize("style", ["response_schema", "response_json_schema"])
@pytest.mark.parametrize("model_cls", SET_MODELS)
def test_gemini_every_qa_set_in_both_schema_styles(
    fake_gemini: FakeGemini, fakes_media: dict[str, Path], model_cls: type[BaseModel], style: str
) -> None:
    schema: Any = model_cls if style == "response_schema" else model_cls.model_json_schema()
    config = types.GenerateContentConfig(response_mime_type="application/json", **{style: schema})
    client = gclient(fake_gemini)
    r = client.models.generate_content(
        model=MODEL, contents=[video_part(fakes_media["clip_a"]), "questions"], config=config
    )
    obj = model_cls.model_validate_json(r.text or "")
    check_set(obj)
    assert fake_gemini.log[-1].schema_title == model_cls.__name__
    if isinstance(obj, TimeSpanSet):
        assert all((i.start_time, i.end_time) == ("00:00", "00:01") for i in obj.items)


def test_gemini_verdicts_follow_the_first_media_part(
    fake_gemini: FakeGemini, teacher: Teacher, fakes_media: dict[str, Path]
) -> None:
    teacher.set_verdict_for_file(fakes_media["clip_b"], relevant=False, label="anomaly")
    client = gclient(fake_gemini)

    def ask(model_cls: type[BaseModel], clip: str) -> Any:
        config = types.GenerateContentConfig(response_mime_type="application/json", response_schema=model_cls)
        r = client.models.generate_content(
            model=MODEL, contents=[video_part(fakes_media[clip]), "judge"], config=config
        )
        assert isinstance(r.parsed, model_cls)
        return r.parsed

    assert ask(RelevanceVerdict, "clip_a").relevant is True
    assert ask(RelevanceVerdict, "clip_b").relevant is False
    assert ask(AnomalyVerdict, "clip_a").label == "normal"
    verdict = ask(AnomalyVerdict, "clip_b")
    assert verdict.label == "anomaly" and verdict.reasoning
    t = ask(AnomalyTime, "clip_b")
    assert t.found and 0 < t.anomaly_time_sec <= 1.5 and t.reasoning


class _Kind(BaseModel):
    name: Literal["alpha", "beta"]
    weight: float


class _Unknown(BaseModel):
    title_text: str
    count: int
    flag: bool
    note: str | None
    kinds: list[_Kind]
    nested: _Kind


@pytest.mark.parametrize("style", ["response_schema", "response_json_schema"])
def test_gemini_unknown_schema_gets_a_valid_instance(fake_gemini: FakeGemini, style: str) -> None:
    schema: Any = _Unknown if style == "response_schema" else _Unknown.model_json_schema()
    config = types.GenerateContentConfig(response_mime_type="application/json", **{style: schema})
    client = gclient(fake_gemini)
    r = client.models.generate_content(model=MODEL, contents="anything", config=config)
    obj = _Unknown.model_validate_json(r.text or "")
    assert obj.kinds and obj.nested.name in ("alpha", "beta")


def test_gemini_stream_count_tokens_and_frames(fake_gemini: FakeGemini, fakes_media: dict[str, Path]) -> None:
    client = gclient(fake_gemini)
    frames = [
        types.Part.from_bytes(data=fakes_media[f"frame_{i}"].read_bytes(), mime_type="image/jpeg") for i in (1, 2, 3)
    ]
    prompt = "What happens across these frames?"
    chunks = list(client.models.generate_content_stream(model=MODEL, contents=[*frames, prompt]))
    assert len(chunks) == 1 and chunks[0].text
    full = client.models.generate_content(model=MODEL, contents=[*frames, prompt])
    assert full.text == chunks[0].text  # same request content, same answer, streamed or not
    assert full.usage_metadata is not None
    assert full.usage_metadata.prompt_token_count == len(prompt) // 4 + 3 * 258
    assert fake_gemini.log[-1].media_sha256 == [sha(fakes_media[f"frame_{i}"]) for i in (1, 2, 3)]
    counted = client.models.count_tokens(model=MODEL, contents=[*frames, prompt])
    assert counted.total_tokens == full.usage_metadata.prompt_token_count
    assert fake_gemini.counts["streamGenerateContent"] == 1 and fake_gemini.counts["countTokens"] == 1


def test_gemini_think_text_inline_or_as_thought_part(fakes_media: dict[str, Path]) -> None:
    with FakeGemini(teacher=Teacher(think=True)) as server:
        client = gclient(server)
        r = client.models.generate_content(model=MODEL, contents="Say something about the scene.")
        assert (r.text or "").startswith("<think>") and "</think>\n" in (r.text or "")
        assert r.usage_metadata is not None and (r.usage_metadata.thoughts_token_count or 0) > 0
        config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
        r2 = client.models.generate_content(model=MODEL, contents="Say something about the scene.", config=config)
        parts = r2.candidates[0].content.parts  # type: ignore[index, union-attr]
        assert parts is not None and parts[0].thought is True and not (parts[1].text or "").startswith("<think>")
        assert (r.text or "").endswith(parts[1].text or "")


def test_gemini_max_output_tokens_truncates(fake_gemini: FakeGemini) -> None:
    config = types.GenerateContentConfig(max_output_tokens=5)
    client = gclient(fake_gemini)
    r = client.models.generate_content(model=MODEL, contents="Talk about the scene.", config=config)
    assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert len(r.text or "") == 20


# ---------------------------------------------------------------- Gemini: files


def test_gemini_upload_poll_generate_delete(fake_gemini: FakeGemini, fakes_media: dict[str, Path]) -> None:
    client = gclient(fake_gemini)
    clip = fakes_media["clip_a"]
    f = client.files.upload(file=str(clip), config={"display_name": "clip a"})
    assert f.state == types.FileState.PROCESSING and f.name and f.uri and f.uri.startswith(fake_gemini.root_url)
    assert f.size_bytes == clip.stat().st_size and f.display_name == "clip a"
    early = types.Part.from_uri(file_uri=f.uri, mime_type="video/mp4")
    with pytest.raises(genai_errors.ClientError) as not_ready:
        client.models.generate_content(model=MODEL, contents=[early, "too early"])
    assert not_ready.value.code == 400 and not_ready.value.status == "FAILED_PRECONDITION"
    polls = 0
    while f.state == types.FileState.PROCESSING:
        f = client.files.get(name=f.name or "")
        polls += 1
    assert polls == 3 and f.state == types.FileState.ACTIVE
    assert f.video_metadata and float(str(f.video_metadata["videoDuration"]).rstrip("s")) == pytest.approx(3.0, abs=0.2)
    assert [x.name for x in client.files.list()] == [f.name]
    part = types.Part.from_uri(file_uri=f.uri or "", mime_type="video/mp4")
    config = types.GenerateContentConfig(response_mime_type="application/json", response_schema=OpenQASet)
    r = client.models.generate_content(model=MODEL, contents=[part, "questions"], config=config)
    check_set(r.parsed)  # type: ignore[arg-type]
    assert fake_gemini.log[-1].media_sha256 == [sha(clip)]
    inline = client.models.generate_content(model=MODEL, contents=[video_part(clip), "questions"], config=config)
    assert inline.text == r.text  # the answer keys on the content, not on how it was sent
    assert fake_gemini.live_files() == 1
    client.files.delete(name=f.name or "")
    assert fake_gemini.live_files() == 0 and fake_gemini.uploaded[f.name or ""].deleted
    with pytest.raises(genai_errors.ClientError) as gone:
        client.files.get(name=f.name or "")
    assert gone.value.code == 403 and gone.value.status == "PERMISSION_DENIED"
    with pytest.raises(genai_errors.ClientError):
        client.models.generate_content(model=MODEL, contents=[part, "after delete"])
    assert fake_gemini.upload_bytes_by_sha() == {sha(clip): clip.stat().st_size}
    assert fake_gemini.counts["upload.start"] == 1 and fake_gemini.counts["upload.chunk"] == 1


def test_gemini_large_upload_in_three_chunks(fake_gemini: FakeGemini) -> None:
    fake_gemini.processing_polls = 0
    blob = hashlib.sha256(b"seed").digest() * (20_000_000 // 32)
    client = gclient(fake_gemini)
    f = client.files.upload(file=io.BytesIO(blob), config={"mime_type": "video/mp4"})
    assert f.state == types.FileState.ACTIVE and f.size_bytes == len(blob)
    chunks = fake_gemini.records("upload.chunk")
    assert [(r.headers["x-goog-upload-offset"], r.body_len) for r in chunks] == [
        ("0", 8_388_608),
        ("8388608", 8_388_608),
        ("16777216", len(blob) - 16_777_216),
    ]
    assert [r.headers["x-goog-upload-command"] for r in chunks][-1] == "upload, finalize"
    assert fake_gemini.upload_bytes_by_sha() == {hashlib.sha256(blob).hexdigest(): len(blob)}


# ---------------------------------------------------------------- OpenAI


def test_openai_video_data_url_json_schema(fake_openai: FakeOpenAI, fakes_media: dict[str, Path]) -> None:
    client = oclient(fake_openai)
    messages = chat_video("Write questions about this clip.", fakes_media["clip_a"])
    r = client.chat.completions.parse(model="fake-vlm", messages=messages, response_format=YesNoSet)  # type: ignore[arg-type]
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, YesNoSet)
    check_set(parsed)
    rec = fake_openai.log[-1]
    assert rec.route == "chat.completions" and rec.schema_title == "YesNoSet" and rec.model == "fake-vlm"
    assert rec.media_sha256 == [sha(fakes_media["clip_a"])]
    assert r.usage is not None
    assert r.usage.prompt_tokens == len("Write questions about this clip.") // 4 + 258
    assert r.usage.completion_tokens == len(r.choices[0].message.content or "") // 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == "stop"
    # raw json_schema with a lower-case name still keys on the schema title
    raw = client.chat.completions.create(
        model="fake-vlm",
        messages=messages,  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "qa", "schema": YesNoSet.model_json_schema(), "strict": True},
        },
    )
    assert YesNoSet.model_validate_json(raw.choices[0].message.content or "") == parsed
    # no title in the schema: the json_schema name picks the answer
    untitled = {k: v for k, v in RelevanceVerdict.model_json_schema().items() if k != "title"}
    spec = {"name": "RelevanceVerdict", "schema": untitled}
    verdict = client.chat.completions.create(
        model="fake-vlm",
        messages=messages,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": spec},
    )
    assert RelevanceVerdict.model_validate_json(verdict.choices[0].message.content or "").relevant is True
    assert fake_openai.log[-1].schema_title == "RelevanceVerdict"


def test_openai_frames_verdicts_and_models(
    fake_openai: FakeOpenAI, teacher: Teacher, fakes_media: dict[str, Path]
) -> None:
    first = teacher.set_verdict_for_file(fakes_media["frame_1"], relevant=True, label="anomaly")
    client = oclient(fake_openai)
    parts: list[dict[str, Any]] = [{"type": "text", "text": "classify"}]
    parts += [
        {"type": "image_url", "image_url": {"url": data_url(fakes_media[f"frame_{i}"], "image/jpeg")}} for i in (1, 2)
    ]
    r = client.chat.completions.parse(
        model="m",
        messages=[{"role": "user", "content": parts}],  # type: ignore[arg-type]
        response_format=AnomalyVerdict,
    )
    assert r.choices[0].message.parsed is not None and r.choices[0].message.parsed.label == "anomaly"
    assert fake_openai.log[-1].media_sha256 == [first, sha(fakes_media["frame_2"])]
    assert r.usage is not None and r.usage.prompt_tokens == len("classify") // 4 + 2 * 258
    assert "fake-vlm" in [m.id for m in client.models.list()]


def test_openai_stream_with_usage(fake_openai: FakeOpenAI) -> None:
    client = oclient(fake_openai)
    messages = [{"role": "user", "content": "Tell me what the camera shows."}]
    plain = client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="m",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == plain.choices[0].message.content and finish == "stop"
    assert usage is not None and usage.total_tokens == plain.usage.total_tokens  # type: ignore[union-attr]


def test_openai_think_prefix(fakes_media: dict[str, Path]) -> None:
    with FakeOpenAI(teacher=Teacher(think=True)) as server:
        client = oclient(server)
        r = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Tell me about the scene."}],
        )
        content = r.choices[0].message.content or ""
        assert re.match(r"<think>.+</think>\n\S", content, re.S)
        assert r.usage is not None and r.usage.completion_tokens_details is not None
        assert (r.usage.completion_tokens_details.reasoning_tokens or 0) > 0


# ---------------------------------------------------------------- text formats

QA_BLOCK_PROMPTS = {
    "tl": "Write a question and answer with Start_Time and End_Time.",
    "mcq": "Write a multiple-choice question with four options.",
    "bcq": "Write a question that can be answered with yes or no.",
    "open": "Write an open question about the video.",
}


def _blocks(text: str) -> list[str]:
    return [b.strip() for b in re.split(r"^\s*={5,}\s*$", text, flags=re.M) if b.strip()]


@pytest.mark.parametrize("kind", sorted(QA_BLOCK_PROMPTS))
def test_text_format_qa_blocks(fake_openai: FakeOpenAI, fakes_media: dict[str, Path], kind: str) -> None:
    client = oclient(fake_openai)
    r = client.chat.completions.create(
        model="m",
        messages=chat_video(QA_BLOCK_PROMPTS[kind], fakes_media["clip_a"]),  # type: ignore[arg-type]
    )
    blocks = _blocks(r.choices[0].message.content or "")
    assert len(blocks) == 2
    for block in blocks:
        assert re.search(r"^Reasoning: \S", block, re.M)
        if kind == "mcq":
            assert re.search(r"^Multiple-Choice Question: \S", block, re.M)
            options = re.findall(r"^([A-D])\. (\S.*)$", block, re.M)
            assert [o[0] for o in options] == list("ABCD") and len({o[1] for o in options}) == 4
            assert re.search(r"^Answer: [A-D]$", block, re.M)
            continue
        assert re.search(r"^Question: \S", block, re.M)
        answer = re.search(r"^Answer: (.+)$", block, re.M)
        assert answer is not None
        if kind == "tl":
            assert answer.group(1) == "Start_Time: 00:00, End_Time: 00:01"
        elif kind == "bcq":
            assert re.match(r"(Yes|No), because \S", answer.group(1))


def test_text_format_verdicts_timestamp_and_caption(
    fake_gemini: FakeGemini, teacher: Teacher, fakes_media: dict[str, Path]
) -> None:
    teacher.set_verdict_for_file(fakes_media["clip_b"], relevant=False, label="anomaly")
    client = gclient(fake_gemini)

    def ask(prompt: str, clip: str | None = None) -> str:
        contents: list[Any] = [video_part(fakes_media[clip])] if clip else []
        return client.models.generate_content(model=MODEL, contents=[*contents, prompt]).text or ""

    classify = "Is this video an anomaly or normal? Reason first, put the label on the last line."
    assert ask(classify, "clip_a").splitlines()[-1] == "normal"
    assert ask(classify, "clip_b").splitlines()[-1] == "anomaly"
    relevance = "Is this video relevant to the domain? Answer yes or no first."
    assert ask(relevance, "clip_a").startswith("Yes, ")
    assert ask(relevance, "clip_b").startswith("No, ")
    assert float(ask("When does the anomaly happen? Give the timestamp in seconds.")) <= 1.5
    caption = ask("Narrate the clip in detail.", "clip_a")
    assert 2 <= len(re.findall(r"[.!?](?:\s|$)", caption)) <= 3
    assert not re.search(r"question|answer:|offline|fake|teacher", caption, re.I)
    assert ask("Narrate the clip in detail.", "clip_a") == caption
    # prose requests that mention seconds and "when" in passing still get prose
    prose = ask("Describe the clip. Give times in seconds when you can. Write 100 to 200 words.", "clip_a")
    assert len(prose.split()) > 5 and not re.fullmatch(r"[\d.]+", prose)


# ---------------------------------------------------------------- faults


GEMINI_ERRORS = {"429": (429, "RESOURCE_EXHAUSTED"), "429_retry_after": (429, "RESOURCE_EXHAUSTED")}
GEMINI_ERRORS |= {"500": (500, "INTERNAL"), "503": (503, "UNAVAILABLE")}


@pytest.mark.parametrize("kind", ALL_FAULTS)
def test_gemini_fault_kinds(fake_gemini: FakeGemini, kind: str) -> None:
    prompt = "Talk about the scene in a few words."
    client = gclient(fake_gemini)
    clean = client.models.generate_content(model=MODEL, contents=prompt).text or ""
    fake_gemini.faults = FaultPlan(rate=1.0, kinds=(kind,), slow_s=1.5)
    client = gclient(fake_gemini, timeout_ms=400 if kind == "timeout" else None)
    if kind in GEMINI_ERRORS:
        code, status = GEMINI_ERRORS[kind]
        exc_type = genai_errors.ClientError if code < 500 else genai_errors.ServerError
        with pytest.raises(exc_type) as info:
            client.models.generate_content(model=MODEL, contents=prompt)
        assert info.value.code == code and info.value.status == status
        details = info.value.details["error"].get("details", [])
        if kind == "429_retry_after":
            assert details[0]["retryDelay"] == "1s"
            assert info.value.response.headers["retry-after"] == "1"
        else:
            assert details == []
    elif kind == "timeout":
        with pytest.raises(httpx2.ReadTimeout):
            client.models.generate_content(model=MODEL, contents=prompt)
    elif kind == "drop":
        with pytest.raises(httpx2.RemoteProtocolError):
            client.models.generate_content(model=MODEL, contents=prompt)
    else:
        r = client.models.generate_content(model=MODEL, contents=prompt)
        assert r.usage_metadata is not None and r.usage_metadata.prompt_token_count
        if kind == "empty":
            assert r.candidates == [] and r.text is None
        elif kind == "safety":
            assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.SAFETY
            assert r.candidates[0].content is None and r.text is None and r.prompt_feedback is not None
        else:
            assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
            assert r.text and clean.startswith(r.text) and len(r.text) == len(clean) // 2
    assert fake_gemini.log[-1].fault == kind
    fake_gemini.faults = None
    client = gclient(fake_gemini)
    assert client.models.generate_content(model=MODEL, contents=prompt).text == clean


OPENAI_ERRORS: dict[str, tuple[type[Exception], int]] = {
    "429": (openai.RateLimitError, 429),
    "429_retry_after": (openai.RateLimitError, 429),
    "500": (openai.InternalServerError, 500),
    "503": (openai.InternalServerError, 503),
}


@pytest.mark.parametrize("kind", ALL_FAULTS)
def test_openai_fault_kinds(fake_openai: FakeOpenAI, kind: str) -> None:
    messages: Any = [{"role": "user", "content": "Talk about the scene in a few words."}]
    client = oclient(fake_openai)
    clean = client.chat.completions.create(model="m", messages=messages).choices[0].message.content
    fake_openai.faults = FaultPlan(rate=1.0, kinds=(kind,), slow_s=1.5)
    client = oclient(fake_openai, timeout=0.4 if kind == "timeout" else 30.0)
    if kind in OPENAI_ERRORS:
        exc_type, code = OPENAI_ERRORS[kind]
        with pytest.raises(exc_type) as info:
            client.chat.completions.create(model="m", messages=messages)
        err: Any = info.value
        assert err.status_code == code and set(err.body) == {"message", "type", "param", "code"}
        assert (err.response.headers.get("retry-after") == "1") == (kind == "429_retry_after")
    elif kind == "timeout":
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=messages)
    elif kind == "drop":
        with pytest.raises(openai.APIConnectionError) as info:
            client.chat.completions.create(model="m", messages=messages)
        assert not isinstance(info.value, openai.APITimeoutError)
    else:
        choice = client.chat.completions.create(model="m", messages=messages).choices[0]
        if kind == "empty":
            assert choice.message.content == "" and choice.finish_reason == "stop"
        elif kind == "safety":
            assert choice.message.content is None and choice.message.refusal
            assert choice.finish_reason == "content_filter"
        else:
            assert choice.finish_reason == "length" and clean and clean.startswith(choice.message.content or "-")
    assert fake_openai.log[-1].fault == kind


@pytest.mark.parametrize(
    ("status", "gstatus", "oexc"),
    [
        (400, "INVALID_ARGUMENT", openai.BadRequestError),
        (401, "UNAUTHENTICATED", openai.AuthenticationError),
        (403, "PERMISSION_DENIED", openai.PermissionDeniedError),
        (404, "NOT_FOUND", openai.NotFoundError),
    ],
)
def test_fail_next_scripted_errors(
    fake_gemini: FakeGemini, fake_openai: FakeOpenAI, status: int, gstatus: str, oexc: type[Exception]
) -> None:
    fake_gemini.fail_next("generateContent", status, times=2)
    gc = gclient(fake_gemini)
    for _ in range(2):
        with pytest.raises(genai_errors.ClientError) as info:
            gc.models.generate_content(model=MODEL, contents="hi")
        assert info.value.code == status and info.value.status == gstatus
    assert gc.models.generate_content(model=MODEL, contents="hi").text
    assert [r.fault for r in fake_gemini.log] == [f"scripted:{status}"] * 2 + [None]
    fake_openai.fail_next("chat.completions", status)
    oc = oclient(fake_openai)
    with pytest.raises(oexc) as oinfo:
        oc.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert oinfo.value.status_code == status and oinfo.value.body["type"]  # type: ignore[attr-defined]
    assert (
        oc.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
    )


def test_scripted_html_502_and_upload_errors(fake_gemini: FakeGemini, fakes_media: dict[str, Path]) -> None:
    fake_gemini.fail_next("generateContent", 502, body="<html>bad gateway</html>")
    client = gclient(fake_gemini)
    with pytest.raises(genai_errors.ServerError) as info:
        client.models.generate_content(model=MODEL, contents="hi")
    assert info.value.code == 502
    fake_gemini.fail_next("upload.chunk", 503)
    with pytest.raises(genai_errors.ServerError):
        client.files.upload(file=str(fakes_media["clip_a"]))
    assert fake_gemini.counts["upload.chunk"] == 1 and fake_gemini.live_files() == 0  # no silent re-send
    fake_gemini.faults = FaultPlan(rate=1.0, kinds=("429",), routes=("files.get",))
    f = client.files.upload(file=str(fakes_media["clip_a"]))
    with pytest.raises(genai_errors.ClientError):
        client.files.get(name=f.name or "")
    assert fake_gemini.log[-1].fault == "429"


# ---------------------------------------------------------------- determinism under faults

QUESTIONS: list[tuple[str, type[BaseModel] | None]] = [
    ("Write a multiple-choice question about the clip.", None),
    ("Write a question and answer with Start_Time and End_Time.", None),
    ("Anomaly or normal? Label on the last line.", None),
    ("Narrate the clip.", None),
    ("Questions please.", MultipleChoiceSet),
    ("More questions please.", OpenQASet),
]


def _retry(call: Callable[[], str | None], attempts: int = 40) -> str:
    for _ in range(attempts):
        try:
            text = call()
        except (genai_errors.APIError, httpx2.TransportError, openai.APIError):
            continue
        if text:
            return text
    raise AssertionError("no successful answer")


def _gemini_answers(server: FakeGemini, clip: Path) -> list[str]:
    client = gclient(server, timeout_ms=1000)

    def one(prompt: str, schema: type[BaseModel] | None) -> str | None:
        config = types.GenerateContentConfig(response_mime_type="application/json", response_schema=schema)
        r = client.models.generate_content(
            model=MODEL, contents=[video_part(clip), prompt], config=config if schema else None
        )
        ok = r.candidates and r.candidates[0].finish_reason == types.FinishReason.STOP
        return r.text if ok else None

    return [_retry(lambda p=p, s=s: one(p, s)) for p, s in QUESTIONS]


def _openai_answers(server: FakeOpenAI, clip: Path) -> list[str]:
    client = oclient(server, timeout=1.0)

    def one(prompt: str, schema: type[BaseModel] | None) -> str | None:
        kwargs: dict[str, Any] = {}
        if schema is not None:
            spec = {"name": schema.__name__, "schema": schema.model_json_schema()}
            kwargs["response_format"] = {"type": "json_schema", "json_schema": spec}
        choice = client.chat.completions.create(model="m", messages=chat_video(prompt, clip), **kwargs).choices[0]  # type: ignore[arg-type]
        return choice.message.content if choice.finish_reason == "stop" else None

    return [_retry(lambda p=p, s=s: one(p, s)) for p, s in QUESTIONS]


def test_faulted_runs_give_identical_answers(
    fake_gemini: FakeGemini, fake_openai: FakeOpenAI, fakes_media: dict[str, Path]
) -> None:
    clip = fakes_media["clip_a"]
    clean_g, clean_o = _gemini_answers(fake_gemini, clip), _openai_answers(fake_openai, clip)
    for server in (fake_gemini, fake_openai):
        server.reset()
        server.faults = FaultPlan(rate=0.5, seed=7, slow_s=1.5)
    assert _gemini_answers(fake_gemini, clip) == clean_g
    assert _openai_answers(fake_openai, clip) == clean_o
    for server in (fake_gemini, fake_openai):
        faults = [r.fault for r in server.log if r.fault]
        assert len(set(faults)) >= 2, faults
        assert len(server.log) > len(QUESTIONS)


def test_fault_plan_is_seeded() -> None:
    def pattern(seed: int) -> list[str | None]:
        plan = FaultPlan(rate=0.3, seed=seed)
        return [plan.draw(ALL_FAULTS) for _ in range(200)]

    assert pattern(7) == pattern(7) != pattern(8)
    assert 30 <= sum(1 for x in pattern(7) if x) <= 90
    with pytest.raises(ValueError):
        FaultPlan(rate=0.1, kinds=("nope",))


# ---------------------------------------------------------------- teacher


def test_teacher_is_a_pure_function_with_varied_distinct_items() -> None:
    t1, t2 = Teacher(), Teacher()
    schema = MultipleChoiceSet.model_json_schema()
    video = "ab" * 32
    assert t1.answer("p", [video], schema, "m") == t2.answer("p", [video], schema, "other-model")
    questions: list[str] = []
    letters: set[str] = set()
    for key in ("mcq", "bcq", "open_qa", "causal_linkage", "temporal_localization", "scene_description"):
        for model_cls in SET_MODELS:
            s = model_cls.model_json_schema()
            obj = model_cls.model_validate_json(t1.answer(f"prompt for {key}", [video], s, "m").text)
            check_set(obj)
            questions += [i.question for i in obj.items]  # type: ignore[attr-defined]
            if isinstance(obj, MultipleChoiceSet):
                letters |= {i.answer for i in obj.items}
    assert len(set(questions)) == len(questions)
    assert len(letters) >= 3
    t3 = Teacher(items_per_call=5)
    assert len(MultipleChoiceSet.model_validate_json(t3.answer("p", [], schema, "m").text).items) == 5


def test_teacher_anomaly_share_splits_unlisted_videos_deterministically() -> None:
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
    labels = [Teacher(anomaly_share=0.5).verdict_for([s]).label for s in shas]
    assert labels == [Teacher(anomaly_share=0.5).verdict_for([s]).label for s in shas]
    assert 8 <= labels.count("anomaly") <= 32
    assert {Teacher().verdict_for([s]).label for s in shas} == {"normal"}
    assert Teacher(anomaly_share=1.0).verdict_for([]).label == "normal"  # text-only calls keep the default


def test_teacher_conforms_known_titles_to_the_schema_sent() -> None:
    schema = AnomalyVerdict.model_json_schema()
    schema["properties"]["confidence"] = {"type": "number", "minimum": 0.5}
    schema["properties"].pop("reasoning")
    out = json.loads(Teacher().answer("p", [], schema, "m").text)
    assert out == {"label": "normal", "confidence": 0.5}


ODD_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "OBJECT",
        "title": "Odd",
        "properties": {
            "when": {"type": "STRING", "format": "date-time"},
            "maybe": {"type": "INTEGER", "nullable": True},
            "tags": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["x", "y"]}, "minItems": 2},
        },
        "property_ordering": ["tags", "when", "maybe"],
        "required": ["when", "tags"],
    },
    {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer", "minimum": 3},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["v", "kids"],
            }
        },
        "type": "object",
        "properties": {
            "root": {"$ref": "#/$defs/Node"},
            "choice": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 20}]},
            "both": {"allOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]}]},
            "typed": {"type": ["null", "boolean"]},
            "free": {},
        },
        "required": ["root", "choice", "both", "typed", "free"],
    },
]


@pytest.mark.parametrize("schema", ODD_SCHEMAS)
def test_instance_from_schema_is_valid(schema: dict[str, Any]) -> None:
    value = instance_from_schema(schema)
    lowered = json.loads(json.dumps(schema).replace('"OBJECT"', '"object"').replace('"ARRAY"', '"array"'))
    lowered = json.loads(json.dumps(lowered).replace('"STRING"', '"string"').replace('"INTEGER"', '"integer"'))
    jsonschema.validate(value, lowered)
    assert list(value) == (schema.get("property_ordering") or list(schema["properties"]))


# ---------------------------------------------------------------- server behaviour


def test_concurrent_requests_overlap_and_reset_keeps_files(
    fake_gemini: FakeGemini, fakes_media: dict[str, Path]
) -> None:
    fake_gemini.latency_text_s = 0.2
    fake_gemini.processing_polls = 0
    client = gclient(fake_gemini)
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda i: client.models.generate_content(model=MODEL, contents=f"q{i}").text, range(16)))
    assert all(texts) and len(set(texts)) > 1
    assert fake_gemini.counts["generateContent"] == 16
    f = client.files.upload(file=str(fakes_media["clip_b"]))
    fake_gemini.reset()
    assert not fake_gemini.log and not fake_gemini.counts and fake_gemini.live_files() == 1
    assert client.files.get(name=f.name or "").state == types.FileState.ACTIVE


def test_unknown_route_and_missing_key_use_provider_error_bodies(
    fake_gemini: FakeGemini, fake_openai: FakeOpenAI
) -> None:
    def fetch(url: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, body = fetch(fake_gemini.base_url + "/v1beta/nowhere")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    status, body = fetch(fake_gemini.base_url + "/v1beta/files")
    assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
    status, body = fetch(fake_openai.base_url + "/models")
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
    assert fake_gemini.log[0].route == "unknown" and fake_gemini.counts["files.list"] == 1


def test_download_and_restart_on_the_same_port(fake_gemini: FakeGemini) -> None:
    fake_gemini.processing_polls = 0
    client = gclient(fake_gemini)
    f = client.files.upload(file=io.BytesIO(b"not really a video"), config={"mime_type": "text/plain"})
    request = urllib.request.Request(
        f"{fake_gemini.base_url}/v1beta/{f.name}:download?alt=media", headers={"x-goog-api-key": "k"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.read() == b"not really a video"
    assert fake_gemini.counts["files.download"] == 1
    base_url = fake_gemini.base_url
    fake_gemini.stop()
    with pytest.raises(httpx2.ConnectError):
        client.files.get(name=f.name or "")
    fake_gemini.start()
    assert fake_gemini.base_url == base_url
    assert client.files.get(name=f.name or "").state == types.FileState.ACTIVE


@pytest.mark.parametrize("provider", ["gemini", "openai"])
def test_standalone_process_prints_ready_and_answers(provider: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "vr_assets.fakes", provider, "--latency-text", "0", "--fault-rate", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""))
        reader.start()
        reader.join(30)
        assert line and line[0].startswith("READY http://127.0.0.1:"), (line, proc.poll())
        base_url = line[0].split()[1]
        if provider == "gemini":
            opts = types.HttpOptions(base_url=base_url, api_version="v1beta")
            gc = genai.Client(api_key="k", http_options=opts)
            text = gc.models.generate_content(model=MODEL, contents="hi").text
        else:
            client = openai.OpenAI(api_key="k", base_url=base_url, max_retries=0)
            text = (
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                .choices[0]
                .message.content
            )
        assert text
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
