"""The CLI's media prefetch and hand-out: step 0's media made ahead, once, never under a worker's feet."""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from vr_assets.call_cache import spec_teacher
from vr_assets.execution.prefetch import NICENESS, AskAhead, MediaPrefetch, _lower_own_priority
from vr_assets.media_cache import media_cache_dir, media_lock, media_tool, step0_fps, step0_media
from vr_assets.prompts import load_pack
from vr_assets.providers import ModelAnswer
from vr_assets.records import VideoSource
from vr_assets.resources import MediaResource, TeacherResource
from vr_assets.store import JsonStore
from vr_assets.whole_video import CAPTION_KEYS, SCREENING_KEYS

# re-encode (the tests' default passes sources through) so step 0 really runs ffmpeg
REENCODE = {"media": {"fps": 2.0, "max_side": 96}}


def source(path: Path, key: str) -> VideoSource:
    return VideoSource(key=key, path=str(path), source="video_root", rel_path=path.name)


def cache_files(spec: Any, key: str) -> list[str]:
    root = media_cache_dir(spec, key)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.mark.parametrize("transport", ["inline", "upload"])
def test_prefetched_media_is_what_step_0_then_finds(
    make_pipeline: Any, synthetic_videos: dict[str, Path], transport: str
) -> None:
    """Inline, a long video goes out as JPEG frames; uploaded, Gemini samples its copy itself."""
    env = make_pipeline("gemini")
    spec = env.spec(media={**REENCODE["media"], "transport": transport})
    videos = [source(synthetic_videos["clip8"], "short"), source(synthetic_videos["long_mp4"], "long")]
    prefetch = MediaPrefetch(spec, MediaResource.from_spec(spec).tool(), videos).start()
    prefetch.wait()  # nothing was handed out, so it prepares both
    assert prefetch.prepared == ["short", "long"] and prefetch.failed == {}
    made = {v.key: cache_files(spec, v.key) for v in videos}
    assert any(f.endswith(".mp4") for f in made["short"])
    frames = sum(f.endswith(".jpg") for f in made["long"])
    assert frames > 1 if transport == "inline" else frames == 0, made["long"]

    tool = MediaResource.from_spec(spec).tool()  # a worker's own tool
    probes = {v.key: tool.probe(Path(v.path)) for v in videos}
    probed = tool.invocations
    for v in videos:
        kind, paths = step0_media(spec, tool, Path(v.path), probes[v.key], media_cache_dir(spec, v.key))
        assert kind == ("frames" if v.key == "long" and transport == "inline" else "video")
        fps = step0_fps(spec, probes[v.key], kind)  # the frame budget of long_video_sample_fps = 0.5
        assert fps is None if kind == "frames" or v.key == "short" else 0.4 < fps <= 0.5
        assert all(p.is_file() for p in paths)
        assert cache_files(spec, v.key) == made[v.key]
    assert tool.invocations == probed  # no ffmpeg ran: everything step 0 needs was there


