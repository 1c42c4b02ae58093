"""Quality checks on step outputs.

They run inside the asset that produced the output (declared `check_specs`), so a video's
checks cost no extra Dagster step; the same item rules let the dataset asset drop items
that fail error-level checks. The item rules reach Dagster as two checks, one per severity,
each listing its failures by rule: a check result is three stored events and a lookup of the
target materialization, and 22 per-rule checks were half of a video run's events.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from vr_assets import quality
from vr_assets.quality import QUALITY_CHECKS, QUALITY_VERSION, ExampleIndex, quality_problems, video_problems
from vr_assets.records import Captions, ChunkCaptions, Highlight, Record, TaskExports, TaskItem

if TYPE_CHECKING:
    from vr_assets.judgments import ItemJudgments

ERROR = AssetCheckSeverity.ERROR
WARN = AssetCheckSeverity.WARN

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i cannot|i can't|i can not|i am unable|i'm unable|as an ai\b|"
    r"unable to (?:view|see|process|analy[sz]e)|i do not have (?:access|the ability))",
    re.IGNORECASE,
)
_META_TALK = re.compile(
    r"\b(?:the|this|these|provided|given)\s+(?:dense\s+|global\s+|chunk\s+|detailed\s+)?"
    r"(?:captions?|descriptions?|transcripts?)\b",
    re.IGNORECASE,
)
_OPTION_LINE = re.compile(r"^([A-Z])\.\s+(.+?)\s*$", re.MULTILINE)
_YES_NO = re.compile(r"^(yes|no)$", re.IGNORECASE)
_MMSS = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{2}(?:\.\d+)?)$")


@dataclass
class Outcome:
    name: str
    severity: AssetCheckSeverity
    description: str
    failures: list[str] = field(default_factory=list)

    def result(self, asset: str) -> AssetCheckResult:
        return AssetCheckResult(
            asset_key=asset,
            check_name=self.name,
            passed=not self.failures,
            severity=self.severity,
            metadata={
                "failures": len(self.failures),
                "details": MetadataValue.md("\n".join(f"- {f}" for f in self.failures[:20]) or "all good"),
            },
        )


# ---------------------------------------------------------------- item rules


def _seconds(value: str) -> float | None:
    m = _MMSS.match(value.strip())
    if not m:
        return None
    h, mm, ss = m.groups()
    return int(h or 0) * 3600 + int(mm) * 60 + float(ss)


def _option_key(text: str) -> str:
    """Option text as a reader compares it: case, punctuation and a leading article do not make it new."""
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words)


def mcq_problem(item: TaskItem, task: str) -> str | None:
    options = _OPTION_LINE.findall(item.question)
    letters = [letter for letter, _ in options]
    texts = {_option_key(t) for _, t in options}
    if len(options) < 3 or len(texts) < len(options):
        return f"MCQ needs >= 3 distinct options, has {len(texts)}"
    letter = item.answer.strip()[:1] if task == "mcq_openended" else item.answer.strip()
    if letter not in letters:
        return f"answer {item.answer[:20]!r} is not one of the options {letters}"
    return None


def bcq_problem(item: TaskItem, task: str) -> str | None:
    head = item.answer.strip().split(maxsplit=1)[0].strip(",.;:!") if item.answer.strip() else ""
    ok = _YES_NO.match(item.answer.strip()) if task == "bcq" else _YES_NO.match(head)
    return None if ok else f"answer {item.answer[:30]!r} is not Yes/No"


def span_problem(item: TaskItem, duration: float) -> str | None:
    try:
        span = json.loads(item.answer)
        start, end = _seconds(span["start"]), _seconds(span["end"])
    except (ValueError, KeyError, TypeError):
        return f"answer {item.answer[:40]!r} is not a {{start, end}} time span"
    if start is None or end is None:
        return f"answer {item.answer[:40]!r} has unreadable times"
    if not start < end:
        return f"start {start:.1f}s is not before end {end:.1f}s"
    if end > duration + 1.0:
        return f"end {end:.1f}s is past the video's {duration:.1f}s"
    return None


def item_problems(
    task: str, item: TaskItem, duration: float, *, mode: str | None = None, examples: ExampleIndex | None = None
) -> list[tuple[str, str]]:
    """(check name, problem) for every item rule the item breaks, error- and warn-level alike.

    `mode` and `examples` (the pack's prompt examples) let the leakage rule compare the item with
    the example of the very prompt that wrote it; without them that rule is skipped.
    """
    found: list[tuple[str, str | None]] = []
    if task in ("mcq", "mcq_openended"):
        found.append(("mcq_well_formed", mcq_problem(item, task)))
    if task in ("bcq", "bcq_openended"):
        found.append(("bcq_yes_no", bcq_problem(item, task)))
    if task == "temporal_localization":
        found.append(("temporal_span_valid", span_problem(item, duration)))
    if not item.reasoning.strip():
        found.append(("reasoning_present", "reasoning is empty"))
    if _META_TALK.search(item.question) or _META_TALK.search(item.answer):
        found.append(("no_caption_talk", f"talks about the caption/description instead of the video: "
                      f"{item.question[:80]!r}"))
    out = [(name, p) for name, p in found if p]
    return out + quality_problems(task, item, duration, mode=mode, examples=examples)


def rule_problems(
    task: str, item: TaskItem, duration: float, *, mode: str | None = None, examples: ExampleIndex | None = None
) -> list[tuple[str, str]]:
    """(check name, problem) for every error-level rule the item breaks; checks and dataset share it."""
    return [(n, p) for n, p in item_problems(task, item, duration, mode=mode, examples=examples)
            if EXPORT_CHECKS[n][0] == ERROR]


def item_errors(
    task: str, item: TaskItem, duration: float, *, mode: str | None = None, examples: ExampleIndex | None = None
) -> list[str]:
    """Error-level problems: items that would teach a model something wrong."""
    return [p for _, p in rule_problems(task, item, duration, mode=mode, examples=examples)]


class ItemFailure(Record):
    """One rule one item breaks: what the task_exports metadata lists and the dataset report keeps."""

    video_key: str
    task: str
    index: int
    rule: str
    severity: Literal["error", "warn"]  # error: left out of the dataset (export.exclude_failed_checks); warn: kept
    reason: str
    question: str


def rules_fingerprint(examples: ExampleIndex | None) -> str:
    """What the item rules' verdicts depend on besides the item itself: the rules' code (this module and
    `vr_assets.quality`, read as source, so no edit goes unnoticed) and the prompt pack's examples."""
    h = hashlib.sha256(QUALITY_VERSION.encode())
    for module in (quality, sys.modules[__name__]):
        try:
            h.update(Path(module.__file__ or "").read_bytes())
        except OSError:  # no source beside the code (a zipped install): the declared version alone
            h.update(module.__name__.encode())
    h.update(json.dumps(examples.segments if examples is not None else None, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:32]


def item_failures(
    te: TaskExports, duration: float, examples: ExampleIndex | None = None, known: ItemJudgments | None = None
) -> list[ItemFailure]:
    """Every item rule every item of one video breaks, in task and item order: the rules on each item alone,
    then the rules that compare the video's items (`quality.video_problems`: a repeated question or answer).
    With `known` (the dataset build's), an item judged before in the same form is not judged again.

    A repeat counts only against an item the dataset keeps, so the item rules' errors go first: an item is
    not left out for copying one that is left out itself (an MCQ leaves with its open-ended twin)."""
    found: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for task, items in te.tasks.items():
        for n, it in enumerate(items):
            if known is None:
                found[(task, n)] = item_problems(task, it, duration, mode=te.mode, examples=examples)
            else:
                found[(task, n)] = known.problems(
                    task, it, duration, te.mode,
                    lambda t=task, i=it: item_problems(t, i, duration, mode=te.mode, examples=examples))
    left_out = {key for key, problems in found.items() if any(EXPORT_CHECKS[r][0] == ERROR for r, _ in problems)}
    left_out |= {(twin, n) for task, n in left_out if task in ("mcq", "mcq_openended")
                 for twin in ("mcq", "mcq_openended")}
    for task, n, rule, reason in video_problems(te.tasks, left_out):
        found[(task, n)].append((rule, reason))
    out: list[ItemFailure] = []
    for (task, n), problems in found.items():
        it = te.tasks[task][n]
        for rule, reason in problems:
            out.append(ItemFailure(
                video_key=te.video_key, task=task, index=n, rule=rule, reason=reason,
                severity="error" if EXPORT_CHECKS[rule][0] == ERROR else "warn",
                question=" ".join(it.question.split("\n", 1)[0].split())[:100],
            ))
    return out


def failures_markdown(failures: list[ItemFailure], limit: int = 60) -> str:
    """A table of failing items for the Dagster UI: item, rule, severity, reason, question."""
    if not failures:
        return "no item fails a check"
    rows = ["| item | rule | severity | reason | question |", "|---|---|---|---|---|"]
    for f in failures[:limit]:
        cells = (f"{f.task}[{f.index}]", f.rule, f.severity, f.reason, f.question)
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    if len(failures) > limit:
        rows.append(f"| … | {len(failures) - limit} more | | | |")
    return "\n".join(rows)


# ---------------------------------------------------------------- per-asset checks

CAPTION_SPECS = [
    AssetCheckSpec("captions_usable", asset="captions",
                   description="Global and dense captions are non-empty and are not refusals."),
]
CHUNK_SPECS = [
    AssetCheckSpec("chunks_cover_video", asset="chunk_captions",
                   description="Chunks start at 0, follow each other without gaps and reach the end of the video; "
                   "every chunk caption is non-empty."),
]
HIGHLIGHT_SPECS = [
    AssetCheckSpec("highlight_inside_video", asset="highlight",
                   description="The anomaly time and the clip window lie inside the video."),
]
EXPORT_CHECKS = {
    "mcq_well_formed": (ERROR, "Every MCQ has >= 3 distinct options and its answer letter is one of them."),
    "bcq_yes_no": (ERROR, "Every BCQ answer is Yes or No."),
    "temporal_span_valid": (ERROR, "Temporal localization answers have start < end within the video."),
    "reasoning_present": (ERROR, "Every item has non-empty reasoning."),
    "no_caption_talk": (ERROR, "No question or answer talks about 'the caption'/'the description' instead of the "
                        "video (the reasoning: no_source_reference)."),
    **QUALITY_CHECKS,
}
ITEM_CHECKS: dict[str, AssetCheckSeverity] = {"items_pass_error_rules": ERROR, "items_pass_warning_rules": WARN}
EXPORT_SPECS = [
    AssetCheckSpec(
        name, asset="task_exports",
        description=("No item breaks a rule that leaves it out of the dataset: " if sev == ERROR else
                     "No item breaks a rule that only flags it (the item stays in the dataset): ")
        + "; ".join(f"{rule}: {d}" for rule, (s, d) in EXPORT_CHECKS.items() if s == sev),
    )
    for name, sev in ITEM_CHECKS.items()
]


def check_captions(c: Captions) -> list[Outcome]:
    o = Outcome("captions_usable", ERROR, CAPTION_SPECS[0].description or "")
    for label, text in (("global", c.global_caption), ("dense", c.dense_caption)):
        if not text.strip():
            o.failures.append(f"{label} caption is empty")
        elif _REFUSAL.search(text):
            o.failures.append(f"{label} caption looks like a refusal: {text[:80]!r}")
    return [o]


def check_chunks(cc: ChunkCaptions, duration: float) -> list[Outcome]:
    o = Outcome("chunks_cover_video", ERROR, CHUNK_SPECS[0].description or "")
    expected = 0.0
    for c in sorted(cc.chunks, key=lambda c: c.chunk_index):
        if abs(c.timestamp_start - expected) > 0.05:
            o.failures.append(f"chunk {c.chunk_index} starts at {c.timestamp_start:.2f}s, expected {expected:.2f}s")
        if not c.caption.strip():
            o.failures.append(f"chunk {c.chunk_index} caption is empty")
        expected = c.timestamp_end
    # the reference plan drops a last sliver under 1 s; anything larger uncovered is a gap
    if duration - expected > 1.0:
        o.failures.append(f"chunks end at {expected:.2f}s but the video lasts {duration:.2f}s")
    return [o]


def check_highlight(h: Highlight, duration: float) -> list[Outcome]:
    o = Outcome("highlight_inside_video", ERROR, HIGHLIGHT_SPECS[0].description or "")
    c = h.highlight_chunk
    if c is not None:
        if not 0 <= c.anomaly_timestamp_sec <= duration:
            o.failures.append(f"anomaly time {c.anomaly_timestamp_sec:.2f}s outside 0-{duration:.2f}s")
        if not (0 <= c.timestamp_start < c.timestamp_end <= duration + 0.01):
            o.failures.append(f"window {c.timestamp_start:.2f}-{c.timestamp_end:.2f}s outside 0-{duration:.2f}s")
    return [o]


def check_exports(
    te: TaskExports, duration: float, examples: ExampleIndex | None = None,
    failures: list[ItemFailure] | None = None,
) -> list[Outcome]:
    """One outcome per item rule; `failures` (from `item_failures`) saves computing the item rules twice."""
    outcomes = {name: Outcome(name, sev, d) for name, (sev, d) in EXPORT_CHECKS.items()}
    for f in failures if failures is not None else item_failures(te, duration, examples):
        outcomes[f.rule].failures.append(f"{f.task}[{f.index}]: {f.reason}")
    return list(outcomes.values())


def export_check_results(outcomes: list[Outcome]) -> list[AssetCheckResult]:
    """The rule outcomes as task_exports' two asset checks, one per severity; the metadata counts the
    failures of each rule (every rule of that severity, passing ones at 0) and lists them."""
    results = []
    for name, sev in ITEM_CHECKS.items():
        mine = [o for o in outcomes if o.severity == sev]
        failing = [f"{o.name}: {f}" for o in mine for f in o.failures]
        results.append(AssetCheckResult(
            asset_key="task_exports", check_name=name, passed=not failing, severity=sev,
            metadata={
                "failures": len(failing),
                "rules_failed": sum(bool(o.failures) for o in mine),
                "failures_by_rule": MetadataValue.json({o.name: len(o.failures) for o in mine}),
                "details": MetadataValue.md("\n".join(f"- {f}" for f in failing[:40]) or "all good"),
            },
        ))
    return results
