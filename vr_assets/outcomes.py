"""One outcome per discovered entry, and a short summary of them by kind.

A run leaves each video in exactly one state: annotated (its task items exist), stopped at step 0 (off-domain,
too long, too short to chunk: not a failure, with its reason), failed (the run's one-line reason), or skipped
at discovery (not a video file: a dangling symlink, a folder named `x.mp4`, a bad JSONL line ...). A video in
none of these has not run yet (an interrupted run, or `--video` left it out). Dagster-free: the CLI calls it
after the run with what it already has (the registry and results folder, its failures, discovery's findings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from vr_assets.fsnames import FsText, printable
from vr_assets.parsing import excerpt
from vr_assets.records import DiscoveryFinding, Record
from vr_assets.registry import VideoRegistry
from vr_assets.store import JsonStore

OutcomeKind = Literal["annotated", "stopped", "failed", "skipped", "not_run"]
KIND_ORDER: tuple[OutcomeKind, ...] = ("annotated", "stopped", "failed", "skipped", "not_run")
KIND_TITLES: dict[str, str] = {
    "annotated": "annotated", "stopped": "stopped at step 0", "failed": "failed",
    "skipped": "skipped at discovery", "not_run": "not run yet",
}
REASON_CHARS = 240


class VideoOutcome(Record):
    """What became of one discovered entry."""

    name: FsText = Field(description="the video's path relative to its source root, or the skipped entry's path")
    key: str = Field("", description="partition key; empty for an entry skipped at discovery")
    kind: OutcomeKind
    reason: str = Field("", description="one printable line: why it stopped, failed or was skipped")

    def line(self) -> str:
        label = self.key or printable(self.name)
        return f"{label}: {self.reason}" if self.reason else label


class OutcomeSummary(Record):
    outcomes: list[VideoOutcome] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Outcomes per kind, every kind present (zeros included), in KIND_ORDER."""
        return {k: sum(o.kind == k for o in self.outcomes) for k in KIND_ORDER}

    def of_kind(self, kind: OutcomeKind) -> list[VideoOutcome]:
        return [o for o in self.outcomes if o.kind == kind]

    def render(self, per_kind: int = 10) -> str:
        """A headline of counts, then up to `per_kind` lines per kind that has a reason (annotated videos are
        only counted)."""
        counts = self.counts()
        videos = len(self.outcomes) - counts["skipped"]
        head = ", ".join(f"{n} {KIND_TITLES[k]}" for k, n in counts.items() if n)
        lines = [f"outcome: {videos} videos, {counts['skipped']} entries skipped: {head or 'nothing found'}"]
        for kind in KIND_ORDER[1:]:
            found = self.of_kind(kind)
            if not found:
                continue
            lines.append(f"{KIND_TITLES[kind]} ({len(found)}):")
            lines += [f"  {o.line()}" for o in found[:per_kind]]
            if len(found) > per_kind:
                lines.append(f"  ... and {len(found) - per_kind} more")
        return "\n".join(lines)


def _one_line(text: str) -> str:
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return excerpt(printable(first), REASON_CHARS)


def batch_waiting(results_dir: str | Path) -> dict[str, str]:
    """Videos whose batch-tier step waits for a provider batch: key -> one line (the step, the batch, its state)."""
    from vr_assets.providers.batch import batch_book_for

    book = batch_book_for(str(results_dir))
    states = {j.id: j.state for j in book.jobs()}
    per_video: dict[str, list[str]] = {}
    for e in book.entries():
        if e.state == "failed":
            continue
        where = f"batch {e.batch_id} ({states.get(e.batch_id, e.state)})" if e.batch_id else "the next batch"
        per_video.setdefault(e.video_key, []).append(f"{e.asset} waits for {where}")
    return {k: "; ".join(sorted(set(v))) for k, v in per_video.items()}


def outcome_summary(
    results_dir: str | Path,
    failed: Mapping[str, str],
    skipped: Iterable[DiscoveryFinding] = (),
    keys: Iterable[str] | None = None,
    store_url: str | None = None,
) -> OutcomeSummary:
    """Classify the registry's videos (or only `keys`) and discovery's skipped entries.

    `failed`: partition key -> why (the CLI's `RunSummary.failed`; a key that is no video, such as `dataset`,
    is ignored). A failure in this run wins over records an earlier run left.
    """
    videos = VideoRegistry(results_dir).load()
    store = JsonStore(store_url or results_dir)
    wanted = sorted(videos) if keys is None else [k for k in sorted(set(keys)) if k in videos]
    waiting = batch_waiting(results_dir)
    out: list[VideoOutcome] = []
    for key in wanted:
        name = videos[key].rel_path
        if key in failed:
            why = _one_line(failed[key]).removeprefix(f"video {key}: ")  # the line names the video already
            out.append(VideoOutcome(name=name, key=key, kind="failed", reason=why))
            continue
        screened = store.read_optional("filter_result", key)
        exported = store.read_optional("task_exports", key)
        if screened is not None and not screened.proceed:
            out.append(VideoOutcome(name=name, key=key, kind="stopped", reason=_one_line(screened.stop_reason)))
        elif exported is not None:
            items = sum(len(v) for v in exported.tasks.values())
            out.append(VideoOutcome(name=name, key=key, kind="annotated", reason=f"{items} items"))
        else:
            why = waiting.get(key) or "no failure and no task items yet"
            out.append(VideoOutcome(name=name, key=key, kind="not_run", reason=why))
    out += [VideoOutcome(name=f.path, kind="skipped", reason=_one_line(f.reason)) for f in skipped]
    return OutcomeSummary(outcomes=out)
