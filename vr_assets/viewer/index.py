"""The viewer's compact index: one small row per video, refreshed only where files changed.

A page of the index must not read every video's records (7 JSON files each, 70 000 at 10 000
videos). Rows are built once and kept in memory and in `<results_dir>/viewer/index.json`, each with
the mtimes of the files it was made from. A refresh first looks at the folders: every write in the
results folder is an atomic rename, which changes the folder's mtime, so an unchanged folder is
not listed again; a changed one is listed with `os.scandir` and only the videos whose files moved
are read again. Filtering, search and paging then run over the rows in memory.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from vr_assets.fsnames import printable
from vr_assets.mcq_letters import SCANNER_VERSION
from vr_assets.quality import QUALITY_VERSION, ExampleIndex
from vr_assets.records import Captions, ChunkCaptions, FilterResult, Highlight, QAResult, TaskExports
from vr_assets.registry import VideoRegistry
from vr_assets.reviews import load_reviews, reviewed_items, reviews_dir
from vr_assets.store import ASSET_RECORDS, PER_VIDEO_ASSETS, atomic_write_text

Outcome = Literal["annotated", "stopped", "failed", "incomplete", "pending"]
# the files a row is made from (the others only count as present or not)
READ_ASSETS = ("filter_result", "captions", "chunk_captions", "highlight", "qa", "task_exports")
# rows keep check counts: a rule change (the quality rules' or the letter scanner's version) builds them again
INDEX_VERSION = f"2/{QUALITY_VERSION}/{SCANNER_VERSION}"
SAVE_AFTER = 100  # rows rebuilt in one refresh that are worth writing index.json for at once
SAVE_EVERY_S = 60.0
FailureLookup = Callable[[], dict[str, tuple[float, str]]]


class VideoRow(BaseModel):
    """What the index shows and filters on for one video."""

    key: str
    rel_path: str = ""
    source: str = ""
    mode: str | None = None
    outcome: Outcome = "pending"
    reason: str = Field("", description="why it stopped or failed")
    last_step: str = Field("", description="the last asset with a stored record")
    duration_sec: float | None = None
    items_per_task: dict[str, int] = Field(default_factory=dict)
    qa_items: int = 0
    check_failures: dict[str, int] = Field(default_factory=dict, description="check name -> failures")
    reviewed: int = 0
    rejected: int = 0
    edited: int = 0
    orphaned: int = 0
    review_state: Literal["none", "partial", "done"] = "none"


def check_failures(
    cap: Captions | None, cc: ChunkCaptions | None, hl: Highlight | None, te: TaskExports | None, duration: float,
    examples: ExampleIndex | None = None,
) -> dict[str, list[str]]:
    """Every quality check's failures for one video (only checks that failed), as the assets compute them
    (`examples`, the pack's prompt examples, for the leakage rule as task_exports runs it)."""
    from vr_assets.checks import check_captions, check_chunks, check_exports, check_highlight

    outcomes = []
    if cap is not None:
        outcomes += check_captions(cap)
    if cc is not None:
        outcomes += check_chunks(cc, duration)
    if hl is not None:
        outcomes += check_highlight(hl, duration)
    if te is not None:
        outcomes += check_exports(te, duration, examples)
    return {o.name: o.failures for o in outcomes if o.failures}


def build_row(results_dir: Path, key: str, video: dict[str, Any], present: set[str],
              examples: ExampleIndex | None = None) -> VideoRow:
    """Read one video's records (only those present) and summarise them."""

    def read(asset: str) -> Any:
        if asset not in present:
            return None
        p = results_dir / "assets" / asset / f"{key}.json"
        try:
            return ASSET_RECORDS[asset].model_validate_json(p.read_bytes())
        except FileNotFoundError:
            return None

    # names as readable text (fsnames.FsText keeps a name that is not UTF-8 as surrogate escapes): the rows go
    # out as UTF-8 JSON
    row = VideoRow(key=key, rel_path=printable(str(video.get("rel_path", ""))),
                   source=printable(str(video.get("source", ""))), mode=video.get("mode"))
    done = [a for a in PER_VIDEO_ASSETS if a in present]
    row.last_step = done[-1] if done else ""
    fr: FilterResult | None = read("filter_result")
    if fr is not None:
        row.mode = fr.mode
        row.duration_sec = fr.probe.duration_sec
        if not fr.proceed:
            row.outcome, row.reason = "stopped", fr.stop_reason or "stopped at step 0"
    cap: Captions | None = read("captions")
    cc: ChunkCaptions | None = read("chunk_captions")
    hl: Highlight | None = read("highlight")
    qa: QAResult | None = read("qa")
    te: TaskExports | None = read("task_exports")
    if cap is not None:
        row.mode = cap.mode
    if te is not None:
        row.outcome = "annotated"
        row.items_per_task = {t: len(v) for t, v in te.tasks.items()}
    elif row.outcome != "stopped" and done:
        row.outcome, row.reason = "incomplete", f"no record after {row.last_step}"
    if qa is not None:
        row.qa_items = len(qa.items)
    duration = row.duration_sec or 0.0
    row.check_failures = {k: len(v) for k, v in check_failures(cap, cc, hl, te, duration, examples).items()}
    reviews = load_reviews(results_dir, key)
    if reviews.reviews:
        _, counts = reviewed_items(qa.items if qa else [], reviews, key)
        row.reviewed, row.rejected, row.edited, row.orphaned = (
            counts.reviewed, counts.rejected, counts.edited, counts.orphaned)
    if row.reviewed:
        row.review_state = "done" if row.reviewed >= row.qa_items else "partial"
    return row


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


class _Folder:
    """One folder's `{stem: mtime_ns}` of its JSON files, listed again only when the folder's mtime moves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mtime = -1
        self.files: dict[str, int] = {}

    def refresh(self) -> set[str]:
        """The stems whose file appeared, went or changed since the last look (none if the folder did not move)."""
        m = _mtime(self.path)
        if m == self.mtime:
            return set()
        files: dict[str, int] = {}
        if m:
            with os.scandir(self.path) as it:
                for e in it:
                    if e.name.endswith(".json") and not e.name.startswith("."):
                        try:
                            files[e.name[:-5]] = e.stat().st_mtime_ns
                        except FileNotFoundError:
                            continue
        old = self.files
        self.mtime, self.files = m, files
        return {k for k in old.keys() | files.keys() if old.get(k) != files.get(k)}


class DatasetIndex:
    """Rows for every registered video; `rows()` refreshes what changed on disk (thread-safe)."""

    def __init__(self, results_dir: str | Path, failures: FailureLookup | None = None,
                 min_interval_s: float = 0.5, examples: ExampleIndex | None = None) -> None:
        self.results = Path(results_dir)
        self.examples = examples
        self.registry = VideoRegistry(self.results)
        self.cache_path = self.results / "viewer" / "index.json"
        self.folders = {a: _Folder(self.results / "assets" / a) for a in PER_VIDEO_ASSETS}
        self.folders["reviews"] = _Folder(reviews_dir(self.results))
        self.failures = failures
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._registry_sig = -1
        self._videos: dict[str, dict[str, Any]] = {}
        self._rows: dict[str, VideoRow] = {}
        self._sigs: dict[str, list[Any]] = {}
        self._checked = 0.0
        self._loaded_cache = False
        self._facets: Facets | None = None
        self._dirty = False
        self._saved = time.monotonic()
        self._sorted: list[str] | None = None
        self._row_list: list[VideoRow] | None = None
        self.failure_error = ""
        self.last_refresh: dict[str, float] = {}

    # ------------------------------------------------------------ building

    def _signature(self, key: str) -> list[Any]:
        sig: list[Any] = [self._videos.get(key, {}).get("mode")]
        for name in (*PER_VIDEO_ASSETS, "reviews"):
            sig.append(self.folders[name].files.get(key, 0))
        return sig

    def _load_cache(self) -> None:
        self._loaded_cache = True
        try:
            raw = json.loads(self.cache_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return
        if raw.get("version") != INDEX_VERSION:
            return
        for key, (sig, row) in raw.get("rows", {}).items():
            self._sigs[key] = sig
            self._rows[key] = VideoRow.model_validate(row)

    def save(self) -> None:
        """Write the rows for the next start if anything changed since the last write."""
        with self._lock:
            if self._dirty:
                self._save_cache()

    def _save_cache(self) -> None:
        self._dirty = False
        self._saved = time.monotonic()
        blob = {"version": INDEX_VERSION,
                "rows": {k: [self._sigs[k], r.model_dump()] for k, r in self._rows.items()}}
        atomic_write_text(self.cache_path, json.dumps(blob, separators=(",", ":")))

    def refresh(self, force: bool = False) -> dict[str, float]:
        """Bring the rows up to date; returns what it did (seconds listing, rows rebuilt, seconds reading)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked < self.min_interval_s and self._rows:
                return {}
            self._checked = now
            t0 = time.perf_counter()
            if not self._loaded_cache:
                self._load_cache()
            reg_sig = _mtime(self.registry.path)
            todo: set[str] = set()
            if reg_sig != self._registry_sig:  # new videos, or a mode changed: check every signature
                self._videos = {k: v.model_dump() for k, v in self.registry.load().items()}
                self._registry_sig = reg_sig
                todo = set(self._videos) | set(self._rows)
            for f in self.folders.values():
                todo |= f.refresh()
            t_list = time.perf_counter() - t0
            rebuilt = 0
            for key in todo:
                if key not in self._videos:
                    gone = self._rows.pop(key, None)
                    if gone is not None:
                        self._sigs.pop(key, None)
                        self._sorted = None
                        if self._facets is not None:
                            self._facets.remove(gone)
                    continue
                sig = self._signature(key)
                if self._sigs.get(key) == sig and key in self._rows:
                    continue
                present = {a for a in PER_VIDEO_ASSETS if self.folders[a].files.get(key)}
                old = self._rows.get(key)
                if old is None:
                    self._sorted = None
                new = self._rows[key] = build_row(self.results, key, self._videos[key], present, self.examples)
                if self._facets is not None:
                    if old is not None:
                        self._facets.remove(old)
                    self._facets.add(new)
                self._sigs[key] = sig
                rebuilt += 1
            # the file is for the next start; rewriting megabytes for each review saved is not worth it
            if rebuilt >= SAVE_AFTER or (rebuilt and time.monotonic() - self._saved > SAVE_EVERY_S):
                self._save_cache()
            elif rebuilt:
                self._dirty = True
            self._apply_failures()
            if rebuilt or self._sorted is None:
                self._row_list = None
            self.last_refresh = {"list_s": t_list, "rebuilt": rebuilt, "total_s": time.perf_counter() - t0}
            return self.last_refresh

    def _apply_failures(self) -> bool:
        """Dagster's latest failure per partition, for videos whose records stop short of the end; True if a
        row changed."""
        if self.failures is None:
            return False
        try:
            failed = self.failures()
            self.failure_error = ""
        except Exception as e:  # the viewer still shows the files without Dagster's event log
            failed = {}
            self.failure_error = f"could not read Dagster's run history: {e}"
        changed = False
        for key, row in self._rows.items():
            if row.outcome in ("annotated", "stopped"):
                continue
            before = (row.outcome, row.reason)
            if self._facets is not None:
                self._facets.remove(row)
            hit = failed.get(key)
            newest = max((self.folders[a].files.get(key, 0) for a in PER_VIDEO_ASSETS), default=0) / 1e9
            if hit is not None and hit[0] >= newest:
                row.outcome, row.reason = "failed", hit[1]
            elif row.outcome == "failed":  # a later record: it ran again since
                row.outcome = "incomplete" if row.last_step else "pending"
                row.reason = f"no record after {row.last_step}" if row.last_step else ""
            if self._facets is not None:
                self._facets.add(row)
            changed |= before != (row.outcome, row.reason)
        return changed

    def rows(self) -> list[VideoRow]:
        """Every row in key order (the list is shared: do not change it)."""
        self.refresh()
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted(self._rows)
            if self._row_list is None:
                self._row_list = [self._rows[k] for k in self._sorted]
            return self._row_list

    def facets(self) -> dict[str, dict[str, int]]:
        rows = self.rows()
        with self._lock:
            if self._facets is None:
                self._facets = Facets(rows)
            return self._facets.as_dict()

    def row(self, key: str) -> VideoRow | None:
        self.refresh()
        return self._rows.get(key)


# ---------------------------------------------------------------- querying


class Query(BaseModel):
    q: str = ""
    mode: str = ""
    task: str = ""
    check: str = ""
    review: str = ""
    outcome: str = ""
    page: int = Field(1, ge=1)
    per_page: int = Field(50, ge=1, le=500)


def _matches(row: VideoRow, q: Query, needle: str) -> bool:
    if q.mode and row.mode != q.mode:
        return False
    if q.outcome and row.outcome != q.outcome:
        return False
    if q.task and not row.items_per_task.get(q.task):
        return False
    if q.check:
        if q.check == "any":
            if not row.check_failures:
                return False
        elif not row.check_failures.get(q.check):
            return False
    if q.review:
        if q.review == "orphaned":
            if not row.orphaned:
                return False
        elif q.review == "rejected":
            if not row.rejected:
                return False
        elif q.review == "edited":
            if not row.edited:
                return False
        elif row.review_state != q.review:
            return False
    return not needle or needle in row.key.lower() or needle in row.rel_path.lower()


def _filtered(q: Query) -> bool:
    return bool(q.q.strip() or q.mode or q.task or q.check or q.review or q.outcome)


def facet_values(r: VideoRow) -> list[tuple[str, str]]:
    """(filter, value) pairs one row counts for in the filter menus."""
    out = [("mode", r.mode or "unknown"), ("outcome", r.outcome), ("review", r.review_state)]
    out += [("review", flag) for flag in ("rejected", "edited", "orphaned") if getattr(r, flag)]
    out += [("task", t) for t in r.items_per_task]
    out += [("check", c) for c in r.check_failures]
    if r.check_failures:
        out.append(("check", "any"))
    return out


class Facets:
    """Counts per filter value over all videos, kept up to date row by row (a change does not recount 10 000)."""

    def __init__(self, rows: Iterable[VideoRow] = ()) -> None:
        self.counts: dict[str, Counter[str]] = {k: Counter() for k in ("mode", "outcome", "task", "check", "review")}
        for r in rows:
            self.add(r)

    def add(self, r: VideoRow, sign: int = 1) -> None:
        for name, value in facet_values(r):
            self.counts[name][value] += sign

    def remove(self, r: VideoRow) -> None:
        self.add(r, -1)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: {v: n for v, n in sorted(c.items()) if n > 0} for k, c in self.counts.items()}


def query(index: DatasetIndex, q: Query) -> dict[str, Any]:
    rows = index.rows()
    needle = q.q.strip().lower()
    hits = [r for r in rows if _matches(r, q, needle)] if _filtered(q) else rows
    start = (q.page - 1) * q.per_page
    return {
        "total": len(hits),
        "videos": len(rows),
        "page": q.page,
        "per_page": q.per_page,
        "pages": max(1, -(-len(hits) // q.per_page)),
        "rows": [r.model_dump() for r in hits[start : start + q.per_page]],
        "facets": index.facets(),
    }
