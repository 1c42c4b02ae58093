"""The dataset viewer (`vr-annotate view`) and reviews: the JSON API and range requests over a real pipeline
run, the dataset honouring reviews, and the pages driven in headless Chromium.

The pipeline run is the offline teacher behind the fake Gemini server (real SDK, real ffmpeg, real Dagster);
the viewer runs in-process on a free port, in a thread.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from tests.fixtures_ui import CHROMIUM, REPO
from vr_assets.config import Spec
from vr_assets.records import QAItem, QAResult, TaskExports, VideoSource
from vr_assets.registry import VideoRegistry
from vr_assets.reviews import ItemEdit, apply_reviews, item_key, load_reviews, save_review
from vr_assets.store import JsonStore
from vr_assets.viewer.index import DatasetIndex, Facets, Query, query
from vr_assets.viewer.links import video_page_url
from vr_assets.viewer.server import Viewer, ViewerServer

ANOMALY, NORMAL, OFFTOPIC = "site_a__cam1__clip.mp4", "site_b__cam1__clip.mp4", "other__OFFTOPIC.MP4"
BROKEN = "broken.mp4"
SHOTS = REPO / "test-output" / "viewer"


def _run(env: Any) -> Any:
    """`vr-annotate run` in-process, in a thread of its own: each Dagster run makes and closes an event loop,
    and the (session-wide) Playwright keeps one running in the main thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(env.run).result(timeout=600)


