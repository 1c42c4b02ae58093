"""`vr-annotate`: run the asset graph from a terminal, open its UI, or print a spec.

`run` puts one Dagster run per video partition in the instance's queue, like the sensor and the UI
do, and follows them; Dagster's daemon launches them through the instance's run launcher
(`vr_assets.execution`), so every road executes the same way. `ui` prepares the same Dagster home
and starts `dagster dev` on it.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import BaseModel

from vr_assets.config import Spec, SpecError, load_spec
from vr_assets.discovery import scan
from vr_assets.execution.instance import ensure_dagster_home, postgres_url_of
from vr_assets.execution.services import (
    run_daemon,
    serve_ui,
    services_env,
    write_effective_spec,
    write_workspace,
)
from vr_assets.execution.submit import RunOutcome
from vr_assets.outcomes import outcome_summary
from vr_assets.providers.outage import BreakerWatch, clear_provider_fatal, is_fatal_provider_failure
from vr_assets.records import VideoSource
from vr_assets.registry import VideoRegistry
from vr_assets.storage import results_root, results_url
from vr_assets.store import JsonStore

T = TypeVar("T")

if TYPE_CHECKING:
    from vr_assets.execution.prefetch import MediaPrefetch

Progress = Callable[[str], None]


@dataclass
class RunSummary:
    videos: int = 0
    ran: int = 0
    succeeded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped_up_to_date: int = 0
    dataset_items: int | None = None
    seconds: float = 0.0


def plan_work(spec: Spec, defs: Any, instance: Any, keys: list[str], stale: bool) -> dict[str, list[str]]:
    """partition key -> the per-video assets that must (re)materialize for it."""
    from dagster import AssetKey

    from vr_assets.graph import PER_VIDEO_ASSETS

    store = JsonStore(results_url(spec))
    done = {a: instance.get_materialized_partitions(AssetKey(a)) for a in PER_VIDEO_ASSETS}
    view = None
    if stale:
        from vr_assets.staleness import StalenessView

        view = StalenessView(instance, defs)
    work: dict[str, list[str]] = {}
    for k in keys:
        need: list[str] = []
        stopped = False
        if k in done["filter_result"]:
            f = store.read_optional("filter_result", k)
            stopped = f is not None and not f.proceed
        for i, a in enumerate(PER_VIDEO_ASSETS):
            if stopped and i > 0:
                break
            # a record deleted by hand is missing even if Dagster remembers materializing it
            missing = k not in done[a] or not store.exists(a, k)
            if missing or (view is not None and view.is_stale(a, k)):
                need.append(a)
        if need:
            if view is not None:
                closure = view.with_downstream(set(need), list(PER_VIDEO_ASSETS))
                need = [a for a in PER_VIDEO_ASSETS if a in closure]
            else:  # resume: from the first missing step to the end
                need = list(PER_VIDEO_ASSETS[PER_VIDEO_ASSETS.index(need[0]):])
            work[k] = need
    return work


# Hand-out pattern: this many of the smallest files, then one of the biggest.
SMALL_PER_BIG = 2


def file_sizes(videos: Iterable[VideoSource]) -> dict[str, int | None]:
    """Each video's file size (None: the file is missing). Size stands in for duration in the hand-out
    and prefetch orders: probing every video up front would cost a probe each."""
    sizes: dict[str, int | None] = {}
    for v in videos:
        try:
            sizes[v.key] = Path(v.path).stat().st_size
        except OSError:
            sizes[v.key] = None
    return sizes


def hand_out_order(work: dict[str, T], sizes: dict[str, int | None]) -> dict[str, T]:
    """The order workers take videos in: the two smallest files left, then the biggest, and again.

    The biggest files still start early (one hand-out in three), so none runs alone at the end, but
    they are spread out: biggest-first gave the first wave nothing but long videos, whose step-0
    ffmpeg held back the first requests, and the waves that followed finished together, leaving a
    tail of a few videos. A missing file goes first and fails fast with its own error.
    """
    missing = [k for k in sorted(work) if sizes.get(k) is None]
    by_size = sorted((k for k in work if sizes.get(k) is not None), key=lambda k: (sizes[k], k))
    order = missing
    lo, hi = 0, len(by_size) - 1
    while lo <= hi:
        for _ in range(SMALL_PER_BIG):
            if lo <= hi:
                order.append(by_size[lo])
                lo += 1
        if lo <= hi:
            order.append(by_size[hi])
            hi -= 1
    return {k: work[k] for k in order}


def start_prefetch(spec: Spec, videos: list[VideoSource], sizes: dict[str, int | None]) -> MediaPrefetch:
    """Step 0's media for `videos` (see `vr_assets.execution.prefetch`), in hand-out order unless it asks ahead.

    It starts before the plan (so it has the CPU the workers' start-up leaves idle); `MediaPrefetch.drop`
    then takes out the videos the plan does not start from step 0. With `workflow.ask_ahead` it asks
    steps 0 and 1a's questions too, only for videos without a `filter_result` record (the plan runs those).
    """
    from vr_assets.execution.prefetch import AskAhead, MediaPrefetch
    from vr_assets.media_cache import media_tool

    ahead = None
    if spec.workflow.ask_ahead and not spec.offline_teacher:
        ahead = AskAhead(spec, spec.vlm.limits.max_concurrency or spec.workflow.max_workers)
        # smallest file first: the cheapest media, so the most questions out before the workers are up;
        # a missing file first, like the hand-out: it fails fast with its own error
        videos = sorted(videos, key=lambda v: -1 if (size := sizes.get(v.key)) is None else size)
    return MediaPrefetch(spec, media_tool(spec), videos, ahead).start()


def _with_workers(spec: Spec, parallel: int | None) -> Spec:
    if not parallel:
        return spec
    return spec.model_copy(update={"workflow": spec.workflow.model_copy(update={"max_workers": parallel})})


@contextmanager
def _location_env(env: dict[str, str]) -> Iterator[None]:
    """This process loads the code location (to plan and create runs) from the same spec file as the daemon."""
    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "VR_CONFIG")}
    os.environ.update(DAGSTER_HOME=env["DAGSTER_HOME"], VR_CONFIG=env["VR_CONFIG"])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _create_storage(home: Path, env: dict[str, str]) -> None:
    """Dagster's tables in a Postgres database (which another host may be opening this very moment), created
    here, under the coordinator's lock, before the daemon opens the storage too: two processes creating them
    at the same moment both fail; so are Dagster's default SQLite databases of a new home. The SQLite storages
    of the home vr-annotate writes need nothing here: they take a file lock while they build their databases
    (`vr_assets.execution.storage`), so the daemon starts at once."""
    if postgres_url_of(home) is None:
        config = yaml.safe_load((home / "dagster.yaml").read_text()) or {}
        ours = (config.get("run_storage") or {}).get("module") == "vr_assets.execution.storage"
        if ours or "storage" in config or (home / "history" / "runs.db").exists():
            return
    with _location_env(env):
        from dagster import DagsterInstance

        from vr_assets.shared_state import coordinator

        with coordinator().lock("dagster-storage", home / ".storage.lock"):
            DagsterInstance.get().dispose()


def run_pipeline(
    spec: Spec,
    *,
    stale: bool = False,
    only: list[str] | None = None,
    parallel: int | None = None,
    build_dataset: bool = True,
    progress: Progress = print,
    verbose: bool = False,
) -> RunSummary:
    """Discover, plan, queue a run per video that needs work, follow the runs, then queue the dataset.

    Nothing executes here: runs go to the instance's queue and the daemon launches them through the
    instance's run launcher, exactly as the sensor's and the UI's runs (see `vr_assets.execution`).
    This process starts that daemon for the run's duration unless a `vr-annotate ui` serves the home (and
    starts one after all if that one stops while runs of this one wait in the queue).
    Meanwhile it makes step 0's media, and asks the whole-video questions, ahead of the runs.
    """
    t0 = time.perf_counter()
    spec = _with_workers(spec, parallel)
    home = ensure_dagster_home(spec)
    clear_provider_fatal(spec.results_dir)  # a rejected key or model of an earlier run: asked again once
    env = services_env(home, write_effective_spec(spec, home), spec)
    os.environ["VR_HOST_SLOTS_DIR"] = env["VR_HOST_SLOTS_DIR"]  # the questions asked ahead hold the same slots
    (home / "logs").mkdir(exist_ok=True)
    found = scan(spec)
    videos, _ = VideoRegistry(spec.results_dir).sync(found.videos)
    if found.skipped:
        progress(found.summary())
    all_keys = sorted(videos)
    keys = all_keys
    if only:
        unknown = [k for k in only if k not in keys]
        if unknown:
            raise SpecError(f"unknown video partition(s): {unknown}")
        keys = [k for k in keys if k in only]
    summary = RunSummary(videos=len(keys))
    sizes = file_sizes(videos[k] for k in keys)
    order = hand_out_order({k: videos[k] for k in keys}, sizes)
    prefetch = None
    _create_storage(home, env)
    with (home / "logs" / "daemon.log").open("ab") as log_file, run_daemon(
        home, env, sys.stderr.buffer if verbose else log_file
    ) as daemon:
        if spec.media.prefetch and spec.workflow.max_workers > 1 and len(keys) > 1:
            todo = list(order.values())
            if not spec.storage_url:  # a stat each: videos with a step-0 record need no step-0 media
                done = JsonStore(spec.results_dir)
                todo = [v for v in todo if not done.exists("filter_result", v.key)]
            if todo:
                prefetch = start_prefetch(spec, todo, sizes)
        try:
            # one console line when the teacher endpoint's breaker opens, one when it closes
            taken_over = f"the daemon that served {home} stopped: this vr-annotate started one for its queued runs"
            with (_location_env(env), BreakerWatch(env["VR_HOST_SLOTS_DIR"], progress),
                  daemon.taking_over(lambda: progress(taken_over))):
                summary = _queue_and_follow(spec, home, keys, all_keys, list(order), stale, build_dataset,
                                            summary, prefetch, daemon.proc is None, progress)
        finally:
            if prefetch is not None:
                prefetch.stop(answers=False)
        if summary.ran == 0 and summary.dataset_items is None and not summary.failed:
            daemon.close(grace_s=0.5)  # it launched nothing: no run to let finish cleanly
    summary.seconds = time.perf_counter() - t0
    ran = [k for k in (*summary.succeeded, *summary.failed) if k != "dataset"]
    if ran or found.skipped:  # the videos of this run; the others were up to date (counted below)
        progress(outcome_summary(spec.results_dir, summary.failed, found.skipped, keys=ran,
                                 store_url=results_url(spec)).render())
    progress(
        f"done in {summary.seconds:.1f}s: {len(summary.succeeded)} ok, {len(summary.failed)} failed, "
        f"{summary.skipped_up_to_date} up to date"
    )
    return summary


def _cancel_queued(instance: Any, runs: dict[str, str]) -> list[str]:
    """Cancel those of `runs` still waiting in the queue; their run ids."""
    from dagster import DagsterRunStatus, RunsFilter

    ids = sorted(runs.values())
    waiting = [DagsterRunStatus.QUEUED]
    queued = [r.dagster_run.run_id for i in range(0, len(ids), 500)
              for r in instance.get_run_records(RunsFilter(run_ids=ids[i : i + 500], statuses=waiting))]
    for rid in queued:
        instance.run_coordinator.cancel_run(rid)
    return queued


def _wind_down(
    instance: Any, runs: dict[str, str], summary: RunSummary, record: Callable[[RunOutcome], None],
    grace_s: float, progress: Progress,
) -> None:
    """^C or SIGTERM: start no other video, give the videos in flight `grace_s` to finish, then stop them.

    Queued runs are canceled (they would otherwise run the next time a daemon serves this home); what
    finished is recorded by Dagster as usual, so the next run resumes from there and pays nothing twice.
    A second ^C stops the runs in flight at once.
    """
    from vr_assets.execution.submit import follow

    waiting = {rid for k, rid in runs.items() if k not in summary.succeeded and k not in summary.failed}
    queued = _cancel_queued(instance, {k: rid for k, rid in runs.items() if rid in waiting})
    live = {k: rid for k, rid in runs.items() if rid in waiting and rid not in queued}
    progress(f"interrupted: {len(queued)} queued video(s) canceled; up to {grace_s:.0f} s for the {len(live)} in "
             "flight to finish (^C again stops them now)")
    deadline = time.monotonic() + grace_s
    try:
        for outcome in follow(instance, live):
            record(outcome)
            live.pop(outcome.key, None)
            if time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        pass
    for rid in live.values():
        instance.run_launcher.terminate(rid)
    progress(f"stopped: {len(summary.succeeded)} ok, {len(summary.failed)} failed, {len(live)} stopped in flight, "
             f"{len(queued)} not started; run again to resume")


def _dataset_up_to_date(instance: Any) -> bool:
    """The dataset was built after the last video's task exports changed (and its files are there)."""
    from dagster import AssetKey

    last = {a: instance.fetch_materializations(AssetKey(a), limit=1).records for a in ("dataset", "task_exports")}
    return bool(last["dataset"]) and (not last["task_exports"]
                                      or last["dataset"][0].storage_id > last["task_exports"][0].storage_id)


