"""What every per-video step shares: the loaded spec and prompt pack, storage, metadata helpers."""


import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DataVersion, Failure, MetadataValue
from pydantic import BaseModel

from vr_assets.call_cache import CachedModel
from vr_assets.config import Spec
from vr_assets.io_manager import JsonStore
from vr_assets.media import MediaError, MediaTool, choose_chunk_duration, frame_times, plan_chunks, video_mime
from vr_assets.partitions import VideoRegistry
from vr_assets.prompts import PromptPack, schema_for_key
from vr_assets.providers import MediaRef, ModelAnswer, ModelCall
from vr_assets.records import CallUsage, UsageSummary, VideoProbe, VideoSource

OFFLINE_NOTE = "offline demo teacher — not real annotations"


@dataclass(frozen=True)
class Pipeline:
    """Fixed when definitions load; closed over by every asset."""

    spec: Spec
    pack: PromptPack
    offline_teacher: bool = False

    @property
    def store(self) -> JsonStore:
        return JsonStore(self.spec.results_dir)

    @property
    def registry(self) -> VideoRegistry:
        return VideoRegistry(self.spec.results_dir)

    def media_cache(self, key: str) -> Path:
        return media_cache_dir(self.spec, key)

    def video(self, key: str) -> VideoSource:
        try:
            return self.registry.get(key)
        except KeyError as e:
            raise Failure(description=str(e)) from None

    def call(self, step: str, key: str, video_key: str, media: MediaRef | None = None, **values: Any) -> ModelCall:
        """A model call for one prompt key; structured output when the pack asks for it."""
        schema = schema_for_key(key) if self.pack.structured_output else None
        return ModelCall(
            step=step, prompt_key=key, video_key=video_key, prompt=self.pack.render(key, **values),
            media=media, schema_model=schema,
        )


def code_version(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_version_of(record: BaseModel) -> DataVersion:
    """Content hash without usage, so an identical re-run does not mark downstream stale."""
    dumped = record.model_dump(exclude={"usage"})
    return DataVersion(code_version(dumped))


def run_calls(model: CachedModel, calls: list[ModelCall], video: str, step: str) -> list[ModelAnswer]:
    """All calls of one step for one video; any failure fails the step naming every cause."""
    answers = model.generate_many(calls)
    errors = [a for a in answers if isinstance(a, Exception)]
    if errors:
        causes = "; ".join(str(e) for e in errors)
        raise Failure(
            description=f"video {video}: step {step}: {len(errors)} of {len(calls)} model calls failed: {causes}",
            metadata={"failed_calls": len(errors), "calls": len(calls)},
        )
    return [a for a in answers if isinstance(a, ModelAnswer)]


def media_failure(video: VideoSource, err: MediaError | OSError) -> Failure:
    return Failure(description=f"video {video.key} ({video.path}): {err}")


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
    """Held while one video's step-0 media is made, across processes (the runner's prefetch, the steps).

    Yields False when `wait` is off and another process holds it.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _copy_path(spec: Spec, tool: MediaTool, probe: VideoProbe, cache: Path) -> tuple[Path, list[float]]:
    keyframes = copy_keyframes(spec, probe.duration_sec)
    name = f"video-{code_version(tool.max_side, tool.fps, probe.size_bytes, keyframes)}.mp4"
    return cache / name, keyframes


def prepared_copy_path(spec: Spec, tool: MediaTool, probe: VideoProbe, cache: Path) -> Path:
    """Where step 0 puts the downscaled copy (named for everything that shapes it)."""
    return _copy_path(spec, tool, probe, cache)[0]


def step0_media(
    spec: Spec, tool: MediaTool, src: Path, probe: VideoProbe, cache: Path, *, locked: bool = False
) -> tuple[str, list[Path]]:
    """("video" | "frames", files): the whole video as the model sees it, made once under `cache`.

    Every video gets a downscaled copy with keyframes at the chunk starts, so step 1b cuts its chunks
    from it by stream copy and step 1c its clip from a small file. Long videos are sent as evenly
    spaced JPEG frames taken from that copy: the source is decoded once, not once more for frames.
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
        return out if out.exists() else tool.prepare_video(src, out, probe, keyframes=keyframes)

    if probe.duration_sec <= wf.long_video_threshold_sec:
        return "video", [copy()]
    times = frame_times(probe.duration_sec, wf.long_video_sample_fps, wf.long_video_max_frames)
    frames_dir = cache / f"frames-{code_version(times, out.name)}"
    frames = sorted(frames_dir.glob("*.jpg")) if frames_dir.is_dir() else []
    if len(frames) != len(times):
        prepared = copy()
        # the source itself when it needed no re-encoding: its probe makes the seeks exact
        frames = tool.sample_frames(prepared, times, frames_dir, probe=probe if prepared == src else None)
    return "frames", list(frames)


def full_video_media(pipe: Pipeline, video: VideoSource, probe: VideoProbe, tool: MediaTool) -> MediaRef:
    """Step 0's media (`step0_media`), reused by steps 0 and 1a; a failure names the video."""
    try:
        kind, paths = step0_media(pipe.spec, tool, Path(video.path), probe, pipe.media_cache(video.key))
    except (MediaError, OSError) as e:
        raise media_failure(video, e) from e
    mime = "image/jpeg" if kind == "frames" else video_mime(paths[0])
    return MediaRef(kind=kind, paths=paths, mime_type=mime, video_key=video.key)


def prepared_copy(pipe: Pipeline, video: VideoSource, probe: VideoProbe, tool: MediaTool) -> Path | None:
    """The downscaled copy step 0 made, if it is still cached (None: cut from the source)."""
    out, _ = _copy_path(pipe.spec, tool, probe, pipe.media_cache(video.key))
    return out if out.is_file() else None


def drop_media_cache(pipe: Pipeline, key: str) -> None:
    shutil.rmtree(pipe.media_cache(key), ignore_errors=True)


def drop_frames(pipe: Pipeline, ref: MediaRef) -> None:
    """A long video's frames once steps 0 and 1a are done; its copy stays for steps 1b and 1c."""
    cache = pipe.media_cache(ref.video_key).resolve()
    for folder in {p.parent.resolve() for p in ref.paths}:
        if folder.is_relative_to(cache) and folder != cache:
            shutil.rmtree(folder, ignore_errors=True)


def usage_metadata(usage: list[CallUsage]) -> dict[str, Any]:
    s = UsageSummary.of(usage)
    meta: dict[str, Any] = {
        "model_calls": s.calls,
        "cached_calls": s.cached_calls,
        "prompt_tokens": s.prompt_tokens,
        "output_tokens": s.output_tokens,
        "thinking_tokens": s.thinking_tokens,
        "retries": s.retries,
        "cost_usd": MetadataValue.float(s.cost_usd),
        "model_latency_s": MetadataValue.float(s.latency_s),
    }
    if s.uploaded_bytes or s.inline_bytes:
        meta["bytes_sent"] = s.uploaded_bytes + s.inline_bytes
    return meta


def excerpt(text: str, limit: int = 280) -> str:
    t = " ".join(text.split())
    return t if len(t) <= limit else t[: limit - 1] + "…"


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")