@pytest.fixture
def annotated(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> Any:
    """Four videos through the whole graph: anomaly (8 s), normal (4 s), off-domain (stops at step 0), and a
    truncated file that fails step 0."""
    env = make_pipeline("gemini")
    for src, rel, relevant, label in (
        ("clip8", "site_a/cam1/clip.mp4", True, "anomaly"),
        ("short_mp4", "site_b/cam1/clip.mp4", True, "normal"),
        ("clip16", "other/OFFTOPIC.MP4", False, "normal"),
    ):
        env.teacher.set_verdict_for_file(env.add_video(synthetic_videos[src], rel), relevant=relevant, label=label)
    env.add_video(synthetic_videos["corrupt_mp4"], BROKEN)
    summary = _run(env)
    assert set(summary.failed) == {BROKEN}, summary.failed
    return env


@pytest.fixture
def viewer(annotated: Any) -> Iterator[ViewerServer]:
    server = ViewerServer(annotated.spec(), port=0, host="127.0.0.1").start()
    try:
        yield server
    finally:
        server.stop()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _dataset_meta() -> dict[str, Any]:
    ev = DagsterInstance.get().get_latest_materialization_event(AssetKey("dataset"))
    assert ev is not None and ev.asset_materialization is not None
    return {k: v.value for k, v in ev.asset_materialization.metadata.items()}


def _dataset_items(results: Path, task: str) -> list[dict[str, Any]]:
    p = results / "step_4_output" / f"{task}.json"
    return json.loads(p.read_text())["items"] if p.exists() else []


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("viewer_index_bench", REPO / "bench" / "viewer_index.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- API, media, dataset (no browser)


def test_api_index_media_and_reviews_reach_the_dataset(annotated: Any, viewer: ViewerServer) -> None:
    env, base = annotated, viewer.url
    _, _, body = _get(f"{base}/api/videos")
    index = json.loads(body)
    rows = {r["key"]: r for r in index["rows"]}
    assert set(rows) == {ANOMALY, NORMAL, OFFTOPIC, BROKEN}
    # the cause of a failure comes from Dagster's run history: it names the video and the step
    assert rows[BROKEN]["outcome"] == "failed" and BROKEN in rows[BROKEN]["reason"], rows[BROKEN]
    assert rows[BROKEN]["reason"].startswith("filter_result"), rows[BROKEN]["reason"]
    assert rows[OFFTOPIC]["outcome"] == "stopped" and "not relevant" in rows[OFFTOPIC]["reason"]
    assert rows[ANOMALY]["outcome"] == "annotated" and rows[ANOMALY]["mode"] == "anomaly"
    stored = JsonStore(env.results).read("task_exports", ANOMALY)
    assert rows[ANOMALY]["items_per_task"] == {t: len(v) for t, v in stored.tasks.items()}
    assert index["facets"]["mode"] == {"anomaly": 1, "normal": 2, "unknown": 1}
    assert index["facets"]["outcome"] == {"annotated": 2, "failed": 1, "stopped": 1}
    assert json.loads(_get(f"{base}/api/videos?mode=anomaly")[2])["total"] == 1
    assert [r["key"] for r in json.loads(_get(f"{base}/api/videos?q=SITE_B")[2])["rows"]] == [NORMAL]
    assert json.loads(_get(f"{base}/api/videos?outcome=stopped&per_page=1&page=1")[2])["pages"] == 1

    # the Dagster metadata of each video's export links to its page
    found = DagsterInstance.get().fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("task_exports"), asset_partitions=[ANOMALY]), limit=1).records
    mat = found[0].asset_materialization
    assert mat is not None and mat.metadata["viewer"].value == video_page_url(env.spec().viewer.base_url, ANOMALY)

    # the player's range requests: a middle slice and a suffix, byte for byte
    src = (env.videos / "site_a/cam1/clip.mp4").read_bytes()
    status, headers, part = _get(f"{base}/media/{ANOMALY}", {"Range": "bytes=1000-1999"})
    assert status == 206 and part == src[1000:2000]
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(src)}" and headers["Accept-Ranges"] == "bytes"
    assert _get(f"{base}/media/{ANOMALY}", {"Range": "bytes=-500"})[2] == src[-500:]
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(f"{base}/media/{ANOMALY}", {"Range": f"bytes={len(src)}-"})
    assert err.value.code == 416

    # review through the API: reject one MCQ, edit an open question; the rebuilt dataset honours both
    detail = json.loads(_get(f"{base}/api/video/{ANOMALY}")[2])
    mcq = next(i for i in detail["items"] if i["qa_type"] == "mcq")
    open_q = next(i for i in detail["items"] if i["qa_type"] == "open_qa")
    _post(f"{base}/api/video/{ANOMALY}/review", {"item_key": mcq["key"], "action": "reject"})
    after = _post(f"{base}/api/video/{ANOMALY}/review", {
        "item_key": open_q["key"], "action": "edit",
        "edit": {"question": open_q["question"], "answer": "A person in a red coat crosses from left to right."}})
    edited = next(i for i in after["items"] if i["key"] == open_q["key"])
    assert edited["review"]["edit"] == {"question": None, "options": None,
                                        "answer": "A person in a red coat crosses from left to right.",
                                        "reasoning": None}, "only changed fields are stored as edits"
    row = json.loads(_get(f"{base}/api/videos?review=rejected")[2])["rows"]
    assert [r["key"] for r in row] == [ANOMALY] and row[0]["rejected"] == 1 and row[0]["edited"] == 1

    calls = env.calls()
    assert set(_run(env).failed) == {BROKEN}
    assert env.calls() == calls, "rebuilding the dataset must not call the provider"
    mcq_items = _dataset_items(env.results, "mcq") + _dataset_items(env.results, "mcq_openended")
    assert not [i for i in mcq_items if i["question"].startswith(mcq["question"])]
    assert len(mcq_items) == 2 * (2 * 2 - 1)  # two videos x two MCQs, less the rejected one, in both MCQ tasks
    answers = [i["answer"] for i in _dataset_items(env.results, "open_qa") if i["question"] == open_q["question"]]
    assert answers == ["A person in a red coat crosses from left to right."]
    meta = _dataset_meta()
    assert (meta["reviewed_items"], meta["rejected_items"], meta["edited_items"], meta["orphaned_reviews"]) == (
        2, 1, 1, 0)
    assert "1 rejected (left out), 1 edited" in meta["report"]


