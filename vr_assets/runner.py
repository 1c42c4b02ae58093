"""Running video partitions: one in-process Dagster run per video, several videos at once.

Dagster's in-process execution is not thread-safe (it reconfigures logging for every run),
so videos run in parallel *processes*, each executing one partition run at a time on the
same instance. A forkserver with the package preloaded keeps worker start-up cheap; the
provider limit holds across workers through host-wide slots (VR_HOST_SLOTS_DIR), and new
workers prepare their first videos a few at a time (`vr_assets.turns`). The CLI's other
Dagster work (its plan, the dataset) goes to the same workers (`Workers.call`), so Dagster
is loaded once, by the forkserver, not a second time by the CLI.
"""

from __future__ import annotations

import fcntl
import gc
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from vr_assets import turns
from vr_assets.config import Spec

# The forkserver's environment names the backends whose SDKs it preloads (see worker_preload).
PRELOAD_BACKENDS = "VR_PRELOAD_BACKENDS"

# How long a new worker waits for a start-up turn before it goes on without one.
TURN_TIMEOUT_S = 30.0


def failure_text(result: Any) -> str:
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            data = ev.event_specific_data
            ufd = getattr(data, "user_failure_data", None)
            if ufd is not None and ufd.description:
                return str(ufd.description)
            err = getattr(data, "error", None)
            if err is not None:
                cause = err
                while getattr(cause, "cause", None) is not None:
                    cause = cause.cause
                return f"{err.message.strip()}" if cause is err else f"{cause.message.strip()}"
    return "run failed"


_worker: dict[str, Any] = {}

# Every event is still stored in the instance (and shown in the UI); the terminal gets warnings
# and errors only, instead of ~100 debug lines per video.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _worker_init(spec_json: str, environ: dict[str, str] | None = None) -> None:
    if environ is not None:
        # A forkserver keeps the environment it was started with: a later run in the same process
        # (another DAGSTER_HOME, another key) must not inherit the first run's.
        os.environ.clear()
        os.environ.update(environ)

    import warnings

    from dagster import BetaWarning, DagsterInstance

    # `Output(data_version=...)` is what makes staleness work; its beta notice is not news per step.
    warnings.filterwarnings("ignore", category=BetaWarning)

    from vr_assets.graph import ANNOTATE_JOB, build_definitions

    spec = Spec.model_validate_json(spec_json)
    defs = build_definitions(spec)
    instance = _open_instance(DagsterInstance)
    _worker.update(spec=spec, instance=instance, defs=defs, job=defs.resolve_job_def(ANNOTATE_JOB))


