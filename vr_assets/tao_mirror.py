"""TAO's per-step JSONL files, rebuilt from the per-video records.

Existing TAO users look for `<results>/step_*/…jsonl`; we keep those files current from our
records (one line per video, or per video and prompt key for step 3) whenever the dataset is
written. `<results>` is the storage root (`vr_assets.storage`): the results folder, or `s3://…`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vr_assets.records import Captions, ChunkCaptions, Description, FilterResult, Highlight, QAResult
from vr_assets.storage import atomic_write_text, storage_root
from vr_assets.store import JsonStore

if TYPE_CHECKING:
    from upath import UPath

MIRRORS = {
    "filter_result": "step_0_filter/filter_results.jsonl",
    "captions": "step_1a_caption/captions.jsonl",
    "chunk_captions": "step_1b_chunks/chunk_captions.jsonl",
    "highlight": "step_1c_highlight/highlight_captions.jsonl",
    "description": "step_2_description/descriptions.jsonl",
    "qa": "step_3_qa/qa_output.jsonl",
}


def _chunks(cc: ChunkCaptions) -> list[dict[str, object]]:
    return [c.model_dump() for c in cc.chunks]


def mirror_lines(store: JsonStore, key: str) -> dict[str, list[str]]:
    """One video's lines of each step file (none past the first step it lacks)."""
    lines: dict[str, list[str]] = {name: [] for name in MIRRORS}
    f: FilterResult | None = store.read_optional("filter_result", key)
    if f is None:
        return lines
    rel = f.video.rel_path
    lines["filter_result"].append(json.dumps({
        "video_path": f.video.path, "video": rel, "is_valid": f.is_valid, "raw_response": f.raw_response,
        "mode": f.mode, "proceed": f.proceed, "stop_reason": f.stop_reason,
    }))
    c: Captions | None = store.read_optional("captions", key)
    if c is None:
        return lines
    base = {"video": rel, "video_length": c.probe.duration_sec, "mode": c.mode}
    caps = {"global_caption": c.global_caption, "dense_caption": c.dense_caption}
    lines["captions"].append(json.dumps({**base, **caps}))
    cc: ChunkCaptions | None = store.read_optional("chunk_captions", key)
    if cc is None:
        return lines
    lines["chunk_captions"].append(json.dumps({**base, **caps, "chunk_captions": _chunks(cc)}))
    h: Highlight | None = store.read_optional("highlight", key)
    if h is not None and h.applicable:
        hc = h.highlight_chunk.model_dump() if h.highlight_chunk else None
        row = {**base, **caps, "chunk_captions": _chunks(cc), "highlight_chunk": hc}
        lines["highlight"].append(json.dumps(row))
    d: Description | None = store.read_optional("description", key)
    if d is None:
        return lines
    lines["description"].append(json.dumps({
        **base, "prompt_key": d.prompt_key, "detailed_description": d.detailed_description,
        "original_captions": caps, "chunk_captions": _chunks(cc),
    }))
    q: QAResult | None = store.read_optional("qa", key)
    if q is None:
        return lines
    for prompt_key, raw in q.raw.items():
        lines["qa"].append(json.dumps({
            **base, "qa_output": raw, "prompt_key": prompt_key, "original_captions": caps,
            "detailed_description": d.detailed_description,
        }))
    return lines


def write_mirror_files(root: str | os.PathLike[str] | Path | UPath, lines: dict[str, list[str]]) -> dict[str, int]:
    """Rewrite every step file atomically under `root` (a folder or storage URL); returns lines per file."""
    base = storage_root(root)
    for name, rel_path in MIRRORS.items():
        atomic_write_text(base / rel_path, "".join(line + "\n" for line in lines[name]))
    return {MIRRORS[n]: len(v) for n, v in lines.items()}
