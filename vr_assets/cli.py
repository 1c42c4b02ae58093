"""`vr-annotate`: the same asset graph without the UI, on the same Dagster instance.

Each video partition runs as its own Dagster run, several at once in worker processes
(`vr_assets.runner`), so one video can be in QA while others are still captioning; the
provider limit holds across the workers.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from vr_assets.config import Spec, SpecError, load_spec
from vr_assets.instance_home import ensure_dagster_home
from vr_assets.records import VideoSource
from vr_assets.runner import QUIET_CONSOLE, execute, failure_text, host_slots_dir, prestart_workers

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
    from vr_assets.store import JsonStore

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


def longest_first(work: dict[str, list[str]], videos: dict[str, VideoSource]) -> dict[str, list[str]]:
    """Biggest files first: the longest videos start early instead of running alone at the end.

    File size stands in for duration (probing every video up front would cost an ffprobe each);
    a missing file sorts first and fails fast with its own error.
    """

    def size(key: str) -> int:
        try:
            return Path(videos[key].path).stat().st_size
        except (KeyError, OSError):
            return 1 << 62

    return {k: work[k] for k in sorted(work, key=lambda k: (-size(k), k))}


def start_prefetch(spec: Spec, work: dict[str, list[str]], videos: dict[str, VideoSource]) -> MediaPrefetch:
    """Step 0's media for the videos that start from step 0, in hand-out order (see `vr_assets.prefetch`)."""
    from vr_assets.graph import PER_VIDEO_ASSETS
    from vr_assets.media_cache import media_tool
    from vr_assets.prefetch import MediaPrefetch

    fresh = [videos[k] for k, assets in work.items() if k in videos and assets[:1] == [PER_VIDEO_ASSETS[0]]]
    return MediaPrefetch(spec, media_tool(spec), fresh).start()


def run_pipeline(
    spec: Spec,
    *,
    stale: bool = False,
    only: list[str] | None = None,
    parallel: int | None = None,
    build_dataset: bool = True,
    progress: Progress = print,
) -> RunSummary:
    t0 = time.perf_counter()
    if (parallel or spec.workflow.max_workers) > 1:
        prestart_workers(spec)
    from dagster import DagsterInstance

    from vr_assets.graph import DATASET_JOB, build_definitions
    from vr_assets.partitions import videos_partitions
    from vr_assets.registry import VideoRegistry
    from vr_assets.sensors import sync_partitions

    ensure_dagster_home(spec)
    instance = DagsterInstance.get()
    defs = build_definitions(spec)
    existing = set(instance.get_dynamic_partitions(videos_partitions.name))
    new, total = sync_partitions(spec, existing)
    if new:
        instance.add_dynamic_partitions(videos_partitions.name, new)
    videos = VideoRegistry(spec.results_dir).load()
    keys = sorted(videos)
    if only:
        unknown = [k for k in only if k not in keys]
        if unknown:
            raise SpecError(f"unknown video partition(s): {unknown}")
        keys = [k for k in keys if k in only]
    summary = RunSummary(videos=len(keys))
    progress(f"{total} videos discovered ({len(new)} new); Dagster home {os.environ['DAGSTER_HOME']}")
    work = longest_first(plan_work(spec, defs, instance, keys, stale), videos)
    summary.skipped_up_to_date = len(keys) - len(work)
    progress(f"{len(work)} to run, {summary.skipped_up_to_date} already up to date")
    width = min(len(work), parallel or max(2, spec.workflow.max_workers)) if work else 0
    if width:
        progress(f"running {len(work)} video(s), {width} at a time")
    os.environ["VR_HOST_SLOTS_DIR"] = host_slots_dir(spec)
    prefetch = start_prefetch(spec, work, videos) if width > 1 and spec.media.prefetch else None
    try:
        for n, (k, ok, why) in enumerate(
            execute(spec, work, width, prefetch.handed_out if prefetch else None), start=1
        ):
            summary.ran += 1
            if ok:
                summary.succeeded.append(k)
            else:
                summary.failed[k] = why
            progress(f"[{n}/{len(work)}] {k}: {'ok' if ok else 'FAILED: ' + why}")
    finally:
        if prefetch is not None:
            prefetch.stop()
            progress(prefetch.summary())
    if build_dataset:
        res = defs.resolve_job_def(DATASET_JOB).execute_in_process(
            instance=instance, raise_on_error=False, run_config=QUIET_CONSOLE
        )
        if not res.success:
            summary.failed["dataset"] = failure_text(res)
            progress(f"dataset FAILED: {summary.failed['dataset']}")
        else:
            mats = res.asset_materializations_for_node("dataset")
            items = mats[0].metadata.get("items") if mats else None
            summary.dataset_items = int(items.value) if items is not None else None  # type: ignore[union-attr]
            progress(f"dataset: {summary.dataset_items} items in {Path(spec.results_dir) / 'step_4_output'}")
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