def test_unknown_video_and_item_are_clear_errors(tmp_path: Path) -> None:
    results = _bench().make_results(tmp_path, 3)
    server = ViewerServer(Spec(results_dir=str(results)), port=0, host="127.0.0.1", failures=False).start()
    key = "site_01__cam1__clip_00001.mp4"
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{server.url}/api/video/nope.mp4")
        assert err.value.code == 404 and "no video 'nope.mp4'" in json.loads(err.value.read())["error"]
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(f"{server.url}/api/video/{key}/review", {"item_key": "0" * 16, "action": "reject"})
        assert err.value.code == 404 and "no QA item with key" in json.loads(err.value.read())["error"]
        item = json.loads(_get(f"{server.url}/api/video/{key}")[2])["items"][0]
        with pytest.raises(urllib.error.HTTPError) as err:  # an edit that changes nothing is no edit
            _post(f"{server.url}/api/video/{key}/review",
                  {"item_key": item["key"], "action": "edit", "edit": {"answer": item["answer"]}})
        assert err.value.code == 400 and "at least one edited field" in json.loads(err.value.read())["error"]
    finally:
        server.stop()


# ---------------------------------------------------------------- reviews as data (no pipeline)


def _qa(question: str, answer: str = "B", qa_type: str = "mcq") -> QAItem:
    return QAItem(qa_type=qa_type, prompt_key=f"normal_{qa_type}", question=question,
                  options=["Left", "Right", "Still", "Gone"] if qa_type == "mcq" else [], answer=answer,
                  reasoning="seen in the clip")


def test_reviews_survive_a_rerun_and_report_orphans(tmp_path: Path) -> None:
    from vr_assets.export import task_exports_for_video

    items = [_qa("Where does the van go?"), _qa("Where does the man go?", "A"), _qa("Is it raining?", "No", "bcq")]
    te, _ = task_exports_for_video("v.mp4", "normal", items, "v.mp4")
    save_review(tmp_path, "v.mp4", items[0], "reject")
    save_review(tmp_path, "v.mp4", items[1], "edit", ItemEdit(options=["Up", "Down", "Away", "Back"]))
    save_review(tmp_path, "v.mp4", items[2], "accept")

    # a re-run that reproduces the same items (fresh objects, trailing whitespace) keeps every review
    rerun = [i.model_copy(update={"question": i.question + " \n"}) for i in items]
    assert [item_key(i) for i in rerun] == [item_key(i) for i in items]
    out, counts, skipped = apply_reviews(te, QAResult(video_key="v.mp4", items=rerun), tmp_path, video_id="v.mp4")
    assert (counts.reviewed, counts.accepted, counts.rejected, counts.edited, counts.orphaned) == (3, 1, 1, 1, 0)
    assert skipped == []
    (kept,) = out.tasks["mcq"]
    assert kept.question.startswith("Where does the man go?")
    # the edited options are in the stored (teacher's) order, placed later by the dataset pass like any other;
    # the answer letter still names the correct one ("Up")
    assert f"{kept.answer}. Up" in kept.question.splitlines()
    assert out.tasks["bcq"] == te.tasks["bcq"]

    # a re-run that writes a different question orphans that review; the item itself goes through unreviewed
    changed = [items[0].model_copy(update={"question": "Where does the truck go?"}), *items[1:]]
    out, counts, _ = apply_reviews(te, QAResult(video_key="v.mp4", items=changed), tmp_path, video_id="v.mp4")
    assert counts.orphaned == 1 and "Where does the van go?" in counts.orphans[0]
    assert any("truck" in i.question for i in out.tasks["mcq"])

    # no reviews: the stored export as is
    assert apply_reviews(te, QAResult(video_key="w.mp4", items=items), tmp_path / "none", video_id="v.mp4")[0] is te
    assert isinstance(te, TaskExports)
    save_review(tmp_path, "v.mp4", items[2], None)
    assert item_key(items[2]) not in load_reviews(tmp_path, "v.mp4").reviews


