"""How quick the viewer's index is with many videos: build it, reload it, serve pages, refresh one change.

    python bench/viewer_index.py [--videos 10000] [--dir /tmp/viewer-bench] [--keep]

Writes N synthetic videos' records (the 7 per-video assets, from the pydantic models, the way the steps
store them) and a registry into a results folder, then prints:
  cold build      first index over every record (what `vr-annotate view` does once on a new results folder)
  warm start      a new process's index, from `<results_dir>/viewer/index.json` plus one listing per folder
  page request    GET /api/videos over HTTP: unfiltered page 1, a filtered one, a search, the last page
  one change      a review saved for one video, then the next page request (only that row is read again)
No timing asserts: figures to read, on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vr_assets.config import Spec  # noqa: E402
from vr_assets.export import task_exports_for_video  # noqa: E402
from vr_assets.records import (  # noqa: E402
    Captions,
    ChunkCaption,
    ChunkCaptions,
    Description,
    FilterResult,
    Highlight,
    HighlightChunk,
    QAItem,
    QAResult,
    VideoProbe,
    VideoSource,
)
from vr_assets.reviews import save_review  # noqa: E402
from vr_assets.store import PER_VIDEO_ASSETS as ASSETS  # noqa: E402
from vr_assets.viewer.index import DatasetIndex  # noqa: E402
from vr_assets.viewer.server import ViewerServer  # noqa: E402


def _items(n: int) -> list[QAItem]:
    items = []
    for t in ("mcq", "bcq", "open_qa", "causal_linkage", "temporal_localization", "temporal_event_desc",
              "scene_description", "event_summary"):
        for j in range(2):
            # questions of the form each task asks for (quality.question_form), so the items' only failure
            # is the missing reasoning below
            ask = {"bcq": "Does a forklift pass", "temporal_localization": "When does a forklift pass"}.get(
                t, "What happens near")
            q = f"{ask} the loading dock (question {j} of type {t} about video {n})?"
            if t == "mcq":
                items.append(QAItem(qa_type=t, prompt_key=f"normal_{t}", question=q, answer="B", reasoning="seen",
                                    options=["A van turns", "A person walks", "Nothing moves", "A forklift stops"]))
            elif t == "bcq":
                items.append(QAItem(qa_type=t, prompt_key=f"normal_{t}", question=q, answer="Yes. It does.",
                                    reasoning="seen"))
            elif t == "temporal_localization":
                items.append(QAItem(qa_type=t, prompt_key=f"normal_{t}", question=q, answer="00:02-00:05",
                                    reasoning="seen", start_sec=2.0, end_sec=5.0))
            else:
                items.append(QAItem(qa_type=t, prompt_key=t, question=q, answer="A forklift crosses the aisle.",
                                    reasoning="seen" if j else ""))  # no reasoning: a check failure
    return items


def _records(key: str, i: int) -> dict[str, str]:
    """One video's records as the steps store them (JSON of the pydantic models)."""
    probe = VideoProbe(duration_sec=30.0, width=1280, height=720, fps=25.0, video_codec="h264", size_bytes=9_000_000)
    src = VideoSource(key=key, path=f"/data/videos/{key.replace('__', '/')}", source="video_root",
                      rel_path=key.replace("__", "/"))
    mode = "anomaly" if i % 3 == 0 else "normal"
    stop = i % 10 == 9
    recs = {"filter_result": FilterResult(
        video=src, probe=probe, proceed=not stop, stop_reason="not relevant to the domain" if stop else "",
        mode=mode, mode_source="step_0")}
    if not stop:
        recs["captions"] = Captions(video=src, probe=probe, mode=mode, global_caption="A forklift " * 20,
                                    dense_caption="A forklift moves. " * 30, media_kind="video")
        recs["chunk_captions"] = ChunkCaptions(video_key=key, chunk_duration=5, chunks=[
            ChunkCaption(chunk_index=c, timestamp_start=5.0 * c, timestamp_end=5.0 * c + 5, caption="x " * 40)
            for c in range(6)])
        recs["highlight"] = Highlight(video_key=key, applicable=mode == "anomaly", highlight_chunk=HighlightChunk(
            anomaly_timestamp_sec=12, timestamp_start=9, timestamp_end=15, caption="y " * 40)
            if mode == "anomaly" else None)
        recs["description"] = Description(video_key=key, prompt_key="d", detailed_description="z " * 300)
        if i % 50 != 0:
            items = _items(i)
            recs["qa"] = QAResult(video_key=key, items=items)
            recs["task_exports"] = task_exports_for_video(key, mode, items, src.rel_path)[0]
    return {a: r.model_dump_json(indent=2) for a, r in recs.items()}


