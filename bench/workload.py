"""The benchmark workload: generated clips with known teacher verdicts.

Each video's shape depends only on its index, so `--n 2` and `--n 40` share cached files
and a run is reproducible. Clips are small (320x240) because on 2 cores the benchmark
measures the pipeline, not the cost of making its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

WIDTH, HEIGHT, FPS, GOP = 320, 240, 25, 50
Label = Literal["anomaly", "normal"]

# A cycle of 8: six short clips and two long ones, half of each labelled anomaly.
_CYCLE: tuple[tuple[bool, Label], ...] = (
    (False, "anomaly"),
    (True, "normal"),
    (False, "normal"),
    (False, "anomaly"),
    (False, "normal"),
    (True, "anomaly"),
    (False, "anomaly"),
    (False, "normal"),
)


class BenchVideo(BaseModel):
    index: int
    name: str
    path: str
    duration_s: float
    long: bool
    label: Label
    relevant: bool
    sha256: str = ""
    size_bytes: int = 0


def video_spec(i: int) -> tuple[float, bool, Label, bool]:
    """(duration, long, label, relevant) for video i; every 10th one is off-domain."""
    long, label = _CYCLE[i % len(_CYCLE)]
    duration = float(62 + (i * 7) % 29) if long else float(8 + (i * 5) % 13)
    relevant = i % 10 != 9
    return duration, long, label, relevant


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _encode(path: Path, duration: float, hue: int) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")  # concurrent runs share the cache
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
        "-t", f"{duration:g}", "-vf", f"hue=h={hue}",
        "-c:v", "libx264", "-preset", "veryfast", "-g", str(GOP), "-pix_fmt", "yuv420p",
        str(tmp),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    os.replace(tmp, path)


def make_videos(n: int, out_dir: Path) -> list[BenchVideo]:
    """Generate (or reuse) videos 0..n-1 under out_dir; names carry no label."""
    out_dir.mkdir(parents=True, exist_ok=True)
    videos: list[BenchVideo] = []
    for i in range(n):
        duration, long, label, relevant = video_spec(i)
        name = f"clip_{i:03d}_{int(duration)}s.mp4"
        path = out_dir / name
        if not path.exists():
            _encode(path, duration, hue=(i * 37) % 360)
        videos.append(
            BenchVideo(
                index=i,
                name=name,
                path=str(path.resolve()),
                duration_s=duration,
                long=long,
                label=label,
                relevant=relevant,
                sha256=sha256_file(path),
                size_bytes=path.stat().st_size,
            )
        )
    return videos


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def stage(videos: list[BenchVideo], root: Path) -> Path:
    """Hardlink the chosen videos into a fresh folder, so each run sees exactly its workload."""
    if root.exists():
        for p in root.iterdir():
            p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    for v in videos:
        link_or_copy(Path(v.path), root / v.name)
    return root


def make_tiny_copies(count: int, src_dir: Path, out_dir: Path) -> tuple[Path, list[Path]]:
    """`count` names for one 2 s clip (hardlinks): bookkeeping cost without media cost."""
    src_dir.mkdir(parents=True, exist_ok=True)
    src = src_dir / "tiny_2s.mp4"
    if not src.exists():
        _encode(src, 2.0, hue=0)
    if out_dir.exists():
        for p in out_dir.iterdir():
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = out_dir / f"tiny_{i:04d}.mp4"
        link_or_copy(src, p)
        paths.append(p)
    return src, paths


def write_manifest(videos: list[BenchVideo], path: Path) -> None:
    path.write_text(json.dumps([v.model_dump() for v in videos], indent=2))