def test_reviews_apply_before_placement_and_checks(tmp_path: Path) -> None:
    """The dataset pass in order: reviews on the teacher's order, then MCQ placement (the edited reasoning's
    letters move with the options), then the checks judge the edited text (an edit that empties the reasoning is
    left out), and a rejected MCQ leaves with its open-ended twin and its source."""
    from vr_assets.checks import item_failures
    from vr_assets.export import place_and_exclude, task_exports_for_video

    def mcq(question: str, reasoning: str) -> QAItem:
        return QAItem(qa_type="mcq", prompt_key="normal_mcq", question=question, answer="A",
                      options=["Left", "Right", "Still", "Gone"], reasoning=reasoning)

    keep, drop, edit = (mcq("Where does the van go?", "The van turns left."),
                        mcq("Where does the man go?", "The man walks left."),
                        mcq("Where does the cart go?", "The cart rolls left."))
    open_q = _qa("What does the driver do?", "The driver parks.", "open_qa")
    items = [keep, drop, edit, open_q]
    te, _ = task_exports_for_video("v.mp4", "normal", items, "v.mp4")
    save_review(tmp_path, "v.mp4", drop, "reject")
    save_review(tmp_path, "v.mp4", edit, "edit", ItemEdit(options=["Up", "Down", "Away", "Back"],
                                                         reasoning="The cart rolls up the ramp, so option A is right."))
    save_review(tmp_path, "v.mp4", open_q, "edit", ItemEdit(reasoning=" "))
    out, counts, _ = apply_reviews(te, QAResult(video_key="v.mp4", items=items), tmp_path, video_id="v.mp4")
    assert (counts.rejected, counts.edited) == (1, 2)
    assert [s.question for s in out.mcq_sources] == [keep.question, edit.question], "the source left with the MCQ"
    assert len(out.tasks["mcq"]) == len(out.tasks["mcq_openended"]) == 2, "the twin left with the MCQ"

    # seed "d" places the cart's answer off A, so the renamed letter shows
    (placed,), placement, excluded = place_and_exclude([out], lambda t: item_failures(t, 30.0), seed_extra="d")
    assert placement.shuffled == 2
    cart = next(i for i in placed.tasks["mcq"] if i.question.startswith(edit.question))
    # the edited options, placed: the answer letter names "Up" and the edited reasoning's letter moved with it
    assert f"{cart.answer}. Up" in cart.question.splitlines()
    assert cart.answer != "A" and cart.reasoning == f"The cart rolls up the ramp, so option {cart.answer} is right."
    assert [(e.task, e.reasons[0].split(":")[0]) for e in excluded] == [("open_qa", "reasoning_present")]
    assert "open_qa" not in placed.tasks


def test_video_page_flags_a_repeated_question(tmp_path: Path) -> None:
    """The rules that compare a video's items reach the page, which judges each item alone otherwise: the later
    copy of a question is flagged at error level (the dataset leaves it out), the first is not."""
    results = _bench().make_results(tmp_path, 2)
    key = sorted(p.stem for p in (results / "assets" / "qa").glob("*.json"))[0]
    store = JsonStore(results)
    qa = QAResult.model_validate(store.read("qa", key))
    first = _qa("What does the woman in the red coat carry out of the shop?", "A paper bag.", "open_qa")
    copy = _qa("What does the woman in the red coat carry out of the shop?", "Two boxes.", "open_qa")
    other = _qa("Where does the van park?", "At the kerb.", "open_qa")
    store.write("qa", key, qa.model_copy(update={"items": [first, other, copy]}))
    items = Viewer(Spec(results_dir=str(results)), failures=False).detail(key)["items"]
    assert [i["problems"] for i in items[:2]] == [[], []]
    (flag,) = items[2]["problems"]
    assert flag.startswith("open_qa: no_duplicate_questions: the same question as open_qa[0]"), flag