def test_videos_handed_out_are_left_to_their_worker(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    env = make_pipeline("gemini")
    spec = env.spec(**REENCODE)
    videos = [source(synthetic_videos["clip8"], "taken"), source(synthetic_videos["short_mp4"], "free")]
    prefetch = MediaPrefetch(spec, MediaResource.from_spec(spec).tool(), videos)
    prefetch.handed_out("taken")
    prefetch.start().wait()
    assert prefetch.prepared == ["free"]
    assert cache_files(spec, "taken") == [] and cache_files(spec, "free") != []


def test_a_video_whose_worker_holds_the_lock_is_skipped(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    spec = env.spec(**REENCODE)
    video = source(synthetic_videos["clip8"], "busy")
    prefetch = MediaPrefetch(spec, MediaResource.from_spec(spec).tool(), [video])
    with media_lock(media_cache_dir(spec, "busy")) as held:  # flock: a second open file conflicts, same process
        assert held
        prefetch.start().wait()
    assert prefetch.skipped == ["busy"] and prefetch.prepared == []
    assert cache_files(spec, "busy") == []


def test_stop_finishes_the_video_in_hand_and_starts_no_other(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    spec = env.spec(**REENCODE)
    videos = [source(synthetic_videos["long_mp4"], "first"), source(synthetic_videos["clip8"], "second")]
    prefetch = MediaPrefetch(spec, MediaResource.from_spec(spec).tool(), videos).start()
    prefetch.stop()  # the long video takes far longer than this call: it is in hand or not begun
    assert prefetch.prepared in ([], ["first"])
    assert cache_files(spec, "second") == []
    # whatever of the first video exists is whole: no staging folder is left behind
    assert not [p for p in media_cache_dir(spec, "first").rglob(".staging-*")]


def test_an_unreadable_video_is_left_to_the_step_with_its_cause(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    spec = env.spec(**REENCODE)
    videos = [source(synthetic_videos["text_as_mp4"], "text"), source(synthetic_videos["clip8"], "fine")]
    prefetch = MediaPrefetch(spec, MediaResource.from_spec(spec).tool(), videos).start()
    prefetch.wait()
    assert list(prefetch.failed) == ["text"] and "notes.mp4" in prefetch.failed["text"]
    assert prefetch.prepared == ["fine"]  # the next video still got its media
    assert cache_files(spec, "text") == []  # nothing half-made left behind
    assert "1 left to the step after an error" in prefetch.summary()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priority on this platform")
def test_the_prefetch_thread_alone_runs_at_a_lower_priority() -> None:
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []

    def body() -> None:
        _lower_own_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [min(19, main_before + NICENESS)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before


MCQ_ONLY = {"workflow": {"qa_types": ["mcq"], "max_workers": 4}}


def test_the_cli_prefetches_with_several_workers(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    env = make_pipeline("gemini")
    for i in range(4):
        env.add_video(synthetic_videos["clip8"], f"cam{i}/clip.mp4")
    summary = env.run(env.spec(**MCQ_ONLY, **REENCODE), parallel=2)
    assert summary.failed == {} and len(summary.succeeded) == 4
    (line,) = [m for m in env.log if m.startswith("media prefetch:")]
    assert "of 4 video(s) prepared ahead of their worker" in line
    # every video's media cache is gone after its run, the prefetched ones included
    assert not any(p.name != ".lock" for p in (env.results / "cache" / "media").rglob("*") if p.is_file())

    quiet = make_pipeline("gemini")
    for i in range(2):
        quiet.add_video(synthetic_videos["clip8"], f"cam{i}/clip.mp4")
    off = quiet.run(quiet.spec(**MCQ_ONLY, media={**REENCODE["media"], "prefetch": False}), parallel=2)
    assert off.failed == {} and len(off.succeeded) == 2
    assert not any(m.startswith("media prefetch:") for m in quiet.log)


def test_dropped_videos_are_not_prepared_nor_counted(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    """The prefetch starts before the plan; the videos the plan does not start from step 0 are then dropped."""
    env = make_pipeline("gemini")
    spec = env.spec(**REENCODE)
    videos = [source(synthetic_videos["clip8"], "done"), source(synthetic_videos["clip8"], "todo")]
    prefetch = MediaPrefetch(spec, media_tool(spec), videos)
    prefetch.drop(["done"])
    prefetch.start().wait()
    assert prefetch.prepared == ["todo"]
    assert cache_files(spec, "done") == []
    assert prefetch.summary().startswith("media prefetch: 1 of 1 video(s) prepared")


def requests_for(env: Any, spec: Any, keys: tuple[str, ...]) -> list[Any]:
    pack = load_pack(spec.prompt_pack, spec.prompts_module)
    prompts = {pack.render(k) for k in keys}
    return [r for r in env.model_requests() if r.prompt_text in prompts]


def test_questions_asked_ahead_are_paid_once_and_recorded_by_their_run(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    """Steps 0 and 1a's questions go out before any worker; the run then finds the answers and owns their cost."""
    env = make_pipeline("gemini")
    spec = env.spec(**MCQ_ONLY, **REENCODE, prices={"gemini-test": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    videos = [source(synthetic_videos["clip8"], "a"), source(synthetic_videos["clip16"], "b")]
    for v in videos:
        env.add_video(Path(v.path), v.key + ".mp4")
    ahead = AskAhead(spec, threads=2)
    prefetch = MediaPrefetch(spec, media_tool(spec), videos, ahead).start()
    prefetch.wait()
    prefetch.stop()
    assert sorted(ahead.asked) == ["a", "b"] and ahead.left == {}, (ahead.left, prefetch.summary())
    # per video: relevance, then anomaly vs normal (step 0), then the global and the dense caption (1a)
    assert len(requests_for(env, spec, SCREENING_KEYS)) == 4
    assert len(requests_for(env, spec, CAPTION_KEYS)) == 4
    assert ahead.calls == 8 and "asked ahead for 2 video(s) (8 calls)" in prefetch.summary()

    summary = env.run(spec, build_dataset=False)  # one worker: no prefetch of its own
    assert summary.failed == {} and sorted(summary.succeeded) == ["a.mp4", "b.mp4"]
    assert len(requests_for(env, spec, SCREENING_KEYS + CAPTION_KEYS)) == 8  # the runs asked none of them again
    store = JsonStore(spec.results_dir)
    for key in ("a.mp4", "b.mp4"):
        usage = store.read("filter_result", key).usage + store.read("captions", key).usage
        assert [u.prompt_key for u in usage][:2] == list(SCREENING_KEYS) and len(usage) == 4
        # the run records the calls as its own: paid (not a cache hit), with their cost and latency
        assert all(not u.cached and u.cost_usd > 0 and u.latency_s > 0 for u in usage), usage
    assert not list((env.results / "cache" / "calls").rglob("*.ahead"))  # every mark claimed


def test_step_0_is_not_asked_ahead_for_a_video_whose_step_0_is_done(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["clip8"], "a.mp4")
    spec = env.spec(**MCQ_ONLY, **REENCODE)
    assert env.run(spec, build_dataset=False).failed == {}
    before = env.calls()
    shutil.rmtree(env.results / "cache" / "calls")  # even without its answers cached: the plan will not ask
    ahead = AskAhead(spec, threads=1)
    video = source(env.videos / "a.mp4", "a.mp4")
    prefetch = MediaPrefetch(spec, media_tool(spec), [video], ahead).start()
    prefetch.wait()
    prefetch.stop()
    assert ahead.asked == [] and env.calls() == before


def test_cached_answers_asked_ahead_are_claimed_once(make_pipeline: Any) -> None:
    env = make_pipeline("gemini")
    spec = env.spec(prices={"gemini-test": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    model = spec_teacher(spec, "vlm")
    call = load_pack(spec.prompt_pack, spec.prompts_module).call("0", "video_filtering", "v")
    (ahead,) = model.generate_many([call], ahead=True)
    assert isinstance(ahead, ModelAnswer) and not ahead.usage.cached
    (again,) = model.generate_many([call], ahead=True)  # asked ahead twice: still one request, still unclaimed
    assert isinstance(again, ModelAnswer) and env.calls() == 1
    first, second = model.generate(call), model.generate(call)
    assert env.calls() == 1
    assert not first.usage.cached and first.usage.cost_usd == ahead.usage.cost_usd > 0
    assert second.usage.cached and second.usage.cost_usd == 0.0


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_the_teacher_built_without_dagster_keys_calls_like_the_resource(make_pipeline: Any, backend: str) -> None:
    """Asked ahead and asked by the step, the same call must have the same cache key, or it is paid twice."""
    env = make_pipeline(backend)
    spec = env.spec(
        vlm={"gemini": {"media_resolution": "MEDIA_RESOLUTION_LOW", "temperature": 0.7},
             "openai": {"temperature": 0.7}},
        llm={"gemini": {"media_resolution": "MEDIA_RESOLUTION_HIGH"}},
    )
    for role, ms in (("vlm", spec.vlm), ("llm", spec.llm)):
        resource = TeacherResource.from_spec(role, ms, spec)
        assert spec_teacher(spec, role).settings_fingerprint == resource.settings_fingerprint(), role  # type: ignore[arg-type]


def test_threads_asking_the_same_call_at_once_pay_for_it_once(make_pipeline: Any) -> None:
    """Two copies of one video asked ahead by two threads: one request, one paid answer, the rest cached."""
    env = make_pipeline("gemini", latency_text_s=0.3)
    spec = env.spec()
    model = spec_teacher(spec, "vlm")
    call = load_pack(spec.prompt_pack, spec.prompts_module).call("0", "video_filtering", "v")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: model.generate_many([call], ahead=True)[0], range(4)))
    assert env.calls() == 1
    assert all(isinstance(a, ModelAnswer) for a in answers)
    assert sorted(a.usage.cached for a in answers if isinstance(a, ModelAnswer)) == [False, True, True, True]


def test_a_prefetch_without_videos_stops_cleanly(make_pipeline: Any) -> None:
    spec = make_pipeline("gemini").spec()
    ahead = AskAhead(spec, threads=2)
    prefetch = MediaPrefetch(spec, media_tool(spec), [], ahead).start()
    prefetch.stop()
    assert prefetch.summary().endswith("asked ahead for 0 video(s) (0 calls)")


def test_the_wait_for_the_teacher_ends_when_it_cannot_be_built(
    make_pipeline: Any, synthetic_videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vr-annotate run` imports Dagster once the client asking ahead is built; a client that cannot be built
    ends that wait at once, and its video's questions are left to the step (which reports the cause)."""
    import vr_assets.call_cache as call_cache

    def no_teacher(*_: Any) -> Any:
        raise RuntimeError("no client here")

    monkeypatch.setattr(call_cache, "spec_teacher", no_teacher)
    env = make_pipeline("gemini")
    spec = env.spec(**REENCODE)
    ahead = AskAhead(spec, threads=2)
    prefetch = MediaPrefetch(spec, media_tool(spec), [source(synthetic_videos["clip8"], "a")], ahead).start()
    started = threading.Event()
    waiter = threading.Thread(target=lambda: (prefetch.wait_for_teacher(timeout_s=60.0), started.set()))
    waiter.start()
    waiter.join(30.0)
    assert started.is_set()  # ended by the failed build, not by its 60 s bound
    prefetch.wait()
    prefetch.stop()
    assert prefetch.prepared == ["a"] and list(ahead.left) == ["a"] and "no client here" in ahead.left["a"]
    assert env.calls() == 0
