"""A run host: one process, forked warm, that executes several Dagster runs at once, a thread each.

Why threads: a forked run process writes reference counts into every preloaded object it touches
(CPython 3.11), so each one privately copied ~37 MB of the forkserver's pages whatever it did;
`gc.freeze()` and warming the code up first saved little. 128 videos in flight as 128 processes
held 5.8 GB PSS. Runs on threads of one host pay that copy once per host; a run spends nearly all its
time waiting on the provider, so the GIL costs little. Each run still opens its own `DagsterInstance`
(as a run process did): our SQLite event log serializes its writes per instance, and one instance
shared by eight runs made them queue behind each other.

Each run stays a Dagster run of its own (run id, events, status, monitoring, retries): the host
only replaces "a process per run" by "a thread per run". `launcher.WarmRunLauncher` talks to a host
through a pipe: ("run", id) and ("close", None) in, ("done", id) out. A run is canceled the way
Dagster cancels one (`terminate` marks it CANCELING, from any process: the UI, the CLI); the host
sees that mark and raises Dagster's interrupt in the run's thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

CANCEL_POLL_S = 1.0


def forget_stale_location() -> None:
    """Forget a preloaded code location whose spec or prompts changed since the forkserver loaded it."""
    import sys

    loaded = sys.modules.get("vr_assets.definitions")
    if loaded is not None and loaded.fingerprint != loaded.sources_fingerprint():
        del sys.modules["vr_assets.definitions"]


_load_lock = threading.Lock()


def execute_run(run_id: str, instance: Any, how: str) -> None:
    """One run, in the calling thread: what `dagster api execute_run` does, minus the interpreter start.

    A failure before Dagster's own run execution starts (no run, a code location that does not load)
    is reported as the run's failure here, since the process that would otherwise die stays up."""
    from dagster._core.events import EngineEventData
    from dagster._grpc.impl import core_execute_run
    from dagster._utils.error import serializable_error_info_from_exc_info
    from dagster._utils.hosted_user_process import recon_job_from_origin

    run = instance.get_run_by_id(run_id)
    if run is None or run.job_code_origin is None:
        raise RuntimeError(f"run {run_id} not found or has no code origin")
    try:
        with _load_lock:  # one thread at a time looks for a changed location and forgets it (imported again lazily)
            forget_stale_location()
            recon_job = recon_job_from_origin(run.job_code_origin)  # type: ignore[arg-type]
    except Exception:
        import sys

        error = serializable_error_info_from_exc_info(sys.exc_info())
        instance.report_run_failed(run, f"the code location did not load: {error.message.strip()}")
        return
    instance.report_engine_event(f"Started run (pid: {os.getpid()}, forked warm; {how}).", run,
                                 EngineEventData.in_process(os.getpid()))
    try:
        for _event in core_execute_run(recon_job, run, instance, inject_env_vars=True):
            pass
    except BaseException:  # core_execute_run has written the failure (or the cancelation) to the event log
        pass


def _interrupt(thread: threading.Thread) -> None:
    """Raise Dagster's interrupt in `thread` at its next bytecode (after a blocking call returns)."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                   ctypes.py_object(DagsterExecutionInterruptedError))


class RunHost:
    """The host process's side: start a thread per run it is sent, report each one done, honour cancels."""

    def __init__(self, conn: Connection, instance: Any, instance_ref: Any) -> None:
        self._conn = conn
        self._instance = instance  # the host's own: it reads the runs' statuses for cancels
        self._ref = instance_ref
        self._log_handlers = list(instance.get_yaml_python_handlers())
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._runs: dict[str, threading.Thread] = {}
        self._interrupted: set[str] = set()
        self._served = 0
        self._stop = threading.Event()

    def serve(self) -> None:
        watcher = threading.Thread(target=self._watch_cancels, name="run-host-cancels", daemon=True)
        watcher.start()
        while True:
            try:
                kind, run_id = self._conn.recv()
            except (EOFError, OSError):  # the launcher's process is gone: finish what runs, take no more
                break
            if kind == "close":
                break
            self._served += 1
            thread = threading.Thread(target=self._run, args=(run_id, self._served),
                                      name=f"dagster-run-{run_id[:8]}")
            with self._lock:
                self._runs[run_id] = thread
            thread.start()
        with self._lock:
            threads = list(self._runs.values())
        for thread in threads:
            thread.join()
        self._stop.set()

    def _run(self, run_id: str, nth: int) -> None:
        from dagster import DagsterInstance

        try:
            with DagsterInstance.from_ref(self._ref) as instance:
                handlers = self._log_handlers
                instance.get_yaml_python_handlers = lambda: handlers  # see `serve`
                execute_run(run_id, instance, f"run {nth} on this run host's threads")
        except BaseException as e:  # noqa: BLE001  (an interrupt before Dagster's execution, or no such run)
            log.warning("run %s: %s", run_id, e)
            run = self._instance.get_run_by_id(run_id)
            if run is not None and run_id in self._interrupted and not run.is_finished:
                self._instance.report_run_canceled(run)
        finally:
            with self._lock:
                self._runs.pop(run_id, None)
            with self._send_lock, contextlib.suppress(OSError):
                self._conn.send(("done", run_id))

    def _watch_cancels(self) -> None:
        from dagster import DagsterRunStatus, RunsFilter

        while not self._stop.wait(CANCEL_POLL_S):
            with self._lock:
                live = [r for r in self._runs if r not in self._interrupted]
            if not live:
                continue
            try:
                canceling = self._instance.get_runs(RunsFilter(run_ids=live, statuses=[DagsterRunStatus.CANCELING]))
            except Exception as e:  # noqa: BLE001  (a storage hiccup: look again next time)
                log.warning("run host: could not read run statuses: %s", e)
                continue
            for run in canceling:
                with self._lock:
                    thread = self._runs.get(run.run_id)
                if thread is not None:
                    self._interrupted.add(run.run_id)
                    _interrupt(thread)


def serve(conn: Connection, instance_ref: str) -> None:
    """The host process's body (forked from the forkserver).

    Dagster builds each run's YAML-configured log handlers (`python_logs`) with
    `logging.config.dictConfig`, which closes every handler in the process: it assumes one run per
    process. Beside another run's thread emitting through its handler, that deadlocked (each thread
    held the lock the other one waited for). The host builds them once, before any run starts, and
    gives every run's instance that list."""
    from dagster import DagsterInstance
    from dagster._serdes import deserialize_value

    os.setpgid(0, 0)  # its own process group: a stop of the host reaches what its runs started (ffmpeg)
    ref = deserialize_value(instance_ref)
    with DagsterInstance.from_ref(ref) as instance:
        RunHost(conn, instance, ref).serve()