def _runs_in_progress(instance: Any, job_name: str) -> dict[str, str]:
    """partition key -> id of its run of `job_name` that is queued or running."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.storage.tags import PARTITION_NAME_TAG

    live = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    runs = instance.get_runs(RunsFilter(job_name=job_name, statuses=live))
    return {r.tags[PARTITION_NAME_TAG]: r.run_id for r in runs if PARTITION_NAME_TAG in r.tags}


def _dataset_run_after(instance: Any, job_name: str, run_ids: list[str]) -> str | None:
    """A dataset run another vr-annotate (another host) queued after every one of `run_ids` finished, so
    it reads their results. Following it instead of queueing a second one, both hosts wait for the same
    run, and neither's dataset run is ended by the other's daemon when that host is done."""
    from dagster import DagsterRunStatus, RunsFilter

    from vr_assets.execution.dataset_gate import abandoned_gate

    ended = [r.end_time or 0.0 for r in instance.get_run_records(RunsFilter(run_ids=run_ids))] if run_ids else []
    live = [DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    for rec in instance.get_run_records(RunsFilter(job_name=job_name, statuses=live)):
        if rec.create_timestamp.timestamp() >= max(ended, default=0.0) and not abandoned_gate(rec.dagster_run):
            return rec.dagster_run.run_id
    return None


def _queue_and_follow(
    spec: Spec, home: Path, keys: list[str], all_keys: list[str], order: list[str], stale: bool,
    build_dataset: bool, summary: RunSummary, prefetch: MediaPrefetch | None, shared_daemon: bool,
    progress: Progress,
) -> RunSummary:
    from vr_assets.execution.startup import collector_paused

    if prefetch is not None:  # the first question asked ahead waits on the SDK's import: that goes first
        prefetch.wait_for_teacher()
    with collector_paused():  # Dagster, the code location and the instance's storage: imports, mostly
        from dagster import AssetKey, DagsterInstance

        from vr_assets.execution.dataset_gate import cancel_abandoned, cancel_held, closed_gate_tags, open_gate
        from vr_assets.execution.run_host import forget_stale_location
        from vr_assets.execution.submit import QueueFeeder, RunSubmitter, follow
        from vr_assets.graph import ANNOTATE_JOB, DATASET_JOB, PER_VIDEO_ASSETS
        from vr_assets.partitions import videos_partitions
        from vr_assets.shared_state import coordinator

        forget_stale_location()
        import vr_assets.definitions as location

        opened = DagsterInstance.get()

    with opened as instance, ExitStack() as submitting:
        # one vr-annotate plans and queues at a time (on Postgres: one on any host); a video another
        # one has queued or is running is followed, not queued twice
        submitting.enter_context(coordinator().lock("vr-annotate:submit", home / ".submit.lock"))
        existing = set(instance.get_dynamic_partitions(videos_partitions.name))
        new = [k for k in all_keys if k not in existing]
        if new:
            instance.add_dynamic_partitions(videos_partitions.name, new)
        if abandoned := cancel_abandoned(instance, DATASET_JOB):
            progress(f"{len(abandoned)} dataset run(s) of a vr-annotate that is gone: canceled")
        plan = plan_work(spec, location.defs, instance, keys, stale)
        work = {k: plan[k] for k in order if k in plan}
        if prefetch is not None:
            prefetch.drop(k for k in keys if k not in work or work[k][0] != PER_VIDEO_ASSETS[0])
        progress(f"{len(all_keys)} videos discovered ({len(new)} new); Dagster home {home}")
        summary.skipped_up_to_date = len(keys) - len(work)
        progress(f"{len(work)} to run, {summary.skipped_up_to_date} already up to date")
        if shared_daemon:
            progress(f"a vr-annotate daemon already serves {home}: its queue runs these videos")
        if work:
            progress(f"queued {len(work)} video run(s), at most {spec.workflow.max_workers} at a time")
        submitter = RunSubmitter(instance, ANNOTATE_JOB)
        running = _runs_in_progress(instance, ANNOTATE_JOB)
        if followed := [k for k in work if k in running]:
            progress(f"{len(followed)} of them already queued or running (another vr-annotate): following those")
        # the first wave now; the rest from a thread at lower CPU priority while the first wave starts
        first = list(work)[: spec.workflow.max_workers]
        runs = {k: running.get(k) or submitter.submit(k, work[k]) for k in first}
        held = submitting.pop_all()
        feeder = QueueFeeder(lambda k: running.get(k) or submitter.submit(k, work[k]),
                             [k for k in work if k not in runs], runs, on_done=held.close).start()
        # the dataset run is queued once every video run has left the queue, its gate closed: it is launched
        # while the last videos run and builds the moment this process opens the gate (`dataset_gate`)
        early_dataset = build_dataset and bool(work) and postgres_url_of(home) is None
        left_queue: set[str] = set()
        gated: list[str] = []

        def on_start(key: str) -> None:
            if prefetch is not None:
                prefetch.handed_out(key)
            left_queue.add(key)
            if early_dataset and not gated and not feeder.feeding() and len(left_queue) >= len(runs):
                gated.append(RunSubmitter(instance, DATASET_JOB).submit(None, tags=closed_gate_tags()))

        n = 0

        fatal: list[str] = []

        def record(outcome: RunOutcome) -> None:
            nonlocal n
            n += 1
            summary.ran += 1
            if outcome.ok:
                summary.succeeded.append(outcome.key)
            else:
                summary.failed[outcome.key] = outcome.why
            if fatal and not outcome.ok and (outcome.why == "canceled" or is_fatal_provider_failure(outcome.why)):
                return  # said once, below; the videos a daemon started meanwhile fail on the recorded rejection
            progress(f"[{n}/{len(work)}] {outcome.key}: {'ok' if outcome.ok else 'FAILED: ' + outcome.why}")
            if not outcome.ok and not fatal and is_fatal_provider_failure(outcome.why):
                # a rejected key or a missing model: no other video can do better; the queue goes, the
                # videos in flight fail fast on the recorded rejection without asking the provider
                fatal.append(outcome.why)
                feeder.stop()
                canceled = len(_cancel_queued(instance, runs))
                progress(f"stopping: {outcome.why} ({canceled} queued video(s) canceled; fix it and run again)")

        try:
            try:
                for outcome in follow(instance, runs, on_start, feeding=feeder.feeding):
                    record(outcome)
            except KeyboardInterrupt:
                feeder.stop()
                if early_dataset:  # first: stopping the videos frees slots, and a launched gated run must be canceled
                    cancel_held(instance, DATASET_JOB)
                _wind_down(instance, runs, summary, record, spec.workflow.interrupt_grace_s, progress)
                raise
            finally:
                feeder.stop()
            if feeder.error is not None:
                raise feeder.error
            if gated:
                open_gate(instance, gated[0])  # every video run has ended: exactly when it used to be queued
        except BaseException:
            if early_dataset:  # interrupted, or an error: the build it was waiting for will not come
                cancel_held(instance, DATASET_JOB)
            raise
        if prefetch is not None:
            prefetch.stop()
            progress(prefetch.summary())
        if build_dataset and summary.ran == 0 and _dataset_up_to_date(instance):
            progress(f"dataset: up to date in {results_root(spec) / 'step_4_output'}")
        elif build_dataset:
            if gated:
                run_id = gated[0]
            else:
                with coordinator().lock("vr-annotate:submit", home / ".submit.lock"):
                    run_id = (_dataset_run_after(instance, DATASET_JOB, list(runs.values()))
                              or RunSubmitter(instance, DATASET_JOB).submit(None))
            outcome = next(follow(instance, {"dataset": run_id}))
            if outcome.ok:
                mats = instance.fetch_materializations(AssetKey("dataset"), limit=1).records
                meta = mats[0].asset_materialization.metadata if mats and mats[0].asset_materialization else {}
                items = meta.get("items")
                summary.dataset_items = int(items.value) if items is not None else None  # type: ignore[arg-type]
                line = f"dataset: {summary.dataset_items} items in {results_root(spec) / 'step_4_output'}"
                judged, reused = meta.get("items_judged"), meta.get("item_judgments_reused")
                if judged is not None and reused is not None and reused.value:
                    line += f" (item rules: {judged.value} judged, {reused.value} verdicts of the last build reused)"
                progress(line)
            else:
                summary.failed["dataset"] = outcome.why
                progress(f"dataset FAILED: {outcome.why}")
    return summary


def finish_batches(spec: Spec, run: Callable[[], RunSummary], summary: RunSummary, progress: Progress) -> RunSummary:
    """`vr-annotate run --wait-batches`: while calls of batch-tier steps wait, wait for their batches (what the
    UI's `provider_batches` sensor does), then run again; each round finishes the steps whose answers came in
    from the answer cache (description, then qa: two rounds). Bounded by the number of per-video steps."""
    from vr_assets.batch_sensor import main_batches
    from vr_assets.providers.batch import batch_book_for
    from vr_assets.store import PER_VIDEO_ASSETS

    for _ in range(len(PER_VIDEO_ASSETS)):
        if not batch_book_for(spec.results_dir).entries():
            break
        progress("waiting for the provider's batches (--wait-batches)")
        main_batches(spec, wait=True, say=progress)
        summary = run()
    return summary


def open_ui(spec: Spec, host: str, port: int) -> int:
    """The README's way to the UI: the tuned home, the effective spec, `dagster dev` with the sensors on."""
    home = ensure_dagster_home(spec)
    env = services_env(home, write_effective_spec(spec, home), spec)
    _create_storage(home, env)
    workspace = write_workspace(home)
    print(f"vr-annotate ui: Dagster home {home}; http://{host}:{port}", flush=True)
    return serve_ui(home, env, workspace, host, port)


# ---------------------------------------------------------------- default spec


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def commented_yaml(model: BaseModel, indent: int = 0) -> str:
    """Every field with its default and its description as a comment."""
    lines: list[str] = []
    pad = "  " * indent
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if info.description:
            lines.append(f"{pad}# {info.description}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines.append(commented_yaml(value, indent + 1))
        else:
            dumped = value.model_dump() if isinstance(value, BaseModel) else value
            lines.append(f"{pad}{name}: {_yaml_scalar(dumped)}")
    return "\n".join(lines)


def default_spec_text() -> str:
    head = (
        "# vr-assets spec: every field with its default. Paths are relative to this file.\n"
        "# Secrets: leave api_key empty and export GOOGLE_API_KEY / OPENAI_API_KEY instead.\n"
    )
    return head + commented_yaml(Spec()) + "\n"


# ---------------------------------------------------------------- entry point


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vr-annotate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="discover videos, materialize what is missing, write the dataset")
    run_p.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    run_p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. workflow.max_workers=16")
    run_p.add_argument("--stale", action="store_true", help="also re-run partitions whose inputs/prompts changed")
    run_p.add_argument("--video", action="append", dest="videos", help="only this partition key (repeatable)")
    run_p.add_argument("--parallel", type=int, help="video runs in flight (default workflow.max_workers)")
    run_p.add_argument("--no-dataset", action="store_true", help="skip writing the merged dataset")
    run_p.add_argument("--wait-batches", action="store_true", help="steps on the batch tier (workflow.tier): wait "
                       "for their batches and finish them in this command instead of a later run")
    run_p.add_argument("--verbose", action="store_true", help="Dagster's own log lines (the daemon's and the runs') "
                       "on the console too; by default they go to <DAGSTER_HOME>/logs/daemon.log and the event log")
    view_p = sub.add_parser("view", help="serve the dataset viewer and review page")
    view_p.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    view_p.add_argument("--port", type=int, help="port (default viewer.port, 8765)")
    est_p = sub.add_parser("estimate", help="projected bill per step and in total (no model call unless --sample)")
    est_p.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    est_p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    est_p.add_argument("--sample", type=int, help="first run the pipeline on N new videos, to calibrate")
    ui_p = sub.add_parser("ui", help="prepare the Dagster home and start the webserver and daemon (dagster dev)")
    ui_p.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    ui_p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    ui_p.add_argument("--port", type=int, default=3000)
    ui_p.add_argument("--host", default="127.0.0.1")
    batch_p = sub.add_parser("batches", help="steps on the batch tier: submit what waits, poll the batches, store "
                             "the answers (what the UI's provider_batches sensor does); then `run` finishes them")
    batch_p.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    batch_p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    batch_p.add_argument("--wait", action="store_true", help="poll every workflow.batch.poll_interval_s until no "
                         "call waits")
    sub.add_parser("default-spec", help="print a commented spec with every field and its default")
    demo_p = sub.add_parser("demo", help="annotate the bundled sample videos (offline teacher without a key)")
    demo_p.add_argument("--results", default="results/demo", help="results folder")
    demo_p.add_argument("--videos", help="video folder (default: the bundled samples)")
    args = parser.parse_args(argv)

    if args.cmd == "default-spec":
        sys.stdout.write(default_spec_text())
        return 0
    if args.cmd == "estimate":
        from vr_assets.estimate import main_estimate

        return main_estimate(args.config, args.overrides, args.sample)
    if args.cmd == "view":
        from vr_assets.viewer.__main__ import run_viewer

        return run_viewer(args.config, args.port)
    if args.cmd == "demo":
        from vr_assets.demo import run_demo

        return run_demo(results=args.results, videos=args.videos)
    try:
        spec = load_spec(args.config, args.overrides)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    if args.cmd == "ui":
        return open_ui(spec, args.host, args.port)
    if args.cmd == "batches":
        from vr_assets.batch_sensor import main_batches

        return main_batches(spec, wait=args.wait)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM winds down like ^C
    def say(m: str) -> None:
        print(m, flush=True)

    def run() -> RunSummary:
        return run_pipeline(spec, stale=args.stale, only=args.videos, parallel=args.parallel,
                            build_dataset=not args.no_dataset, progress=say, verbose=args.verbose)

    try:
        summary = run()
        if args.wait_batches:
            summary = finish_batches(spec, run, summary, say)
    except KeyboardInterrupt:
        return 130
    # The interpreter's final garbage collection walks every object Dagster loaded (~1 s of wall
    # after the work is done); nothing needs collecting on the way out.
    gc.freeze()
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
