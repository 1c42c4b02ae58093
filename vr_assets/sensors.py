"""New videos become new partitions, and a run is requested for each of them alone."""

from __future__ import annotations

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from vr_assets.config import Spec
from vr_assets.discovery import discover
from vr_assets.partitions import videos_partitions
from vr_assets.registry import VideoRegistry


def sync_partitions(spec: Spec, existing: set[str]) -> tuple[list[str], int]:
    """Discover, update the registry; returns (keys Dagster does not know yet, total videos)."""
    videos, _ = VideoRegistry(spec.results_dir).sync(discover(spec))
    return sorted(k for k in videos if k not in existing), len(videos)


def build_sensor(spec: Spec, job: JobDefinition):  # noqa: ANN201 (dagster's decorated type)
    @sensor(
        name="new_videos",
        job=job,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Walks data.video_root and the JSONL inputs; adds a `videos` partition per new file and "
        "requests one run for each new partition only.",
    )
    def new_videos(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        existing = set(context.instance.get_dynamic_partitions(videos_partitions.name))
        try:
            new, total = sync_partitions(spec, existing)
        except FileNotFoundError as e:
            return SkipReason(f"cannot discover videos: {e}")
        if not new:
            return SkipReason(f"no new videos ({total} known)")
        context.log.info(f"{len(new)} new video(s): {', '.join(new[:10])}{' …' if len(new) > 10 else ''}")
        return SensorResult(
            run_requests=[RunRequest(partition_key=k, run_key=f"new-video:{k}") for k in new],
            dynamic_partitions_requests=[videos_partitions.build_add_request(new)],
        )

    return new_videos
