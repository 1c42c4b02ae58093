"""Real providers: run only when a key / endpoint is in the environment (skipped otherwise)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.test_export import tao_validate
from vr_assets.cli import run_pipeline
from vr_assets.config import parse_spec
from vr_assets.providers import reset_registry

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "videos" / "street" / "bikes.mp4"


def live_spec(tmp_path: Path, endpoint: dict[str, Any]) -> Any:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "bikes.mp4").write_bytes(SAMPLE.read_bytes())
    raw = {
        "vlm": endpoint, "llm": endpoint,
        "data": {"video_root": str(videos)}, "results_dir": str(tmp_path / "results"),
        "workflow": {"mode": "normal", "qa_types": ["mcq", "temporal_localization"], "max_workers": 2},
    }
    return parse_spec(raw, "live", tmp_path)


def check_run(tmp_path: Path, spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    reset_registry()
    summary = run_pipeline(spec, parallel=1, progress=lambda _m: None)
    assert summary.failed == {}, summary.failed
    out = tmp_path / "results" / "step_4_output"
    assert tao_validate(out)[0] == []
    items = json.loads((out / "mcq.json").read_text())["items"]
    assert items and all(i["answer"] in "ABCD" for i in items)


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("GOOGLE_API_KEY"), reason="GOOGLE_API_KEY not set")
def test_live_gemini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = os.environ.get("VR_LIVE_GEMINI_MODEL", "gemini-2.5-flash-lite")
    check_run(tmp_path, live_spec(tmp_path, {"backend": "gemini", "gemini": {"model": model}}), monkeypatch)
    # one upload, chunks as videoMetadata time ranges of it (the service accepted them), deleted at the end
    chunks = json.loads((tmp_path / "results" / "assets" / "chunk_captions" / "bikes.mp4.json").read_text())
    assert len(chunks["chunks"]) >= 2 and all(c["caption"].strip() for c in chunks["chunks"])
    assert not list((tmp_path / "results" / "cache" / "uploads").rglob("*.json"))


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("OPENAI_BASE_URL"), reason="OPENAI_BASE_URL not set")
def test_live_openai_compatible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = os.environ.get("VR_LIVE_OPENAI_MODEL", "Qwen/Qwen2.5-VL-7B-Instruct")
    endpoint = {"backend": "openai", "openai": {"model_name": model, "base_url": os.environ["OPENAI_BASE_URL"]}}
    check_run(tmp_path, live_spec(tmp_path, endpoint), monkeypatch)
