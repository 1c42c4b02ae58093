"""The whole graph on a real Dagster instance, real ffmpeg, real SDKs against the local fakes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance

from tests.test_export import tao_daft_cli, tao_validate
from vr_assets.export import TASKS
from vr_assets.fakes import FakeGemini
from vr_assets.prompts import PROMPT_KEYS
from vr_assets.store import JsonStore

QA_TYPES = 8
ITEMS_PER_CALL = 2  # the fake teacher's default


def three_videos(env: Any, synthetic_videos: dict[str, Path]) -> dict[str, Path]:
    """anomaly / normal / off-domain, each with its teacher verdict."""
    vids = {
        "anomaly": env.add_video(synthetic_videos["clip8"], "site_a/cam1/clip.mp4"),
        "normal": env.add_video(synthetic_videos["short_mp4"], "site_b/cam1/clip.mp4"),
        "filtered": env.add_video(synthetic_videos["clip16"], "other/OFFTOPIC.MP4"),
    }
    env.teacher.set_verdict_for_file(vids["anomaly"], relevant=True, label="anomaly")
    env.teacher.set_verdict_for_file(vids["normal"], relevant=True, label="normal")
    env.teacher.set_verdict_for_file(vids["filtered"], relevant=False, label="normal")
    return vids


@pytest.mark.parametrize("backend", ["gemini", "openai"])
def test_three_videos_end_to_end(make_pipeline: Any, synthetic_videos: dict[str, Path], backend: str) -> None:
    env = make_pipeline(backend)
    three_videos(env, synthetic_videos)
    summary = env.run(parallel=2 if backend == "gemini" else 1)
    assert summary.failed == {}, summary.failed
    keys = {"anomaly": "site_a__cam1__clip.mp4", "normal": "site_b__cam1__clip.mp4", "filtered": "other__OFFTOPIC.MP4"}
    assert sorted(summary.succeeded) == sorted(keys.values())

    store = JsonStore(env.results)
    f_off = store.read("filter_result", keys["filtered"])
    assert not f_off.proceed and "not relevant" in f_off.stop_reason
    for asset in ("captions", "chunk_captions", "highlight", "description", "qa", "task_exports"):
        assert not store.exists(asset, keys["filtered"]), asset
    assert store.read("captions", keys["anomaly"]).mode == "anomaly"
    assert store.read("captions", keys["normal"]).mode == "normal"
    hl_a, hl_n = store.read("highlight", keys["anomaly"]), store.read("highlight", keys["normal"])
    assert hl_a.applicable and hl_a.highlight_chunk is not None
    assert 0 <= hl_a.highlight_chunk.timestamp_start < hl_a.highlight_chunk.timestamp_end <= 8.01
    assert not hl_n.applicable and hl_n.usage == []

    # calls: 8 s anomaly = filter+classify+2 captions+2 chunks+2 highlight+description+8 QA; 4 s normal has one
    # chunk and no highlight; the off-domain video costs its filter call only.
    expected = {"anomaly": 2 + 2 + 2 + 2 + 1 + QA_TYPES, "normal": 2 + 2 + 1 + 1 + QA_TYPES, "filtered": 1}
    assert env.calls() == sum(expected.values())
    paths = [r.path for r in env.model_requests()]
    model_name = "gemini-test" if backend == "gemini" else "test-vl"
    assert all(r.model == model_name for r in env.model_requests()), Counter(r.model for r in env.model_requests())
    assert all(r.status == 200 for r in env.model_requests()), paths

    # the Dagster instance knows what happened per partition
    instance = DagsterInstance.get()
    assert instance.get_materialized_partitions(AssetKey("filter_result")) == set(keys.values())
    assert instance.get_materialized_partitions(AssetKey("task_exports")) == {keys["anomaly"], keys["normal"]}
    ev = instance.get_latest_materialization_event(AssetKey("filter_result"))
    assert ev is not None and "decision" in ev.asset_materialization.metadata  # type: ignore[union-attr]

    # step 4: every file valid for NVIDIA's validator, counts as the QA types imply
    out = env.results / "step_4_output"
    errors, checked = tao_validate(out)
    assert errors == [] and checked == len(TASKS)
    cli = tao_daft_cli(out)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    per_task = {t: len(json.loads((out / f"{t}.json").read_text())["items"]) for t in TASKS}
    assert per_task == {t: 2 * ITEMS_PER_CALL for t in TASKS}, per_task
    mcq = json.loads((out / "mcq.json").read_text())
    assert mcq["media_root"] == str(env.videos)
    assert {i["video_id"] for i in mcq["items"]} == {"site_a/cam1/clip.mp4", "site_b/cam1/clip.mp4"}
    assert mcq["metadata"]["license"] == "test-license"
    # the teacher's "option X matches" moved with the options: it names the exported answer, and the same option
    teacher = {i.question.strip(): i for k in (keys["anomaly"], keys["normal"]) for i in store.read("qa", k).items}
    for item in mcq["items"]:
        stem = item["question"].split("\n", 1)[0]
        shown = dict(re.findall(r"^([A-D])\. (.+)$", item["question"], re.M))
        named = re.search(r"option ([A-D]) matches", item["reasoning"])
        assert named and named.group(1) == item["answer"], item
        assert shown[item["answer"]] == teacher[stem].options["ABCD".index(teacher[stem].answer)]

    # TAO's per-step files are kept where TAO users look for them
    def lines(rel: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (env.results / rel).read_text().splitlines()]

    assert len(lines("step_0_filter/filter_results.jsonl")) == 3
    assert len(lines("step_1a_caption/captions.jsonl")) == 2
    assert len(lines("step_1c_highlight/highlight_captions.jsonl")) == 1
    assert len(lines("step_3_qa/qa_output.jsonl")) == 2 * QA_TYPES

    # the dataset's report counts every paid call and the video that stopped at step 0
    ds = instance.get_latest_materialization_event(AssetKey("dataset"))
    assert ds is not None
    meta = ds.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["total_model_calls"].value == sum(expected.values())
    assert "3 registered, 2 exported, 1 stopped at step 0" in str(meta["report"].value)
    assert meta["mcq_shuffled"].value == len(mcq["items"]) and meta["mcq_kept_order"].value == 0
    assert "**MCQ option order:**" in str(meta["report"].value)


def test_resume_costs_nothing_and_new_video_runs_alone(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "a.mp4")
    env.add_video(synthetic_videos["clip8"], "b.mp4")
    first = env.run()
    assert first.failed == {} and len(first.succeeded) == 2
    calls_after_first = env.calls()
    assert calls_after_first > 0

    again = env.run()
    assert env.calls() == calls_after_first, "a second run of the same spec must not call the provider"
    assert again.ran == 0 and again.skipped_up_to_date == 2

    new = env.add_video(synthetic_videos["clip16"], "later/c.mp4")
    third = env.run()
    assert third.succeeded == ["later__c.mp4"]
    new_requests = env.model_requests()[calls_after_first:]
    assert new_requests, "the new video must be annotated"
    # every new media-carrying request is about the new video or its chunks, never a/b
    store = JsonStore(env.results)
    assert store.read("filter_result", "later__c.mp4").video.path == str(new.resolve())
    assert DagsterInstance.get().get_dynamic_partitions("videos") == ["a.mp4", "b.mp4", "later__c.mp4"]
    chunks = len(store.read("chunk_captions", "later__c.mp4").chunks)
    assert chunks >= 3
    usage = [u for a in ("filter_result", "captions", "chunk_captions", "highlight", "description", "qa")
             for u in store.read(a, "later__c.mp4").usage]
    assert len(usage) == 2 + 2 + chunks + 1 + QA_TYPES  # normal video: no highlight calls
    # testsrc clips share their first seconds, so an identical chunk call is answered from the call cache
    assert len(new_requests) == sum(1 for u in usage if not u.cached)


TEXT_FORMAT = {
    # A TAO user's own module: plain text prompts, str.format placeholders, answers in TAO's block format.
    "video_filtering": "Is this video relevant to the domain? Answer yes or no first.",
    "video_anomaly_classification": "Think it through, then write anomaly or normal on the last line.",
    "highlight_timestamp_extraction": "When does the anomaly happen? Give the timestamp in seconds.\n"
    "{global_caption}\n{dense_caption}\n{chunk_captions_str}",
    "highlight_chunk_caption": "Describe the clip {start_time}-{end_time} ({duration} s) around {anomaly_time}.",
}


def tao_module_source() -> str:
    from vr_assets.prompts import PLACEHOLDERS

    templates: dict[str, str] = {}
    for key in PROMPT_KEYS:
        if key in TEXT_FORMAT:
            templates[key] = TEXT_FORMAT[key]
            continue
        holders = " ".join("{" + p + "}" for p in sorted(PLACEHOLDERS[key]))
        if key.endswith("_mcq"):
            ask = "Write Multiple-Choice questions with options A-D, separated by =====."
        elif key.endswith("_bcq"):
            ask = "Write Question: lines answered yes or no, separated by =====."
        elif key.endswith("_temporal_localization"):
            ask = "Write Question: blocks answered as Start_Time: MM:SS, End_Time: MM:SS."
        elif "caption" in key or key.endswith("_description") and key != "scene_description":
            ask = "Describe what happens in the video."
        else:
            ask = "Write Question: / Answer: / Reasoning: blocks separated by =====."
        templates[key] = f"{ask} {{{{literal braces}}}} {holders}".strip()
    return "PROMPT_TEMPLATES = " + json.dumps(templates, indent=1) + "\n"


def test_tao_prompt_templates_module(
    make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod_dir = tmp_path / "user_prompts"
    mod_dir.mkdir()
    (mod_dir / "my_tao_prompts.py").write_text(tao_module_source())
    monkeypatch.syspath_prepend(str(mod_dir))
    # the runs' processes import it too: as for Dagster's own code servers, it must be on their path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(mod_dir), os.environ.get("PYTHONPATH")])))
    env = make_pipeline("gemini")
    vid = env.add_video(synthetic_videos["clip8"], "x.mp4")
    env.teacher.set_verdict_for_file(vid, relevant=True, label="anomaly")
    summary = env.run(env.spec(prompts_module="my_tao_prompts"))
    assert summary.failed == {}, summary.failed
    # text prompts: no structured output requested, answers parsed from TAO's block format
    assert all(r.schema_title is None for r in env.model_requests())
    assert any("{literal braces}" in r.prompt_text for r in env.model_requests())
    qa = JsonStore(env.results).read("qa", "x.mp4")
    types = Counter(i.qa_type for i in qa.items)
    assert set(types) == {"mcq", "bcq", "open_qa", "causal_linkage", "temporal_localization", "temporal_event_desc",
                          "scene_description", "event_summary"}
    assert all(i.options for i in qa.items if i.qa_type == "mcq")
    tl = [i for i in qa.items if i.qa_type == "temporal_localization"]
    assert tl and all(i.start_sec is not None and i.end_sec is not None for i in tl)
    out = env.results / "step_4_output"
    assert tao_validate(out)[0] == []
    spans = json.loads((out / "temporal_localization.json").read_text())["items"]
    assert all(set(json.loads(s["answer"])) == {"start", "end"} for s in spans)


def test_long_video_frames_and_chunks_come_from_one_copy(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    """A long video goes out as frames (steps 0/1a), sampled from the same copy its chunks are split from."""
    env = make_pipeline("gemini")
    vid = env.add_video(synthetic_videos["clip16"], "cam/long.mp4")
    spec = env.spec(
        media={"fps": 4.0, "max_side": 160, "transport": "inline"},
        workflow={"mode": "anomaly", "long_video_threshold_sec": 10, "long_video_sample_fps": 0.5},
    )
    summary = env.run(spec)
    assert summary.failed == {} and summary.succeeded == ["cam__long.mp4"]
    ev = DagsterInstance.get().get_latest_materialization_event(AssetKey("chunk_captions"))
    assert ev.asset_materialization.metadata["cut_from"].value == "prepared copy, stream copy"  # type: ignore[union-attr]
    step0 = [r for r in env.model_requests() if r.media_sha256][0]
    assert len(step0.media_sha256) == 8  # 16 s at 0.5 fps: frames, not a video
    sent = {h for r in env.model_requests() for h in r.media_sha256}
    assert hashlib.sha256(vid.read_bytes()).hexdigest() not in sent
    chunks = JsonStore(env.results).read("chunk_captions", "cam__long.mp4").chunks
    assert len(sent) == 8 + len(chunks) + 1  # frames, chunk clips, the highlight clip
    assert not (env.results / "cache" / "media" / "cam__long.mp4").exists()


def test_uploaded_copy_is_sampled_and_cut_by_the_model(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    """media.transport upload: one upload per video; a long video's rate, each chunk and the clip are
    videoMetadata on it, so nothing is cut or sent twice and no frames are made."""
    env = make_pipeline("gemini")
    vid = env.add_video(synthetic_videos["clip16"], "cam/long.mp4")
    spec = env.spec(
        media={"fps": 4.0, "max_side": 160},
        workflow={"mode": "anomaly", "long_video_threshold_sec": 10, "long_video_sample_fps": 0.5},
    )
    summary = env.run(spec)
    assert summary.failed == {} and summary.succeeded == ["cam__long.mp4"]
    ev = DagsterInstance.get().get_latest_materialization_event(AssetKey("chunk_captions"))
    assert ev.asset_materialization.metadata["cut_from"].value == "time ranges of the uploaded copy"  # type: ignore[union-attr]
    fake: FakeGemini = env.fake  # type: ignore[assignment]
    (up,) = fake.uploaded.values()
    assert up.sha256 != hashlib.sha256(vid.read_bytes()).hexdigest()  # the downscaled copy, not the source
    assert fake.upload_bytes_by_sha() == {up.sha256: up.size} and fake.inline_bytes_by_sha() == {}
    media_reqs = [r for r in env.model_requests() if r.media_sha256]
    assert all(r.media_sha256 == [up.sha256] for r in media_reqs)
    whole = [r.media_sampling[0] for r in media_reqs if "start_s" not in r.media_sampling[0]]
    assert whole == [{"fps": 0.5}] * 3  # filter, global, dense; 16 s at 0.5 fps: the frame budget
    ranges = sorted((m["start_s"], m["end_s"]) for r in media_reqs for m in r.media_sampling if "start_s" in m)
    chunks = JsonStore(env.results).read("chunk_captions", "cam__long.mp4").chunks
    hl = JsonStore(env.results).read("highlight", "cam__long.mp4").highlight_chunk
    assert hl is not None
    want = [(c.timestamp_start, c.timestamp_end) for c in chunks] + [(hl.timestamp_start, hl.timestamp_end)]
    assert ranges == sorted((round(a, 3), round(b, 3)) for a, b in want)
    assert fake.live_files() == 0 and fake.counts["upload.start"] == 1
    assert not list((env.results / "cache" / "uploads").rglob("*.json"))
    assert not (env.results / "cache" / "media" / "cam__long.mp4").exists()


@pytest.mark.parametrize("mode", ["normal", "anomaly"])
def test_chunks_come_from_step_0s_copy_by_stream_copy(
    make_pipeline: Any, synthetic_videos: dict[str, Path], mode: str
) -> None:
    """With downscaling on, steps 1b and 1c read step 0's copy, never the source; the last user frees it."""
    env = make_pipeline("gemini")
    vid = env.add_video(synthetic_videos["clip16"], "cam/clip.mp4")
    spec = env.spec(media={"fps": 4.0, "max_side": 160, "transport": "inline"}, workflow={"mode": mode})
    summary = env.run(spec)
    assert summary.failed == {} and summary.succeeded == ["cam__clip.mp4"]
    ev = DagsterInstance.get().get_latest_materialization_event(AssetKey("chunk_captions"))
    meta = ev.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["cut_from"].value == "prepared copy, stream copy"
    chunks = JsonStore(env.results).read("chunk_captions", "cam__clip.mp4").chunks
    assert [(c.timestamp_start, c.timestamp_end) for c in chunks] == [(0, 5), (5, 10), (10, 15), (15, 16)]
    # what went out: the copy (steps 0/1a) and four distinct chunk clips, never the source's bytes
    sent = [h for r in env.model_requests() for h in r.media_sha256]
    source_sha = hashlib.sha256(vid.read_bytes()).hexdigest()
    assert source_sha not in sent
    highlight = JsonStore(env.results).read("highlight", "cam__clip.mp4")
    assert highlight.applicable == (highlight.highlight_chunk is not None) == (mode == "anomaly")
    assert len(set(sent)) == 1 + len(chunks) + (1 if mode == "anomaly" else 0)  # + the highlight clip
    assert not (env.results / "cache" / "media" / "cam__clip.mp4").exists()
