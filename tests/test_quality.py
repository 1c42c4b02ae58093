"""The quality rules on a corpus of items phrased like real teacher output (tests/data/quality_corpus).

Every case lists the rules it must break; a clean case (`flags: []`) must break none, so each rule is
tested on items it has to catch and on near misses it has to let through. Cases with the same `video` (in one
file) are judged together, as the items of one video, for the rules that compare them (`VIDEO_RULES`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetCheckSeverity

from tests.test_export import tao_validate
from vr_assets.checks import (
    EXPORT_CHECKS,
    failures_markdown,
    item_errors,
    item_failures,
    item_problems,
    rule_problems,
    rules_fingerprint,
)
from vr_assets.export import place_and_exclude, place_mcq_options, task_exports_for_video, task_items_for_video
from vr_assets.fakes.teacher import Teacher
from vr_assets.judgments import ItemJudgments
from vr_assets.parsing import parse_qa
from vr_assets.prompts import TemplateValues, fill_template, load_pack, qa_prompt_key, schema_for_key
from vr_assets.quality import (
    QUALITY_CHECKS,
    VIDEO_RULES,
    ExampleIndex,
    example_segments,
    mcq_agreement_problem,
)
from vr_assets.records import ALL_QA_TYPES, QAItem, TaskExports, TaskItem

CORPUS = Path(__file__).parent / "data" / "quality_corpus"


def load_cases() -> list[dict[str, Any]]:
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8")):
            cases.append({**case, "file": path.stem})
    return cases


CASES = load_cases()


def concrete_values() -> TemplateValues:
    return TemplateValues.model_validate(yaml.safe_load((CORPUS.parent / "concrete_examples.yaml").read_text()))


@pytest.fixture(scope="module")
def concrete_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pack with concrete QA examples (the general pack's before its examples became format-only)."""
    out = tmp_path_factory.mktemp("concrete-examples")
    fill_template(concrete_values(), out)
    return out


@pytest.fixture(scope="module")
def concrete(concrete_pack: Path) -> ExampleIndex:
    return ExampleIndex.of(load_pack(str(concrete_pack)))


def task_item(case: dict[str, Any]) -> TaskItem:
    return TaskItem(video_id="v.mp4", question=case["question"], answer=str(case["answer"]),
                    reasoning=case["reasoning"])


@pytest.fixture(scope="module")
def judged(concrete: ExampleIndex) -> dict[str, list[tuple[str, str]]]:
    """(rule, reason) per case id: `item_failures` on each video of the corpus (a case without `video` is one alone),
    its items in file order per task."""
    videos: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in CASES:
        videos[(c["file"], c.get("video", c["id"]))].append(c)
    out: dict[str, list[tuple[str, str]]] = {}
    for (_, video), cases in videos.items():
        assert len({(c["mode"], c["duration"]) for c in cases}) == 1, video
        tasks: dict[str, list[TaskItem]] = defaultdict(list)
        ids: dict[tuple[str, int], str] = {}
        for c in cases:
            ids[(c["task"], len(tasks[c["task"]]))] = c["id"]
            tasks[c["task"]].append(task_item(c))
            out[c["id"]] = []
        te = TaskExports(video_key=video, mode=cases[0]["mode"], tasks=dict(tasks))
        for f in item_failures(te, cases[0]["duration"], concrete):
            out[ids[(f.task, f.index)]].append((f.rule, f.reason))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case_breaks_exactly_its_rules(
    case: dict[str, Any], concrete: ExampleIndex, judged: dict[str, list[tuple[str, str]]]
) -> None:
    found = judged[case["id"]]
    assert sorted({rule for rule, _ in found}) == sorted(case["flags"]), found
    # alone, the item breaks the same rules but those that compare it with the video's other items
    alone = item_problems(case["task"], task_item(case), case["duration"], mode=case["mode"], examples=concrete)
    assert sorted({rule for rule, _ in alone}) == sorted(set(case["flags"]) - set(VIDEO_RULES)), alone


