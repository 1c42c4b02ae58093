"""Option letters in MCQ reasoning move with the options, and the dataset's answer letters are balanced."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from vr_assets.export import (
    dataset_report_markdown,
    moved_reasoning,
    place_mcq_options,
    task_exports_for_video,
    without_items,
    write_dataset,
)
from vr_assets.mcq_letters import AmbiguousLetters, keep_order_reason, remap, scan
from vr_assets.records import McqSource, QAItem, TaskExports

CORPUS_DIR = Path(__file__).parent / "data" / "mcq_reasoning_corpus"
CORPUS = [json.loads(line) for line in (CORPUS_DIR / "corpus.jsonl").read_text().splitlines() if line.strip()]
LETTERS = "ABCDEFGH"


def _source(entry: dict) -> McqSource:
    options = entry["options"]
    return McqSource(
        question=entry["question"],
        options=options,
        correct=LETTERS.index(entry["answer"]),
        reasoning=entry["reasoning"],
        keep_order=keep_order_reason(entry["question"], options, entry["reasoning"]),
    )


def _order(entry: dict) -> list[int]:
    return entry.get("order") or [2, 0, 3, 1]


# ---------------------------------------------------------------- the corpus


def test_corpus_is_varied() -> None:
    assert len(CORPUS) >= 25
    assert len({e["id"] for e in CORPUS}) == len(CORPUS)
    outcomes = Counter(e["expect"] for e in CORPUS)
    assert outcomes["remap"] >= 15 and outcomes["keep_order"] >= 8, outcomes


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_corpus_entry(entry: dict) -> None:
    source = _source(entry)
    if entry["expect"] == "keep_order":
        assert source.keep_order, "an ambiguous item must keep the teacher's order"
        assert entry["reason"] in source.keep_order
        return
    assert source.keep_order == ""
    assert moved_reasoning(source, _order(entry)) == entry["expected"]


def test_remap_refuses_ambiguous_text_and_keeps_case() -> None:
    with pytest.raises(AmbiguousLetters, match="'B' may or may not name an option"):
        remap("The van parks at Gate B.", {"B": "C"}, 4)
    assert remap("The van parks at Gate B; option b fits.", {"B": "C"}, 4, "Which gate? Gate B") == (
        "The van parks at Gate B; option c fits."
    )
    # swapping is simultaneous, not one letter after the other
    assert remap("Option A beats option B.", {"A": "B", "B": "A"}, 2) == "Option B beats option A."


def test_scan_ignores_articles_initials_and_compounds() -> None:
    found = scan("A man in a T-shirt at 10 a.m. sees a U-turn in the U.S.; I think A-roads are busy.", 4)
    assert found.refs == [] and found.problems == []


# ---------------------------------------------------------------- end to end through the dataset files

OPTION_LINE = re.compile(r"^([A-Z])\. (.+)$", re.M)
CLAIM = re.compile(r"\b(?:[Oo]ption|answer is) \(?([A-Z])\)?")


def _teacher_items(video: int, count: int) -> list[QAItem]:
    """MCQs whose reasoning names options by letter, answers mostly A as a lazy teacher writes them."""
    out = []
    for i in range(count):
        options = [f"Event {k} of clip {video}-{i}" for k in range(4)]
        answer = "A" if (video + i) % 3 else "BCD"[(video + i) % 3]
        wrong = [x for x in "ABCD" if x != answer]
        reasoning = (
            f"A worker crosses the yard at 00:0{i}. Option {answer} is correct because the clip shows "
            f"{options['ABCD'.index(answer)].lower()}; options {wrong[0]}, {wrong[1]} and {wrong[2]} never happen, "
            f"so the answer is ({answer})."
        )
        out.append(
            QAItem(
                qa_type="mcq",
                prompt_key="anomaly_mcq",
                question=f"What happens at the dock in clip {video}-{i}?",
                options=options,
                answer=answer,
                reasoning=reasoning,
            )
        )
    # one the remapper must not touch: "Dock C" is a name the question does not use
    out.append(
        QAItem(
            qa_type="mcq",
            prompt_key="anomaly_mcq",
            question=f"Where does the truck in clip {video} park?",
            options=["By the fence", "At the gate", "In the bay", "On the road"],
            answer="C",
            reasoning="The truck backs into the bay next to Dock C, so option C is right.",
        )
    )
    return out


def _per_video(n_videos: int, per: int) -> list[TaskExports]:
    return [
        task_exports_for_video(f"v{v:03d}", "anomaly", _teacher_items(v, per), f"cam/v{v:03d}.mp4")[0]
        for v in range(n_videos)
    ]


def test_exported_reasoning_names_the_answer_and_the_same_option_text(tmp_path: Path) -> None:
    per_video = _per_video(12, 4)
    teacher = {s.question: s for te in per_video for s in te.mcq_sources}
    report = write_dataset(tmp_path, per_video, formats=("tao",), media_root=None, license="", description_extra="")
    items = json.loads((tmp_path / "mcq.json").read_text())["items"]
    assert len(items) == 12 * 5

    moved = kept = 0
    for item in items:
        stem = item["question"].split("\n", 1)[0]
        shown = dict(OPTION_LINE.findall(item["question"]))
        source = teacher[stem]
        claims = CLAIM.findall(item["reasoning"])
        before = CLAIM.findall(source.reasoning)
        assert len(claims) == len(before)
        for now, then in zip(claims, before, strict=True):
            # every letter the reasoning names shows the option text the teacher's letter named
            assert shown[now] == source.options[LETTERS.index(then)]
        if source.keep_order:
            kept += 1
            assert item["reasoning"] == source.reasoning
            assert list(shown.values()) == source.options
        else:
            moved += 1
            assert claims[0] == item["answer"] == claims[-1], item
            assert shown[item["answer"]] == source.options[source.correct]
    assert (moved, kept) == (48, 12)
    assert report.mcq_placement.shuffled == 48 and report.mcq_placement.kept_order == 12
    # the open-ended twin carries the same layout and reasoning
    twins = json.loads((tmp_path / "mcq_openended.json").read_text())["items"]
    assert [t["reasoning"] for t in twins] == [i["reasoning"] for i in items]
    assert [t["answer"][0] for t in twins] == [i["answer"] for i in items]


# ---------------------------------------------------------------- balance and determinism


def _synthetic(n_videos: int) -> list[TaskExports]:
    """A few hundred MCQs with 3 or 4 options, the teacher's answer nearly always the first option."""
    out = []
    for v in range(n_videos):
        items = []
        for i in range(3 + v % 3):
            n = 3 if (v + i) % 5 == 0 else 4
            options = [f"Option text {k} for {v}/{i}" for k in range(n)]
            reasoning = "A forklift moves. Option A is right." if i % 2 else "The forklift moves the pallet first."
            answer = "A" if (v * 7 + i) % 10 else "B"
            items.append(
                QAItem(
                    qa_type="mcq",
                    prompt_key="normal_mcq",
                    question=f"What happens {v}/{i}?",
                    options=options,
                    answer=answer,
                    reasoning=reasoning,
                )
            )
        if v % 10 == 0:  # ambiguous: keeps its order and is not counted in the balance
            items.append(
                QAItem(
                    qa_type="mcq",
                    prompt_key="normal_mcq",
                    question=f"Where is the van {v}?",
                    options=["W", "X", "Y", "Z"],
                    answer="A",
                    reasoning="It waits at Gate B, so option A.",
                )
            )
        out.append(task_exports_for_video(f"video-{v:03d}", "normal", items, f"v{v}.mp4")[0])
    return out


