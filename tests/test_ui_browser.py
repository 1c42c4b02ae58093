"""The real Dagster UI over a finished demo run, driven in headless Chromium.

Each page is checked against what the pipeline stored on disk, so a metadata entry that stops
rendering (or never gets written) fails here, not in a reviewer's browser.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.fixtures_ui import CHROMIUM, LIVE_UI_KEY, DagsterUI, ui_answers
from vr_assets.assets.common import OFFLINE_NOTE
from vr_assets.graph import PER_VIDEO_ASSETS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing (install it with scripts/install_system_deps.sh --test)",
    ),
]

WAIT_MS = 60_000
# the UI scrolls inside its own panes, so a full-page screenshot is only as tall as the window
TALL = {"width": 1600, "height": 1800}


def _fragment(text: str, n: int = 40) -> str:
    """A leading piece of stored text that the markdown preview renders verbatim."""
    first_line = " ".join(text.split("\n")[0].split())
    return first_line[:n].strip()


def _anomaly_key(ui: DagsterUI) -> str:
    """The pinned-anomaly sample: its partition exercises every step, highlight included."""
    keys = ui.partition_keys()
    assert keys, "the demo registered no video partitions"
    for k in keys:
        f = ui.stored("filter_result", k)
        if f["proceed"] and f["mode"] == "anomaly":
            return k
    return next(k for k in keys if ui.stored("filter_result", k)["proceed"])


def test_asset_graph_shows_every_step(dagster_ui: DagsterUI, ui_page: Any, screenshot: Any) -> None:
    page = ui_page
    page.goto(dagster_ui.url("/asset-groups"))
    # groups start collapsed; wait for one, then expand all (the graph's own ⌥E shortcut)
    expect(page.get_by_text("step_3_qa", exact=True).first).to_be_visible(timeout=WAIT_MS)
    page.keyboard.press("Alt+e")
    for name in (*PER_VIDEO_ASSETS, "dataset"):
        label = page.get_by_text(name, exact=True)
        expect(label.first).to_be_visible(timeout=WAIT_MS)
        # zoomed out, a node shows its health only as colour: green once every partition is materialized
        node = page.locator('[class*="minimalAssetNodeBox"]', has=label)
        expect(node).to_have_attribute("style", re.compile(r"--minimal-bg:\s*var\(--color-background-green\)"))
    screenshot(page, "asset_graph")


def test_video_partition_shows_qa_preview(dagster_ui: DagsterUI, ui_page: Any, screenshot: Any) -> None:
    key = _anomaly_key(dagster_ui)
    qa = dagster_ui.stored("qa", key)
    assert qa["items"], f"no QA items stored for {key}"
    page = ui_page
    page.set_viewport_size(TALL)
    page.goto(dagster_ui.url(f"/assets/qa?view=partitions&partition={key}"))
    # the preview table starts with the first stored item
    expect(page.get_by_text(_fragment(qa["items"][0]["question"])).first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(key, exact=True).first).to_be_visible()
    for label in ("preview", "model_calls", "cost_usd"):
        expect(page.get_by_text(label, exact=True).first).to_be_visible()
    screenshot(page, "qa_partition")


def test_video_partition_shows_filter_decision(dagster_ui: DagsterUI, ui_page: Any, screenshot: Any) -> None:
    key = _anomaly_key(dagster_ui)
    stored = dagster_ui.stored("filter_result", key)
    page = ui_page
    page.set_viewport_size(TALL)
    page.goto(dagster_ui.url(f"/assets/filter_result?view=partitions&partition={key}"))
    expect(page.get_by_text(_fragment(stored["relevance_reason"])).first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(re.compile(r"Decision:\s*proceed")).first).to_be_visible()
    expect(page.get_by_text(re.compile(rf"Mode:\s*{stored['mode']}")).first).to_be_visible()
    expect(page.get_by_text(OFFLINE_NOTE).first).to_be_visible()
    screenshot(page, "filter_result_partition")


def test_dataset_shows_report(dagster_ui: DagsterUI, ui_page: Any, screenshot: Any) -> None:
    files = sorted(f for f in (dagster_ui.results / "step_4_output").glob("*.json") if f.name != "dataset_report.json")
    assert files, "the demo wrote no dataset files"
    total = sum(len(json.loads(f.read_text())["items"]) for f in files)
    page = ui_page
    page.set_viewport_size(TALL)
    page.goto(dagster_ui.url("/assets/dataset"))
    # a plain <a> without href: neither a link nor a button to the accessibility tree
    show = page.get_by_text("[Show Markdown]", exact=True).first
    expect(show).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(re.compile(r"^total_model_calls$")).first).to_be_visible()
    # the lineage panel fills in last: its upstream asset is the per-video export
    expect(page.get_by_role("link", name="task_exports").first).to_be_visible(timeout=WAIT_MS)
    screenshot(page, "dataset_overview")
    show.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Dataset: {total} items in {len(files)} tasks")).to_be_visible(timeout=WAIT_MS)
    expect(dialog.get_by_text(OFFLINE_NOTE).first).to_be_visible()
    expect(dialog.get_by_text(re.compile(r"Videos:\s*\d+ registered")).first).to_be_visible()
    screenshot(page, "dataset_report")



def _dataset_videos(results: Any) -> set[str]:
    out = results / "step_4_output"
    return {i["video_id"] for f in out.glob("*.json") if f.name != "dataset_report.json"
            for i in json.loads(f.read_text()).get("items", [])}


def test_a_user_launches_the_missing_videos_and_the_dataset_picks_them_up(
    vr_annotate_ui: Any, ui_page: Any, screenshot: Any
) -> None:
    """From the job page: Materialize all → Missing → Launch; the daemon runs them warm, the dataset refreshes."""
    ui = vr_annotate_ui
    assert ui.missing, "the fixture left no video to launch"
    before = _dataset_videos(ui.results)
    assert before and len(before) == 1, before
    page = ui_page
    page.goto(ui.url("/locations/vr_assets/jobs/annotate_videos"))
    materialize = page.get_by_role("button", name="Materialize all").first
    expect(materialize).to_be_visible(timeout=WAIT_MS)
    materialize.click()
    page.get_by_role("button", name="Missing", exact=True).click()
    n = len(ui.missing)
    expect(page.get_by_text(f"{n} partition{'s' if n > 1 else ''}", exact=True).first).to_be_visible(timeout=WAIT_MS)
    screenshot(page, "launch_missing")
    page.get_by_role("button", name=re.compile(r"^Launch (\d+ runs?|backfill)$")).click()

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if len(_dataset_videos(ui.results)) == 1 + len(ui.missing):
            break
        time.sleep(2)
    after = _dataset_videos(ui.results)
    assert len(after) == 1 + len(ui.missing), f"dataset holds {after}; ui log:\n{ui.log_path.read_text()[-3000:]}"
    assert before < after
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.from_config(str(ui.home)) as instance:
        runs = [r for r in instance.get_runs(RunsFilter(job_name="annotate_videos"))
                if r.tags.get("dagster/partition") in ui.missing]
        assert runs and all(r.is_success for r in runs)
        assert all("vr_assets/pid" in r.tags for r in runs)  # launched warm, like every other road
    page.goto(ui.url("/runs"))
    expect(page.get_by_text("build_dataset").first).to_be_visible(timeout=WAIT_MS)
    screenshot(page, "runs_after_launch")

    # the spec's API key is on no page of the UI road: runs (run config, tags), event logs, compute logs, asset
    # metadata, resources, as GraphQL serves them to the pages; nor in any file the road wrote but the spec
    answers = ui_answers(ui.base_url)
    assert sum(k.startswith("event log") for k in answers) >= len(runs) + 2  # the CLI's run and the dataset too
    assert "model_calls" in answers["asset pages"] and '"api_key"' in answers["resources"]  # what was scanned
    assert [where for where, text in answers.items() if LIVE_UI_KEY in text] == []
    files = [p for p in ui.results.parent.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    assert any(p.suffix == ".db" for p in files)  # the event log databases
    assert [str(p) for p in files if LIVE_UI_KEY.encode() in p.read_bytes()] == []
    for route in (f"/runs/{runs[0].run_id}", "/locations/vr_assets/resources/vlm"):
        page.goto(ui.url(route))
        page.wait_for_load_state("networkidle")
        assert LIVE_UI_KEY not in page.content(), route