def test_corpus_covers_every_new_rule_both_ways() -> None:
    assert {c["origin"] for c in CASES} == {"observed", "observed-kind", "written", "real-run"}
    for rule in QUALITY_CHECKS:
        files = {rule, "speculation", *(["duplicates"] if rule in VIDEO_RULES else [])}
        caught = [c["id"] for c in CASES if rule in c["flags"]]
        passed = [c["id"] for c in CASES if rule not in c["flags"] and c["file"] in files]
        assert caught, f"no case {rule} must catch"
        assert passed, f"no clean case for {rule}"
    # the failures seen from a real small model are in, verbatim
    questions = {c["question"].split("\n")[0] for c in CASES if c["origin"] == "observed"}
    assert "What is the reason the person is picking up the box?" in questions
    assert "How does placing the box at 00:05 lead to the person entering at 00:00?" in questions
    assert "Does the cyclist touch the opening car door before falling at 00:07?" in questions


def test_real_teacher_run_is_in_the_corpus_whole() -> None:
    """All 58 items of one `make quality` run (30 + 28) are cases, verbatim: what the rules left out, what they let
    through (and what reading found in it, in each case's note, also where no rule catches it)."""
    real = [c for c in CASES if c["origin"] == "real-run" and c["file"] == "real_teacher_run"]
    assert len(real) == 30 and all(c["note"].startswith(("reading:", "the open-ended twin")) for c in real)
    assert Counter(rule for c in real for rule in c["flags"]) == {
        "no_actor_labels": 27, "mcq_well_formed": 4, "yes_no_answer_matches_reasoning": 4, "no_example_leakage": 2,
        "no_source_reference": 2, "no_repetition": 1}
    assert [c["id"] for c in real if not c["flags"]] == []
    normal = [c for c in CASES if c["origin"] == "real-run" and c["file"] == "real_teacher_run_normal"]
    assert len(normal) == 28 and all(c["note"] for c in normal)
    assert Counter(rule for c in normal for rule in c["flags"]) == {
        "no_repetition": 11, "times_as_timestamps": 10, "no_example_leakage": 6, "answer_not_speculative": 3,
        "mcq_well_formed": 2, "mcq_answer_not_longest": 2, "no_duplicate_questions": 2, "no_duplicate_answers": 2,
        "no_source_reference": 2, "no_duplicate_reasoning": 2}


def test_real_teacher_run_through_the_dataset_pass(concrete: ExampleIndex) -> None:
    """The 58 real items as the dataset judges them (per video, an MCQ leaving with its twin): 8 kept, all from
    the normal video; every left-out item has its reasons, the new rules' names among them."""
    per_video = []
    for file, video in (("real_teacher_run", "vtest_crossing_14s"), ("real_teacher_run_normal", "vtest_24s")):
        cases = [c for c in CASES if c["file"] == file]
        tasks: dict[str, list[TaskItem]] = defaultdict(list)
        for c in cases:
            tasks[c["task"]].append(task_item(c))
        per_video.append(TaskExports(video_key=video, mode=cases[0]["mode"], tasks=dict(tasks)))
    durations = {"vtest_crossing_14s": 14.0, "vtest_24s": 24.0}
    _, _, excluded = place_and_exclude(per_video, lambda te: item_failures(te, durations[te.video_key], concrete))
    assert len(excluded) == 58 - 8 and all(e.reasons for e in excluded)
    assert Counter(e.video_key for e in excluded) == {"vtest_crossing_14s": 30, "vtest_24s": 20}
    first_reason = Counter(r.split(":")[0] for e in excluded for r in e.reasons)
    for rule in ("no_repetition", "no_source_reference", "yes_no_answer_matches_reasoning", "no_duplicate_questions"):
        assert first_reason[rule] > 0, first_reason
    assert not first_reason.keys() & {"times_as_timestamps", "no_duplicate_answers"}  # warn-level: flagged, kept


DEFECT_KINDS = {"unsupported", "false_premise", "reasoning_mismatch", "speculative_reasoning", "invented_detail",
                "weak_distractors", "prompt_wording", "caption_filler", "repetition", "reasoning_of_another_question",
                "ill_posed_question", "incomplete", "grammar", "times_in_seconds", "duplicate_answer"}


