"""Fixtures for the wire-protocol fakes: a teacher, started fake servers, tiny generated media."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vr_assets.fakes import FakeGemini, FakeOpenAI, Teacher


@pytest.fixture
def teacher() -> Teacher:
    return Teacher()


@pytest.fixture
def fake_gemini(teacher: Teacher) -> Iterator[FakeGemini]:
    server = FakeGemini(teacher=teacher).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_openai(teacher: Teacher) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(teacher=teacher).start()
    try:
        yield server
    finally:
        server.stop()


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


@pytest.fixture(scope="session")
def fakes_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two distinct short H.264 clips (3 s and 2 s) and three JPEG frames, made with ffmpeg."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    root = tmp_path_factory.mktemp("fakes_media")
    out = {"clip_a": root / "clip_a.mp4", "clip_b": root / "clip_b.mp4"}
    enc = ["-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast"]
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-t", "3", *enc, str(out["clip_a"]))
    _ffmpeg("-f", "lavfi", "-i", "smptebars=size=160x120:rate=10", "-t", "2", *enc, str(out["clip_b"]))
    _ffmpeg("-i", str(out["clip_a"]), "-vf", "fps=1", "-frames:v", "3", "-q:v", "5", str(root / "frame_%d.jpg"))
    for i in (1, 2, 3):
        out[f"frame_{i}"] = root / f"frame_{i}.jpg"
    return out
