"""Prompt or model edits mark exactly the affected partition-assets stale; `--stale` re-runs only those."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dagster import DagsterInstance

from vr_assets.graph import PER_VIDEO_ASSETS, build_definitions
from vr_assets.prompts import prompts_root
from vr_assets.staleness import StalenessView

KEY = "v.mp4"


def view(spec: Any) -> StalenessView:
    return StalenessView(DagsterInstance.get(), build_definitions(spec))


def stale_assets(spec: Any) -> set[str]:
    return view(spec).stale_assets(PER_VIDEO_ASSETS, KEY)


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_prompt_and_model_edits_invalidate_exactly_what_they_touch(
    make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path
) -> None:
    env = make_pipeline("gemini")
    vid = env.add_video(synthetic_videos["clip8"], KEY)
    env.teacher.set_verdict_for_file(vid, relevant=True, label="anomaly")
    pack = tmp_path / "mypack"
    shutil.copytree(prompts_root() / "general", pack)
    base = env.spec(prompt_pack=str(pack))
    assert env.run(base).failed == {}
    assert stale_assets(base) == set(), {a: view(base).causes(a, KEY) for a in PER_VIDEO_ASSETS}
    calls = env.calls()

    # 1. a step-2 prompt edited: Dagster calls `description` stale (new code version); the re-run takes its
    #    downstream along, and pays for exactly 1 description + 8 QA calls (their prompts embed the description).
    append(pack / "anomaly_description.txt", "\nBe concise.\n")
    edited = env.spec(prompt_pack=str(pack))
    assert stale_assets(edited) == {"description"}
    assert view(edited).causes("description", KEY) == ["description: has a new code version"]
    summary = env.run(edited, stale=True)
    assert summary.succeeded == [KEY]
    new = env.model_requests()[calls:]
    assert len(new) == 1 + 8
    assert sum("Be concise." in r.prompt_text for r in new) == 1
    assert stale_assets(edited) == set()
    calls = env.calls()

    # 2. a step-1b prompt edit marks chunk_captions only (downstream follows on re-materialization)
    append(pack / "anomaly_chunk_caption.txt", "\nShort.\n")
    chunk_edit = env.spec(prompt_pack=str(pack))
    assert stale_assets(chunk_edit) == {"chunk_captions"}
    (pack / "anomaly_chunk_caption.txt").write_text(
        (pack / "anomaly_chunk_caption.txt").read_text().replace("\nShort.\n", "")
    )
    assert stale_assets(env.spec(prompt_pack=str(pack))) == set()

    # 3. switching the LLM model: every LLM step (1c, 2, 3) is stale, steps 0-1b are not; the re-run includes
    #    task_exports and calls only the new model (the 1c clip caption is a VLM call: same prompt, same clip ->
    #    answered from the call cache)
    other_llm = env.spec(prompt_pack=str(pack), llm={"gemini": {"model": "gemini-other"}})
    assert stale_assets(other_llm) == {"highlight", "description", "qa"}
    summary = env.run(other_llm, stale=True)
    assert summary.succeeded == [KEY]
    new = env.model_requests()[calls:]
    assert {r.model for r in new} == {"gemini-other"}
    assert len(new) == 1 + 1 + 8  # anomaly time + description + 8 QA
    assert stale_assets(other_llm) == set()

    # 4. switching the VLM model instead marks steps 0-1b (and 1c, which captions its clip with the VLM)
    other_vlm = env.spec(prompt_pack=str(pack), llm={"gemini": {"model": "gemini-other"}},
                         vlm={"gemini": {"model": "gemini-vision-2"}})
    assert stale_assets(other_vlm) == {"filter_result", "captions", "chunk_captions", "highlight"}

    # 5. nothing stale: a --stale run costs nothing
    before = env.calls()
    assert env.run(other_llm, stale=True).ran == 0
    assert env.calls() == before
