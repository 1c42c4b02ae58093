"""Find the videos a spec points at and give each a stable, readable partition key."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from vr_assets.config import Spec
from vr_assets.records import VideoSource

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv"})
MAX_KEY_LEN = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def partition_key_for(rel_path: str) -> str:
    """`cams/north/clip.mp4` -> `cams__north__clip.mp4`: readable in the UI, valid for Dagster.

    Keys never contain `/` (they appear in URLs) nor `...` (Dagster rejects it); long or
    lossy names get a short hash of the original path so they stay unique.
    """
    parts = [p for p in Path(rel_path).as_posix().split("/") if p not in ("", ".")]
    cleaned = "__".join(_UNSAFE.sub("_", p) for p in parts)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip("._") or "video"
    lossy = cleaned != "__".join(parts)
    if lossy or len(cleaned) > MAX_KEY_LEN:
        cleaned = f"{cleaned[: MAX_KEY_LEN - 9]}-{_short_hash(rel_path)}"
    return cleaned


def walk_video_root(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"data.video_root {root} is not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _rel_to(path: Path, root: Path | None) -> str | None:
    if root is None:
        return None
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def read_jsonl(file: Path, video_root: Path | None, filter_field: str | None) -> list[VideoSource]:
    """Lines with `video_path` or `video`; bad lines are logged with their number and skipped."""
    out: list[VideoSource] = []
    if not file.exists():
        raise FileNotFoundError(f"data.input_jsonl_files: {file} does not exist")
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            log.warning("%s:%d: not JSON (%s); line skipped", file, n, e)
            continue
        if not isinstance(row, dict):
            log.warning("%s:%d: not an object; line skipped", file, n)
            continue
        raw = row.get("video_path") or row.get("video")
        if not isinstance(raw, str) or not raw:
            log.warning("%s:%d: no video_path/video field; line skipped", file, n)
            continue
        if filter_field and not row.get(filter_field):
            continue
        p = Path(raw)
        if not p.is_absolute():
            # Relative paths resolve against video_root first (TAO's convention), then the JSONL's folder.
            candidates = ([video_root / p] if video_root else []) + [file.parent / p]
            p = next((c for c in candidates if c.exists()), candidates[0])
        p = p.resolve()
        mode = row.get("mode")
        if mode not in ("anomaly", "normal", None):
            log.warning("%s:%d: mode %r is not anomaly/normal; ignored", file, n, mode)
            mode = None
        rel = _rel_to(p, video_root) or _rel_to(p, file.parent.resolve()) or p.as_posix().lstrip("/")
        extra = {k: v for k, v in row.items() if k not in ("video_path", "video", "mode")}
        out.append(
            VideoSource(key="", path=str(p), source=str(file), rel_path=rel, mode=mode, extra=extra)
        )
    return out


def discover(spec: Spec) -> list[VideoSource]:
    """Merge video_root and JSONL inputs; one record per file, JSONL lines win (they carry mode/extra)."""
    root = Path(spec.data.video_root).resolve() if spec.data.video_root else None
    by_path: dict[str, VideoSource] = {}
    if root is not None:
        for p in walk_video_root(root):
            rp = p.resolve()
            by_path[str(rp)] = VideoSource(
                key="", path=str(rp), source="video_root", rel_path=rp.relative_to(root).as_posix()
            )
    for f in spec.data.input_jsonl_files:
        for v in read_jsonl(Path(f), root, spec.data.filter_field):
            by_path[v.path] = v
    return assign_keys(list(by_path.values()))


def assign_keys(videos: list[VideoSource]) -> list[VideoSource]:
    """Keys from relative paths; a clash (same relative path from two sources) gets a path hash."""
    seen: dict[str, str] = {}
    out: list[VideoSource] = []
    for v in sorted(videos, key=lambda v: (v.rel_path, v.path)):
        key = partition_key_for(v.rel_path)
        if key in seen and seen[key] != v.path:
            key = f"{key[: MAX_KEY_LEN - 9]}-{_short_hash(v.path)}"
        seen[key] = v.path
        out.append(v.model_copy(update={"key": key}))
    return out