def _open_instance(instance_class: Any) -> Any:
    """The instance of $DAGSTER_HOME, opened by one process at a time: the first to open a new home
    creates its databases, and two doing that at once would race."""
    home = os.environ.get("DAGSTER_HOME")
    if not home or not os.path.isdir(home):
        return instance_class.get()
    with open(os.path.join(home, ".vr-open.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        return instance_class.get()


def worker_context() -> tuple[Spec, Any, Any]:
    """(spec, Dagster instance, Definitions) of this worker, for work handed over through `Workers.call`."""
    return _worker["spec"], _worker["instance"], _worker["defs"]



def _pool_worker_init(
    spec_json: str, environ: dict[str, str], turn_dir: str | None = None, n_turns: int = 0
) -> None:
    if turn_dir is not None:  # held through the first video's set-up, up to its first request
        turns.take(turn_dir, n_turns, TURN_TIMEOUT_S)
    _worker_init(spec_json, environ)
    gc.freeze()  # the instance and the job live as long as the worker process (see worker_preload)


def _worker_run(key: str, assets: list[str]) -> tuple[str, bool, str]:
    from dagster import AssetKey

    try:
        res = _worker["job"].execute_in_process(
            partition_key=key, instance=_worker["instance"], asset_selection=[AssetKey(a) for a in assets],
            raise_on_error=False, tags={"vr_assets/launched_by": "vr-annotate"}, run_config=QUIET_CONSOLE,
        )
    finally:
        turns.end()  # a run that sent no request (all cached, or failed early) ends its turn here
    return key, res.success, "" if res.success else failure_text(res)


def _forkserver() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["vr_assets.worker_preload"])
    return ctx


def prestart_workers(spec: Spec) -> None:
    """Start the forkserver now, so its imports (~4 s) overlap the caller's own set-up.

    The forkserver only imports modules, the SDKs of `spec`'s backends among them; the environment,
    the spec and the instance reach each worker when it starts (see `_worker_init`).
    """
    from multiprocessing import forkserver

    _forkserver()
    before = os.environ.get(PRELOAD_BACKENDS)
    os.environ[PRELOAD_BACKENDS] = ",".join(sorted({spec.vlm.backend, spec.llm.backend}))
    try:
        forkserver.ensure_running()  # the forkserver inherits this environment
    finally:
        if before is None:
            os.environ.pop(PRELOAD_BACKENDS)
        else:
            os.environ[PRELOAD_BACKENDS] = before


def host_slots_dir(spec: Spec) -> str:
    """The folder of the host-wide provider slots and start-up turns (`VR_HOST_SLOTS_DIR`, else under results)."""
    return os.environ.get("VR_HOST_SLOTS_DIR") or os.path.join(spec.results_dir, "cache", "slots")


def startup_turns(spec: Spec) -> int:
    n = spec.workflow.startup_turns
    return len(os.sched_getaffinity(0)) if n is None else n


class Workers:
    """The processes that do a `vr-annotate` run's Dagster work: its plan, its videos, its dataset.

    With `width` above 1 they are a forkserver pool, so the calling process never loads Dagster
    itself (the forkserver has it preloaded once); with `width` 1 everything runs in this process.
    """

    def __init__(self, spec: Spec, width: int) -> None:
        self.spec = spec
        self.width = max(1, width)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        spec_json = self.spec.model_dump_json()
        if self.width <= 1:
            _worker_init(spec_json)
            return self
        n_turns = startup_turns(self.spec)
        turn_dir = host_slots_dir(self.spec) if 0 < n_turns < self.width else None
        initargs = (spec_json, dict(os.environ), turn_dir, n_turns)
        self._pool = ProcessPoolExecutor(
            self.width, mp_context=_forkserver(), initializer=_pool_worker_init, initargs=initargs
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a worker (see `worker_context`); `fn` must be a module-level function."""
        if self._pool is None:
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    def run(
        self, work: dict[str, list[str]], on_handout: Callable[[str], None] | None = None
    ) -> Iterator[tuple[str, bool, str]]:
        """Run `work` in its order, `width` videos at a time; `on_handout(key)` as a worker takes each.

        Videos are handed out one at a time as workers free up (not queued all at once), so the caller
        knows which videos no worker has yet: the media prefetch works on those.
        """
        handout = on_handout or (lambda _key: None)
        pool = self._pool
        if pool is None:
            for k, assets in work.items():
                handout(k)
                yield _worker_run(k, assets)
            return
        queue = iter(work.items())
        running: dict[Future[tuple[str, bool, str]], str] = {}
        broken: list[str] = []

        def hand_out_next() -> None:
            for k, assets in queue:
                handout(k)
                try:
                    running[pool.submit(_worker_run, k, assets)] = k
                except BrokenProcessPool:  # a worker died earlier: the pool takes no more work
                    broken.append(k)
                    continue
                return

        for _ in range(self.width):
            hand_out_next()
        while running or broken:
            while broken:
                yield broken.pop(0), False, "worker process failed: the worker pool broke (a worker died)"
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                key = running.pop(fut)
                hand_out_next()
                try:
                    yield fut.result()
                except Exception as e:  # a worker died (OOM, signal): that video fails, the rest go on
                    yield key, False, f"worker process failed: {e!r}"
