"""The CLI's media prefetch and hand-out: step 0's media made ahead, once, never under a worker's feet."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from vr_assets.media_cache import media_cache_dir, media_lock, media_tool, step0_media
from vr_assets.prefetch import NICENESS, MediaPrefetch, _lower_own_priority
from vr_assets.records import VideoSource
from vr_assets.resources import MediaResource
from vr_assets.runner import Workers

# re-encode (the tests' default passes sources through) so step 0 really runs ffmpeg
REENCODE = {"media": {"fps": 2.0, "max_side": 96}}


def source(path: Path, key: str) -> VideoSource:
    return VideoSource(key=key, path=str(path), source="video_root", rel_path=path.name)


def cache_files(spec: Any, key: str) -> list[str]:
    root = media_cache_dir(spec, key)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock")


def test_prefetched_media_is_what_step_0_then_finds(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    env = make_pipeline("gemini")
    spec = env.spec(**REENCODE)
    videos = [source(synthetic_videos["clip8"], "short"), source(synthetic_videos["long_mp4"], "long")]
    prefetch = MediaPrefetch(spec, MediaResource.from_spec(spec).tool(), videos).start()
    prefetch.wait()  # nothing was handed out, so it prepares both
    assert prefetch.prepared == ["short", "long"] and prefetch.failed == {}
    made = {v.key: cache_files(spec, v.key) for v in videos}
    assert any(f.endswith(".mp4") for f in made["short"])
    assert sum(f.endswith(".jpg") for f in made["long"]) > 1, made["long"]  # a long video's frames

    tool = MediaResource.from_spec(spec).tool()  # a worker's own tool
    probes = {v.key: tool.probe(Path(v.path)) for v in videos}
    probed = tool.invocations
    for v in videos:
        kind, paths = step0_media(spec, tool, Path(v.path), probes[v.key], media_cache_dir(spec, v.key))
        assert kind == ("frames" if v.key == "long" else "video")
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


def test_videos_are_handed_out_in_order_never_more_than_width_at_once(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    for i in range(4):
        env.add_video(synthetic_videos["short_mp4"], f"cam{i}/clip.mp4")
    spec = env.spec(**MCQ_ONLY)
    env.run(spec, parallel=2, build_dataset=False)  # registers the partitions and runs them once
    keys = sorted(f"cam{i}__clip.mp4" for i in range(4))
    instance = DagsterInstance.get()
    finished = RunsFilter(statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE])
    before = instance.get_runs_count(finished)
    handouts: list[tuple[str, int]] = []  # (video, runs finished by then)

    def record(key: str) -> None:
        handouts.append((key, instance.get_runs_count(finished) - before))

    with Workers(spec, 2) as workers:
        results = list(workers.run({k: ["filter_result"] for k in keys}, on_handout=record))
    assert all(ok for _, ok, _ in results), results
    assert [k for k, _ in handouts] == keys  # in the given order
    assert sorted(k for k, _, _ in results) == keys
    # the n-th video (from 0) goes out only once n - 1 earlier runs have finished: never 3 at once
    for n, (_, done) in enumerate(handouts):
        assert done >= n - 1, handouts


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