def test_three_video_run_is_in_the_corpus_whole(concrete: ExampleIndex) -> None:
    """All 78 items of the three-video `make quality` run, each with its reading; through the dataset pass the
    current rules keep 53 (18 / 18 / 17 per video): the run's own dataset kept 57, before no_duplicate_reasoning."""
    cases = [c for c in CASES if c["file"] == "real_teacher_run_3videos"]
    assert len(cases) == 78 and all(c["origin"] == "real-run" and c["note"].startswith("reading:") for c in cases)
    assert all(set(c["defects"]) <= DEFECT_KINDS for c in cases)
    assert all(c["defects"] or "no defect" in c["note"] for c in cases)
    assert Counter(rule for c in cases for rule in c["flags"]) == {
        "times_as_timestamps": 12, "no_source_reference": 6, "answer_not_speculative": 5, "mcq_answer_not_longest": 4,
        "mcq_well_formed": 4, "no_example_leakage": 3, "question_form": 2, "no_duplicate_answers": 2,
        "no_repetition": 1, "temporal_span_valid": 1, "no_duplicate_reasoning": 6}
    durations = {"vtest_24s": 24.0, "vtest_crossing_14s": 14.0, "bikes": 10.0}
    per_video = []
    for video in durations:
        tasks: dict[str, list[TaskItem]] = defaultdict(list)
        mine = [c for c in cases if c["video"] == video]
        for c in mine:
            tasks[c["task"]].append(task_item(c))
        per_video.append(TaskExports(video_key=video, mode=mine[0]["mode"], tasks=dict(tasks)))
    placed, _, excluded = place_and_exclude(per_video, lambda te: item_failures(te, durations[te.video_key], concrete))
    kept = {te.video_key: sum(len(x) for x in te.tasks.values()) for te in placed}
    assert kept == {"vtest_24s": 18, "vtest_crossing_14s": 18, "bikes": 17} and len(excluded) == 25
    # no_duplicate_reasoning, added from reading this run: a Yes and a No, and three open questions, argued with
    # one reasoning word for word; the first copy stays
    copied = [c["id"] for c in cases if "no_duplicate_reasoning" in c["flags"]]
    assert all("reasoning_of_another_question" in next(c for c in cases if c["id"] == i)["defects"] for i in copied)
    assert len(copied) == 6 and not any(i.endswith(("bcq-0", "open_qa-0")) for i in copied)
    # the warn-level rules flag what reading also found, the kept item stays
    for c in cases:
        if "times_as_timestamps" in c["flags"]:
            assert "times_in_seconds" in c["defects"], c["id"]
        if "no_duplicate_answers" in c["flags"]:
            assert "duplicate_answer" in c["defects"], c["id"]


def test_severities_are_declared() -> None:
    sev = {name: s for name, (s, _) in EXPORT_CHECKS.items()}
    assert sev["mcq_answer_not_longest"] == AssetCheckSeverity.WARN
    assert sev["description_not_speculative"] == AssetCheckSeverity.WARN
    assert sev["times_as_timestamps"] == sev["no_duplicate_answers"] == sev["no_cross_task_duplicates"] == (
        AssetCheckSeverity.WARN)
    for rule in ("no_example_leakage", "question_form", "causal_order", "mcq_answer_matches_reasoning",
                 "times_inside_video", "answer_not_speculative", "no_repetition", "no_source_reference",
                 "yes_no_answer_matches_reasoning", "no_duplicate_questions", "no_duplicate_reasoning"):
        assert sev[rule] == AssetCheckSeverity.ERROR
    # a warn-level rule shows the item in the checks but does not leave it out of the dataset
    case = next(c for c in CASES if c["id"] == "longest-answer-by-far")
    item = TaskItem(video_id="v.mp4", question=case["question"], answer=case["answer"], reasoning=case["reasoning"])
    assert [r for r, _ in item_problems("mcq", item, 15.0)] == ["mcq_answer_not_longest"]
    assert rule_problems("mcq", item, 15.0) == [] and item_errors("mcq", item, 15.0) == []