def test_answer_letters_are_balanced_over_the_dataset(tmp_path: Path) -> None:
    per_video = _synthetic(80)
    placed, placement = place_mcq_options(per_video)
    assert placement.kept_order == 8
    by_n: dict[int, Counter[str]] = {}
    for te in placed:
        for source, item in zip(te.mcq_sources, te.tasks["mcq"], strict=True):
            if source.keep_order:
                assert item.answer == "A", "the ambiguous item keeps the teacher's letter"
                continue
            by_n.setdefault(len(source.options), Counter())[item.answer] += 1
    assert sum(sum(c.values()) for c in by_n.values()) == placement.shuffled >= 300
    for n, letters in by_n.items():
        uniform = sum(letters.values()) / n
        assert set(letters) == set(LETTERS[:n])
        assert all(abs(k - uniform) <= 0.05 * uniform for k in letters.values()), (n, letters)
        assert max(letters.values()) - min(letters.values()) <= 1, "exact, not chance"
    assert placement.shuffled_letter_balance == dict(sorted(sum(by_n.values(), Counter()).items()))
    assert placement.balance_by_option_count == {str(n): dict(sorted(c.items())) for n, c in sorted(by_n.items())}

    report = write_dataset(
        tmp_path / "a", per_video, formats=("tao",), media_root=None, license="", description_extra="", mcq_seed="s1"
    )
    md = dataset_report_markdown(report)
    assert f"**MCQ option order:** {placement.shuffled} shuffled" in md
    four = by_n[4]
    assert "4 options: " + ", ".join(f"{k} {four[k]}" for k in "ABCD") in md
    assert "8 kept the teacher's order (ambiguous option letters or positions)" in md
    assert "Gate B" in md, "the report says why an item kept its order"


