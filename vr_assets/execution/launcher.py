"""The run launcher every run of this package goes through: a process per run, forked warm.

Dagster's `DefaultRunLauncher` asks the code server to start each run, and the code server
*spawns* a fresh interpreter that imports Dagster, the SDKs and the code location again: 3–6
CPU-seconds per video run on a 2-core machine, more than the run's own work. This launcher forks
each run from a forkserver that imported all of that once (`vr_assets.execution.preload`), so a
run process starts in milliseconds and shares the preloaded pages with its siblings.

It is a plain `RunLauncher` named in `dagster.yaml`: the run queue (`QueuedRunCoordinator`,
bounded by `workflow.max_workers`), run monitoring (a dead run process is seen through
`check_run_worker_health`), run retries and termination all stay Dagster's. Whatever starts a
run (the sensor, the UI's *Materialize*, a backfill, `vr-annotate run`) submits it to the queue,
and the daemon launches it here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from dagster import Array, Field, Noneable
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from vr_assets.execution import forkserver
from vr_assets.execution.forkserver import DEFAULT_PRELOAD

log = logging.getLogger(__name__)

PID_TAG = "vr_assets/pid"
HOST_TAG = "vr_assets/host"
START_TAG = "vr_assets/proc_start"  # the process's start time in clock ticks: a reused pid is not our run


def _proc_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time since boot), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie is a finished process
        return None
    return fields[19].decode()


def forget_stale_location() -> None:
    """Forget a preloaded code location whose spec or prompts changed since the forkserver loaded it."""
    import sys

    loaded = sys.modules.get("vr_assets.definitions")
    if loaded is not None and loaded.fingerprint != loaded.sources_fingerprint():
        del sys.modules["vr_assets.definitions"]


def execute_run_in_worker(run_id: str, instance_ref: str) -> None:
    """The run process's body: what `dagster api execute_run` does, minus the interpreter start."""
    from dagster import DagsterInstance
    from dagster._core.events import EngineEventData
    from dagster._grpc.impl import core_execute_run
    from dagster._serdes import deserialize_value
    from dagster._utils.hosted_user_process import recon_job_from_origin
    from dagster._utils.interrupts import capture_interrupts

    os.setpgid(0, 0)  # its own process group: a terminate reaches the run and what it started (ffmpeg)
    forget_stale_location()
    with capture_interrupts(), DagsterInstance.from_ref(deserialize_value(instance_ref)) as instance:
        run = instance.get_run_by_id(run_id)
        if run is None or run.job_code_origin is None:
            raise RuntimeError(f"run {run_id} not found or has no code origin")
        recon_job = recon_job_from_origin(run.job_code_origin)  # type: ignore[arg-type]
        instance.report_engine_event(
            f"Started process for run (pid: {os.getpid()}, forked warm).", run, EngineEventData.in_process(os.getpid())
        )
        try:
            for _event in core_execute_run(recon_job, run, instance, inject_env_vars=True):
                pass
        except BaseException:  # core_execute_run has written the failure to the event log already
            pass


def _in_daemon() -> bool:
    import sys

    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    return argv0 == "dagster-daemon" or "_daemon" in (sys.argv[0] if sys.argv else "")


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in its own process, forked from a forkserver with the code location preloaded."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, preload: Sequence[str] | None = None) -> None:
        self._inst_data = inst_data
        self._preload = list(preload or DEFAULT_PRELOAD)
        self._ctx: Any = None
        self._procs: dict[str, BaseProcess] = {}
        self._lock = threading.Lock()
        super().__init__()
        if _in_daemon():
            # the daemon is the process that launches (the webserver and the CLI only queue runs): its
            # forkserver's imports (~4 s) overlap the daemon's own start instead of delaying the first run
            threading.Thread(target=self.warm_up, name="warm-run-launcher", daemon=True).start()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {"preload": Field(Noneable(Array(str)), is_required=False, default_value=None)}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def _context(self) -> Any:
        with self._lock:
            if self._ctx is None:
                self._ctx = forkserver.context(self._preload)
            return self._ctx

    def warm_up(self) -> None:
        """Start the forkserver now (its imports take seconds) instead of at the first launch."""
        forkserver.start(self._preload)

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._serdes import serialize_value

        run = context.dagster_run
        proc = self._context().Process(
            target=execute_run_in_worker,
            args=(run.run_id, serialize_value(self._instance.get_ref())),
            name=f"dagster-run-{run.run_id[:8]}",
        )
        proc.start()
        pid = int(proc.pid or 0)
        with self._lock:
            for rid in [r for r, p in self._procs.items() if not p.is_alive()]:
                self._procs.pop(rid).close()
            self._procs[run.run_id] = proc
        tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), START_TAG: _proc_start(pid) or ""}
        self._instance.add_run_tags(run.run_id, tags)

    def _pid(self, run_id: str) -> int | None:
        run = self._instance.get_run_by_id(run_id)
        if run is None or PID_TAG not in run.tags or run.tags.get(HOST_TAG) != socket.gethostname():
            return None
        pid = int(run.tags[PID_TAG])
        return pid if _proc_start(pid) == run.tags.get(START_TAG) else None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = self._pid(run_id)
        if run is None or pid is None:
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(pid, signal.SIGTERM)  # capture_interrupts turns it into Dagster's interrupt handling
        except ProcessLookupError:
            return False
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: Any) -> CheckRunHealthResult:
        if PID_TAG not in run.tags:
            return CheckRunHealthResult(WorkerStatus.NOT_FOUND, "no run process recorded yet")
        if run.tags.get(HOST_TAG) != socket.gethostname():
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"run process is on host {run.tags.get(HOST_TAG)}")
        pid = int(run.tags[PID_TAG])
        if _proc_start(pid) == run.tags.get(START_TAG):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run process {pid} is gone (killed, or out of memory)")

    def join(self, timeout: int = 30) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            p.join(timeout)

    def dispose(self) -> None:
        with self._lock:
            self._procs.clear()