@pytest.mark.parametrize("pack", ["general", "traffic", "warehouse"])
def test_shipped_examples_leave_nothing_to_copy(pack: str) -> None:
    """Every shipped QA example is format-only: its scaffolding between <placeholders> is too short to copy."""
    p = load_pack(pack)
    assert ExampleIndex.of(p).segments and all(s == [] for s in ExampleIndex.of(p).segments.values())
    assert "Format-only example" in p.text("anomaly_bcq")


def test_every_concrete_example_counts_as_leakage_and_only_for_its_prompt(concrete_pack: Path) -> None:
    p = load_pack(str(concrete_pack))
    index = ExampleIndex.of(p)
    checked = 0
    for key, segments in index.segments.items():
        for seg in segments:
            task = next(t for t, qt in _TASKS.items() if key.endswith(qt))
            mode = "anomaly" if key.startswith("anomaly") else "normal"
            if len(seg.split()) >= 6:
                assert index.copied(task, mode, seg) == seg, (key, seg)
                checked += 1
    assert checked >= 20
    # the MCQ examples are format-only placeholders (the options move in step 4): nothing in them to copy
    assert all(index.segments[k] == [] for k in ("anomaly_mcq", "normal_mcq"))
    # the anomaly_bcq example is not the normal_bcq example
    cyclist = "Does the cyclist touch the opening car door before falling at 00:07?"
    assert index.copied("bcq", "anomaly", cyclist) and not index.copied("bcq", "normal", cyclist)
    # the same example made format-only: its placeholders cut every run, nothing is left to match
    seg = example_segments('Format-only example: parts in <angle brackets> stand for details:\nquestion: '
                           '"Does <the cyclist, by clothing> touch <the object> before falling at <MM:SS>?"')
    assert seg == []
    # the instructions' own forms are what good items follow: never matched
    assert example_segments(p.text("anomaly_temporal_event_desc")) == []
    assert not index.copied("temporal_description", "anomaly", "What happens between 00:03 and 00:08 in the video?")


_TASKS = {"mcq": "_mcq", "bcq": "_bcq", "open_qa": "_open_qa", "causal_linkage": "_causal_linkage",
          "temporal_localization": "_temporal_localization"}


def test_offline_teacher_output_breaks_no_rule(concrete: ExampleIndex) -> None:
    """The demo's teacher, structured and free text, both modes, many videos: no item fails any rule."""
    pack = load_pack("general")
    teacher = Teacher(items_per_call=3)
    total = 0
    for v in range(6):
        for mode in ("anomaly", "normal"):
            for structured in (True, False):
                items = []
                for qt in ALL_QA_TYPES:
                    key = qa_prompt_key(qt, mode)
                    model = schema_for_key(key) if structured else None
                    ans = teacher.answer(pack.text(key), [f"{v:064x}"], model.model_json_schema() if model else None)
                    items += parse_qa(ans.text, qt, key)
                tasks, skipped = task_items_for_video(items, f"v{v}.mp4")
                assert skipped == []
                te = TaskExports(video_key=f"v{v}", mode=mode, tasks=tasks)
                total += sum(len(x) for x in tasks.values())
                assert item_failures(te, 8.0, concrete) == []
    assert total == 6 * 2 * 2 * 3 * (len(ALL_QA_TYPES) + 2)  # 3 items per type, MCQ and BCQ with a twin each


def test_failures_table_names_item_rule_and_reason(concrete: ExampleIndex) -> None:
    cases = {c["id"]: c for c in CASES}
    bad = [cases["form-bcq-what-is-the-reason"], cases["causal-placing-box-before-entering"]]
    te = TaskExports(video_key="corridor", mode="normal", tasks={
        c["task"]: [TaskItem(video_id="c.mp4", question=c["question"], answer=c["answer"], reasoning=c["reasoning"])]
        for c in bad
    })
    failures = item_failures(te, 12.0, concrete)
    assert [(f.task, f.index, f.rule, f.severity) for f in failures] == [
        ("bcq_openended", 0, "question_form", "error"), ("causal_linkage", 0, "causal_order", "error")]
    md = failures_markdown(failures)
    assert "| bcq_openended[0] | question_form | error | not a yes/no question" in md
    assert "the cause at 00:05 comes after its effect at 00:00" in md
    assert failures_markdown([]) == "no item fails a check"


