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


def cancel_abandoned(instance: Any, job_name: str) -> list[str]:
    """Cancel the queued dataset runs whose vr-annotate is gone (killed before it opened their gate); their ids.

    Launched, each would only fail on its abandoned gate; the next `vr-annotate run` queues its own."""
    from dagster import DagsterRunStatus, RunsFilter

    queued = instance.get_runs(RunsFilter(job_name=job_name, statuses=[DagsterRunStatus.QUEUED],
                                          tags={GATE_TAG: CLOSED}))
    abandoned = [r.run_id for r in queued if _holder_gone(r.tags.get(HOLDER_TAG, ""))]
    for run_id in abandoned:
        instance.run_coordinator.cancel_run(run_id)
    return abandoned


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
            if _holder_gone(holder):
                raise GateAbandoned(
                    f"the vr-annotate run that queued this dataset build ({holder}) ended before its videos did; "
                    "nothing was built (run `vr-annotate run` again, or materialize `dataset`)"
                )
        time.sleep(POLL_S)
        is_open = gate_is_open(instance, run_id)
    waited = time.monotonic() - t0
    log.info(f"{BUILDING} (waited {waited:.2f} s)")
    return waited
