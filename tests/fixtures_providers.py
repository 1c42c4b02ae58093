"""Fixtures for the provider tests: tiny ffmpeg-made clips and frames, and a clean provider registry."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vr_assets.providers import reset_registry


@dataclass(frozen=True)
class ProviderMedia:
    small_video: Path  # well under 50 KB: inline everywhere
    big_videos: list[Path]  # each over 60 KB, distinct bytes: Files API with a 0.05 MB inline limit
    frames: list[Path]  # three JPEGs


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


@pytest.fixture(scope="session")
def provider_media(tmp_path_factory: pytest.TempPathFactory) -> ProviderMedia:
    d = tmp_path_factory.mktemp("provider_media")
    small = d / "small.mp4"
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=96x64:rate=5",
        "-t",
        "1",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        str(small),
    )
    bigs: list[Path] = []
    for i in range(3):
        p = d / f"big{i}.mp4"
        # Noise does not compress: a 1 s clip lands well above the tiny inline limit the tests use.
        _ffmpeg(
            "-f",
            "lavfi",
            "-i",
            f"nullsrc=size=160x120:rate=10,geq=random(1)*255:128:{64 + 40 * i}",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-qp",
            "0",
            "-pix_fmt",
            "yuv420p",
            str(p),
        )
        bigs.append(p)
    frames: list[Path] = []
    for i in range(3):
        f = d / f"frame{i}.jpg"
        _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=1,hue=h={i * 90}", "-frames:v", "1", str(f))
        frames.append(f)
    assert small.stat().st_size < 50_000
    assert all(p.stat().st_size > 60_000 for p in bigs), [p.stat().st_size for p in bigs]
    return ProviderMedia(small_video=small, big_videos=bigs, frames=frames)


@pytest.fixture
def clean_providers() -> Iterator[None]:
    """Each test gets its own limiters, clients and upload caches."""
    reset_registry()
    yield
    reset_registry()
