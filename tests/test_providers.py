"""Teacher clients on the real google-genai / openai SDKs against the local wire fakes."""

from __future__ import annotations

import base64
import hashlib
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_providers import ProviderMedia
from vr_assets.config import GeminiSettings, MediaSettings, ModelSpec, OpenAISettings, RateLimits, RetrySettings
from vr_assets.fakes import FakeGemini, FakeOpenAI, Teacher
from vr_assets.providers import (
    MediaRef,
    ModelAnswer,
    ModelCall,
    ProviderError,
    TeacherModel,
    get_model,
    strip_think,
)
from vr_assets.providers.base import KeyedLocks, parse_retry_after, parse_retry_info, strip_fences
from vr_assets.providers.openai_compat import strict_json_schema
from vr_assets.records import MultipleChoiceSet, RelevanceVerdict

pytestmark = pytest.mark.usefixtures("clean_providers")

KEY = "vr-test-key-providers-51c0ffee"
FAST_RETRY = RetrySettings(max_attempts=5, initial_delay_s=0.01, max_delay_s=0.05, bad_output_attempts=2)
TINY_INLINE = MediaSettings(inline_limit_mb=0.05, max_live_uploads=8)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gemini_spec(fake: FakeGemini, concurrency: int = 4, **settings: Any) -> ModelSpec:
    return ModelSpec(
        backend="gemini",
        gemini=GeminiSettings(api_key=KEY, base_url=fake.base_url, model="gemini-test", **settings),
        limits=RateLimits(max_concurrency=concurrency),
        retry=FAST_RETRY,
    )


def openai_spec(fake: FakeOpenAI, concurrency: int = 4, **settings: Any) -> ModelSpec:
    return ModelSpec(
        backend="openai",
        openai=OpenAISettings(api_key=KEY, base_url=fake.base_url, model_name="fake-vlm", **settings),
        limits=RateLimits(max_concurrency=concurrency),
        retry=FAST_RETRY,
    )


def video(path: Path, key: str = "vid") -> MediaRef:
    return MediaRef(kind="video", paths=[path], mime_type="video/mp4", video_key=key)


def call(
    prompt: str, media: MediaRef | None = None, schema: Any = None, key: str = "vid", step: str = "1a"
) -> ModelCall:
    return ModelCall(step=step, prompt_key="caption", video_key=key, prompt=prompt, media=media, schema_model=schema)


def answers(results: list[ModelAnswer | ProviderError]) -> list[ModelAnswer]:
    bad = [r for r in results if isinstance(r, ProviderError)]
    assert not bad, [str(b) for b in bad]
    return [r for r in results if isinstance(r, ModelAnswer)]


