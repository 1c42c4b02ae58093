"""The dataset run `vr-annotate run` queues before its last videos end, and the word that lets it build.

The run queue is dequeued once a second, so a dataset run queued when the last video's run ends waited
0.4–1.1 s for the daemon's next look before it could start (`bench/run.py`: about a sixtieth of the whole
run). `vr-annotate run` therefore queues it as soon as every one of its video runs has left the queue,
tagged with a closed gate and the CLI's process; the daemon launches it like any other run when a slot
frees, and its step waits for the gate before it reads anything. The CLI opens the gate once it has seen
every video run end, exactly when it used to queue the dataset run, so the build never reads half-written
inputs, and it starts within `POLL_S` of that instead of at the next dequeue.

The gate is opened in the instance's key-value store (one key per run, written whole), not by changing the
run's tag: Dagster rewrites a run's tags by read-modify-write, and the launcher adds its own tags to the
run at the same moment, so an "open" written then could be overwritten by the launcher's stale "closed".

A gate whose CLI is gone (killed before its videos ended) fails the run with the reason; a run without
the tag (the UI, the sensor, a backfill) builds at once. Only when one host runs the instance: on a
shared Postgres instance another host's daemon may hold the run, and that host's `vr-annotate` would
wait for this one's gate when it stops its daemon.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from vr_assets.execution.processes import is_gone, this_process

GATE_TAG = "vr_assets/dataset_gate"
HOLDER_TAG = "vr_assets/dataset_gate_holder"  # host:pid:process start of the vr-annotate that opens it
CLOSED, OPEN = "closed", "open"  # the tag a gated run is created with; the store's value once opened
BUILDING = "the videos of that vr-annotate run have ended: building"
POLL_S = 0.05
HOLDER_CHECK_S = 1.0


def closed_gate_tags() -> dict[str, str]:
    """The tags of a dataset run that waits for this process to open its gate."""
    return {GATE_TAG: CLOSED, HOLDER_TAG: f"{socket.gethostname()}:{this_process()}"}


def _gate_key(run_id: str) -> str:
    return f"{GATE_TAG}/{run_id}"


def open_gate(instance: Any, run_id: str) -> None:
    """Let the dataset run build: every video run this process followed has ended."""
    instance.run_storage.set_cursor_values({_gate_key(run_id): OPEN})


def gate_is_open(instance: Any, run_id: str) -> bool:
    return instance.run_storage.get_cursor_values({_gate_key(run_id)}).get(_gate_key(run_id)) == OPEN


def _holder_gone(holder: str) -> bool:
    host, _, process = holder.partition(":")
    return host == socket.gethostname() and is_gone(process)  # another host's is not ours to judge


CANCEL_WAIT_S = 10.0


def cancel_gated(instance: Any, run_id: str) -> None:
    """Cancel a gated dataset run whose build will not come, wherever it is.

    Created and not yet queued (its vr-annotate stopped in between): marked canceled, not left NOT_STARTED.
    Queued, or launched: Dagster's cancel. Being launched: Dagster's cancel needs the process the launcher
    records on the run, so that is waited for (a run canceled without it would go on to wait for its gate)."""
    from dagster import DagsterRunStatus

    from vr_assets.execution.launcher import PID_TAG

    deadline = time.monotonic() + CANCEL_WAIT_S
    while (run := instance.get_run_by_id(run_id)) is not None and not run.is_finished:
        if run.status == DagsterRunStatus.CANCELING:
            return
        if run.status == DagsterRunStatus.NOT_STARTED:
            instance.report_run_canceled(run, "its vr-annotate run stopped before queueing it")
            return
        if run.status != DagsterRunStatus.STARTING or PID_TAG in run.tags or time.monotonic() > deadline:
            instance.run_coordinator.cancel_run(run_id)
            return
        time.sleep(POLL_S)


def abandoned_gate(run: Any) -> bool:
    """A gated dataset run whose vr-annotate is gone before it opened the gate: it will never build."""
    return run.tags.get(GATE_TAG) == CLOSED and _holder_gone(run.tags.get(HOLDER_TAG, ""))


def _unfinished_gated_runs(instance: Any, job_name: str, tags: dict[str, str]) -> list[Any]:
    from dagster import DagsterRunStatus, RunsFilter

    waiting = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING,
               DagsterRunStatus.STARTED]
    return instance.get_runs(RunsFilter(job_name=job_name, statuses=waiting, tags={GATE_TAG: CLOSED, **tags}))


def cancel_abandoned(instance: Any, job_name: str) -> list[str]:
    """Cancel the dataset runs not yet ended whose vr-annotate is gone (killed before it opened their gate); their
    ids. Each would only fail on its abandoned gate; the next `vr-annotate run` queues its own."""
    abandoned = [r.run_id for r in _unfinished_gated_runs(instance, job_name, {}) if abandoned_gate(r)]
    for run_id in abandoned:
        cancel_gated(instance, run_id)
    return abandoned


def cancel_held(instance: Any, job_name: str) -> None:
    """Cancel the gated dataset runs this process holds and has not opened (it is stopping).

    Found by their holder tag, not by an id kept in hand: an interrupt can land inside the run's creation,
    after its row is written and before its id is returned, and the run would be left NOT_STARTED."""
    for run in _unfinished_gated_runs(instance, job_name, {HOLDER_TAG: closed_gate_tags()[HOLDER_TAG]}):
        if not gate_is_open(instance, run.run_id):
            cancel_gated(instance, run.run_id)


def _canceling(instance: Any, run_id: str) -> bool:
    from dagster import DagsterRunStatus

    run = instance.get_run_by_id(run_id)
    return run is not None and run.status == DagsterRunStatus.CANCELING


class GateAbandoned(RuntimeError):
    """The vr-annotate that queued this dataset run ended before it opened the gate."""


def wait_for_gate(instance: Any, run_id: str, log: Any) -> float:
    """Block until this run's gate is open (at once when it has none); the seconds waited.

    Raises `GateAbandoned` when the process that holds the gate is gone."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.tags.get(GATE_TAG) != CLOSED:
        return 0.0
    holder = run.tags.get(HOLDER_TAG, "")
    is_open = gate_is_open(instance, run_id)
    if not is_open:
        log.info(f"waiting for the vr-annotate run that queued this build ({holder}) to see its last videos end")
    t0 = checked = time.monotonic()
    while not is_open:
        if time.monotonic() - checked >= HOLDER_CHECK_S:
            checked = time.monotonic()
            if _holder_gone(holder) and not _canceling(instance, run_id):  # a cancel: its interrupt is coming
                raise GateAbandoned(
                    f"the vr-annotate run that queued this dataset build ({holder}) ended before its videos did; "
                    "nothing was built (run `vr-annotate run` again, or materialize `dataset`)"
                )
        time.sleep(POLL_S)
        is_open = gate_is_open(instance, run_id)
    waited = time.monotonic() - t0
    log.info(f"{BUILDING} (waited {waited:.2f} s)")
    return waited