def test_new_videos_leave_the_old_mcqs_letters_alone_but_a_few() -> None:
    """A dataset refresh after new videos: the old MCQs keep their options where they were (the files do not churn
    and their verdicts are reused), save the few that balance the letters again; the balance stays exact."""
    per_video = _synthetic(400)
    before, _ = place_mcq_options(per_video)
    after, placement = place_mcq_options(per_video + _synthetic(404)[400:])
    old = {(te.video_key, i): item.answer for te in before for i, item in enumerate(te.tasks["mcq"])}
    moved = [k for te in after[:400] for i, item in enumerate(te.tasks["mcq"])
             if old[k := (te.video_key, i)] != item.answer]
    assert len(old) > 1500 and placement.shuffled > 1400
    # 17 new MCQs: 2 old ones move here; ranked letters (the k-th at k mod n) moved 1 183 of the 1 639
    assert len(moved) <= 30, (len(moved), len(old))
    for n, letters in placement.balance_by_option_count.items():
        assert len(letters) == int(n) and max(letters.values()) - min(letters.values()) <= 1, (n, letters)


def test_same_inputs_give_the_same_files_whatever_the_order(tmp_path: Path) -> None:
    per_video = _synthetic(30)
    kw = {"formats": ("tao", "sharegpt"), "media_root": None, "license": "", "description_extra": "", "mcq_seed": ""}
    write_dataset(tmp_path / "a", per_video, **kw)  # type: ignore[arg-type]
    write_dataset(tmp_path / "b", list(reversed(per_video)), **kw)  # type: ignore[arg-type]
    for name in ("mcq.json", "mcq_openended.json", "sharegpt.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # placing twice changes nothing: the dataset pass always starts from the teacher's order
    once, _ = place_mcq_options(per_video)
    twice, _ = place_mcq_options(once)
    assert once == twice


def test_dropping_an_mcq_drops_its_twin_and_source() -> None:
    te = task_exports_for_video("v", "normal", _teacher_items(0, 3), "v.mp4")[0]
    stems = [s.question for s in te.mcq_sources]
    kept, removed = without_items(te, {"mcq_openended": {1}})
    assert removed == 2
    assert [s.question for s in kept.mcq_sources] == [stems[0], *stems[2:]]
    assert [i.question.split("\n", 1)[0] for i in kept.tasks["mcq"]] == [stems[0], *stems[2:]]
    assert len(kept.tasks["mcq_openended"]) == len(kept.mcq_sources)
