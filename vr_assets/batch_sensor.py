"""The `provider_batches` sensor: submits the calls that wait for a batch, polls the batches, re-runs the steps
whose answers are in. Nothing waits in a run: a waiting step's run has ended, so no worker and no provider slot
is held while a batch is out (hours, at most 24 h for both providers)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from vr_assets.config import Spec
from vr_assets.providers.batch import BatchJob, batch_book_for, tick
from vr_assets.store import PER_VIDEO_ASSETS


def rerun_selection(asset: str) -> list[AssetKey]:
    """The step and the per-video steps after it (the ones its waiting run skipped): a step answered by a batch
    is run again with everything after it."""
    return [AssetKey(a) for a in PER_VIDEO_ASSETS[PER_VIDEO_ASSETS.index(asset):]]


def _observations(job: BatchJob, videos: dict[str, set[tuple[str, str]]]) -> list[AssetObservation]:
    """One observation per (video, step) in the batch: the asset's page shows the batch's id, state and counts."""
    meta = {"batch_id": job.id, "batch_state": job.state, "provider": job.provider, "model": job.model,
            "batch_calls": len(job.keys), "succeeded": job.succeeded, "failed": job.failed}
    return [AssetObservation(asset_key=AssetKey(asset), partition=video, metadata=meta)
            for video, asset in sorted(videos.get(job.id, set()))]


def build_batch_sensor(spec: Spec, job: JobDefinition):  # noqa: ANN201 (dagster's decorated type)
    @sensor(
        name="provider_batches",
        job=job,
        minimum_interval_seconds=max(1, int(spec.workflow.batch.poll_interval_s)),
        default_status=DefaultSensorStatus.RUNNING,
        description="Steps on the batch tier (workflow.tier): submits their waiting calls as provider batches "
        "(Gemini Batch API, OpenAI Batch API), polls them, stores the answers in the answer cache and runs each "
        "video's step again once all its answers are in (paid once, at the batch price).",
    )
    def provider_batches(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        book = batch_book_for(spec.results_dir)
        before = {e.key: (e.video_key, e.asset) for e in book.entries()}
        if not before and all(j.done for j in book.jobs()):
            return SkipReason("no call waits for a batch")
        report = tick(spec, book)
        by_job: dict[str, set[tuple[str, str]]] = {}
        for e in book.entries():
            if e.batch_id:
                by_job.setdefault(e.batch_id, set()).add((e.video_key, e.asset))
        events: list[AssetObservation] = []
        for j in [*report.polled, *report.submitted]:
            by_job.setdefault(j.id, set()).update(before[k] for k in j.keys if k in before)
            events.extend(_observations(j, by_job))
            context.log.info(f"batch {j.id} ({j.provider}/{j.model}): {j.state}, {len(j.keys)} call(s), "
                             f"{j.succeeded} answered, {j.failed} failed")
        runs = [
            RunRequest(partition_key=video, asset_selection=rerun_selection(asset),
                       tags={"vr/batch": f"{asset}: answers in"})
            for video, asset in report.ready
        ]
        live = [j.id for j in book.jobs() if not j.done]
        context.update_cursor(json.dumps({"waiting_calls": report.waiting, "live_batches": live}))
        if not runs and not events:
            return SkipReason(f"{report.waiting} call(s) waiting, {len(live)} batch(es) in flight, no change")
        return SensorResult(run_requests=runs, asset_events=events)

    return provider_batches



def main_batches(spec: Spec, *, wait: bool = False, say: Callable[[str], None] = print) -> int:
    """`vr-annotate batches`: the sensor's work without the UI; `wait`: until no call waits. The videos whose
    answers came in are finished by the next `vr-annotate run` (it runs their missing steps, from the cache)."""
    book = batch_book_for(spec.results_dir)
    ready: set[tuple[str, str]] = set()
    while True:
        report = tick(spec, book)
        for j in [*report.polled, *report.submitted]:
            say(f"batch {j.id} ({j.provider}/{j.model}): {j.state}, {len(j.keys)} call(s), {j.succeeded} answered, "
                f"{j.failed} failed")
        ready.update(report.ready)
        if not wait or report.waiting == 0:
            break
        time.sleep(spec.workflow.batch.poll_interval_s)
    say(f"{report.waiting} call(s) waiting; answers in for {len(ready)} video step(s)"
        + (": `vr-annotate run` finishes them" if ready else ""))
    return 0
