"""Gemini explicit context caching: one cache per video where the price table says it pays, read by the
video's whole-video calls, deleted with its upload, made again once when the service lost it.

The real google-genai SDK against the fake's caches API (create/get/delete, TTL, cachedContent,
cachedContentTokenCount).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance

from tests.fixtures_providers import ProviderMedia
from vr_assets.config import GeminiSettings, MediaSettings, ModelSpec, Pricing, RateLimits, RetrySettings
from vr_assets.fakes import FakeGemini
from vr_assets.providers import MediaRef, ModelAnswer, ModelCall, ProviderError, TeacherModel, UsageLedger, get_model
from vr_assets.providers.usage import KNOWN_CACHE_PRICES, context_cache_pays, cost_usd, with_cache_prices
from vr_assets.store import JsonStore

pytestmark = pytest.mark.usefixtures("clean_providers")

KEY = "vr-test-key-context-cache-7c"
PAYS = Pricing(input_per_mtok=1.0, output_per_mtok=2.0, cached_input_per_mtok=0.1, cache_storage_per_mtok_hour=1.0)
WHOLE_CALLS = 4  # step 0's two questions and step 1a's two captions


def spec(fake: FakeGemini, context_cache: str = "auto") -> ModelSpec:
    return ModelSpec(
        backend="gemini",
        gemini=GeminiSettings(api_key=KEY, base_url=fake.base_url, model="gemini-test"),
        limits=RateLimits(max_concurrency=4),
        retry=RetrySettings(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05),
        context_cache=context_cache,  # type: ignore[arg-type]
    )


def teacher(fake: FakeGemini, tmp: Path, price: Pricing | None = PAYS, context_cache: str = "auto") -> TeacherModel:
    return get_model(spec(fake, context_cache), prices={"gemini-test": price} if price else None,
                     media=MediaSettings(), ledger=UsageLedger(tmp / "usage"), upload_registry=tmp / "uploads")


def whole(clip: Path, key: str = "vid") -> MediaRef:
    return MediaRef(kind="video", paths=[clip], video_key=key, reuses=WHOLE_CALLS)


def call(prompt: str, media: MediaRef) -> ModelCall:
    return ModelCall(step="t", prompt_key="k", video_key=media.video_key, prompt=prompt, media=media)


def video_calls(model: TeacherModel, clip: Path, key: str = "vid") -> list[ModelAnswer]:
    """A video's calls as the steps make them: 4 on the whole upload (0, then 1a concurrently), 2 chunks."""
    ref = whole(clip, key)
    out = [model.generate(call("Is it relevant?", ref)), model.generate(call("Anomaly or normal?", ref))]
    got = model.generate_many([call("Global caption.", ref), call("Dense caption.", ref),
                               call("Chunk 0.", ref.between(0.0, 0.5)), call("Chunk 1.", ref.between(0.5, 1.0))])
    assert all(isinstance(a, ModelAnswer) for a in got), got
    return out + [a for a in got if isinstance(a, ModelAnswer)]


