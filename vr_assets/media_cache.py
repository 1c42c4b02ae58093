"""Each video's media cache: step 0's downscaled copy (and a long video's frames), made once.

Steps 0, 1a, 1b and 1c all start from these files, and the CLI's prefetch makes them ahead of a
video's run, so this module stays Dagster-free: the CLI uses it before any worker has loaded Dagster.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vr_assets.config import Spec
from vr_assets.media import MediaError, MediaTool, check_unchanged, choose_chunk_duration, frame_times, plan_chunks
from vr_assets.records import VideoProbe


def code_version(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: cache file names here, asset code versions in the steps."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def media_tool(spec: Spec) -> MediaTool:
    """The spec's media settings as a `MediaTool` (`MediaResource` carries the same fields for Dagster)."""
    return MediaTool(**media_settings(spec))


def media_settings(spec: Spec) -> dict[str, Any]:
    m = spec.media
    return {
        "ffmpeg": m.ffmpeg, "ffprobe": m.ffprobe, "max_side": m.max_side, "fps": m.fps,
        "threads": m.ffmpeg_threads, "skip_nonref": m.skip_nonref_frames,
        "audio": keeps_audio(spec), "audio_kbps": m.audio_kbps,
    }


def keeps_audio(spec: Spec) -> bool:
    """`media.audio`, with its default resolved: keep for a Gemini VLM (it hears the track), drop for an
    OpenAI-compatible one (vision-language servers read the frames only)."""
    choice = spec.media.audio
    if choice is None:
        return spec.vlm.backend == "gemini"
    return choice == "keep"


def audio_version(spec: Spec) -> str:
    """The audio setting as it enters the code version of every step whose media it changes (0, 1a, 1b,
    1c): the model hears something else, so their answers may differ."""
    return f"audio-keep-{spec.media.audio_kbps}k" if keeps_audio(spec) else "audio-drop"


def chunk_plan(spec: Spec, duration: float) -> tuple[float, list[tuple[int, float, float]]]:
    """Step 1b's windows; step 0 needs them too, to put keyframes where the chunks will start."""
    wf = spec.workflow
    chunk_len = choose_chunk_duration(duration, wf.chunk_duration_options, wf.max_chunks)
    return chunk_len, plan_chunks(duration, chunk_len)


def copy_keyframes(spec: Spec, duration: float) -> list[float]:
    """Where step 0's copy needs keyframes for `MediaTool.split_copy`: each later chunk start, and the end
    of a tail the plan drops."""
    plan = chunk_plan(spec, duration)[1]
    marks = [start for _, start, _ in plan[1:]]
    if plan and plan[-1][2] < duration - 0.01:
        marks.append(plan[-1][2])
    return marks


def media_cache_dir(spec: Spec, key: str) -> Path:
    return Path(spec.results_dir) / "cache" / "media" / key


@contextmanager
def media_lock(cache: Path, *, wait: bool = True) -> Iterator[bool]:
    """Held while one video's step-0 media is made, across processes (the runner's prefetch, the steps),
    and by the prefetch while it asks the whole-video questions ahead.

    Yields False when `wait` is off and another process holds it. A worker that has to wait gives its
    start-up turn back first (`vr_assets.turns`): the wait is for the prefetch, not for the CPU.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy_path(spec: Spec, tool: MediaTool, probe: VideoProbe, cache: Path) -> tuple[Path, list[float]]:
    keyframes = copy_keyframes(spec, probe.duration_sec)
    sound = (tool.audio_kbps,) if tool.audio else ()  # absent when dropped: earlier copies keep their names
    version = (probe.mtime_ns,) if probe.mtime_ns is not None else ()  # a replaced file of the same size too
    name = f"video-{code_version(tool.max_side, tool.fps, probe.size_bytes, keyframes, *sound, *version)}.mp4"
    return cache / name, keyframes


def prepared_copy_path(spec: Spec, tool: MediaTool, probe: VideoProbe, cache: Path) -> Path:
    """Where step 0 puts the downscaled copy (named for everything that shapes it)."""
    return _copy_path(spec, tool, probe, cache)[0]


def one_upload_per_video(spec: Spec) -> bool:
    """Gemini with `media.transport: upload`: the copy is uploaded once and every call points at it, chunks
    and clip as time ranges; a long video's copy is sampled by the model itself (`step0_fps`) instead
    of JPEG frames inline in each request. What the model sees changes, so step versions include it."""
    return spec.vlm.backend == "gemini" and spec.media.transport == "upload"


def step0_fps(spec: Spec, probe: VideoProbe, kind: str) -> float | None:
    """The rate the model samples a long video's copy at: the frame budget of the frames it would
    otherwise get (`long_video_sample_fps`, at most `long_video_max_frames` in all). None: its own."""
    wf = spec.workflow
    if kind != "video" or probe.duration_sec <= wf.long_video_threshold_sec:
        return None
    n = len(frame_times(probe.duration_sec, wf.long_video_sample_fps, wf.long_video_max_frames))
    return round(n / probe.duration_sec, 4)


def step0_media(
    spec: Spec, tool: MediaTool, src: Path, probe: VideoProbe, cache: Path, *, locked: bool = False
) -> tuple[str, list[Path]]:
    """("video" | "frames", files): the whole video as the model sees it, made once under `cache`.

    Every video gets a downscaled copy with keyframes at the chunk starts, so step 1b cuts its chunks
    from it by stream copy and step 1c its clip from a small file (or, uploaded, points at time ranges
    of it). Long videos are sent as evenly spaced JPEG frames taken from that copy (the source is
    decoded once, not once more for frames), except to a model that samples the copy itself.
    Plain media work (the benchmark calls it to know what step 0 sends). Made under the video's
    `media_lock` unless the caller holds it (`locked`), so the runner's prefetch and a step never
    make the same files at once.
    """
    if not locked:
        with media_lock(cache):
            return step0_media(spec, tool, src, probe, cache, locked=True)
    wf = spec.workflow
    out, keyframes = _copy_path(spec, tool, probe, cache)

    def copy() -> Path:
        if out.exists():
            return out
        check_unchanged(src, probe, "prepare video")  # decided on this version: make the copy from it
        made = tool.prepare_video(src, out, probe, keyframes=keyframes)
        try:
            check_unchanged(src, probe, "prepare video")  # and ffmpeg read that version only
        except MediaError:
            if made != src:
                made.unlink(missing_ok=True)  # a copy that may mix two versions is never sent
            raise
        return made

    if probe.duration_sec <= wf.long_video_threshold_sec or one_upload_per_video(spec):
        return "video", [copy()]
    times = frame_times(probe.duration_sec, wf.long_video_sample_fps, wf.long_video_max_frames)
    frames_dir = cache / f"frames-{code_version(times, out.name)}"
    frames = sorted(frames_dir.glob("*.jpg")) if frames_dir.is_dir() else []
    if len(frames) != len(times):
        prepared = copy()
        # the source itself when it needed no re-encoding: its probe makes the seeks exact
        frames = tool.sample_frames(prepared, times, frames_dir, probe=probe if prepared == src else None)
    return "frames", list(frames)
