"""People's reviews of QA items: accept, reject or edit, stored per video beside the results.

A review is data, not a UI state: `<results_dir>/reviews/<key>.json` holds one `VideoReviews`
record, and the `dataset` asset reads it (`apply_reviews`). Each review is keyed by a hash of the
item's QA type and its *original* question and answer, so a re-run that reproduces the same item
(the answer cache makes that the normal case) keeps its review, and a review whose item is gone
is reported as orphaned instead of silently applied to something else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from vr_assets.records import QAItem, QAResult, Record, TaskExports
from vr_assets.store import atomic_write_text

Action = Literal["accept", "reject", "edit"]


def item_key(item: QAItem) -> str:
    """Stable across runs: QA type + original question + original answer (whitespace-folded)."""

    def fold(s: str) -> str:
        return " ".join(s.split())

    blob = json.dumps([item.qa_type, fold(item.question), fold(item.answer)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ItemEdit(Record):
    """The fields a reviewer may change; None keeps the original."""

    question: str | None = None
    options: list[str] | None = None
    answer: str | None = None
    reasoning: str | None = None


class ItemReview(Record):
    item_key: str
    action: Action
    edit: ItemEdit | None = Field(None, description="only for action 'edit'")
    qa_type: str = Field(description="the original item, so an orphaned review still says what it was about")
    question: str
    answer: str
    note: str = ""
    at: str = Field(description="UTC time of the review, ISO 8601")


class VideoReviews(Record):
    video_key: str
    reviews: dict[str, ItemReview] = Field(default_factory=dict, description="item key -> review")


class ReviewCounts(Record):
    """What the dataset reports about reviews (QA items, not task items)."""

    reviewed: int = 0
    accepted: int = 0
    rejected: int = 0
    edited: int = 0
    orphaned: int = 0
    orphans: list[str] = Field(default_factory=list, description="'<video> <item key>: <question>' per orphan")

    def add(self, other: ReviewCounts) -> None:
        for f in ("reviewed", "accepted", "rejected", "edited", "orphaned"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.orphans += other.orphans


def reviews_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "reviews"


def reviews_path(results_dir: str | Path, key: str) -> Path:
    return reviews_dir(results_dir) / f"{key}.json"


def load_reviews(results_dir: str | Path, key: str) -> VideoReviews:
    p = reviews_path(results_dir, key)
    if not p.is_file():
        return VideoReviews(video_key=key)
    return VideoReviews.model_validate_json(p.read_text())


_write_lock = threading.Lock()


@contextmanager
def _locked(results_dir: str | Path) -> Iterator[None]:
    """One writer at a time, across the viewer's threads and any other process writing reviews."""
    folder = reviews_dir(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _write_lock, open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_review(results_dir: str | Path, key: str, item: QAItem, action: Action | None,
                edit: ItemEdit | None = None, note: str = "") -> VideoReviews:
    """Record (or, with action None, withdraw) one item's review; read-modify-write under a lock, written
    atomically."""
    if action == "edit" and (edit is None or not edit.model_dump(exclude_none=True)):
        raise ValueError(f"video {key}: an edit review needs at least one edited field")
    with _locked(results_dir):
        current = load_reviews(results_dir, key)
        k = item_key(item)
        if action is None:
            current.reviews.pop(k, None)
        else:
            current.reviews[k] = ItemReview(
                item_key=k, action=action, edit=edit if action == "edit" else None, qa_type=item.qa_type,
                question=item.question, answer=item.answer, note=note,
                at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
        atomic_write_text(reviews_path(results_dir, key), current.model_dump_json(indent=2))
        return current


def edited_item(item: QAItem, edit: ItemEdit) -> QAItem:
    return item.model_copy(update=edit.model_dump(exclude_none=True))


def reviewed_items(items: list[QAItem], reviews: VideoReviews, video_key: str) -> tuple[list[QAItem], ReviewCounts]:
    """The items with reviews applied (rejected left out, edits in), and the counts; orphans are reviews
    whose key no current item has."""
    counts = ReviewCounts()
    present: set[str] = set()
    out: list[QAItem] = []
    for item in items:
        k = item_key(item)
        r = reviews.reviews.get(k)
        if r is None:
            out.append(item)
            continue
        if k not in present:
            counts.reviewed += 1
            counts.accepted += r.action == "accept"
            counts.rejected += r.action == "reject"
            counts.edited += r.action == "edit"
        present.add(k)
        if r.action == "reject":
            continue
        out.append(edited_item(item, r.edit) if r.action == "edit" and r.edit else item)
    for k, r in reviews.reviews.items():
        if k not in present:
            counts.orphaned += 1
            counts.orphans.append(f"{video_key} {k}: {' '.join(r.question.split())[:100]}")
    return out, counts


def apply_reviews(
    te: TaskExports, qa: QAResult | None, results_dir: str | Path, *, video_id: str
) -> tuple[TaskExports, ReviewCounts, list[str]]:
    """One video's exported items with its reviews honoured: (items, counts, skip reasons of edited items).

    Without a reject or an edit the stored export is returned as is; otherwise the video's task items
    are made again from its reviewed QA items by the same step-4 rules: a rejected QA item leaves with
    every task item it made (an MCQ with its open-ended twin and its source), an edited one carries the
    edited text, and an item whose edit breaks a step-4 rule is skipped with its reason. The result keeps
    the teacher's option order, so the dataset pass places (and letter-remaps) the MCQs and runs the
    quality checks on the reviewed text, exactly as on unreviewed items.
    """
    from vr_assets.export import task_exports_for_video

    reviews = load_reviews(results_dir, te.video_key)
    if not reviews.reviews:
        return te, ReviewCounts(), []
    items, counts = reviewed_items(qa.items if qa else [], reviews, te.video_key)
    if not (counts.rejected or counts.edited):
        return te, counts, []
    rebuilt, skipped = task_exports_for_video(te.video_key, te.mode, items, video_id)
    # the stored export already reported the skips of unreviewed items; report only what the edits caused
    before = set(task_exports_for_video(te.video_key, te.mode, qa.items if qa else [], video_id)[1])
    return rebuilt, counts, [s for s in skipped if s not in before]


def review_report_markdown(counts: ReviewCounts, max_orphans: int = 20) -> str:
    """The dataset report's review section."""
    lines = [
        f"**Reviews:** {counts.reviewed} items reviewed: {counts.accepted} accepted, {counts.rejected} rejected "
        f"(left out), {counts.edited} edited; {counts.orphaned} orphaned (their item no longer exists)"
    ]
    if counts.orphans:
        lines += [""] + [f"- orphaned review {o}" for o in counts.orphans[:max_orphans]]
        if len(counts.orphans) > max_orphans:
            lines.append(f"- … and {len(counts.orphans) - max_orphans} more")
    return "\n".join(lines) + "\n"
