"""What every per-video step shares: the loaded spec and prompt pack, storage, metadata helpers."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetObservation, DataVersion, Failure, MetadataValue
from pydantic import BaseModel

from vr_assets.call_cache import CachedModel
from vr_assets.config import Spec
from vr_assets.fsnames import printable
from vr_assets.media import MediaError, MediaTool
from vr_assets.media_cache import code_version, media_cache_dir, prepared_copy_path, step0_media
from vr_assets.parsing import excerpt as excerpt  # re-exported for the steps
from vr_assets.prompts import PromptPack
from vr_assets.providers import MediaRef, ModelAnswer, ModelCall, ProviderFatalError
from vr_assets.providers.batch import WaitingForBatch
from vr_assets.records import CallUsage, UsageSummary, VideoProbe, VideoSource
from vr_assets.registry import VideoRegistry
from vr_assets.storage import DiskFullError, results_url
from vr_assets.store import JsonStore
from vr_assets.whole_video import whole_video_ref

OFFLINE_NOTE = "offline demo teacher — not real annotations"


@dataclass(frozen=True)
class Pipeline:
    """Fixed when definitions load; closed over by every asset."""

    spec: Spec
    pack: PromptPack
    offline_teacher: bool = False

    @property
    def store(self) -> JsonStore:
        return JsonStore(results_url(self.spec))

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
        return self.pack.call(step, key, video_key, media, **values)


def data_version_of(record: BaseModel) -> DataVersion:
    """Content hash without usage, so an identical re-run does not mark downstream stale."""
    dumped = record.model_dump(exclude={"usage"})
    return DataVersion(code_version(dumped))


def run_calls(model: CachedModel, calls: list[ModelCall], video: str, step: str) -> list[ModelAnswer]:
    """All calls of one step for one video; any failure fails the step naming every cause."""
    try:
        answers = model.generate_many(calls)
    except DiskFullError as e:  # the answer cache or the usage ledger could not be written
        raise Failure(description=f"video {video}: step {step}: {e}") from e
    errors = [a for a in answers if isinstance(a, Exception)]
    waiting = [e for e in errors if isinstance(e, WaitingForBatch)]
    if waiting and len(waiting) == len(errors):
        raise BatchWait(video, step, len(waiting), len(calls))
    refused = next((e for e in errors if isinstance(e, ProviderFatalError)), None)
    if refused is not None:  # the key or the model: every call says the same, so one line says it all
        raise Failure(
            description=f"video {video}: step {step}: {refused}",
            metadata={"failed_calls": len(errors), "calls": len(calls)},
        )
    if errors:
        causes = "; ".join(str(e) for e in errors)
        raise Failure(
            description=f"video {video}: step {step}: {len(errors)} of {len(calls)} model calls failed: {causes}",
            metadata={"failed_calls": len(errors), "calls": len(calls)},
        )
    return [a for a in answers if isinstance(a, ModelAnswer)]


class BatchWait(Exception):
    """Some calls of a batch-tier step wait in a provider batch: the step ends without output (`end_for_batch`)."""

    def __init__(self, video: str, step: str, waiting: int, calls: int) -> None:
        super().__init__(f"video {video}: step {step}: {waiting} of {calls} call(s) wait for a provider batch; "
                         "the provider_batches sensor runs this step again once their answers are in")
        self.waiting = waiting
        self.calls = calls


def end_for_batch(context: AssetExecutionContext, asset: str, wait: BatchWait) -> None:
    """The step is not materialized (its downstream steps are skipped) and the run ends, holding no worker; the
    asset's page shows the wait as an observation of this partition, the run as a tag."""
    context.log.info(str(wait))
    context.log_event(AssetObservation(
        asset_key=AssetKey(asset), partition=context.partition_key,
        metadata={"batch": "waiting", "waiting_calls": wait.waiting, "calls": wait.calls},
    ))
    context.instance.add_run_tags(context.run.run_id, {"vr/batch": f"{asset}: {wait.waiting} call(s) waiting"})


def media_failure(video: VideoSource, err: MediaError | OSError) -> Failure:
    """One line naming the video, its file (a MediaError names it already) and the cause."""
    where = "" if isinstance(err, MediaError | DiskFullError) else f" ({printable(video.path)})"
    return Failure(description=f"video {video.key}{where}: {err}")


def full_video_media(pipe: Pipeline, video: VideoSource, probe: VideoProbe, tool: MediaTool) -> MediaRef:
    """Step 0's media (`step0_media`), reused by steps 0 and 1a; a failure names the video."""
    try:
        kind, paths = step0_media(pipe.spec, tool, Path(video.path), probe, pipe.media_cache(video.key))
    except (MediaError, OSError) as e:
        raise media_failure(video, e) from e
    return whole_video_ref(pipe.spec, probe, kind, paths, video.key)


def prepared_copy(pipe: Pipeline, video: VideoSource, probe: VideoProbe, tool: MediaTool) -> Path | None:
    """The downscaled copy step 0 made, if it is still cached (None: cut from the source)."""
    out = prepared_copy_path(pipe.spec, tool, probe, pipe.media_cache(video.key))
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
    if s.cached_tokens:  # read from a Gemini context cache, at the cached-input price
        meta["context_cached_tokens"] = s.cached_tokens
    if s.uploaded_bytes or s.inline_bytes:
        meta["bytes_sent"] = s.uploaded_bytes + s.inline_bytes
    if s.outage_wait_s:  # calls waited for the endpoint to come back (its circuit breaker was open)
        meta["outage_wait_s"] = MetadataValue.float(s.outage_wait_s)
    return meta


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")

