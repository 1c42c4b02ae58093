"""The run launcher every run of this package goes through: runs on the threads of warm-forked run hosts.

Dagster's `DefaultRunLauncher` asks the code server to start each run, and the code server
*spawns* a fresh interpreter that imports Dagster, the SDKs and the code location again: 3–6
CPU-seconds per video run on a 2-core machine, more than the run's own work. This launcher forks
run hosts from a forkserver that imported all of that once (`vr_assets.execution.preload`), so a
host starts in milliseconds, and puts several runs on each host's threads (`run_host`), so the
preloaded pages a process copies privately are copied once per host, not once per run.

It is a plain `RunLauncher` named in `dagster.yaml`: the run queue (`QueuedRunCoordinator`,
bounded by `workflow.max_workers`), run monitoring (a dead host is seen through
`check_run_worker_health`), run retries and termination all stay Dagster's. Whatever starts a
run (the sensor, the UI's *Materialize*, a backfill, `vr-annotate run`) submits it to the queue,
and the daemon launches it here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from dagster import Array, Field, Noneable
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from vr_assets.execution import forkserver, run_host
from vr_assets.execution.forkserver import DEFAULT_PRELOAD
from vr_assets.execution.processes import proc_start

log = logging.getLogger(__name__)

PID_TAG = "vr_assets/pid"
HOST_TAG = "vr_assets/host"
START_TAG = "vr_assets/proc_start"  # the process's start time in clock ticks: a reused pid is not our run


def _in_daemon() -> bool:
    import sys

    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    return argv0 == "dagster-daemon" or "_daemon" in (sys.argv[0] if sys.argv else "")


RUNS_PER_PROCESS = 8  # runs one run host takes over its life (and so at most at once)


@dataclass
class _Host:
    """The launcher's view of one run host: its pipe, the runs it has not reported done, how many it took."""

    proc: BaseProcess
    conn: Connection
    runs: set[str] = field(default_factory=set)
    taken: int = 0
    closed: bool = False  # took its last run: it exits once those are done
    gone: bool = False


@dataclass
class _HostPool:
    """The run hosts of one instance, and the lock their placement takes."""

    hosts: list[_Host] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


# Dagster builds an instance's run launcher lazily, without a lock: the daemon's dequeue threads, launching
# the first runs together, can each build one. Every launcher of an instance places runs on the same hosts.
_POOLS: weakref.WeakKeyDictionary[Any, _HostPool] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run on a thread of a run host, a process forked from a forkserver with the code preloaded.

    A host takes `runs_per_process` runs over its life, then exits when they are done (a fresh host
    picks up a changed code location and frees what runs left behind). Runs go to the open host with
    the fewest in flight, and there are as many open hosts as CPUs before two runs share one, so the
    runs' Python work spreads over every core."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, preload: Sequence[str] | None = None,
                 runs_per_process: int | None = None, spread_over: int | None = None) -> None:
        self._inst_data = inst_data
        self._preload = list(preload or DEFAULT_PRELOAD)
        self._runs_per_process = max(1, runs_per_process or RUNS_PER_PROCESS)
        self._spread = max(1, spread_over or os.cpu_count() or 1)
        self._ctx: Any = None
        # the instance's hosts and their lock, shared by every launcher of the instance (`register_instance`)
        self._hosts: list[_Host]
        self._lock: threading.Lock
        super().__init__()
        if _in_daemon():
            # the daemon is the process that launches (the webserver and the CLI only queue runs): its
            # forkserver's imports (~4 s) overlap the daemon's own start instead of delaying the first run
            threading.Thread(target=self.warm_up, name="warm-run-launcher", daemon=True).start()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    def register_instance(self, instance: Any) -> None:
        super().register_instance(instance)
        with _POOLS_LOCK:
            pool = _POOLS.setdefault(instance, _HostPool())
        self._hosts, self._lock = pool.hosts, pool.lock

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {"preload": Field(Noneable(Array(str)), is_required=False, default_value=None),
                "runs_per_process": Field(Noneable(int), is_required=False, default_value=None,
                                          description=f"runs one run host takes (default {RUNS_PER_PROCESS})"),
                "spread_over": Field(Noneable(int), is_required=False, default_value=None,
                                     description="run hosts open before two runs share one (default: the CPUs)")}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def _context(self) -> Any:
        if self._ctx is None:
            self._ctx = forkserver.context(self._preload)
        return self._ctx

    def warm_up(self) -> None:
        """Start the forkserver now (its imports take seconds) instead of at the first launch."""
        forkserver.start(self._preload)

    def _start_host(self) -> _Host:
        from dagster._serdes import serialize_value

        ours, theirs = Pipe()
        proc = self._context().Process(target=run_host.serve, args=(theirs, serialize_value(self._instance.get_ref())),
                                       name="dagster-run-host")
        proc.start()
        theirs.close()
        host = _Host(proc, ours)
        self._hosts.append(host)
        return host

    def _reap(self) -> None:
        """Take in the hosts' "done" notes; forget hosts that are gone or closed with nothing in flight."""
        for host in self._hosts:
            try:
                while host.conn.poll():
                    _, run_id = host.conn.recv()
                    host.runs.discard(run_id)
            except (EOFError, OSError):
                host.gone = True
        for host in [h for h in self._hosts if h.gone or (h.closed and not h.runs)]:
            self._hosts.remove(host)
            host.conn.close()

    def _place(self, run_id: str) -> None:
        """Send the run to a host, its process recorded on the run first.

        First: the host's run start rewrites the run's stored body from its own read of the run (Dagster's
        `handle_run_event` is a read-modify-write, as is `add_run_tags`). Tagged after the send, a run could
        lose its pid tag to the host's start written over it, and run monitoring then failed the healthy run
        as "no run process recorded yet" (one video of a 40-video bench run)."""
        while True:
            self._reap()
            open_hosts = [h for h in self._hosts if not h.closed]
            # as many hosts as CPUs before two runs share one; then the one with the fewest in flight
            fewest = min(open_hosts, key=lambda h: len(h.runs), default=None)
            host = fewest if fewest is not None and len(open_hosts) >= self._spread else self._start_host()
            pid = int(host.proc.pid or 0)
            self._instance.add_run_tags(run_id, {PID_TAG: str(pid), HOST_TAG: socket.gethostname(),
                                                 START_TAG: proc_start(pid) or ""})
            try:
                host.conn.send(("run", run_id))
            except OSError:  # it died since the last look: the next host
                host.gone = True
                continue
            host.runs.add(run_id)
            host.taken += 1
            if host.taken >= self._runs_per_process:
                host.closed = True
                with contextlib.suppress(OSError):
                    host.conn.send(("close", None))
            return

    def launch_run(self, context: LaunchRunContext) -> None:
        with self._lock:
            self._place(context.dagster_run.run_id)

    def terminate(self, run_id: str) -> bool:
        """Mark the launched run CANCELING: its host, whichever daemon launched it on whichever machine that
        shares the instance, interrupts the run's thread within a second."""
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished or PID_TAG not in run.tags:
            return False
        self._instance.report_run_canceling(run)
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
        if proc_start(pid) == run.tags.get(START_TAG):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run process {pid} is gone (killed, or out of memory)")

    def join(self, timeout: int = 30) -> None:
        with self._lock:
            procs = [h.proc for h in self._hosts]
        for p in procs:
            p.join(timeout)

    def dispose(self) -> None:
        """Close the pipes: each host finishes the runs it has, then exits."""
        with self._lock:
            for host in self._hosts:
                host.conn.close()
            self._hosts.clear()
