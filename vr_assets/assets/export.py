"""Step 4: per-video task items, then the merged dataset files and report."""


from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetsDefinition, AssetSpec, Failure, MetadataValue, Output, asset

from vr_assets.assets.common import OFFLINE_NOTE, Pipeline, data_version_of, md_escape
from vr_assets.checks import (
    EXPORT_SPECS,
    ItemFailure,
    check_exports,
    export_check_results,
    failures_markdown,
    item_failures,
    rules_fingerprint,
)
from vr_assets.execution.dataset_gate import GateAbandoned, wait_for_gate
from vr_assets.export import (
    dataset_report_markdown,
    place_and_exclude,
    task_exports_for_video,
    video_id_for,
    write_dataset,
    write_json_atomic,
)
from vr_assets.fsnames import shown
from vr_assets.judgments import JUDGMENTS_FILE, ItemJudgments
from vr_assets.mcq_letters import SCANNER_VERSION
from vr_assets.media_cache import code_version
from vr_assets.partitions import videos_partitions
from vr_assets.quality import QUALITY_VERSION, ExampleIndex
from vr_assets.records import CallUsage, Captions, FilterResult, QAResult, TaskExports, UsageSummary
from vr_assets.reviews import ReviewCounts, apply_reviews, review_report_markdown
from vr_assets.storage import results_root
from vr_assets.store import ASSET_RECORDS, each_video
from vr_assets.tao_mirror import MIRRORS, mirror_lines, write_mirror_files
from vr_assets.viewer.links import video_page_url

USAGE_ASSETS = ("filter_result", "captions", "chunk_captions", "highlight", "description", "qa")
REPORT_JSON = "dataset_report.json"
# People's reviews (`vr-annotate view`): records the dataset reads, shown in the lineage as its input
REVIEWS = AssetSpec(
    "reviews", group_name="dataset", kinds={"json"},
    description="Accept / reject / edit decisions on QA items, made in the viewer (vr-annotate view) and kept per "
    "video in <results_dir>/reviews/<key>.json. Not materialized by Dagster: the dataset reads them when it builds.",
)
RECORD_ASSETS = tuple(ASSET_RECORDS)  # every record the dataset pass reads of a video