def test_a_video_s_whole_video_calls_read_one_cache_that_goes_with_its_upload(
    fake_gemini: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    fake, clip = fake_gemini, provider_media.small_video
    model = teacher(fake, tmp_path)
    answers = video_calls(model, clip)
    assert fake.counts["caches.create"] == 1 and fake.counts["upload.start"] == 1
    reqs = fake.records("generateContent")
    named = [r.cached_content for r in reqs if not r.media_sampling[0]]
    (cache,) = set(named)
    assert len(named) == WHOLE_CALLS and cache.startswith("cachedContents/")
    assert all(r.cached_content is None for r in reqs if r.media_sampling[0])  # chunks: ranges of the upload
    assert all(r.media_sha256 for r in reqs)  # the cached video reached the model in every whole-video call
    whole_usage = [a.usage for a in answers[:WHOLE_CALLS]]
    assert all(u.cached_tokens == 258 and u.prompt_tokens >= 258 for u in whole_usage)  # the fake's video tokens
    assert sum(u.cache_write_tokens for u in whole_usage) == 258  # made once, by one call
    assert all(a.usage.cached_tokens == 0 for a in answers[WHOLE_CALLS:])
    assert fake.live_caches() == 1
    model.discard("vid")  # the video's last step: upload and cache go
    assert fake.live_caches() == 0 and fake.live_files() == 0
    assert fake.counts["caches.delete"] == 1
    assert not list((tmp_path / "uploads").rglob("*.json"))


def test_the_cache_makes_the_video_cheaper(provider_media: ProviderMedia, tmp_path: Path) -> None:
    from vr_assets.providers import reset_registry

    spent = {}
    for mode in ("auto", "off"):
        with FakeGemini() as fake:
            model = teacher(fake, tmp_path / mode, context_cache=mode)
            video_calls(model, provider_media.small_video)
            model.discard("vid")
            assert fake.counts["caches.create"] == (1 if mode == "auto" else 0)
            spent[mode] = UsageLedger(tmp_path / mode / "usage").spent_usd()
            reset_registry()
    assert 0 < spent["auto"] < spent["off"], spent
    # each whole-video call's 258 video tokens at $0.1 instead of $1.0 per million, the cache written once
    # at the input price and stored for its 10 minutes at $1.0 per million per hour
    saved = WHOLE_CALLS * 258 * 0.9e-6 - 258 * (1.0 + 600 / 3600) * 1e-6
    assert spent["off"] - spent["auto"] == pytest.approx(saved, abs=2e-7)


def test_an_expired_cache_is_made_again_once(
    fake_gemini: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    fake, ref = fake_gemini, whole(provider_media.small_video)
    model = teacher(fake, tmp_path)
    model.generate(call("Is it relevant?", ref))
    fake.expire_caches()  # past its TTL: the service answers 404 for it
    again = model.generate(call("Anomaly or normal?", ref))
    assert fake.counts["caches.create"] == 2 and again.usage.cached_tokens == 258
    statuses = [(r.status, r.cached_content) for r in fake.records("generateContent")]
    assert statuses[1][0] == 404 and statuses[2][0] == 200 and statuses[1][1] != statuses[2][1]
    # gone again right after being made: made once more, then the error is the call's (a 404 is not retried)
    fake.fail_next("generateContent", 404, times=2)
    fake.expire_caches()
    with pytest.raises(ProviderError, match="404"):
        model.generate(call("Global caption.", ref))
    assert fake.counts["caches.create"] == 3
    model.discard("vid")
    assert fake.live_caches() == 0 and fake.live_files() == 0


def test_a_cache_made_in_one_process_is_read_in_the_next_and_deleted_at_the_end(
    fake_gemini: FakeGemini, provider_media: ProviderMedia, tmp_path: Path
) -> None:
    """vr-annotate's prefetch asks step 0 ahead; the worker asks step 1a on the same cache."""
    from vr_assets.providers import reset_registry

    fake, ref = fake_gemini, whole(provider_media.small_video)
    first = teacher(fake, tmp_path)
    first.generate(call("Is it relevant?", ref))
    first.release("vid")
    reset_registry()  # the process ends: upload and cache stay for the video's later steps
    assert fake.live_caches() == 1 and fake.live_files() == 1
    second = teacher(fake, tmp_path)
    assert second is not first
    got = second.generate_many([call("Global caption.", ref), call("Dense caption.", ref)])
    assert all(isinstance(a, ModelAnswer) and a.usage.cached_tokens == 258 for a in got)
    assert fake.counts["caches.create"] == 1 and fake.counts["upload.start"] == 1
    second.discard("vid")
    assert fake.live_caches() == 0 and fake.live_files() == 0


@pytest.mark.parametrize(
    ("price", "mode", "reuses"),
    [
        (PAYS, "off", WHOLE_CALLS),  # switched off
        (PAYS, "auto", 1),  # one call: nothing to share
        (Pricing(input_per_mtok=1.0, output_per_mtok=2.0), "auto", WHOLE_CALLS),  # storage price unknown
        (Pricing(input_per_mtok=1.0, cached_input_per_mtok=0.5, cache_storage_per_mtok_hour=20.0), "auto",
         WHOLE_CALLS),  # 2 + 4 * 0.5 + 20/6 > 4
        (None, "auto", WHOLE_CALLS),  # no price at all
    ],
)
def test_no_cache_where_it_does_not_pay(
    fake_gemini: FakeGemini, provider_media: ProviderMedia, tmp_path: Path, price: Pricing | None, mode: str,
    reuses: int,
) -> None:
    model = teacher(fake_gemini, tmp_path, price, mode)
    ref = whole(provider_media.small_video).model_copy(update={"reuses": reuses})
    model.generate_many([call("Global caption.", ref), call("Dense caption.", ref)])
    assert fake_gemini.counts["caches.create"] == 0
    assert all(r.cached_content is None for r in fake_gemini.records("generateContent"))
    model.discard("vid")


def test_content_the_service_will_not_cache_goes_plain_and_is_not_asked_again(
    provider_media: ProviderMedia, tmp_path: Path
) -> None:
    with FakeGemini(min_cache_tokens=4096) as fake:  # a 1 s clip is far below a Pro model's minimum
        model = teacher(fake, tmp_path)
        answers = video_calls(model, provider_media.small_video)
        assert fake.counts["caches.create"] == 1  # refused once (400), remembered
        assert all(a.usage.cached_tokens == 0 for a in answers)
        assert all(r.cached_content is None and r.status == 200 for r in fake.records("generateContent"))
        model.discard("vid")
        assert fake.live_files() == 0


def test_cached_tokens_cost_their_price_and_the_break_even() -> None:
    assert cost_usd(PAYS, 1000, 0, 0, cached_tokens=800) == pytest.approx((200 * 1.0 + 800 * 0.1) / 1e6)
    assert cost_usd(Pricing(input_per_mtok=1.0), 1000, 0, 0, cached_tokens=800) == pytest.approx(1000 / 1e6)
    flash = with_cache_prices("gemini-2.5-flash", Pricing(input_per_mtok=0.30, output_per_mtok=2.50))
    assert (flash.cached_input_per_mtok, flash.cache_storage_per_mtok_hour) == KNOWN_CACHE_PRICES["gemini-2.5-flash"]
    # 2.5 Flash: 0.30 + 4 * 0.03 + 1.00 * 1/6 = 0.587 < 4 * 0.30; two calls and an hour's storage do not pay
    assert context_cache_pays(flash, 4, 600)
    assert not context_cache_pays(flash, 2, 3600)
    assert not context_cache_pays(with_cache_prices("gemini-other", Pricing(input_per_mtok=0.30)), 4, 600)
    # on flex the calls cost half but the cache's creation and storage do not: 2 calls no longer pay, 4 still do
    # (0.30 + 2 * 0.015 + 1/6 = 0.497 > 2 * 0.15; 0.30 + 4 * 0.015 + 1/6 = 0.527 < 4 * 0.15)
    assert context_cache_pays(flash, 2, 600) and not context_cache_pays(flash, 2, 600, "flex")
    assert context_cache_pays(flash, 4, 600, "flex")


def test_a_pipeline_run_makes_one_cache_per_video_and_leaves_none(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    """vr-annotate on a real Dagster instance: steps 0 and 1a read one cache per video, 1b and 1c use time
    ranges of the upload, and the video's last step deletes the cache with the upload."""
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["clip8"], "a.mp4")
    env.add_video(synthetic_videos["short_mp4"], "b.mp4")
    spec = env.spec(media={"fps": 4.0, "max_side": 160}, prices={"gemini-test": PAYS.model_dump()})
    summary = env.run(spec)
    assert summary.failed == {} and sorted(summary.succeeded) == ["a.mp4", "b.mp4"]
    fake: FakeGemini = env.fake  # type: ignore[assignment]
    assert fake.counts["caches.create"] == 2 and fake.counts["upload.start"] == 2
    media_reqs = [r for r in env.model_requests() if r.media_sha256]
    whole_reqs = [r for r in media_reqs if "start_s" not in r.media_sampling[0]]
    assert len(whole_reqs) == 2 * 4  # filter, classify, global, dense per video
    by_video = {}
    for r in whole_reqs:
        by_video.setdefault(r.media_sha256[0], set()).add(r.cached_content)
    assert len(by_video) == 2 and all(len(names) == 1 and None not in names for names in by_video.values())
    assert all(r.cached_content is None for r in media_reqs if "start_s" in r.media_sampling[0])
    assert fake.live_caches() == 0 and fake.live_files() == 0
    assert not list((env.results / "cache" / "uploads").rglob("*.json"))
    captions = JsonStore(env.results).read("captions", "a.mp4")
    assert [u.cached_tokens for u in captions.usage] == [258, 258]  # the video's tokens, at the cached price
    ev = DagsterInstance.get().get_latest_materialization_event(AssetKey("captions"))
    assert ev.asset_materialization.metadata["context_cached_tokens"].value == 2 * 258  # type: ignore[union-attr]


@pytest.mark.parametrize(("model", "on_part"), [("gemini-3-flash-test", True), ("gemini-test", False)])
def test_the_media_resolution_reaches_the_cached_video(
    fake_gemini: FakeGemini, provider_media: ProviderMedia, tmp_path: Path, model: str, on_part: bool
) -> None:
    """Gemini 3 takes a resolution per part: the cached part carries it. Older models get it in each request."""
    ms = spec(fake_gemini).model_copy(update={"gemini": GeminiSettings(
        api_key=KEY, base_url=fake_gemini.base_url, model=model, media_resolution="MEDIA_RESOLUTION_LOW")})
    chosen = get_model(ms, prices={model: PAYS}, media=MediaSettings(), upload_registry=tmp_path / "uploads")
    ref = whole(provider_media.small_video)
    chosen.generate_many([call("Global caption.", ref), call("Dense caption.", ref)])
    (create,) = fake_gemini.records("caches.create")
    (part,) = create.json["contents"][0]["parts"]
    assert (part.get("mediaResolution") or part.get("media_resolution") or {}).get("level") == (
        "MEDIA_RESOLUTION_LOW" if on_part else None)
    for r in fake_gemini.records("generateContent"):
        assert r.cached_content is not None
        assert (r.json.get("generationConfig") or {}).get("mediaResolution") == (
            None if on_part else "MEDIA_RESOLUTION_LOW")
    chosen.discard("vid")
    assert fake_gemini.live_caches() == 0


def test_the_fake_s_caches_api_answers_the_sdk_as_the_service_does(
    fake_gemini: FakeGemini, provider_media: ProviderMedia
) -> None:
    from google import genai
    from google.genai import errors, types

    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=fake_gemini.base_url,
                                                                      api_version="v1beta"))
    f = client.files.upload(file=str(provider_media.small_video), config={"mime_type": "video/mp4"})
    while f.state != types.FileState.ACTIVE:
        f = client.files.get(name=f.name or "")
    video = types.Part(file_data=types.FileData(file_uri=f.uri, mime_type="video/mp4"))
    cache = client.caches.create(model="gemini-test", config=types.CreateCachedContentConfig(
        contents=[types.Content(role="user", parts=[video])], system_instruction="You annotate videos.", ttl="300s"))
    assert cache.name and cache.usage_metadata and cache.usage_metadata.total_token_count == 258 + 20 // 4
    assert cache.expire_time is not None and cache.model == "models/gemini-test"
    assert client.caches.get(name=cache.name).name == cache.name
    assert [c.name for c in client.caches.list()] == [cache.name]
    resp = client.models.generate_content(model="gemini-test", contents="Describe it.",
                                          config=types.GenerateContentConfig(cached_content=cache.name))
    um = resp.usage_metadata
    assert resp.text and um is not None and um.cached_content_token_count == cache.usage_metadata.total_token_count
    assert (um.prompt_token_count or 0) > um.cached_content_token_count  # the request's own text on top
    with pytest.raises(errors.ClientError, match="system_instruction"):
        client.models.generate_content(model="gemini-test", contents="Describe it.", config=types.GenerateContentConfig(
            cached_content=cache.name, system_instruction="Another instruction."))
    with pytest.raises(errors.ClientError, match="has to be the same"):
        client.models.generate_content(model="gemini-other", contents="Describe it.",
                                       config=types.GenerateContentConfig(cached_content=cache.name))
    fake_gemini.expire_caches()
    with pytest.raises(errors.ClientError) as gone:
        client.caches.get(name=cache.name)
    assert gone.value.code == 404
    live = client.caches.create(model="gemini-test", config=types.CreateCachedContentConfig(
        contents=[types.Content(role="user", parts=[video])], ttl="300s"))
    client.caches.delete(name=live.name or "")
    with pytest.raises(errors.ClientError) as deleted:
        client.models.generate_content(model="gemini-test", contents="Describe it.",
                                       config=types.GenerateContentConfig(cached_content=live.name))
    assert deleted.value.code == 404 and fake_gemini.live_caches() == 0
    client.files.delete(name=f.name or "")
    with pytest.raises(errors.ClientError) as no_file:  # the cached video must exist
        client.caches.create(model="gemini-test", config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[video])]))
    assert no_file.value.code == 403
