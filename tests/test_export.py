"""Step 4 rules and the dataset writers, checked against NVIDIA's own format validator."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from vr_assets import export
from vr_assets.export import (
    TASKS,
    bucket_for_prompt_key,
    build_dataset_report,
    build_envelope,
    dataset_report_markdown,
    task_exports_for_video,
    task_items_for_video,
    video_id_for,
    write_dataset,
    write_json_atomic,
    write_parquet,
    write_sharegpt,
    write_tao_dataset,
)
from vr_assets.records import QAItem, TaskExports, TaskItem

REPO = Path(__file__).resolve().parents[1]

OPTIONS = ["The truck stops at the line", "The truck runs the red light", "The truck reverses", "The truck turns left"]


def qa_items(mode: str, tag: str) -> list[QAItem]:
    """One item per QA type for one video, as the step-3 parser would hand them over."""
    p = f"{mode}_"
    return [
        QAItem(
            qa_type="mcq",
            prompt_key=p + "mcq",
            question=f"What does the truck do at the intersection ({tag})?",
            options=OPTIONS,
            answer="B",
            reasoning="The light is red when the truck crosses.",
        ),
        QAItem(
            qa_type="bcq",
            prompt_key=p + "bcq",
            question=f"Does a pedestrian cross the street ({tag})?",
            answer="Yes, a person in a red coat crosses at 00:07.",
            reasoning="A person walks across the zebra crossing.",
        ),
        QAItem(
            qa_type="open_qa",
            prompt_key=p + "open_qa",
            question=f"What is the weather like ({tag})?",
            answer="Overcast and dry.",
            reasoning="No rain streaks, grey sky.",
        ),
        QAItem(
            qa_type="causal_linkage",
            prompt_key=p + "causal_linkage",
            question=f"Why does the bus brake hard at 00:09 ({tag})?",
            answer="Because the truck blocks the lane at 00:08.",
            reasoning="The truck enters first.",
        ),
        QAItem(
            qa_type="temporal_localization",
            prompt_key=p + "temporal_localization",
            question=f"When does the truck cross the stop line ({tag})?",
            answer="Start_Time: 00:05, End_Time: 00:08",
            reasoning="Crossing visible from 5 to 8 s.",
            start_sec=5.0,
            end_sec=8.0,
        ),
        QAItem(
            qa_type="temporal_event_desc",
            prompt_key=p + "temporal_event_desc",
            question=f"What happens between 00:03 and 00:06 ({tag})?",
            answer="The truck approaches and does not slow down.",
            reasoning="Speed stays constant.",
        ),
        QAItem(
            qa_type="scene_description",
            prompt_key="scene_description",
            question=f"Describe the scene ({tag}).",
            answer="A four-way urban intersection with traffic lights.",
            reasoning="Wide-angle CCTV view.",
        ),
        QAItem(
            qa_type="event_summary",
            prompt_key="event_summary",
            question=f"Summarize the video ({tag}).",
            answer="A truck runs a red light; a bus brakes.",
            reasoning="Main events in order.",
        ),
    ]


@pytest.fixture
def video_tree(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A video_root with nested folders; the files only need to exist for the validator."""
    root = tmp_path / "videos"
    paths = [root / "cam1" / "day1" / "clip_a.mp4", root / "cam1" / "day2" / "clip b.mp4", root / "cam2" / "c.MOV"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return root, paths


@pytest.fixture
def per_video(video_tree: tuple[Path, list[Path]]) -> list[TaskExports]:
    root, paths = video_tree
    out: list[TaskExports] = []
    for n, (path, mode) in enumerate(zip(paths, ["anomaly", "normal", "anomaly"], strict=True)):
        vid = video_id_for(str(path), str(root))
        exports, skipped = task_exports_for_video(f"v{n}", mode, qa_items(mode, f"video {n}"), vid)  # type: ignore[arg-type]
        assert skipped == []
        out.append(exports)
    return out


def tao_validate(dataset: Path) -> tuple[list[str], int]:
    """NVIDIA's validator through its Python API: (errors, files checked)."""
    from nvidia_tao_daft.validators.tao_vl_reason_v1_0.validator import TaoVlReasonV1_0Validator

    result = TaoVlReasonV1_0Validator().validate_dataset(dataset, permissive=False)
    return result.errors, result.files_checked


def tao_daft_cli(dataset: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tao-daft")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "nvidia_tao_daft.cli.cli"]
    return subprocess.run(
        [*cmd, "validate", "tao-vl-reason-v1.0", "--path", str(dataset), "--strict"],
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---------------------------------------------------------------- bucketing and ids


def test_every_prompt_key_lands_in_its_task():
    expected = {
        "mcq": "mcq",
        "bcq": "bcq",
        "open_qa": "open_qa",
        "causal_linkage": "causal_linkage",
        "temporal_localization": "temporal_localization",
        "temporal_event_desc": "temporal_description",
    }
    for mode in ("anomaly", "normal"):
        for suffix, bucket in expected.items():
            assert bucket_for_prompt_key(f"{mode}_{suffix}") == bucket, (mode, suffix)
    assert bucket_for_prompt_key("scene_description") == "scene_description"
    assert bucket_for_prompt_key("event_summary") == "video_summarization"
    # custom keys follow the same substring rule; unknown keys are open questions
    assert bucket_for_prompt_key("warehouse_forklift_mcq") == "mcq"
    assert bucket_for_prompt_key("Anomaly_BCQ") == "bcq"
    assert bucket_for_prompt_key("something_else") == "open_qa"


def test_all_qa_types_in_both_modes_fill_every_task():
    seen: Counter[str] = Counter()
    for mode in ("anomaly", "normal"):
        tasks, skipped = task_items_for_video(qa_items(mode, mode), "cam/x.mp4")
        assert skipped == []
        seen.update({t: len(v) for t, v in tasks.items()})
        assert list(tasks) == [t for t in TASKS if t in tasks], "tasks come back in TASKS order"
    assert set(seen) == set(TASKS)
    assert all(n == 2 for n in seen.values()), seen


def test_video_id_strips_the_root_prefix_only():
    assert video_id_for("/data/videos/cam1/a.mp4", "/data/videos") == "cam1/a.mp4"
    assert video_id_for("/data/videos/cam1/a.mp4", "/data/videos/") == "cam1/a.mp4"
    assert video_id_for("/data/videos2/a.mp4", "/data/videos") == "/data/videos2/a.mp4"
    assert video_id_for("/elsewhere/a.mp4", "/data/videos") == "/elsewhere/a.mp4"
    assert video_id_for("/data/videos/a.mp4", "") == "/data/videos/a.mp4"
    assert video_id_for("rel/a.mp4", "") == "rel/a.mp4"


# ---------------------------------------------------------------- MCQ


def _mcq(question: str, options: list[str], answer: str) -> QAItem:
    return QAItem(qa_type="mcq", prompt_key="anomaly_mcq", question=question, options=options, answer=answer)


def _options_in(question: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z])\. (.+)$", question, re.M))


def test_mcq_shuffle_remaps_the_letter_to_the_same_option():
    qa = _mcq("Which vehicle enters first?", OPTIONS, "C")
    tasks, skipped = task_items_for_video([qa], "v.mp4")
    assert skipped == []
    (mcq,) = tasks["mcq"]
    shown = _options_in(mcq.question)
    assert sorted(shown.values()) == sorted(OPTIONS)
    assert shown[mcq.answer] == "The truck reverses"
    assert mcq.question.startswith("Which vehicle enters first?\nA. ")
    assert mcq.question.endswith(export.INSTRUCTIONS["mcq"])

    (oe,) = tasks["mcq_openended"]
    assert oe.answer == f"{mcq.answer}. The truck reverses"
    assert oe.question.endswith(export.INSTRUCTIONS["mcq_openended"])
    assert oe.question.rsplit("\n", 1)[0] == mcq.question.rsplit("\n", 1)[0], "same question and option order"


def test_mcq_order_is_the_same_across_calls_and_processes():
    questions = [f"Question number {i} about the forklift?" for i in range(12)]
    items = [_mcq(q, OPTIONS, "A") for q in questions]
    first, _ = task_items_for_video(items, "v.mp4")
    again, _ = task_items_for_video(items, "v.mp4")
    here = [i.question for i in first["mcq"]]
    assert here == [i.question for i in again["mcq"]]

    code = (
        "import json,sys\n"
        "from vr_assets.export import task_items_for_video\n"
        "from vr_assets.records import QAItem\n"
        "qs=json.loads(sys.argv[1]); opts=json.loads(sys.argv[2])\n"
        "items=[QAItem(qa_type='mcq',prompt_key='anomaly_mcq',question=q,options=opts,answer='A') for q in qs]\n"
        "print(json.dumps([i.question for i in task_items_for_video(items,'v.mp4')[0]['mcq']]))\n"
    )
    for hashseed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(questions), json.dumps(OPTIONS)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=60,
            check=True,
        )
        assert json.loads(proc.stdout) == here
    # not the identity: the options really move for most questions
    assert sum(not q.split("\n")[1].endswith(OPTIONS[0]) for q in here) >= 6


def test_mcq_seed_extra_changes_the_order():
    items = [_mcq(f"Which lane does car {i} use?", OPTIONS, "A") for i in range(20)]
    plain = [i.question for i in task_items_for_video(items, "v.mp4")[0]["mcq"]]
    salted = [i.question for i in task_items_for_video(items, "v.mp4", seed_extra="run-2")[0]["mcq"]]
    assert plain != salted


def test_mcq_letters_are_balanced_over_many_questions():
    # the teacher always puts the answer first: the placement spreads it over A-D exactly, not by chance
    items = [_mcq(f"What happens in scene {i} at the loading dock?", OPTIONS, "A") for i in range(400)]
    tasks, _ = task_items_for_video(items, "v.mp4")
    letters = Counter(i.answer for i in tasks["mcq"])
    assert letters == {"A": 100, "B": 100, "C": 100, "D": 100}
    for item in tasks["mcq"]:
        assert _options_in(item.question)[item.answer] == OPTIONS[0]


def test_mcq_skips_and_lenient_answers():
    items = [
        _mcq("No options here?", [], "A"),
        _mcq("One option only?", ["Just this"], "A"),
        _mcq("Letter out of range?", OPTIONS, "E"),
        _mcq("No answer at all?", OPTIONS, ""),
        _mcq("Answer given as text?", OPTIONS, "the truck turns left"),
        _mcq("Answer with punctuation?", OPTIONS, "**(B)** because of the light"),
        _mcq("Lettered options?", [f"{'ABCD'[i]}. {o}" for i, o in enumerate(OPTIONS)], "b"),
    ]
    tasks, skipped = task_items_for_video(items, "cam/v.mp4")
    assert len(skipped) == 4
    assert all(s.startswith("cam/v.mp4 [anomaly_mcq]") for s in skipped)
    assert any("fewer than two options" in s for s in skipped)
    assert any("names no option" in s and "'E'" in s for s in skipped)
    by_q = {i.question.split("\n")[0]: i for i in tasks["mcq"]}
    assert set(by_q) == {"Answer given as text?", "Answer with punctuation?", "Lettered options?"}
    assert _options_in(by_q["Answer given as text?"].question)[by_q["Answer given as text?"].answer] == OPTIONS[3]
    assert _options_in(by_q["Answer with punctuation?"].question)[by_q["Answer with punctuation?"].answer] == OPTIONS[1]
    lettered = _options_in(by_q["Lettered options?"].question)
    assert sorted(lettered.values()) == sorted(OPTIONS), "letter prefixes are not doubled"
    assert lettered[by_q["Lettered options?"].answer] == OPTIONS[1]


# ---------------------------------------------------------------- BCQ, TL, passthrough


def _bcq(answer: str) -> QAItem:
    return QAItem(qa_type="bcq", prompt_key="normal_bcq", question=f"Q for {answer!r}?", answer=answer, reasoning="r")


def test_bcq_short_answer_and_skip_rule():
    answers = ["Yes, the gate is open.", "no", "**No.** Nobody enters.", "YES", "Not sure", "Nope", "Maybe", ""]
    tasks, skipped = task_items_for_video([_bcq(a) for a in answers], "v.mp4")
    assert [i.answer for i in tasks["bcq"]] == ["Yes", "No", "No", "Yes"]
    assert [i.answer for i in tasks["bcq_openended"]] == [
        "Yes, the gate is open.",
        "no",
        "**No.** Nobody enters.",
        "YES",
    ]
    assert all(i.question.endswith(export.INSTRUCTIONS["bcq"]) for i in tasks["bcq"])
    assert all(i.question.endswith(export.INSTRUCTIONS["bcq_openended"]) for i in tasks["bcq_openended"])
    assert len(skipped) == 4 and all("Yes or No" in s for s in skipped)


def _tl(answer: str, start: float | None = None, end: float | None = None) -> QAItem:
    return QAItem(
        qa_type="temporal_localization",
        prompt_key="anomaly_temporal_localization",
        question="When does the forklift tip over?",
        answer=answer,
        start_sec=start,
        end_sec=end,
    )


def test_temporal_localization_json_answer_from_both_sources():
    items = [
        _tl("", start=5.0, end=12.0),  # parsed seconds win
        _tl("Start_Time: 00:99, End_Time: 00:01", start=65.4, end=70.2),  # seconds win over the text
        _tl("Start_Time: 00:05, End_Time: 00:12"),
        _tl("**Start Time:** 01:02:03, **End Time:** 01:02:09.5"),  # HH:MM:SS accepted
        _tl("start_time=0:07 end_time=0:09"),
        _tl("Somewhere in the middle of the clip."),  # no time span: raw answer kept
    ]
    tasks, skipped = task_items_for_video(items, "v.mp4")
    assert skipped == []
    answers = [i.answer for i in tasks["temporal_localization"]]
    assert [json.loads(a) for a in answers[:5]] == [
        {"start": "00:05", "end": "00:12"},
        {"start": "01:05", "end": "01:11"},
        {"start": "00:05", "end": "00:12"},
        {"start": "62:03", "end": "62:10"},
        {"start": "00:07", "end": "00:09"},
    ]
    assert answers[5] == "Somewhere in the middle of the clip."
    assert all(
        i.question.endswith(export.INSTRUCTIONS["temporal_localization"]) for i in tasks["temporal_localization"]
    )


def test_passthrough_tasks_keep_text_unchanged():
    items = [i for i in qa_items("anomaly", "pt") if i.qa_type not in {"mcq", "bcq", "temporal_localization"}]
    tasks, _ = task_items_for_video(items, "v.mp4")
    task_of = {
        "open_qa": "open_qa",
        "causal_linkage": "causal_linkage",
        "temporal_event_desc": "temporal_description",
        "scene_description": "scene_description",
        "event_summary": "video_summarization",
    }
    for qa in items:
        (item,) = tasks[task_of[qa.qa_type]]
        assert (item.question, item.answer, item.reasoning) == (qa.question, qa.answer, qa.reasoning)
        assert item.video_id == "v.mp4"


# ---------------------------------------------------------------- tao files + validator


def test_envelope_fields():
    items = [TaskItem(video_id="a/b.mp4", question="q", answer="a", reasoning="r")]
    env = build_envelope(
        "bcq", items, media_root="/m", license="CC-BY-4.0", description_extra="Site 7.", date="2026-01-02"
    )
    assert env["format"] == "tao-vl-reason-v1.0"
    assert env["metadata"]["type"] == "annotation"
    assert env["metadata"]["task"] == "bcq"
    assert env["metadata"]["date"] == "2026-01-02"
    assert env["metadata"]["license"] == "CC-BY-4.0"
    assert env["metadata"]["description"].endswith(" Site 7.")
    assert env["metadata"]["description"].startswith(export.TASK_DESCRIPTIONS["bcq"])
    assert env["media_root"] == "/m"
    assert env["items"] == [{"video_id": "a/b.mp4", "question": "q", "answer": "a", "reasoning": "r"}]
    today = build_envelope("mcq", items, media_root="", license="", description_extra="")
    assert today["media_root"] is None
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", today["metadata"]["date"])
    assert today["metadata"]["description"] == export.TASK_DESCRIPTIONS["mcq"]


def test_tao_files_pass_nvidia_validator(tmp_path, video_tree, per_video):
    root, paths = video_tree
    out = tmp_path / "step_4_output"
    counts = write_tao_dataset(out, per_video, media_root=str(root), license="CC-BY-4.0", description_extra="")
    assert counts == {t: 3 for t in TASKS}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.json" for t in TASKS)
    errors, checked = tao_validate(out)
    assert (errors, checked) == ([], len(TASKS))

    data = json.loads((out / "mcq.json").read_text())
    assert data["media_root"] == str(root)
    assert [i["video_id"] for i in data["items"]] == [video_id_for(str(p), str(root)) for p in paths]
    assert data["items"][0]["video_id"] == "cam1/day1/clip_a.mp4"

    proc = tao_daft_cli(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VALIDATION PASSED" in proc.stdout


def test_validator_really_checks_media(tmp_path, video_tree, per_video):
    root, paths = video_tree
    out = tmp_path / "ds"
    write_tao_dataset(out, per_video, media_root=str(root), license="", description_extra="")
    paths[1].unlink()
    errors, _ = tao_validate(out)
    assert errors and all("clip b.mp4" in e for e in errors)
    assert tao_daft_cli(out).returncode == 1


def test_files_only_for_non_empty_tasks_and_stale_files_removed(tmp_path, video_tree):
    root, paths = video_tree
    out = tmp_path / "ds"
    first = [
        TaskExports(
            video_key="k0",
            mode="normal",
            tasks=task_items_for_video(qa_items("normal", "x"), video_id_for(str(paths[0]), str(root)))[0],
        )
    ]
    write_tao_dataset(out, first, media_root=str(root), license="", description_extra="")
    (out / "notes.json").write_text('{"mine": true}')  # not ours: must survive

    bcq_only = [
        TaskExports(
            video_key="k0",
            mode="normal",
            tasks=task_items_for_video([_bcq("Yes, it is.")], video_id_for(str(paths[0]), str(root)))[0],
        ),
        TaskExports(video_key="k1", mode="anomaly", tasks={}),
    ]
    counts = write_tao_dataset(out, bcq_only, media_root=str(root), license="", description_extra="")
    assert counts == {"bcq": 1, "bcq_openended": 1}
    assert sorted(p.name for p in out.iterdir()) == ["bcq.json", "bcq_openended.json", "notes.json"]
    assert tao_validate(out) == ([], 2)


def test_portable_layout_without_video_root(tmp_path, video_tree):
    # no video_root: absolute video ids and media_root null still resolve
    _, paths = video_tree
    per = [
        TaskExports(
            video_key="k",
            mode="anomaly",
            tasks=task_items_for_video(qa_items("anomaly", "abs"), video_id_for(str(paths[2]), ""))[0],
        )
    ]
    out = tmp_path / "portable"
    write_tao_dataset(out, per, media_root=None, license="", description_extra="")
    assert json.loads((out / "open_qa.json").read_text())["media_root"] is None
    assert tao_validate(out) == ([], len(TASKS))


# ---------------------------------------------------------------- parquet / sharegpt


def test_parquet_rows_match_items(tmp_path, per_video):
    path = tmp_path / "out" / "dataset.parquet"
    n = write_parquet(path, per_video, modes={"v1": "anomaly"})
    df = pd.read_parquet(path)
    assert n == len(df) == sum(len(v) for e in per_video for v in e.tasks.values()) == 3 * len(TASKS)
    assert list(df.columns) == ["task", "video_key", "video_id", "mode", "question", "answer", "reasoning"]
    assert Counter(df["task"]) == {t: 3 for t in TASKS}
    assert set(df.loc[df.video_key == "v1", "mode"]) == {"anomaly"}, "modes override the stored mode"
    mcq = df[(df.task == "mcq") & (df.video_key == "v0")].iloc[0]
    assert mcq.video_id == "cam1/day1/clip_a.mp4" and mcq.answer in "ABCD"
    assert [p.name for p in path.parent.iterdir()] == ["dataset.parquet"]


def test_parquet_loads_with_hf_datasets(tmp_path, per_video):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "dataset.parquet"
    n = write_parquet(path, per_video)
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds.num_rows == n and "reasoning" in ds.column_names


def test_sharegpt_shape(tmp_path, video_tree, per_video):
    root, _ = video_tree
    path = tmp_path / "sg" / "sharegpt.json"
    n = write_sharegpt(path, per_video, str(root), dataset_info=True)
    records = json.loads(path.read_text())
    assert n == len(records) == 3 * len(TASKS)
    for rec in records:
        assert set(rec) == {"id", "task", "messages", "videos"}
        user, assistant = rec["messages"]
        assert user["role"] == "user" and user["content"].startswith("<video>\n")
        assert user["content"].count("<video>") == len(rec["videos"]) == 1
        assert assistant["role"] == "assistant"
        assert re.match(r"<think>\n.+\n</think>\n\n\S", assistant["content"], re.S)
        assert Path(rec["videos"][0]).is_absolute() and Path(rec["videos"][0]).exists()
    assert len({r["id"] for r in records}) == n
    info = json.loads((path.parent / "dataset_info.json").read_text())
    entry = next(iter(info.values()))
    assert entry["file_name"] == "sharegpt.json" and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "messages", "videos": "videos"}

    plain = tmp_path / "plain.json"
    write_sharegpt(plain, per_video, None, reasoning="none")
    rec = json.loads(plain.read_text())[0]
    assert "<think>" not in rec["messages"][1]["content"]
    assert rec["videos"] == ["cam1/day1/clip_a.mp4"], "relative ids stay relative without a media root"


# ---------------------------------------------------------------- atomic writes


class Unserializable:
    pass


def test_atomic_json_write_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "mcq.json"
    write_json_atomic(target, {"version": 1, "items": list(range(5))})
    before = target.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(target, {"version": 2, "items": [*range(10_000), Unserializable()]})
    assert target.read_bytes() == before
    assert json.loads(before) == {"version": 1, "items": [0, 1, 2, 3, 4]}
    assert [p.name for p in tmp_path.iterdir()] == ["mcq.json"], "no temp file left behind"

    write_json_atomic(target, {"version": 3})
    assert json.loads(target.read_text()) == {"version": 3}
    assert target.read_text().startswith('{\n  "version"'), "indent 2"
    assert [p.name for p in tmp_path.iterdir()] == ["mcq.json"]


def test_atomic_parquet_write_survives_a_crash_mid_file(tmp_path, per_video, monkeypatch):
    import pyarrow.parquet as pq

    path = tmp_path / "export" / "dataset.parquet"
    n = write_parquet(path, per_video)

    def half_then_fail(table, where, **kwargs):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(path, per_video[:1])
    monkeypatch.undo()
    assert len(pd.read_parquet(path)) == n
    assert [p.name for p in path.parent.iterdir()] == ["dataset.parquet"]


# ---------------------------------------------------------------- report


def test_dataset_report_and_markdown(tmp_path, video_tree, per_video):
    root, _ = video_tree
    out = tmp_path / "dataset"
    report = write_dataset(
        out,
        per_video,
        formats=["tao", "parquet", "sharegpt"],
        media_root=str(root),
        license="CC-BY-4.0",
        description_extra="",
        skipped=["v9 [anomaly_bcq] BCQ answer does not start with Yes or No: 'Is it | odd?'"],
        excluded_items=2,
    )
    assert report.items_per_task == {t: 3 for t in TASKS}
    assert report.videos_per_mode == {"anomaly": 2, "normal": 1}
    assert sum(report.mcq_letter_balance.values()) == 3
    assert set(report.mcq_letter_balance) <= set("ABCD")
    assert all(Path(f).exists() for f in report.files)
    assert {Path(f).name for f in report.files} >= {"mcq.json", "dataset.parquet", "sharegpt.json"}
    # the extra exports sit beside the task files without upsetting the validator
    assert tao_validate(out) == ([], len(TASKS))

    md = dataset_report_markdown(report, usage_table_md="| model | calls |\n|---|---|\n| m | 3 |")
    assert f"### Dataset: {3 * len(TASKS)} items in {len(TASKS)} tasks" in md
    assert "| mcq | 3 |" in md
    assert "anomaly 2, normal 1" in md
    assert "**Excluded by checks:** 2" in md
    assert "Is it \\| odd?" in md, "pipes are escaped in list items"
    assert md.rstrip().endswith("| m | 3 |")

    empty = build_dataset_report([], files=[])
    assert empty.items_per_task == {} and empty.mcq_letter_balance == {}
    assert "| (none) | 0 |" in dataset_report_markdown(empty)


def test_cli_tool_is_available():
    # guards the subprocess tests above against a silently missing console script
    assert Path(sys.executable).with_name("tao-daft").exists() or shutil.which("tao-daft")


def test_the_dataset_store_parses_each_record_once(tmp_path: Path) -> None:
    from vr_assets.records import Description
    from vr_assets.store import JsonStore, ReadOnce

    JsonStore(tmp_path).write("description", "v1", Description(
        video_key="v1", prompt_key="normal_description", detailed_description="a quiet street"))
    store = ReadOnce(tmp_path)
    first = store.read("description", "v1")
    store.path("description", "v1").unlink()  # a second pass (mirrors, usage report) does not go back to disk
    assert store.read_optional("description", "v1") is first
    assert first.detailed_description == "a quiet street"
    assert store.read_optional("description", "v2") is None
    with pytest.raises(FileNotFoundError, match="no stored description for video 'v2'"):
        store.read("description", "v2")