def find_parts(body: Any, key: str) -> list[dict[str, Any]]:
    """Every value under `key` (camel or snake) anywhere in a request body."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
    found: list[dict[str, Any]] = []
    if isinstance(body, dict):
        for k, v in body.items():
            if k in (key, snake):
                found.append(v)
            else:
                found.extend(find_parts(v, key))
    elif isinstance(body, list):
        for v in body:
            found.extend(find_parts(v, key))
    return found


@pytest.fixture
def gem() -> Iterator[FakeGemini]:
    fake = FakeGemini(teacher=Teacher(), latency_media_s=0.0, latency_text_s=0.0, processing_polls=2)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def gem_fast() -> Iterator[FakeGemini]:
    """Uploads ACTIVE at once, for tests about many uploads rather than polling."""
    with FakeGemini(processing_polls=0, probe_durations=False) as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
def oai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(teacher=Teacher(), log_media=True)
    fake.start()
    yield fake
    fake.stop()


# ---------------------------------------------------------------- Gemini media


def test_gemini_uploads_each_video_once_and_reuses_the_file(gem: FakeGemini, provider_media: ProviderMedia) -> None:
    clip = provider_media.big_videos[0]
    model = get_model(gemini_spec(gem), role="vlm", media=TINY_INLINE)
    media = video(clip)
    prompts = ["Describe the scene.", "List the actors.", "Describe the motion.", "Describe the lighting."]
    got = answers(model.generate_many([call(p, media) for p in prompts]))

    assert gem.counts["upload.start"] == 1
    assert gem.upload_bytes_by_sha() == {sha(clip): clip.stat().st_size}
    assert sum(a.usage.uploaded_bytes for a in got) == clip.stat().st_size
    assert all(a.usage.inline_bytes == 0 for a in got)
    gens = gem.records("generateContent")
    assert len(gens) == 4
    uris = {fd.get("file_uri") or fd.get("fileUri") for r in gens for fd in find_parts(r.json, "fileData")}
    assert len(uris) == 1 and all(u and u.startswith(gem.root_url) for u in uris)
    assert all(r.media_sha256 == [sha(clip)] for r in gens)
    assert not any(find_parts(r.json, "inlineData") for r in gens)
    assert sorted(r.prompt_text for r in gens) == sorted(prompts)

    model.release("vid")
    assert gem.counts["files.delete"] == 1
    assert gem.live_files() == 0


def test_gemini_reuploads_after_release_and_shares_identical_bytes(
    gem_fast: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    gem = gem_fast
    clip = provider_media.big_videos[1]
    twin = tmp_path / "twin.mp4"
    twin.write_bytes(clip.read_bytes())
    model = get_model(gemini_spec(gem), media=TINY_INLINE)
    model.generate(call("Describe.", video(clip, "a")))
    model.generate(call("Describe.", video(twin, "b")))  # same bytes, another video: same upload
    assert gem.counts["upload.start"] == 1
    model.release("a")
    assert gem.live_files() == 1  # still owned by b
    model.release("b")
    assert gem.live_files() == 0
    model.generate(call("Describe again.", video(clip, "a")))
    assert gem.counts["upload.start"] == 2


def test_gemini_keeps_live_uploads_under_the_cap(gem_fast: FakeGemini, provider_media: ProviderMedia) -> None:
    gem = gem_fast
    media = MediaSettings(inline_limit_mb=0.05, max_live_uploads=2)
    model = get_model(gemini_spec(gem, concurrency=2), media=media)
    clips = provider_media.big_videos
    calls = [call(f"Describe part {i}.", video(clips[i % 3], f"v{i % 3}")) for i in range(9)]
    answers(model.generate_many(calls))

    live = peak = 0
    for r in gem.log:  # log order is server order: finalize adds a file, delete removes one
        if r.route == "upload.chunk" and r.status == 200:
            live += 1
        elif r.route == "files.delete" and r.status == 200:
            live -= 1
        peak = max(peak, live)
    assert peak <= 2
    assert gem.live_files() <= 2
    assert gem.counts["upload.start"] >= 3
    # never fewer than the calls in flight need: the cap rises to the busiest teacher's concurrency
    busier = get_model(gemini_spec(gem, concurrency=5), media=media)
    assert busier.uploads.max_live == model.uploads.max_live == 5  # type: ignore[attr-defined]


def test_gemini_small_video_goes_inline_and_is_encoded_once(gem: FakeGemini, provider_media: ProviderMedia) -> None:
    clip = provider_media.small_video
    inline = MediaSettings(transport="inline")
    model = get_model(gemini_spec(gem, media_resolution="MEDIA_RESOLUTION_LOW"), media=inline)
    got = answers(model.generate_many([call(f"Describe {i}.", video(clip)) for i in range(3)]))
    assert gem.counts["upload.start"] == 0
    assert all(a.usage.inline_bytes == clip.stat().st_size for a in got)
    assert gem.inline_bytes_by_sha() == {sha(clip): 3 * clip.stat().st_size}
    for r in gem.records("generateContent"):
        (blob,) = find_parts(r.json, "inlineData")
        assert (blob.get("mime_type") or blob.get("mimeType")) == "video/mp4"
        assert find_parts(r.json, "mediaResolution") == ["MEDIA_RESOLUTION_LOW"]
    assert model.payloads.builds == 1  # type: ignore[attr-defined]
    model.release("vid")
    assert len(model.payloads) == 0  # type: ignore[attr-defined]


def ranged(path: Path, start: float, end: float, key: str = "vid") -> MediaRef:
    return video(path, key).between(start, end)


def test_gemini_upload_transport_sends_a_video_once_and_chunks_as_time_ranges(
    gem: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    clip = provider_media.small_video
    model = get_model(gemini_spec(gem), media=MediaSettings(), upload_registry=tmp_path / "uploads")
    assert model.clips_in_place
    whole = [call(f"Describe {i}.", video(clip)) for i in range(2)]
    parts = [call("Describe this part.", ranged(clip, 0.0, 0.5)), call("Describe this part.", ranged(clip, 0.5, 1.0))]
    got = answers(model.generate_many(whole))
    got += answers(model.generate_many(parts))
    assert gem.counts["upload.start"] == 1
    assert gem.upload_bytes_by_sha() == {sha(clip): clip.stat().st_size}
    assert gem.inline_bytes_by_sha() == {}
    assert sorted(a.usage.uploaded_bytes for a in got) == [0, 0, 0, clip.stat().st_size]
    reqs = gem.records("generateContent")
    assert all(r.media_sha256 == [sha(clip)] for r in reqs)
    assert sorted(r.media_sampling[0].get("start_s", -1.0) for r in reqs) == [-1.0, -1.0, 0.0, 0.5]
    assert {r.media_sampling[0].get("end_s") for r in reqs if r.media_sampling[0]} == {0.5, 1.0}
    assert find_parts(reqs[-1].json, "inlineData") == []
    model.discard("vid")
    assert gem.live_files() == 0
    assert not list((tmp_path / "uploads").rglob("*.json"))


def test_gemini_upload_outlives_its_process_for_the_video_s_next_step_and_goes_on_discard(
    gem: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    """vr-annotate's prefetch uploads and asks steps 0 and 1a; the worker's chunks point at that upload."""
    from vr_assets.providers import reset_registry

    clip, twin = provider_media.small_video, tmp_path / "twin.mp4"
    twin.write_bytes(clip.read_bytes())
    registry = tmp_path / "uploads"
    first = get_model(gemini_spec(gem), upload_registry=registry)
    answers(first.generate_many([call("Whole.", video(clip, "a")), call("Whole.", video(twin, "b"))]))
    first.release("a")
    first.release("b")
    reset_registry()  # the process ends: what it registered stays for the videos' later steps
    assert gem.live_files() == 1
    gets = gem.counts["files.get"]

    second = get_model(gemini_spec(gem), upload_registry=registry)
    assert second is not first
    answers(second.generate_many([call("Part.", ranged(clip, 0.0, 0.5, "a"))]))
    assert gem.counts["upload.start"] == 1  # pointed at, not sent again (one GET to see it is still there)
    assert gem.counts["files.get"] == gets + 1
    second.discard("a")
    assert gem.live_files() == 1  # video b, same bytes, still needs it
    reset_registry()

    third = get_model(gemini_spec(gem), upload_registry=registry)
    answers(third.generate_many([call("Part.", ranged(twin, 0.5, 1.0, "b"))]))
    third.discard("b")
    assert gem.live_files() == 0
    assert gem.counts["upload.start"] == 1
    assert not list(registry.rglob("*.json"))


def test_gemini_registered_upload_gone_from_the_service_is_uploaded_again(
    gem: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    from google import genai
    from google.genai import types

    from vr_assets.providers import reset_registry

    clip, registry = provider_media.small_video, tmp_path / "uploads"
    first = get_model(gemini_spec(gem), upload_registry=registry)
    answers(first.generate_many([call("Whole.", video(clip))]))
    reset_registry()
    admin = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=gem.base_url, api_version="v1beta"))
    for f in admin.files.list():
        admin.files.delete(name=f.name)
    second = get_model(gemini_spec(gem), upload_registry=registry)
    answers(second.generate_many([call("Part.", ranged(clip, 0.0, 1.0))]))
    assert gem.counts["upload.start"] == 2
    second.discard("vid")
    assert gem.live_files() == 0


def test_gemini_time_range_past_the_video_is_refused_with_the_service_s_reason(
    gem: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    model = get_model(gemini_spec(gem), upload_registry=tmp_path / "uploads")
    with pytest.raises(ProviderError, match="start_offset"):
        model.generate(call("Part.", ranged(provider_media.small_video, 500.0, 510.0)))
    model.discard("vid")


def test_media_ref_time_ranges_are_validated_and_change_the_call_cache_key(
    provider_media: ProviderMedia, tmp_path: Path
) -> None:
    from vr_assets.call_cache import CachedModel

    clip = provider_media.small_video
    with pytest.raises(ValueError, match="both"):
        MediaRef(kind="video", paths=[clip], video_key="v", start_s=1.0)
    with pytest.raises(ValueError, match="empty time range"):
        ranged(clip, 2.0, 2.0)
    with pytest.raises(ValueError, match="frames"):
        MediaRef(kind="frames", paths=[clip], video_key="v", fps=1.0)
    cm = CachedModel(_NoModel(), tmp_path, "fp")  # type: ignore[arg-type]
    keys = {cm.key_for(call("Part.", m)) for m in (video(clip), ranged(clip, 0, 5), ranged(clip, 5, 10),
                                                   video(clip).model_copy(update={"fps": 0.5}))}
    assert len(keys) == 4


class _NoModel:
    provider = "gemini"
    model_name = "m"


def test_gemini_frames_are_image_parts_and_text_calls_have_no_media_resolution(
    gem: FakeGemini, provider_media: ProviderMedia
) -> None:
    frames = MediaRef(kind="frames", paths=provider_media.frames, mime_type="image/jpeg", video_key="long")
    model = get_model(gemini_spec(gem, media_resolution="MEDIA_RESOLUTION_LOW"))
    a = model.generate(call("Describe these frames.", frames, key="long"))
    b = model.generate(call("Summarise the captions.", None, key="long", step="2"))
    assert a.usage.inline_bytes == sum(p.stat().st_size for p in provider_media.frames)
    assert b.usage.inline_bytes == 0
    media_req, text_req = gem.records("generateContent")
    blobs = find_parts(media_req.json, "inlineData")
    assert [x.get("mime_type") or x.get("mimeType") for x in blobs] == ["image/jpeg"] * 3
    assert media_req.media_sha256 == [sha(p) for p in provider_media.frames]
    assert find_parts(media_req.json, "mediaResolution") == ["MEDIA_RESOLUTION_LOW"]
    assert find_parts(text_req.json, "mediaResolution") == []
    assert find_parts(text_req.json, "inlineData") == []


# ---------------------------------------------------------------- OpenAI media


def test_openai_sends_video_and_frames_as_data_urls(oai: FakeOpenAI, provider_media: ProviderMedia) -> None:
    model = get_model(openai_spec(oai))
    clip = provider_media.small_video
    frames = MediaRef(kind="frames", paths=provider_media.frames, mime_type="image/jpeg", video_key="vid")
    a = model.generate(call("Describe the clip.", video(clip)))
    b = model.generate(call("Describe the frames.", frames))
    assert a.usage.inline_bytes == clip.stat().st_size
    assert b.usage.inline_bytes == sum(p.stat().st_size for p in provider_media.frames)

    vreq, freq = oai.records("chat.completions")
    (vpart,) = [p for p in vreq.json["messages"][-1]["content"] if p["type"] == "video_url"]
    head, data = vpart["video_url"]["url"].split(",", 1)
    assert head == "data:video/mp4;base64"
    assert base64.b64decode(data, validate=True) == clip.read_bytes()  # standard alphabet, not url-safe
    images = [p for p in freq.json["messages"][-1]["content"] if p["type"] == "image_url"]
    assert [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in images] == [
        f.read_bytes() for f in provider_media.frames
    ]
    assert freq.json["messages"][-1]["content"][-1] == {"type": "text", "text": "Describe the frames."}


def test_openai_text_only_call_is_a_plain_message(oai: FakeOpenAI) -> None:
    model = get_model(openai_spec(oai, max_tokens=512, temperature=0.1))
    model.generate(call("Summarise: a van stops.", step="2"))
    (req,) = oai.records("chat.completions")
    assert req.json["messages"] == [{"role": "user", "content": "Summarise: a van stops."}]
    assert req.json["max_tokens"] == 512
    assert req.json["temperature"] == 0.1
    assert "response_format" not in req.json


# ---------------------------------------------------------------- structured output, think


def test_structured_output_gemini(gem: FakeGemini, provider_media: ProviderMedia) -> None:
    model = get_model(gemini_spec(gem))
    gem.teacher.set_verdict(sha(provider_media.small_video), relevant=False)
    a = model.generate(call("Is this in the domain?", video(provider_media.small_video), RelevanceVerdict, step="0"))
    assert isinstance(a.parsed, RelevanceVerdict)
    assert a.parsed.relevant is False
    (req,) = gem.records("generateContent")
    assert find_parts(req.json, "responseMimeType") == ["application/json"]
    assert req.schema_title == "RelevanceVerdict"


def test_structured_output_openai_is_strict(oai: FakeOpenAI, provider_media: ProviderMedia) -> None:
    model = get_model(openai_spec(oai))
    a = model.generate(call("Write questions.", video(provider_media.small_video), MultipleChoiceSet, step="3"))
    assert isinstance(a.parsed, MultipleChoiceSet)
    assert a.parsed.items and all(len(q.options) >= 2 for q in a.parsed.items)
    (req,) = oai.records("chat.completions")
    fmt = req.json["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "MultipleChoiceSet"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == strict_json_schema(MultipleChoiceSet)


def test_strict_schema_closes_every_object() -> None:
    schema = strict_json_schema(MultipleChoiceSet)

    def objects(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "properties" in node:
                yield node
            for v in node.values():
                yield from objects(v)
        elif isinstance(node, list):
            for v in node:
                yield from objects(v)

    found = list(objects(schema))
    assert len(found) == 2  # the set and the nested question ($defs)
    for obj in found:
        assert obj["additionalProperties"] is False
        assert sorted(obj["required"]) == sorted(obj["properties"])
    assert "default" not in str(schema)


def test_fenced_json_is_parsed(gem: FakeGemini) -> None:
    model = get_model(gemini_spec(gem))
    fenced = '```json\n{"relevant": true, "reason": "a loading dock"}\n```'
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": fenced}]}, "finishReason": "STOP"}]}
    gem.fail_next("generateContent", 200, body=body)
    a = model.generate(call("Is this in the domain?", schema=RelevanceVerdict, step="0"))
    assert a.parsed == RelevanceVerdict(relevant=True, reason="a loading dock")
    assert a.usage.retries == 0


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_think_blocks_are_stripped(backend: str, provider_media: ProviderMedia) -> None:
    fake: FakeGemini | FakeOpenAI = (
        FakeGemini(teacher=Teacher(think=True)) if backend == "gemini" else FakeOpenAI(teacher=Teacher(think=True))
    )
    with fake:
        spec = gemini_spec(fake) if isinstance(fake, FakeGemini) else openai_spec(fake)
        model = get_model(spec)
        a = model.generate(call("Describe.", video(provider_media.small_video)))
        s = model.generate(call("Is this in the domain?", schema=RelevanceVerdict, step="0"))
    assert a.text and "<think>" not in a.text and "</think>" not in a.text
    assert isinstance(s.parsed, RelevanceVerdict)
    assert a.usage.thinking_tokens > 0


def test_strip_think_and_fences() -> None:
    assert strip_think("<think>plan</think>\nAnswer") == "Answer"
    assert strip_think("<THINK>a</THINK>x<think>b</think>y") == "xy"
    assert strip_think("reasoning without an opening tag</think>  Answer") == "Answer"
    assert strip_think("<think>never finished") == ""
    assert strip_think("plain") == "plain"
    assert strip_fences('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_fences('{"a": 1}') == '{"a": 1}'


def test_retry_hints_are_read() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "150"}) == 0.15
    assert parse_retry_after({}) is None
    details = {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}
    assert parse_retry_info(details) == 1.5
    assert parse_retry_info({"error": {"details": []}}) is None


# ---------------------------------------------------------------- instances and keys


def test_get_model_shares_one_instance_and_names_itself(gem: FakeGemini) -> None:
    a = get_model(gemini_spec(gem), role="vlm", max_workers=4)
    b = get_model(gemini_spec(gem), role="vlm", max_workers=4)
    assert a is b
    assert isinstance(a, TeacherModel)
    assert (a.provider, a.model_name) == ("gemini", "gemini-test")
    c = get_model(gemini_spec(gem), role="llm", max_workers=4)
    assert c.limiter is a.limiter  # type: ignore[attr-defined]  # same endpoint, one limiter
    assert KEY not in repr(a)


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="GOOGLE_API_KEY"):
        get_model(ModelSpec(backend="gemini"))
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        get_model(ModelSpec(backend="openai"))


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch, oai: FakeOpenAI) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", oai.base_url)
    model = get_model(ModelSpec(backend="openai", openai=OpenAISettings(model_name="fake-vlm"), retry=FAST_RETRY))
    assert model.generate(call("Describe.")).text
    (req,) = oai.records("chat.completions")
    assert req.headers["authorization"] == f"Bearer {KEY}"


def test_provider_error_pickles_with_its_fields() -> None:
    err = ProviderError("boom", provider="gemini", model="m", video_key="v", step="1a", kind="client", status=400)
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ProviderError)
    assert (str(back), back.video_key, back.step, back.status) == ("boom", "v", "1a", 400)


def test_gemini_clients_share_one_verifying_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """One CA load per process (made in the forkserver), still verifying; SSL_CERT_FILE is honoured."""
    import ssl

    import certifi

    from vr_assets.providers import gemini

    gemini.tls_context.cache_clear()
    try:
        ctx = gemini.tls_context()
        assert ctx is gemini.tls_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
        gemini.tls_context.cache_clear()
        from_file = gemini.tls_context()
        assert from_file.verify_mode == ssl.CERT_REQUIRED and from_file.cert_store_stats()["x509_ca"] > 0
    finally:
        gemini.tls_context.cache_clear()


def test_keyed_locks_serialise_one_key_and_forget_it_when_done() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap: list[bool] = []

    def work(tag: str) -> None:
        with locks.hold_all(["b", "a"]):
            overlap.append(bool(inside))
            inside.append(tag)
            time.sleep(0.05)
            inside.remove(tag)

    threads = [threading.Thread(target=work, args=(str(i),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [False, False, False]  # never two holders of the same keys at once
    assert locks._locks == {}  # no lock kept for keys no one holds or waits for


_ASK_ONCE = """
import json, sys, time
from pathlib import Path
from vr_assets.call_cache import CachedModel
from vr_assets.config import GeminiSettings, ModelSpec
from vr_assets.providers import ModelCall, get_model