def make_results(root: Path, n: int) -> Path:
    """N videos with every step's record: every 10th stops at step 0, every 50th lacks its last two, each
    QA'd one has 5 items failing `reasoning_present`. Records are made once per kind of video and copied with
    the key and question numbers replaced, so writing 70 000 files takes seconds, not minutes."""
    results = root / "results"
    registry: dict[str, dict] = {}
    dirs = {a: results / "assets" / a for a in ASSETS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    templates: dict[tuple[int, int, int], tuple[str, dict[str, str]]] = {}
    for i in range(n):
        key = f"site_{i % 40:02d}__cam{i % 7}__clip_{i:05d}.mp4"
        kind = (i % 3 == 0, i % 10 == 9, i % 50 == 0)
        if kind not in templates:
            tkey = f"TEMPLATE{len(templates)}.mp4"
            templates[kind] = (tkey, _records(tkey, i))
        tkey, recs = templates[kind]
        for asset, text in recs.items():
            (dirs[asset] / f"{key}.json").write_text(text.replace(tkey, key).replace("about video", f"v{i} about"))
        registry[key] = VideoSource(key=key, path=f"/data/videos/{key.replace('__', '/')}", source="video_root",
                                    rel_path=key.replace("__", "/")).model_dump()
    (results / "registry").mkdir(parents=True, exist_ok=True)
    (results / "registry" / "videos.json").write_text(json.dumps(registry, indent=1))
    return results


def _get(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        r.read()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--dir", help="work folder (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic results folder")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="viewer-bench-"))
    try:
        t0 = time.perf_counter()
        results = make_results(root, args.videos)
        files = sum(len(os.listdir(results / "assets" / a)) for a in ASSETS)
        print(f"synthetic results: {args.videos} videos, {files} record files in {time.perf_counter() - t0:.1f} s")

        idx = DatasetIndex(results)
        t0 = time.perf_counter()
        idx.refresh(force=True)
        cold = time.perf_counter() - t0
        idx.save()  # written at once after a big build; a small one is written when the viewer stops
        size = (results / "viewer" / "index.json").stat().st_size
        print(f"cold build:   {cold:6.2f} s  ({len(idx.rows())} rows, {cold / args.videos * 1e3:.2f} ms/video; "
              f"index file {size / 1e6:.1f} MB)")
        t0 = time.perf_counter()
        warm_idx = DatasetIndex(results)
        warm_idx.refresh(force=True)
        print(f"warm start:   {time.perf_counter() - t0:6.2f} s  (rows from index.json, "
              f"{warm_idx.last_refresh['rebuilt']} rebuilt)")

        spec = Spec(results_dir=str(results))
        server = ViewerServer(spec, port=0, host="127.0.0.1", failures=False)
        server.viewer.index = warm_idx
        server.start()
        try:
            for label, q in (("page 1", ""), ("mode+task", "mode=anomaly&task=mcq"), ("check", "check=any"),
                             ("search", "q=clip_0123"), ("last page", "page=200&per_page=50")):
                times = [_get(f"{server.url}/api/videos?{q}") for _ in range(10)]
                print(f"page request  {label:10s} median {statistics.median(times) * 1e3:6.1f} ms  "
                      f"max {max(times) * 1e3:6.1f} ms")
            key = sorted(warm_idx.rows(), key=lambda r: -r.qa_items)[0].key
            qa = QAResult.model_validate_json((results / "assets" / "qa" / f"{key}.json").read_text())
            save_review(results, key, qa.items[0], "reject")
            time.sleep(warm_idx.min_interval_s)
            t = _get(f"{server.url}/api/videos")
            print(f"one change:   a review saved, next page request {t * 1e3:.1f} ms "
                  f"({warm_idx.last_refresh['rebuilt']} row read again)")
            t = _get(f"{server.url}/api/video/{key}")
            print(f"video page:   GET /api/video/<key> {t * 1e3:.1f} ms")
        finally:
            server.stop()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