def _mcqs(video: int) -> list[QAItem]:
    """Four MCQs whose reasoning names the answer by letter (teacher's answer A or B), and two bad ones."""
    out = []
    for i in range(4):
        options = [f"The worker {verb} crate {video}-{i}" for verb in ("lifts", "drops", "kicks", "paints")]
        answer = "AB"[(video + i) % 2]
        out.append(QAItem(qa_type="mcq", prompt_key="normal_mcq", question=f"What happens to crate {video}-{i}?",
                          options=options, answer=answer,
                          reasoning=f"At 00:0{i} the worker bends over the crate. Option {answer} is correct."))
    # the verdict names another option: left out, in both placed forms
    out.append(QAItem(qa_type="mcq", prompt_key="normal_mcq", question=f"Who opens gate {video}?",
                      options=["A guard in a vest", "A driver", "A cyclist", "Nobody"], answer="A",
                      reasoning="The driver steps out and swings the gate open, so the answer is B."))
    # only the open-ended twin guesses ("probably" in the correct option): the closed MCQ goes with it
    out.append(QAItem(qa_type="mcq", prompt_key="normal_mcq", question=f"Why does van {video} stop?",
                      options=["The driver probably waits for a pallet", "A tyre bursts", "It runs out of fuel"],
                      answer="A", reasoning="The van halts beside the dock while two pallets are loaded."))
    return out


def test_dataset_pass_places_options_before_it_judges() -> None:
    """Placement renames the reasoning's letters first, the checks judge the placed items, and what fails
    leaves with its twin and its source; the written letters stay exactly balanced."""
    per_video = [task_exports_for_video(f"v{v}", "normal", _mcqs(v), f"v{v}.mp4")[0] for v in range(6)]
    assert all(item_failures(te, 30.0)[0].rule == "mcq_answer_matches_reasoning" for te in per_video)

    placed, placement, excluded = place_and_exclude(per_video, lambda te: item_failures(te, 30.0))
    assert [(e.task, e.reasons[0].split(":")[0]) for e in excluded if e.video_key == "v0"] == [
        ("mcq", "mcq_answer_matches_reasoning"), ("mcq", "twin_excluded"),
        ("mcq_openended", "mcq_answer_matches_reasoning"), ("mcq_openended", "answer_not_speculative")]
    assert len(excluded) == 6 * 4
    moved = 0
    for te in placed:
        assert item_failures(te, 30.0) == [], "every written item was judged as written"
        assert len(te.mcq_sources) == len(te.tasks["mcq"]) == len(te.tasks["mcq_openended"]) == 4
        for item, source in zip(te.tasks["mcq"], te.mcq_sources, strict=True):
            assert f"Option {item.answer} is correct" in item.reasoning
            if item.answer != "AB"[source.correct]:
                moved += 1  # judged with the teacher's letters, this placed item would have been left out
                unmoved = item.model_copy(update={"reasoning": source.reasoning})
                assert mcq_agreement_problem("mcq", unmoved)
    assert moved >= 12
    letters = Counter(i.answer for te in placed for i in te.tasks["mcq"])
    assert placement.shuffled == 24 and max(letters.values()) - min(letters.values()) <= 1, letters
    # the same as placing the kept items alone: the exclusion left the round robin exact
    assert place_mcq_options(placed)[0] == placed
    # without exclusion it only places
    only, _, none = place_and_exclude(per_video, None)
    assert none == [] and sum(len(te.tasks["mcq"]) for te in only) == 36


def _corpus_videos() -> tuple[list[TaskExports], dict[str, float]]:
    """Every video of the corpus as a TaskExports (a case without `video` alone), and their durations."""
    videos: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in CASES:
        videos[(c["file"], c.get("video", c["id"]))].append(c)
    out, durations = [], {}
    for (file, video), cases in videos.items():
        tasks: dict[str, list[TaskItem]] = defaultdict(list)
        for c in cases:
            tasks[c["task"]].append(task_item(c))
        key = f"{file}/{video}"
        out.append(TaskExports(video_key=key, mode=cases[0]["mode"], tasks=dict(tasks)))
        durations[key] = cases[0]["duration"]
    return out, durations


