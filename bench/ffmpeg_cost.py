"""ffmpeg CPU per minute of video: our MediaTool against the reference's *method*.

The reference method is rebuilt here as plain command lines from its documented behaviour
(one process per chunk with output seeking, VP9 realtime 1 Mb/s, no audio, webm; one process
per frame with input seeking), not from its code. CPU is the RUSAGE_CHILDREN delta, so only
ffmpeg/ffprobe children that finish inside a measurement count; nothing else may spawn
children meanwhile. Both methods run the same ffmpeg binary as our pipeline (`FFMPEG`), so the
figures compare methods, not builds.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

from vr_assets.media import find_ffmpeg

REF_CHUNK_OPTIONS = (5.0, 10.0, 15.0, 20.0, 30.0)
REF_MAX_CHUNKS = 10
REF_SAMPLE_FPS = 0.5
REF_MAX_FRAMES = 60
_QUIET = ["-hide_banner", "-loglevel", "error", "-nostdin"]
FFMPEG = find_ffmpeg()  # what the pipeline's default `media.ffmpeg: auto` runs


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Cost(BaseModel):
    """One method over a file set."""

    method: str
    operation: str
    files: int
    video_min: float
    outputs: int
    cpu_s: float
    wall_s: float
    output_bytes: int

    @property
    def cpu_s_per_video_min(self) -> float:
        return self.cpu_s / self.video_min if self.video_min else 0.0


class Meter:
    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.wall_s = 0.0


@contextmanager
def measure() -> Iterator[Meter]:
    m = Meter()
    c0, t0 = children_cpu_s(), time.perf_counter()
    try:
        yield m
    finally:
        m.cpu_s = children_cpu_s() - c0
        m.wall_s = time.perf_counter() - t0


# ---------------------------------------------------------------- the reference's method


def ref_chunk_duration(length_s: float) -> float:
    """Smallest option with length/d <= max chunks, else the largest (reference rule)."""
    for d in REF_CHUNK_OPTIONS:
        if length_s / d <= REF_MAX_CHUNKS:
            return d
    return REF_CHUNK_OPTIONS[-1]


def ref_chunk_windows(length_s: float) -> list[tuple[float, float]]:
    d = ref_chunk_duration(length_s)
    windows, start = [], 0.0
    while start + 1 <= length_s:
        windows.append((start, min(start + d, length_s)))
        start += d
    return windows


def ref_frame_times(length_s: float) -> list[float]:
    n = max(1, min(int(length_s * REF_SAMPLE_FPS), REF_MAX_FRAMES))
    step = length_s / (n + 1)
    return [step * (i + 1) for i in range(n)]


def ref_cut_chunks(src: Path, length_s: float, out_dir: Path) -> list[Path]:
    """One ffmpeg per chunk; `-ss` after `-i` decodes from the start every time."""
    outs = []
    for k, (s, e) in enumerate(ref_chunk_windows(length_s)):
        out = out_dir / f"chunk_{k:03d}.webm"
        subprocess.run(
            [FFMPEG, *_QUIET, "-y", "-i", str(src), "-ss", f"{s:g}", "-to", f"{e:g}",
             "-c:v", "libvpx-vp9", "-b:v", "1M", "-deadline", "realtime", "-cpu-used", "5", "-an", str(out)],
            check=True,
        )  # fmt: skip
        outs.append(out)
    return outs


def ref_sample_frames(src: Path, length_s: float, out_dir: Path) -> list[Path]:
    """One ffmpeg per frame, input seeking, JPEG q 2."""
    outs = []
    for k, t in enumerate(ref_frame_times(length_s)):
        out = out_dir / f"frame_{k:02d}.jpg"
        subprocess.run(
            [FFMPEG, *_QUIET, "-y", "-ss", f"{t}", "-i", str(src), "-frames:v", "1", "-q:v", "2", str(out)],
            check=True,
        )
        outs.append(out)
    return outs


# ---------------------------------------------------------------- running a method over files

Cutter = Callable[[Path, float, Path], list[Path]]


def run_method(method: str, operation: str, files: list[tuple[Path, float]], fn: Cutter) -> Cost:
    """Run `fn(src, length, out_dir)` over every file; outputs go to a scratch dir per file."""
    outputs = 0
    out_bytes = 0
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{operation}-"))
    try:
        with measure() as m:
            for i, (src, length) in enumerate(files):
                d = scratch / f"{i:03d}"
                d.mkdir()
                produced = fn(src, length, d)
                outputs += len(produced)
                out_bytes += sum(p.stat().st_size for p in produced if p.exists())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Cost(
        method=method,
        operation=operation,
        files=len(files),
        video_min=sum(x[1] for x in files) / 60.0,
        outputs=outputs,
        cpu_s=round(m.cpu_s, 3),
        wall_s=round(m.wall_s, 3),
        output_bytes=out_bytes,
    )
