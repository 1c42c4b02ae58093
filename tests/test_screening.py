"""`workflow.whole_video_requests: one_per_step`: steps 0 and 1a each ask their two questions in one request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.test_pipeline_e2e import three_videos
from vr_assets.config import load_spec
from vr_assets.estimate import video_calls
from vr_assets.prompts import load_pack
from vr_assets.records import VideoProbe
from vr_assets.store import JsonStore
from vr_assets.whole_video import CLASSIFY_KEY, FILTER_KEY, SCREENING_ONE_KEY, both_captions_key, whole_video_calls

REPO = Path(__file__).resolve().parent.parent


def _ledger(results: Path) -> list[dict[str, Any]]:
    return [json.loads(x)["usage"] for x in (results / "usage" / "calls.jsonl").read_text().splitlines()]


def test_one_request_per_step_reads_each_video_once_per_step_and_decides_the_same(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    three_videos(env, synthetic_videos)
    summary = env.run(env.spec(workflow={"whole_video_requests": "one_per_step"}, vlm={"context_cache": "off"}))
    assert summary.failed == {}, summary.failed

    step0 = [u for u in _ledger(env.results) if u["step"] == "0"]
    assert sorted(u["prompt_key"] for u in step0) == [SCREENING_ONE_KEY] * 3, step0  # one per video, off-domain too
    step1a = sorted(u["prompt_key"] for u in _ledger(env.results) if u["step"] == "1a")
    assert step1a == [both_captions_key("anomaly"), both_captions_key("normal")], step1a
    store = JsonStore(env.results)
    off = store.read("filter_result", "other__OFFTOPIC.MP4")
    assert not off.proceed and "not relevant" in off.stop_reason and off.is_valid is False
    anomaly, normal = store.read("filter_result", "site_a__cam1__clip.mp4"), store.read("filter_result",
                                                                                         "site_b__cam1__clip.mp4")
    assert (anomaly.proceed, anomaly.mode, anomaly.mode_source) == (True, "anomaly", "step_0")
    assert (normal.proceed, normal.mode) == (True, "normal")
    assert anomaly.relevance_reason and json.loads(anomaly.classification_raw)["label"] == "anomaly"
    assert not store.exists("captions", "other__OFFTOPIC.MP4")
    caps = store.read("captions", "site_a__cam1__clip.mp4")
    assert caps.mode == "anomaly" and len(caps.usage) == 1
    assert caps.global_caption and caps.dense_caption and caps.global_caption != caps.dense_caption
    assert store.exists("task_exports", "site_a__cam1__clip.mp4") and store.exists("task_exports",
                                                                                   "site_b__cam1__clip.mp4")

    # the one request carries both of the pack's texts and asks for all four fields in one JSON schema
    pack = load_pack("general")
    screening = [r for r in env.model_requests() if "=== Task 2 ===" in json.dumps(r.json)
                 and json.dumps(pack.text(FILTER_KEY)[:80])[1:-1] in json.dumps(r.json)]
    assert len(screening) == 3
    body = json.dumps(screening[0].json)
    assert json.dumps(pack.text(FILTER_KEY)[:80])[1:-1] in body
    assert json.dumps(pack.text(CLASSIFY_KEY)[:80])[1:-1] in body
    config = screening[0].json["generationConfig"]
    schema = config.get("responseSchema") or config.get("responseJsonSchema")
    assert set(schema["properties"]) == {"relevant", "reason", "reasoning", "label"}


def test_one_request_per_step_is_counted_by_the_estimate_and_the_cache_decision() -> None:
    one = ["workflow.mode=auto", "workflow.whole_video_requests=one_per_step"]
    spec = load_spec(REPO / "samples" / "demo_spec.yaml", one)
    two = load_spec(REPO / "samples" / "demo_spec.yaml", ["workflow.mode=auto"])
    pack = load_pack("general")
    probe = VideoProbe(duration_sec=12.0, width=320, height=240, fps=25.0, video_codec="h264", has_audio=False)
    keys = [c.prompt_key for c in video_calls(spec, pack, probe) if c.step in ("0", "1a")]
    assert keys == [SCREENING_ONE_KEY, both_captions_key("anomaly"), both_captions_key("normal")]
    assert [c.prompt_key for c in video_calls(two, pack, probe) if c.step == "0"] == [FILTER_KEY, CLASSIFY_KEY]
    assert (whole_video_calls(spec, pack), whole_video_calls(two, pack)) == (2, 4)
    # a pack that answers in free text cannot split one answer in two: it keeps two requests
    free = pack.model_copy(update={"structured_output": False})
    assert [c.prompt_key for c in video_calls(spec, free, probe) if c.step == "0"] == [FILTER_KEY, CLASSIFY_KEY]