def build(pipe: Pipeline) -> list[AssetsDefinition | AssetSpec]:
    spec = pipe.spec
    examples = ExampleIndex.of(pipe.pack)  # what the leakage rule compares items with

    @asset(
        name="task_exports",
        partitions_def=videos_partitions,
        group_name="step_4_export",
        code_version=code_version("task_exports/4", SCANNER_VERSION, QUALITY_VERSION, spec.data.video_root),
        kinds={"python", "json"},
        owners=["team:video-data"],
        check_specs=EXPORT_SPECS,
        description="Step 4 for one video: its QA items turned into tao-vl-reason-v1.0 task items (MCQ options in "
        "the teacher's order, placed by the dataset asset; Yes/No answers, time spans as JSON), with quality checks.",
    )
    def task_exports(context: AssetExecutionContext, captions: Captions, qa: QAResult) -> Iterator[object]:
        key = context.partition_key
        # a text id: a name that is not UTF-8 shows its odd bytes as \xff (the registry keeps the real name)
        video_id = shown(video_id_for(captions.video.path, spec.data.video_root))
        result, skipped = task_exports_for_video(key, captions.mode, qa.items, video_id)
        for s in skipped:
            context.log.warning(f"video {key}: item skipped: {s}")
        counts = {t: len(v) for t, v in result.tasks.items()}
        duration = captions.probe.duration_sec
        # judged in the teacher's order, as stored: the reasoning's letters name these options; the dataset
        # asset judges the items again after it moved the options and renamed those letters
        failures = item_failures(result, duration, examples)
        failing = {(f.task, f.index) for f in failures if f.severity == "error"}
        yield Output(
            result,
            data_version=data_version_of(result),
            metadata={"items": sum(counts.values()), "items_per_task": MetadataValue.json(counts),
                      "skipped_items": len(skipped), "video_id": video_id,
                      "mcq_keep_teacher_order": sum(bool(s.keep_order) for s in result.mcq_sources),
                      "items_failing_checks": len(failing),
                      "check_failures": MetadataValue.md(failures_markdown(failures)),
                      "viewer": MetadataValue.url(video_page_url(spec.viewer.base_url, key))},
        )
        yield from export_check_results(check_exports(result, duration, failures=failures))

    @asset(
        name="dataset",
        deps=[task_exports, REVIEWS],
        group_name="dataset",
        code_version=code_version("dataset/3", SCANNER_VERSION, QUALITY_VERSION, spec.export.model_dump(), spec.license,
                                  spec.description_extra, spec.data.video_root),
        kinds={"python", "json", "parquet"} if "parquet" in spec.export.formats else {"python", "json"},
        owners=["team:video-data"],
        description="All videos' task items merged into <storage_url or results_dir>/step_4_output (one "
        "tao-vl-reason-v1.0 file per task, plus the other formats chosen in the spec), TAO's per-step JSONL files, and "
        "a report. People's reviews (vr-annotate view) are applied first; then MCQ options are placed so the answer "
        "letters are balanced over the dataset (the reasoning's letters move with them), and the checks judge every "
        "item in its final form.",
    )
    def dataset(context: AssetExecutionContext) -> Output[None]:
        try:  # the build `vr-annotate run` queued early starts once its videos have ended (no gate: at once)
            wait_for_gate(context.instance, context.run.run_id, context.log)
        except GateAbandoned as e:
            raise Failure(description=str(e)) from None
        keys = sorted(pipe.registry.load())
        root = results_root(spec)
        per_video: list[TaskExports] = []
        durations: dict[str, float] = {}  # video key -> probed duration, for the item checks
        stopped = 0
        review_counts = ReviewCounts()
        review_skipped: list[str] = []
        mirror: dict[str, list[str]] = {name: [] for name in MIRRORS}
        usages: list[CallUsage] = []
        # one pass: a video's records, parsed once for the export, TAO's step files and the usage report
        for k, store in each_video(root, keys, RECORD_ASSETS):
            f: FilterResult | None = store.read_optional("filter_result", k)
            stopped += f is not None and not f.proceed
            for name, lines in mirror_lines(store, k).items():
                mirror[name] += lines
            for asset_name in USAGE_ASSETS:
                usages += getattr(store.read_optional(asset_name, k), "usage", [])
            te: TaskExports | None = store.read_optional("task_exports", k)
            if te is None:
                continue
            cap: Captions = store.read("captions", k)
            # reviews first, on the teacher's order (they are keyed by the original question and answer): a
            # rejected QA item leaves with all its task items (an MCQ with its twin and source), an edited one
            # goes through the step-4 rules again; placement and the checks below then see the final text
            te, counts, review_skips = apply_reviews(
                te, store.read_optional("qa", k), spec.results_dir,
                video_id=shown(video_id_for(cap.video.path, spec.data.video_root)),
            )
            review_counts.add(counts)
            review_skipped += review_skips
            durations[k] = cap.probe.duration_sec
            per_video.append(te)
        # place the MCQ options (letters in the reasoning renamed) BEFORE the checks, so the checks judge
        # each item as it is written; then exclude (an MCQ with its twin and source), then write. Items the
        # last build judged in the same form keep its verdicts (`vr_assets.judgments`).
        judging = spec.export.exclude_failed_checks
        judgments_path = root / "cache" / JUDGMENTS_FILE
        fingerprint = rules_fingerprint(examples)
        known = ItemJudgments.load(judgments_path, fingerprint) if judging else ItemJudgments(fingerprint)
        if known.note:
            (context.log.warning if known.damaged else context.log.info)(known.note)

        def judge(te: TaskExports) -> list[ItemFailure]:
            return item_failures(te, durations[te.video_key], examples, known)

        per_video, placement, excluded = place_and_exclude(
            per_video, judge if judging else None, spec.export.mcq_seed
        )
        out_dir = root / "step_4_output"
        extra = spec.description_extra
        if pipe.offline_teacher:
            extra = f"{extra} ({OFFLINE_NOTE})".strip()
        report = write_dataset(
            out_dir, per_video, formats=spec.export.formats, media_root=shown(spec.data.video_root) or None,
            license=spec.license, description_extra=extra, excluded=excluded, placement=placement,
            skipped=review_skipped,
        )
        # the report as JSON beside the task files (the validator skips JSON without the tao format tag)
        write_json_atomic(out_dir / REPORT_JSON, report.model_dump(mode="json"))
        mirrors = write_mirror_files(root, mirror)
        if judging and known.changed():
            known.save(judgments_path)
        usage_md, totals = usage_report(usages)
        md = dataset_report_markdown(report, usage_md)
        videos_line = f"**Videos:** {len(keys)} registered, {len(per_video)} exported, {stopped} stopped at step 0"
        md = md.rstrip() + "\n\n" + videos_line + "\n\n" + review_report_markdown(review_counts)
        for orphan in review_counts.orphans:
            context.log.warning(f"review of an item that no longer exists: {orphan}")
        if pipe.offline_teacher:
            md = f"## ⚠ {OFFLINE_NOTE}\n\n" + md
        total_items = sum(report.items_per_task.values())
        headline = f"{total_items} items in {len(report.items_per_task)} tasks from {len(per_video)} videos"
        if pipe.offline_teacher:
            headline += f" · {OFFLINE_NOTE}"
        context.log.info(f"dataset: {sum(report.items_per_task.values())} items from {len(per_video)} videos "
                         f"into {out_dir}")
        return Output(
            None,
            metadata={
                "summary": headline,
                "report": MetadataValue.md(md),
                "items": sum(report.items_per_task.values()),
                "videos_exported": len(per_video),
                "excluded_items": len(excluded),
                "items_judged": known.judged,
                "item_judgments_reused": known.reused,
                "report_json": MetadataValue.path(str(out_dir / REPORT_JSON)),
                "mcq_shuffled": report.mcq_placement.shuffled,
                "mcq_kept_order": report.mcq_placement.kept_order,
                "mcq_letter_balance": MetadataValue.json(report.mcq_letter_balance),
                "reviewed_items": review_counts.reviewed,
                "rejected_items": review_counts.rejected,
                "edited_items": review_counts.edited,
                "orphaned_reviews": review_counts.orphaned,
                "files": MetadataValue.json([str(f)[len(str(out_dir)) + 1 :] for f in report.files]),
                "tao_step_files": MetadataValue.json(mirrors),
                "total_cost_usd": MetadataValue.float(totals.cost_usd),
                "total_model_calls": totals.calls,
                "output_dir": MetadataValue.path(str(out_dir)),
            },
        )

    return [task_exports, dataset, REVIEWS]


def usage_report(usages: list[CallUsage]) -> tuple[str, UsageSummary]:
    """Totals per step and per model from the usage stored with every record."""
    by_step: dict[str, list[CallUsage]] = {}
    by_model: dict[str, list[CallUsage]] = {}
    for u in usages:
        by_step.setdefault(u.step, []).append(u)
        by_model.setdefault(f"{u.provider}:{u.model}", []).append(u)

    def rows(groups: dict[str, list[CallUsage]]) -> str:
        out = []
        for name in sorted(groups):
            s = UsageSummary.of(groups[name])
            out.append(f"| {md_escape(name)} | {s.calls} | {s.cached_calls} | {s.prompt_tokens} | {s.output_tokens} | "
                       f"{s.retries} | {s.cost_usd:.4f} |")
        return "\n".join(out)

    head = (
        "| {} | calls | cached | prompt tok | output tok | retries | cost USD |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
    )
    md = head.format("step") + rows(by_step) + "\n\n" + head.format("model") + rows(by_model)
    return md, UsageSummary.of(usages)