# ---------------------------------------------------------------- the index with many records (no pipeline)


def test_index_rereads_only_what_changed_and_flags_failed_checks(tmp_path: Path) -> None:
    results = _bench().make_results(tmp_path, 30)  # the benchmark's records: 5 items without reasoning per QA'd video
    index = DatasetIndex(results)
    assert index.refresh(force=True)["rebuilt"] == 30
    rows = {r.key: r for r in index.rows()}
    with_qa = [k for k, r in rows.items() if r.qa_items]
    assert len(with_qa) == 30 - 3 - 1  # every 10th stopped at step 0, the first lacks its QA
    assert all(rows[k].check_failures == {"reasoning_present": 5} for k in with_qa)
    assert query(index, Query(check="reasoning_present"))["total"] == len(with_qa)
    assert query(index, Query(outcome="stopped"))["total"] == 3
    assert query(index, Query(outcome="incomplete"))["total"] == 1
    page = query(index, Query(per_page=7, page=5))
    assert (page["pages"], len(page["rows"])) == (5, 2)

    # a review saved: the next refresh reads that one video again, nothing else
    key = with_qa[0]
    qa = JsonStore(results).read("qa", key)
    save_review(results, key, qa.items[0], "reject")
    assert index.refresh(force=True)["rebuilt"] == 1
    assert index.row(key) is not None and index.row(key).rejected == 1  # type: ignore[union-attr]
    assert [r["key"] for r in query(index, Query(review="rejected"))["rows"]] == [key]
    assert index.facets() == Facets(index.rows()).as_dict()  # kept row by row, equal to a recount
    assert index.facets()["review"] == {"none": 29, "partial": 1, "rejected": 1}
    index.save()
    # a new process starts from index.json: nothing to read again
    again = DatasetIndex(results)
    assert again.refresh(force=True)["rebuilt"] == 0 and again.row(key).rejected == 1  # type: ignore[union-attr]

    # the video page flags the failing item with its check
    viewer = Viewer(Spec(results_dir=str(results)), failures=False)
    detail = viewer.detail(key)
    flagged = [i for i in detail["items"] if i["problems"]]
    assert len(flagged) == 5 and all(not i["reasoning"] for i in flagged)
    assert all(i["problems"] == [f"{task}: reasoning_present: reasoning is empty"]
               for i, task in zip(flagged, ("open_qa", "causal_linkage", "temporal_description", "scene_description",
                                            "video_summarization"), strict=True))
    assert detail["checks"] == {"reasoning_present": [mock.ANY] * 5}


def test_unplayable_source_gets_a_browser_copy_once(tmp_path: Path, synthetic_videos: dict[str, Path]) -> None:
    """An MKV whose prepared copy is gone (a finished video's media cache is dropped) plays from an H.264 MP4
    the viewer makes on first view, once; a file ffmpeg cannot read is a clear error naming the video."""
    results = tmp_path / "results"
    notes = tmp_path / "notes.avi"
    shutil.copy(synthetic_videos["text_as_mp4"], notes)  # a text file, named like a video
    videos = {"clip.mkv": synthetic_videos["mkv_upper"], "notes.avi": notes}
    VideoRegistry(results).sync([VideoSource(key=k, path=str(p), source="video_root", rel_path=k)
                                 for k, p in videos.items()])
    server = ViewerServer(Spec(results_dir=str(results)), port=0, host="127.0.0.1", failures=False).start()
    try:
        detail = json.loads(_get(f"{server.url}/api/video/clip.mkv")[2])
        assert detail["media"]["kind"].startswith("browser copy") and not Path(detail["media"]["file"]).exists()
        status, headers, head = _get(f"{server.url}/media/clip.mkv", {"Range": "bytes=0-15"})
        copy = Path(detail["media"]["file"])
        assert status == 206 and head[4:8] == b"ftyp" and copy.is_file()
        assert headers["Content-Range"] == f"bytes 0-15/{copy.stat().st_size}"
        made = copy.stat().st_mtime_ns
        assert _get(f"{server.url}/media/clip.mkv")[0] == 200 and copy.stat().st_mtime_ns == made
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{server.url}/media/notes.avi")
        message = json.loads(err.value.read())["error"]
        assert err.value.code == 422 and message.startswith("video notes.avi (") and "browser copy" in message
    finally:
        server.stop()