def test_item_judgments_reuse_gives_the_verdicts_of_a_fresh_build(concrete: ExampleIndex, tmp_path: Path) -> None:
    """The dataset pass with the verdicts of the last build gives exactly what judging every item gives: the
    same written items, placement and exclusions, with nothing judged twice; a changed item, a rule or example
    change and a damaged file are judged again."""
    per_video, durations = _corpus_videos()
    per_video += [task_exports_for_video(f"v{v}", "normal", _mcqs(v), f"v{v}.mp4")[0] for v in range(6)]
    durations |= {f"v{v}": 30.0 for v in range(6)}
    path, fingerprint = tmp_path / "cache" / "item_judgments.json", rules_fingerprint(concrete)

    def build(known: ItemJudgments | None, videos: list[TaskExports] = per_video) -> Any:
        placed, placement, excluded = place_and_exclude(
            videos, lambda te: item_failures(te, durations[te.video_key], concrete, known))
        return [te.model_dump() for te in placed], placement.model_dump(), [e.model_dump() for e in excluded]

    fresh = build(None)
    assert len(fresh[2]) > 100  # the corpus's bad items and the MCQs' second round: exclusions to reproduce
    first = ItemJudgments.load(path, fingerprint)
    assert (first.note, first.damaged) == ("", False)  # the first build has no file and says nothing
    assert build(first) == fresh
    items = first.judged
    assert items > 300 and first.reused == 0
    first.save(path)

    again = ItemJudgments.load(path, fingerprint)
    assert build(again) == fresh
    assert (again.judged, again.reused, again.changed()) == (0, items, False)

    # one answer edited: that item alone goes through the rules
    edited = [te.model_copy(deep=True) for te in per_video]
    edited[0].tasks[next(iter(edited[0].tasks))][0].answer += " Indeed."
    one = ItemJudgments.load(path, fingerprint)
    build(one, edited)
    assert (one.judged, one.reused) == (1, items - 1)
    one.save(path)  # the file now holds what this build used: the old form of the edited item is gone
    stored = json.loads(path.read_text())
    assert len(stored["clean"]) + len(stored["problems"]) == items and stored["problems"] and stored["clean"]
    assert all(rules and all(len(r) == 2 for r in rules) for rules in stored["problems"].values())

    # other examples (or another rules version) make another fingerprint: nothing is taken
    other = ItemJudgments.load(path, rules_fingerprint(None))
    assert other.reused == 0 and "changed since the last build" in other.note and not other.damaged
    assert other.changed()  # even a build with no item replaces a file it could not use
    assert rules_fingerprint(None) != fingerprint == rules_fingerprint(concrete)

    path.write_text('{"fingerprint": "' + fingerprint + '", "clean": [], "problems": {"x": [["only-one"]]}}')
    damaged = ItemJudgments.load(path, fingerprint)
    assert damaged.damaged and "unreadable" in damaged.note and str(path) in damaged.note
    assert build(damaged) == fresh and damaged.judged == items


class CopyingTeacher(Teacher):
    """The offline teacher, except that its yes/no answers carry what a small real model wrote:
    the prompt's own example copied, and a question that is not a yes/no question."""

    def _known(self, ctx: Any, title: str) -> Any:
        if title != "YesNoSet":
            return super()._known(ctx, title)
        return {"items": [
            {"question": "Does anyone leave the queue at the ticket machine before reaching it?", "answer": "No",
             "explanation": "Every person in the queue waits their turn and uses the machine before walking away.",
             "reasoning": "At 00:02 four people stand in line at the ticket machine. Each one steps up when the "
                          "person ahead finishes."},
            {"question": "What is the reason the person is picking up the box?", "answer": "No",
             "explanation": "The person picks up the box to carry it away.",
             "reasoning": "The person bends down at 00:01 and lifts the box, then walks off with it."},
            {"question": "Does the camera stay fixed for the whole clip?", "answer": "Yes",
             "explanation": "The view does not move.",
             "reasoning": "The frame edges and the background stay in place from 00:00 to the end of the clip."},
        ]}


