"""`vr-annotate`: the same asset graph without the UI, on the same Dagster instance.

Each video partition runs as its own Dagster run, several at once in worker processes
(`vr_assets.runner`), so one video can be in QA while others are still captioning; the
provider limit holds across the workers. The plan and the dataset run in a worker too: this
process loads Dagster only when it runs everything itself (`--parallel 1`).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import BaseModel

from vr_assets.config import Spec, SpecError, load_spec
from vr_assets.discovery import discover
from vr_assets.instance_home import ensure_dagster_home
from vr_assets.records import VideoSource
from vr_assets.registry import VideoRegistry
from vr_assets.runner import QUIET_CONSOLE, Workers, failure_text, host_slots_dir, prestart_workers, worker_context
from vr_assets.store import JsonStore

T = TypeVar("T")

if TYPE_CHECKING:
    from vr_assets.prefetch import MediaPrefetch

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

    store = JsonStore(spec.results_dir)
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


class Plan(BaseModel):
    new_partitions: int
    work: dict[str, list[str]]
    from_step0: list[str]  # videos whose work starts at the first step (the prefetch's videos)


def plan_in_worker(keys: list[str], all_keys: list[str], stale: bool) -> Plan:
    """In a worker (`Workers.call`): give Dagster the partitions it lacks, then plan `keys`."""
    from vr_assets.graph import PER_VIDEO_ASSETS
    from vr_assets.partitions import videos_partitions

    spec, instance, defs = worker_context()
    existing = set(instance.get_dynamic_partitions(videos_partitions.name))
    new = [k for k in all_keys if k not in existing]
    if new:
        instance.add_dynamic_partitions(videos_partitions.name, new)
    work = plan_work(spec, defs, instance, keys, stale)
    step0 = [k for k, assets in work.items() if assets[0] == PER_VIDEO_ASSETS[0]]
    return Plan(new_partitions=len(new), work=work, from_step0=step0)


def dataset_in_worker() -> tuple[int | None, str | None]:
    """In a worker: materialize the dataset; (items, None) or (None, why it failed)."""
    from vr_assets.graph import DATASET_JOB

    _spec, instance, defs = worker_context()
    res = defs.resolve_job_def(DATASET_JOB).execute_in_process(
        instance=instance, raise_on_error=False, run_config=QUIET_CONSOLE
    )
    if not res.success:
        return None, failure_text(res)
    mats = res.asset_materializations_for_node("dataset")
    items = mats[0].metadata.get("items") if mats else None
    return (int(items.value) if items is not None else None), None  # type: ignore[union-attr]


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
    """Step 0's media for `videos` (see `vr_assets.prefetch`), in hand-out order unless it asks ahead.

    It starts before the plan (so it has the CPU the workers' start-up leaves idle); `MediaPrefetch.drop`
    then takes out the videos the plan does not start from step 0. With `workflow.ask_ahead` it asks
    steps 0 and 1a's questions too, only for videos without a `filter_result` record (the plan runs those).
    """
    from vr_assets.media_cache import media_tool
    from vr_assets.prefetch import AskAhead, MediaPrefetch

    ahead = None
    if spec.workflow.ask_ahead and not spec.offline_teacher:
        ahead = AskAhead(spec, spec.vlm.limits.max_concurrency or spec.workflow.max_workers)
        # smallest file first: the cheapest media, so the most questions out before the workers are up;
        # a missing file first, like the hand-out: it fails fast with its own error
        videos = sorted(videos, key=lambda v: -1 if (size := sizes.get(v.key)) is None else size)
    return MediaPrefetch(spec, media_tool(spec), videos, ahead).start()


def run_pipeline(
    spec: Spec,
    *,
    stale: bool = False,
    only: list[str] | None = None,
    parallel: int | None = None,
    build_dataset: bool = True,
    progress: Progress = print,
) -> RunSummary:
    """Discover, plan, run what is missing, write the dataset.

    Dagster work (the plan, each video's run, the dataset) happens in the worker processes, whose
    forkserver loads Dagster once: this process does not load it at all, and the media prefetch gets
    the CPU meanwhile. With one worker, everything runs here.
    """
    t0 = time.perf_counter()
    if (parallel or spec.workflow.max_workers) > 1:
        prestart_workers(spec)
    home = ensure_dagster_home(spec)
    os.environ["VR_HOST_SLOTS_DIR"] = host_slots_dir(spec)
    videos, _ = VideoRegistry(spec.results_dir).sync(discover(spec))
    all_keys = sorted(videos)
    keys = all_keys
    if only:
        unknown = [k for k in only if k not in keys]
        if unknown:
            raise SpecError(f"unknown video partition(s): {unknown}")
        keys = [k for k in keys if k in only]
    summary = RunSummary(videos=len(keys))
    width = min(len(keys), parallel or max(2, spec.workflow.max_workers))
    sizes = file_sizes(videos[k] for k in keys)
    order = hand_out_order({k: videos[k] for k in keys}, sizes)  # for the prefetch too
    prefetch = None
    if width > 1 and spec.media.prefetch:
        prefetch = start_prefetch(spec, list(order.values()), sizes)
    try:
        with Workers(spec, width) as workers:
            plan: Plan = workers.call(plan_in_worker, keys, all_keys, stale)
            work = {k: plan.work[k] for k in order if k in plan.work}
            if prefetch is not None:
                prefetch.drop(set(keys) - set(plan.from_step0))
            progress(f"{len(videos)} videos discovered ({plan.new_partitions} new); Dagster home {home}")
            summary.skipped_up_to_date = len(keys) - len(work)
            progress(f"{len(work)} to run, {summary.skipped_up_to_date} already up to date")
            if work:
                progress(f"running {len(work)} video(s), {min(width, len(work))} at a time")
            for n, (k, ok, why) in enumerate(workers.run(work, prefetch.handed_out if prefetch else None), start=1):
                summary.ran += 1
                if ok:
                    summary.succeeded.append(k)
                else:
                    summary.failed[k] = why
                progress(f"[{n}/{len(work)}] {k}: {'ok' if ok else 'FAILED: ' + why}")
            if prefetch is not None:
                prefetch.stop()
                progress(prefetch.summary())
                prefetch = None
            if build_dataset:
                try:
                    summary.dataset_items, why = workers.call(dataset_in_worker)
                except BrokenProcessPool as e:  # a worker died during the videos: the pool takes no more work
                    why = f"worker process failed: {e!r}"
                if why is not None:
                    summary.failed["dataset"] = why
                    progress(f"dataset FAILED: {why}")
                else:
                    progress(f"dataset: {summary.dataset_items} items in {Path(spec.results_dir) / 'step_4_output'}")
    finally:
        if prefetch is not None:  # the run stopped early (an error, ^C)
            prefetch.stop(answers=False)
    summary.seconds = time.perf_counter() - t0
    progress(
        f"done in {summary.seconds:.1f}s: {len(summary.succeeded)} ok, {len(summary.failed)} failed, "
        f"{summary.skipped_up_to_date} up to date"
    )
    return summary


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vr-annotate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run", help="discover videos, materialize what is missing, write the dataset")
    run_p.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    run_p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. workflow.max_workers=16")
    run_p.add_argument("--stale", action="store_true", help="also re-run partitions whose inputs/prompts changed")
    run_p.add_argument("--video", action="append", dest="videos", help="only this partition key (repeatable)")
    run_p.add_argument("--parallel", type=int, help="videos in flight (worker processes; default workflow.max_workers)")
    run_p.add_argument("--no-dataset", action="store_true", help="skip writing the merged dataset")
    sub.add_parser("default-spec", help="print a commented spec with every field and its default")
    demo_p = sub.add_parser("demo", help="annotate the bundled sample videos (offline teacher without a key)")
    demo_p.add_argument("--results", default="results/demo", help="results folder")
    demo_p.add_argument("--videos", help="video folder (default: the bundled samples)")
    args = parser.parse_args(argv)

    if args.cmd == "default-spec":
        sys.stdout.write(default_spec_text())
        return 0
    if args.cmd == "demo":
        from vr_assets.demo import run_demo

        return run_demo(results=args.results, videos=args.videos)
    try:
        spec = load_spec(args.config, args.overrides)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    summary = run_pipeline(
        spec, stale=args.stale, only=args.videos, parallel=args.parallel, build_dataset=not args.no_dataset,
        progress=lambda m: print(m, flush=True),
    )
    # The interpreter's final garbage collection walks every object Dagster loaded (~1 s of wall
    # after the work is done); nothing needs collecting on the way out.
    gc.freeze()
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