base_url, cache, start = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
spec = ModelSpec(backend="gemini", gemini=GeminiSettings(api_key="k-once", base_url=base_url, model="gemini-test"))
model = CachedModel(get_model(spec, role="llm"), cache, "fp")
while not start.exists():  # both processes are up and past their imports: ask at the same moment
    time.sleep(0.002)
call = ModelCall(step="2", prompt_key="p", video_key="dup", prompt="Describe the scene in one line.")
answer = model.generate(call)
print(json.dumps({"text": answer.text, "cached": answer.usage.cached}))
"""


def test_two_processes_asking_one_call_at_once_pay_for_it_once(tmp_path: Path) -> None:
    """Two workers on two copies of one video: the second waits for the first's answer on disk."""
    import json
    import subprocess
    import sys

    start = tmp_path / "go"
    with FakeGemini(teacher=Teacher(), latency_text_s=1.0) as fake:
        procs = [
            subprocess.Popen([sys.executable, "-c", _ASK_ONCE, fake.base_url, str(tmp_path / "cache"), str(start)],
                             stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        time.sleep(3.0)  # both import and build their clients, then spin on the start file
        start.touch()
        outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        assert fake.counts["generateContent"] == 1
    assert outs[0]["text"] == outs[1]["text"]
    assert sorted(o["cached"] for o in outs) == [False, True]
    assert not list((tmp_path / "cache").rglob("*.lock"))  # each holder removed its lock file