def test_media_named_with_bytes_that_are_not_utf8(tmp_path: Path, synthetic_videos: dict[str, Path]) -> None:
    """A registry name that is not UTF-8 (`fsnames.FsText`): the page shows it readably, the source is served
    byte for byte, and an MKV under such a name gets its browser copy (ffmpeg given the real bytes)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    mp4 = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9 clip.mp4"))
    mkv = Path(os.fsdecode(os.fsencode(folder) + b"/clip\xff.mkv"))
    shutil.copy(synthetic_videos["short_mp4"], mp4)
    shutil.copy(synthetic_videos["mkv_upper"], mkv)
    results = tmp_path / "results"
    VideoRegistry(results).sync([VideoSource(key=k, path=str(p), source="video_root", rel_path=p.name)
                                 for k, p in (("cafxE9_clip.mp4", mp4), ("clipxFF.mkv", mkv))])
    server = ViewerServer(Spec(results_dir=str(results)), port=0, host="127.0.0.1", failures=False).start()
    try:
        rows = {r["key"]: r for r in json.loads(_get(f"{server.url}/api/videos")[2])["rows"]}
        assert rows["cafxE9_clip.mp4"]["rel_path"] == "caf\\xe9 clip.mp4"
        detail = json.loads(_get(f"{server.url}/api/video/cafxE9_clip.mp4")[2])
        assert detail["video"]["path"].endswith("/caf\\xe9 clip.mp4") and detail["media"]["kind"] == "source"
        status, _, part = _get(f"{server.url}/media/cafxE9_clip.mp4", {"Range": "bytes=100-1099"})
        assert status == 206 and part == mp4.read_bytes()[100:1100]
        status, _, head = _get(f"{server.url}/media/clipxFF.mkv", {"Range": "bytes=0-15"})
        assert status == 206 and head[4:8] == b"ftyp"
        detail = json.loads(_get(f"{server.url}/api/video/clipxFF.mkv")[2])
        assert detail["media"]["kind"].startswith("browser copy") and Path(detail["media"]["file"]).is_file()
    finally:
        server.stop()


def test_viewer_bench_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "viewer_index.py"), "--videos", "30", "--dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("cold build:", "warm start:", "page request", "one change:", "(1 row read again)"):
        assert label in proc.stdout, proc.stdout


# ---------------------------------------------------------------- the pages in headless Chromium


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing")
def test_review_in_the_browser(annotated: Any, viewer: ViewerServer, chromium: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    env = annotated
    SHOTS.mkdir(parents=True, exist_ok=True)

    def shot(page: Any, name: str) -> None:
        path = tmp_path / f"{name}.png"
        page.evaluate("window.scrollTo(0, 0)")  # the player column is sticky: shoot from the top
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SHOTS / path.name)

    context = chromium.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(viewer.url + "/")
        rows = page.locator("#videos tbody tr[data-key]")
        expect(rows).to_have_count(4)
        expect(page.locator(f'tr[data-key="{OFFTOPIC}"] .badge.b-stopped')).to_be_visible()
        expect(page.locator(f'tr[data-key="{BROKEN}"] .badge.b-failed')).to_be_visible()
        shot(page, "index")
        page.select_option("select[name=mode]", "anomaly")
        expect(rows).to_have_count(1)
        page.get_by_role("link", name=ANOMALY).click()

        page.wait_for_selector("body[data-ready='1']")
        store = JsonStore(env.results)
        qa = store.read("qa", ANOMALY)
        chunks = store.read("chunk_captions", ANOMALY).chunks
        expect(page.locator("#chunk-track .seg")).to_have_count(len(chunks))
        expect(page.locator("#highlight-band")).to_be_visible()
        expect(page.locator(".item")).to_have_count(len(qa.items))
        expect(page.get_by_text(store.read("captions", ANOMALY).global_caption)).to_be_visible()

        # a chunk click seeks to its start
        page.locator("#chunk-track .seg").nth(1).click()
        page.wait_for_function(f"Math.abs(document.getElementById('player').currentTime - {chunks[1].timestamp_start})"
                               " < 0.3")

        # play a question's span: the player's current time lands inside it (and moves: it plays)
        n, span_item = next((n, i) for n, i in enumerate(qa.items) if i.start_sec is not None and i.end_sec)
        page.locator(f'.span[data-item="{n}"]').click()
        page.wait_for_function(
            "([s, e]) => { const v = document.getElementById('player');"
            " return v.readyState >= 2 && v.currentTime > s + 0.1 && v.currentTime <= e + 0.3; }",
            arg=[span_item.start_sec, span_item.end_sec],
        )
        shot(page, "video")

        # reject one MCQ, edit an open question's answer
        reject_n = next(n for n, i in enumerate(qa.items) if i.qa_type == "mcq")
        edit_n = next(n for n, i in enumerate(qa.items) if i.qa_type == "open_qa")
        page.locator(f'.item[data-index="{reject_n}"] button.rej').click()
        expect(page.locator(f'.item[data-index="{reject_n}"]')).to_have_class(re.compile(r"\brejected\b"))
        card = page.locator(f'.item[data-index="{edit_n}"]')
        card.locator("button.edt").click()
        new_answer = "Two people cross the intersection and stop near the camera."
        card.locator("input[name=answer]").fill(new_answer)
        card.get_by_role("button", name="Save edit").click()
        expect(page.locator(f'.item[data-index="{edit_n}"] .badge.b-edit')).to_be_visible()
        expect(page.locator(f'.item[data-index="{edit_n}"] .ans')).to_contain_text(new_answer)
        # the keyboard: j moves to the next item, a accepts it
        page.locator(f'.item[data-index="{edit_n}"] .q').click()
        page.keyboard.press("j")
        expect(page.locator(f'.item[data-index="{edit_n + 1}"]')).to_have_class(re.compile(r"\bcurrent\b"))
        page.keyboard.press("a")
        expect(page.locator(f'.item[data-index="{edit_n + 1}"] .badge.b-accept')).to_be_visible()
        shot(page, "video_reviewed")
        saved = load_reviews(env.results, ANOMALY).reviews
        assert sorted(r.action for r in saved.values()) == ["accept", "edit", "reject"]

        # rebuild the dataset: the rejected item is gone, the edit is in the task file
        assert set(_run(env).failed) == {BROKEN}
        rejected_q = qa.items[reject_n].question
        mcq_questions = [i["question"] for t in ("mcq", "mcq_openended") for i in _dataset_items(env.results, t)]
        assert mcq_questions and not [q for q in mcq_questions if q.startswith(rejected_q)]
        open_items = {i["question"]: i["answer"] for i in _dataset_items(env.results, "open_qa")}
        assert open_items[qa.items[edit_n].question] == new_answer
        meta = _dataset_meta()
        assert (meta["rejected_items"], meta["edited_items"]) == (1, 1)

        page.goto(viewer.url + "/?review=rejected")
        expect(rows).to_have_count(1)
        expect(page.locator(f'tr[data-key="{ANOMALY}"] .badge.b-reject')).to_have_text("1 rejected")
        shot(page, "index_reviewed")
    finally:
        context.close()
