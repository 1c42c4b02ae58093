"""New videos become new partitions, and a run is requested for each of them alone; the dataset
refreshes itself once a batch of video runs has finished."""

from __future__ import annotations

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, RunsFilter

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


_NOT_FINISHED = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, *IN_PROGRESS_RUN_STATUSES]


def build_dataset_sensor(job: JobDefinition):  # noqa: ANN201 (dagster's decorated type)
    @sensor(
        name="dataset_refresh",
        job=job,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Rebuilds the dataset once the video runs in flight have all finished and some video's "
        "task_exports changed since the last build: once per batch of finished videos, never while a run writes.",
    )
    def dataset_refresh(context: SensorEvaluationContext) -> RunRequest | SkipReason:
        latest = context.instance.fetch_materializations(AssetKey("task_exports"), limit=1).records
        if not latest:
            return SkipReason("no video has task exports yet")
        mark = str(latest[0].storage_id)
        if mark == context.cursor:
            return SkipReason("no video finished since the last dataset build")
        built = context.instance.fetch_materializations(AssetKey("dataset"), limit=1).records
        if built and built[0].storage_id > latest[0].storage_id:  # built since (by vr-annotate run, or by hand)
            context.update_cursor(mark)
            return SkipReason("the dataset is newer than every video's task exports")
        busy = context.instance.get_runs_count(RunsFilter(statuses=_NOT_FINISHED))
        if busy:
            return SkipReason(f"{busy} run(s) queued or in progress: the dataset waits for the batch to finish")
        context.update_cursor(mark)
        return RunRequest(run_key=f"dataset-after:{mark}")

    return dataset_refresh
