"""Video runs put in the instance's run queue, and followed until they finish (`vr-annotate run`).

The CLI executes nothing itself: it creates one run per video partition (the steps that video
still needs), submits it to the queue like the sensor or the UI would, and the daemon launches it
through the instance's run launcher. It then watches the runs' statuses and reads each failed
run's reason from its event log.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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


class _Plan(BaseModel, arbitrary_types_allowed=True):
    """What every run of one asset selection shares: the job subset, its snapshots and its code origin."""

    job_def: Any
    job_snapshot: Any
    parent_job_snapshot: Any
    plan_snapshot: Any
    step_keys: Any
    code_origin: Any


class RunSubmitter:
    """Creates and queues runs of one job of the code location, one execution plan per asset selection.

    A video's plan does not depend on its partition (the partition is a run tag), so videos that need
    the same steps share one plan and its snapshots: creating a run is then Dagster's own bookkeeping
    (the run row, its planned-asset events), not a new job subset, plan and snapshot hash per video.
    """

    def __init__(self, instance: Any, job_name: str) -> None:
        from dagster._core.definitions.reconstruct import ReconstructableRepository

        self.instance = instance
        repo = ReconstructableRepository.for_module(LOCATION_MODULE, "defs", working_directory=os.getcwd())
        self.job = repo.get_reconstructable_job(job_name)
        self.remote_origin = _remote_origin(job_name)
        self._plans: dict[frozenset[Any], _Plan] = {}

    def submit(
        self, partition: str | None, assets: Iterable[str] | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create the run and put it in the queue; its id."""
        run_id = self.create(partition, assets, tags)
        self.instance.submit_run(run_id, workspace=None)
        return run_id

    def _plan(self, selection: frozenset[Any] | None, tags: dict[str, str]) -> _Plan:
        from dagster._core.execution.api import create_execution_plan
        from dagster._core.snap import snapshot_from_execution_plan

        key = selection or frozenset()
        if key not in self._plans:
            recon = self.job.get_subset(asset_selection=selection) if selection else self.job
            job_def = recon.get_definition()
            plan = create_execution_plan(recon, run_config={}, tags=tags, instance_ref=self.instance.get_ref())
            self._plans[key] = _Plan(
                job_def=job_def, job_snapshot=job_def.get_job_snapshot(),
                parent_job_snapshot=job_def.get_parent_job_snapshot(),
                plan_snapshot=snapshot_from_execution_plan(plan, job_def.get_job_snapshot_id()),
                step_keys=plan.step_keys_to_execute, code_origin=recon.get_python_origin(),
            )
        return self._plans[key]

    def create(
        self, partition: str | None, assets: Iterable[str] | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Create the run (NOT_STARTED) without queueing it; its id."""
        from dagster import AssetKey
        from dagster._core.storage.tags import PARTITION_NAME_TAG

        selection = frozenset(AssetKey(a) for a in assets) if assets is not None else None
        run_tags = {LAUNCHED_BY_TAG: "vr-annotate", **(tags or {})}
        if partition is not None:
            run_tags[PARTITION_NAME_TAG] = partition
        p = self._plan(selection, run_tags)
        run = self.instance.create_run(
            job_name=p.job_def.name, run_id=None, run_config={}, status=None, tags=run_tags, root_run_id=None,
            parent_run_id=None, step_keys_to_execute=p.step_keys, execution_plan_snapshot=p.plan_snapshot,
            job_snapshot=p.job_snapshot, parent_job_snapshot=p.parent_job_snapshot, asset_selection=selection,
            asset_check_selection=None, resolved_op_selection=None, op_selection=None,
            remote_job_origin=self.remote_origin, job_code_origin=p.code_origin,
            asset_graph=p.job_def.asset_layer.asset_graph,
        )
        return run.run_id


class QueueFeeder:
    """Queues the videos after the first wave from a thread of lower CPU priority, so the runs of the first
    wave start (fork, load, first steps) on CPU that run creation would otherwise take.

    Each run Dagster creates costs ~0.1 CPU-s of bookkeeping (its row, its planned-asset events): on two
    cores, queueing 40 videos before following them delayed the 16th run's start by seconds. The queue
    is the daemon's either way; this only orders the work. `runs` gains each video's run id as it is queued.
    """

    NICENESS = 10

    def __init__(self, submit: Callable[[str], str], keys: Iterable[str], runs: dict[str, str],
                 on_done: Callable[[], None] | None = None) -> None:
        self._submit = submit
        self._keys = list(keys)
        self._runs = runs
        self._on_done = on_done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="vr-queue-feeder", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> QueueFeeder:
        self._thread.start()
        return self

    def feeding(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Queue nothing more (a ^C, a rejected key); returns once the thread has let go."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _work(self) -> None:
        try:
            tid = threading.get_native_id()  # Linux keeps a nice value per thread
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.NICENESS)
        except (AttributeError, OSError):
            pass
        try:
            for key in self._keys:
                if self._stop.is_set():
                    break
                self._runs[key] = self._submit(key)
        except BaseException as exc:  # noqa: BLE001 (reported by the follower, not lost in a thread)
            self.error = exc
        finally:
            if self._on_done is not None:
                self._on_done()


# With this many runs or fewer left, `follow` polls every LAST_FEW_POLL_S (a few cheap reads a second more).
LAST_FEW = 2
LAST_FEW_POLL_S = 0.05


def follow(
    instance: Any, runs: Mapping[str, str], on_start: Callable[[str], None] | None = None, poll_s: float = 0.25,
    feeding: Callable[[], bool] | None = None,
) -> Iterator[RunOutcome]:
    """Yield each run's outcome as it finishes; `runs` maps partition key → run id.

    `runs` may grow while `feeding()` is true (a `QueueFeeder` adds the videos after the first wave).
    `on_start(key)` is called once a run leaves the queue (the CLI's media prefetch then leaves that
    video to the run). Each poll reads only the runs updated since the one before (10 000 queued runs
    are not 10 000 rows a quarter second) and the runs added since, with a full look at the runs still
    waiting every 30 s. The last `LAST_FEW` runs are polled every `LAST_FEW_POLL_S`.
    """
    from datetime import UTC, datetime, timedelta

    from dagster import DagsterRunStatus, RunsFilter

    by_id: dict[str, str] = {}
    waiting: set[str] = set()
    started: set[str] = set()
    finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    queued = {DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED}
    since: datetime | None = None
    full_at = 0.0

    def by_ids(ids: list[str]) -> list[Any]:
        return [rec for i in range(0, len(ids), 500)
                for rec in instance.get_run_records(RunsFilter(run_ids=ids[i : i + 500]))]

    while True:
        more = feeding is not None and feeding()  # read before the runs: a last addition is not missed
        added = [(k, rid) for k, rid in list(runs.items()) if rid not in by_id]
        for key, rid in added:
            by_id[rid] = key
            waiting.add(rid)
        if not waiting and not more:
            return
        now = datetime.now(UTC)
        records = []
        if since is None or time.monotonic() >= full_at:
            records = by_ids(sorted(waiting))
            full_at = time.monotonic() + 30.0
        else:  # a margin for clocks and timestamps rounded by the storage
            records = instance.get_run_records(RunsFilter(updated_after=since - timedelta(seconds=2)))
            records += by_ids([rid for _, rid in added])
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
        if waiting or more:
            # the last runs (the dataset's is one) are polled more often: the next thing waits on them
            time.sleep(poll_s if more or len(waiting) > LAST_FEW else min(poll_s, LAST_FEW_POLL_S))
