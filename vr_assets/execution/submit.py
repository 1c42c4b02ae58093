"""Video runs put in the instance's run queue, and followed until they finish (`vr-annotate run`).

The CLI executes nothing itself: it creates one run per video partition (the steps that video
still needs), submits it to the queue like the sensor or the UI would, and the daemon launches it
through the instance's run launcher. It then watches the runs' statuses and reads each failed
run's reason from its event log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import BaseModel

LOCATION_MODULE = "vr_assets.definitions"
LOCATION_NAME = "vr_assets"  # as in the workspace files: the UI links these runs to the code location
LAUNCHED_BY_TAG = "vr_assets/launched_by"


class RunOutcome(BaseModel):
    """A finished video run as the CLI reports it."""

    key: str
    run_id: str
    ok: bool
    why: str = ""


def _root_cause(err: Any) -> str:
    while getattr(err, "cause", None) is not None:
        err = err.cause
    return str(err.message).strip()


def failure_text(instance: Any, run_id: str) -> str:
    """Why a run failed, in one line: the first failed step's own message (a `Failure` description, else the
    root exception), else an engine error (the code location did not load, the run process died), else the
    run's failure message."""
    from dagster import DagsterEventType

    kinds = {DagsterEventType.STEP_FAILURE, DagsterEventType.ENGINE_EVENT, DagsterEventType.RUN_FAILURE}
    engine_error = run_failure = None
    for record in instance.all_logs(run_id, of_type=kinds):
        ev = record.dagster_event
        if ev is None:
            continue
        data = ev.event_specific_data
        if ev.event_type == DagsterEventType.STEP_FAILURE:
            ufd = getattr(data, "user_failure_data", None)
            if ufd is not None and ufd.description:
                return str(ufd.description)
            if getattr(data, "error", None) is not None:
                return _root_cause(data.error)
        elif ev.event_type == DagsterEventType.ENGINE_EVENT and engine_error is None:
            if getattr(data, "error", None) is not None:
                engine_error = f"{record.message.strip()} {_root_cause(data.error)}".strip()
        elif ev.event_type == DagsterEventType.RUN_FAILURE and run_failure is None:
            run_failure = record.message or ev.message
    return engine_error or run_failure or "run failed"


def one_line(text: str, limit: int = 400) -> str:
    """A reason as one console line: whitespace folded, cut at `limit` characters (the event log keeps it all)."""
    folded = " ".join(text.split())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def _remote_origin(job_name: str) -> Any:
    """The job's origin as a workspace names it (`python_module: vr_assets.definitions`, location `vr_assets`).

    Queued runs need one; with it the UI shows the run under the code location, and its retries and
    re-executions find the location in the UI's workspace.
    """
    import sys

    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(
        executable_path=sys.executable, module_name=LOCATION_MODULE, working_directory=os.getcwd()
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, LOCATION_NAME)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


class RunSubmitter:
    """Creates and queues runs of one job of the code location, one execution plan per asset selection.

    A video's plan does not depend on its partition (the partition is a run tag), so videos that need
    the same steps share one plan: planning 10 000 videos is not 10 000 plans.
    """

    def __init__(self, instance: Any, job_name: str) -> None:
        from dagster._core.definitions.reconstruct import ReconstructableRepository

        self.instance = instance
        repo = ReconstructableRepository.for_module(LOCATION_MODULE, "defs", working_directory=os.getcwd())
        self.job = repo.get_reconstructable_job(job_name)
        self.remote_origin = _remote_origin(job_name)
        self._plans: dict[frozenset[Any], tuple[Any, Any]] = {}

    def submit(
        self, partition: str | None, assets: Iterable[str] | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create the run and put it in the queue; its id."""
        run_id = self.create(partition, assets, tags)
        self.instance.submit_run(run_id, workspace=None)
        return run_id

    def create(
        self, partition: str | None, assets: Iterable[str] | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create the run (NOT_STARTED) without queueing it; its id."""
        from dagster import AssetKey
        from dagster._core.execution.api import create_execution_plan
        from dagster._core.storage.tags import PARTITION_NAME_TAG

        selection = frozenset(AssetKey(a) for a in assets) if assets is not None else None
        run_tags = {LAUNCHED_BY_TAG: "vr-annotate", **(tags or {})}
        if partition is not None:
            run_tags[PARTITION_NAME_TAG] = partition
        key = selection or frozenset()
        if key not in self._plans:
            job = self.job.get_subset(asset_selection=selection) if selection else self.job
            plan = create_execution_plan(job, run_config={}, tags=run_tags, instance_ref=self.instance.get_ref())
            self._plans[key] = (job, plan)
        job, plan = self._plans[key]
        run = self.instance.create_run_for_job(
            job_def=job.get_definition(), execution_plan=plan, run_config={}, tags=run_tags,
            asset_selection=selection, job_code_origin=job.get_python_origin(), remote_job_origin=self.remote_origin,
        )
        return run.run_id


def follow(
    instance: Any, runs: dict[str, str], on_start: Callable[[str], None] | None = None, poll_s: float = 0.25
) -> Iterator[RunOutcome]:
    """Yield each run's outcome as it finishes; `runs` maps partition key → run id.

    `on_start(key)` is called once a run leaves the queue (the CLI's media prefetch then leaves that
    video to the run). Each poll reads only the runs updated since the one before (10 000 queued runs
    are not 10 000 rows a quarter second), with a full look at the runs still waiting every 30 s.
    """
    from datetime import UTC, datetime, timedelta

    from dagster import DagsterRunStatus, RunsFilter

    by_id = {rid: key for key, rid in runs.items()}
    waiting = set(by_id)
    started: set[str] = set()
    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    queued = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED}
    since: datetime | None = None
    full_at = 0.0
    while waiting:
        now = datetime.now(UTC)
        records = []
        if since is None or time.monotonic() >= full_at:
            ids = sorted(waiting)
            for i in range(0, len(ids), 500):
                records += instance.get_run_records(RunsFilter(run_ids=ids[i : i + 500]))
            full_at = time.monotonic() + 30.0
        else:  # a margin for clocks and timestamps rounded by the storage
            records = instance.get_run_records(RunsFilter(updated_after=since - timedelta(seconds=2)))
        since = now
        for rec in records:
            run = rec.dagster_run
            if run.run_id not in waiting:
                continue
            if run.run_id not in started and run.status not in queued:
                started.add(run.run_id)
                if on_start is not None:
                    on_start(by_id[run.run_id])
            if run.status in finished:
                waiting.discard(run.run_id)
                ok = run.status == DagsterRunStatus.SUCCESS
                why = "" if ok else ("canceled" if run.status == DagsterRunStatus.CANCELED
                                     else one_line(failure_text(instance, run.run_id)))
                yield RunOutcome(key=by_id[run.run_id], run_id=run.run_id, ok=ok, why=why)
        if waiting:
            time.sleep(poll_s)