def test_pipeline_leaves_out_failing_items_and_says_why(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    """A real run: task_exports lists the failing items per video, the dataset leaves them out with reasons."""
    import json

    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    env = make_pipeline("gemini", teacher=CopyingTeacher())
    env.teacher.set_verdict_for_file(env.add_video(synthetic_videos["short_mp4"], "corridor.mp4"), label="normal")
    pack = env.root / "concrete-examples"  # a pack whose normal_bcq example is the ticket-queue scene copied above
    fill_template(concrete_values(), pack)
    spec = env.spec(workflow={"qa_types": ["bcq", "open_qa"]}, prompt_pack=str(pack))
    summary = env.run(spec)
    assert summary.failed == {}, summary.failed
    instance = DagsterInstance.get()
    ev = instance.get_latest_materialization_event(AssetKey("task_exports"))
    meta = ev.asset_materialization.metadata  # type: ignore[union-attr]
    assert meta["items_failing_checks"].value == 4  # two bad items, each in bcq and bcq_openended
    table = str(meta["check_failures"].value)
    assert "| bcq[0] | no_example_leakage | error | question repeats the prompt's example" in table
    assert "| bcq_openended[1] | question_form | error | not a yes/no question" in table
    # the asset checks in the UI: the error-level check failed and counts the failures by rule, the
    # warning-level one passed
    status, by_rule = {}, {}
    for name in ("items_pass_error_rules", "items_pass_warning_rules"):
        (rec,) = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("task_exports"), name), limit=1)
        status[name] = rec.status.value
        evaluation = rec.event.dagster_event.event_specific_data  # type: ignore[union-attr]
        by_rule[name] = evaluation.metadata["failures_by_rule"].value
    assert status == {"items_pass_error_rules": "FAILED", "items_pass_warning_rules": "SUCCEEDED"}
    errors = by_rule["items_pass_error_rules"]
    assert errors["question_form"] == 2 and errors["no_example_leakage"] >= 2 and errors["times_inside_video"] == 0
    assert set(errors) | set(by_rule["items_pass_warning_rules"]) == set(EXPORT_CHECKS)

    out = env.results / "step_4_output"
    for task in ("bcq", "bcq_openended"):
        items = json.loads((out / f"{task}.json").read_text())["items"]
        assert [i["question"].split("\n")[0] for i in items] == ["Does the camera stay fixed for the whole clip?"]
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["excluded_items"] == 4
    assert sorted((e["task"], e["reasons"][0].split(":")[0]) for e in report["excluded"]) == [
        ("bcq", "no_example_leakage"), ("bcq", "question_form"),
        ("bcq_openended", "no_example_leakage"), ("bcq_openended", "question_form")]
    assert tao_validate(out)[0] == []
    ds = instance.get_latest_materialization_event(AssetKey("dataset"))
    ds_meta = ds.asset_materialization.metadata  # type: ignore[union-attr]
    md = str(ds_meta["report"].value)
    assert "**Excluded by checks:** 4" in md
    assert "| corridor.mp4 | bcq | question_form: not a yes/no question" in md
    # the first build judged every item and kept the verdicts beside the results
    first_judged = ds_meta["items_judged"].value
    assert first_judged == meta["items"].value and ds_meta["item_judgments_reused"].value == 0
    assert (env.results / "cache" / "item_judgments.json").is_file()

    # a second video: the dataset is built again, and only the new video's items go through the rules
    env.teacher.set_verdict_for_file(env.add_video(synthetic_videos["short_mp4"], "corridor-2.mp4"), label="normal")
    summary = env.run(spec)
    assert summary.failed == {}, summary.failed
    ds_meta = instance.get_latest_materialization_event(AssetKey("dataset")).asset_materialization.metadata  # type: ignore[union-attr]
    assert ds_meta["item_judgments_reused"].value == first_judged
    assert ds_meta["items_judged"].value == first_judged  # the copy's items name another video: new items
    assert any(line.endswith(f"(item rules: {first_judged} judged, {first_judged} verdicts of the last build reused)")
               for line in env.log), env.log
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["excluded_items"] == 8  # the reused verdicts leave the first video's items out as before
    assert {e["video_key"] for e in report["excluded"]} == {"corridor.mp4", "corridor-2.mp4"}
