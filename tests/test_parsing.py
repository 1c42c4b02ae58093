"""Parser: the messy-output corpus, structured round trips, and the small-answer parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vr_assets.parsing import (
    CorpusCase,
    corpus_cases,
    main,
    parse_classification,
    parse_mmss,
    parse_qa,
    parse_qa_report,
    parse_relevance,
    parse_timestamp,
    parse_yes_no,
    run_corpus,
    strip_think,
)
from vr_assets.records import (
    ALL_QA_TYPES,
    MultipleChoiceQA,
    MultipleChoiceSet,
    OpenQA,
    OpenQASet,
    QAItem,
    TimeSpanQA,
    TimeSpanSet,
    YesNoQA,
    YesNoSet,
)

CORPUS = Path(__file__).resolve().parent / "data" / "parse_corpus"
CASES = corpus_cases(CORPUS)


def test_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 40
    texts = {name: txt.read_bytes().decode("utf-8") for name, txt, _ in CASES}  # keep CRLF
    cases = {name: CorpusCase.model_validate_json(exp.read_text(encoding="utf-8")) for name, _, exp in CASES}
    assert {c.qa_type for c in cases.values()} == set(ALL_QA_TYPES)
    assert sum(t.lstrip().startswith("{") for t in texts.values()) >= 4, "bare JSON answers"
    assert sum("```json" in t.lower() for t in texts.values()) >= 3, "fenced JSON answers"
    assert sum("</think>" in t for t in texts.values()) >= 3, "answers with thinking"
    assert sum("\r\n" in t for t in texts.values()) >= 1, "CRLF"
    assert sum(not c.items for c in cases.values()) == 0, "every case keeps at least one item"
    assert sum(len(c.items) for c in cases.values()) >= 60


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_corpus_case_parses_to_expected_items(name: str) -> None:
    _, txt, exp = next(c for c in CASES if c[0] == name)
    case = CorpusCase.model_validate_json(exp.read_text(encoding="utf-8"))
    got = parse_qa(txt.read_bytes().decode("utf-8"), case.qa_type, case.prompt_key)
    assert [g.model_dump() for g in got] == [e.model_dump() for e in case.expected()]


def test_corpus_success_rate(capsys: pytest.CaptureFixture[str]) -> None:
    results = run_corpus(CORPUS)
    rate = sum(r.ok for r in results) / len(results)
    with capsys.disabled():
        print(f"\nparse corpus success rate: {sum(r.ok for r in results)}/{len(results)} = {rate:.1%}")
    assert rate == 1.0, [r for r in results if not r.ok]


def test_corpus_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--corpus", str(CORPUS)]) == 0
    assert f"parsed {len(CASES)}/{len(CASES)} cases" in capsys.readouterr().out


def test_corpus_cli_reports_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "01_x.txt").write_text("Question: Is it raining?\nAnswer: Yes\nReasoning: wet road\n")
    (tmp_path / "01_x.expected.json").write_text(
        json.dumps(
            {"qa_type": "bcq", "prompt_key": "normal_bcq", "items": [{"question": "Is it raining?", "answer": "No"}]}
        )
    )
    assert main(["--corpus", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL 01_x: item 1 field answer" in out and "parsed 0/1 cases" in out


def test_dropped_items_are_reported() -> None:
    text = (
        "Multiple-Choice Question: Which car stops?\nA. Red\nB. Blue\nAnswer: E\nReasoning: x\n=====\n"
        "Multiple-Choice Question: Which lane?\nAnswer: the left one\n=====\n"
        "Answer: B\nReasoning: orphan answer\n=====\n"
        "Multiple-Choice Question: What colour is the bus?\nA. Red\nB. Yellow\nC. Green\nD. White\nAnswer: B\n"
    )
    items, problems = parse_qa_report(text, "mcq", "normal_mcq")
    assert [i.question for i in items] == ["What colour is the bus?"]
    assert [(p.index, p.problem) for p in problems] == [
        (1, "answer 'E' names no option"),
        (2, "multiple-choice item without options"),
        (3, "no question"),
    ]


def test_empty_and_unparseable_answers() -> None:
    assert parse_qa_report("", "open_qa", "normal_open_qa")[1][0].problem == "empty answer"
    assert parse_qa_report("<think>still thinking", "bcq", "normal_bcq")[1][0].problem == "empty answer"
    assert parse_qa_report('{"items": []}', "mcq", "normal_mcq")[1][0].problem == "structured answer with no items"
    items, problems = parse_qa_report("I'm sorry, I cannot help with that video.", "bcq", "normal_bcq")
    assert items == [] and problems[0].problem == "no question/answer sections found"


def test_tl_without_times_is_kept_raw_with_a_problem() -> None:
    items, problems = parse_qa_report(
        "Question: When does the van stop?\nAnswer: Shortly after the light changes.\nReasoning: x",
        "temporal_localization",
        "normal_temporal_localization",
    )
    assert items[0].answer == "Shortly after the light changes." and items[0].start_sec is None
    assert problems[0].problem == "no start/end time in the answer"


# ---------------------------------------------------------------- structured round trips


def _round_trip(model_json: str, qa_type: str, key: str) -> list[QAItem]:
    fenced = f"Here you go:\n```json\n{model_json}\n```\nAnything else?"
    plain = parse_qa(model_json, qa_type, key)
    assert parse_qa(fenced, qa_type, key) == plain
    assert parse_qa(f"<think>plan</think>{model_json}", qa_type, key) == plain
    return plain


def test_structured_sets_round_trip() -> None:
    mcq = MultipleChoiceSet(
        items=[MultipleChoiceQA(question="Q1?", options=["w", "x", "y", "z"], answer="D", reasoning="r1")]
    ).model_dump_json()
    assert _round_trip(mcq, "mcq", "anomaly_mcq") == [
        QAItem(
            qa_type="mcq",
            prompt_key="anomaly_mcq",
            question="Q1?",
            options=["w", "x", "y", "z"],
            answer="D",
            reasoning="r1",
        )
    ]
    bcq = YesNoSet(items=[YesNoQA(question="Q2?", answer="No", explanation="The door stays shut", reasoning="r2")])
    assert _round_trip(bcq.model_dump_json(), "bcq", "normal_bcq")[0].answer == "No. The door stays shut"
    tl = TimeSpanSet(items=[TimeSpanQA(question="Q3?", start_time="01:05", end_time="01:30", reasoning="r3")])
    got = _round_trip(tl.model_dump_json(), "temporal_localization", "anomaly_temporal_localization")[0]
    assert (got.answer, got.start_sec, got.end_sec) == ("Start_Time: 01:05, End_Time: 01:30", 65.0, 90.0)
    open_set = OpenQASet(
        items=[OpenQA(question="Q4?", answer="A4", reasoning="r4"), OpenQA(question="Q5?", answer="A5", reasoning="")]
    )
    got_open = _round_trip(open_set.model_dump_json(), "causal_linkage", "normal_causal_linkage")
    assert [(i.question, i.answer, i.reasoning) for i in got_open] == [("Q4?", "A4", "r4"), ("Q5?", "A5", "")]


def test_json_in_a_text_answer_does_not_hijack_text_parsing() -> None:
    text = 'Question: When does it happen?\nAnswer: {"start": "00:03", "end": "00:07"}\nReasoning: the fall'
    items = parse_qa(text, "temporal_localization", "anomaly_temporal_localization")
    assert (items[0].start_sec, items[0].end_sec) == (3.0, 7.0)


# ---------------------------------------------------------------- small answers


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("<think>a</think>\nYes", "Yes"),
        ("<THINK>a\nb</THINK>  No.", "No."),
        ("<think>x</think><think>y</think>ok", "ok"),
        ("hidden reasoning</think>\n\nAnswer", "Answer"),
        ("<think>never closed, truncated", ""),
        ("plain", "plain"),
    ],
)
def test_strip_think(text: str, want: str) -> None:
    assert strip_think(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Yes", True),
        ("yes.", True),
        ("**Yes**, the video shows a road.", True),
        ('"No" - it is a cartoon', False),
        ("> No.", False),
        ("Answer: YES", True),
        ("- no", False),
        ("<think>no?</think>Yes", True),
        ("Not relevant", None),
        ("Nothing happens", None),
        ("Maybe", None),
        ("", None),
    ],
)
def test_parse_yes_no(text: str, want: bool | None) -> None:
    assert parse_yes_no(text) is want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            '{"relevant": true, "reason": "Fixed camera over an intersection."}',
            (True, "Fixed camera over an intersection."),
        ),
        ('```json\n{"relevant": false, "reason": "Animated clip."}\n```', (False, "Animated clip.")),
        ('{"Relevant": "no", "reason": "Indoor gym."}', (False, "Indoor gym.")),
        ("Yes, the video shows a highway.", (True, "the video shows a highway.")),
        ("**No.** It is a video game.", (False, "It is a video game.")),
        ("Yes", (True, "Yes")),
        ("Unclear footage.", (None, "Unclear footage.")),
    ],
)
def test_parse_relevance(text: str, want: tuple[bool | None, str]) -> None:
    assert parse_relevance(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('{"reasoning": "A car hits a pole at 00:07.", "label": "anomaly"}', "anomaly"),
        ('{"reasoning": "Routine.", "label": "normal"}', "normal"),
        ("The van stops at 00:20 in a live lane.\nanomaly", "anomaly"),
        ("Traffic flows.\n\n**Normal**", "normal"),
        ("Worker falls at 00:12.\nFinal answer: Anomaly.", "anomaly"),
        ("Classification: abnormal", "anomaly"),
        ("Nothing happens.\nnormal\n\nLet me know if you need more.", "normal"),
        ("The scene is calm.\nNot an anomaly, I think.", None),
        ("", None),
    ],
)
def test_parse_classification(text: str, want: str | None) -> None:
    assert parse_classification(text) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("12.5", 12.5),
        ("12.5 seconds", 12.5),
        ("00:12", 12.0),
        ("1:02.5", 62.5),
        ("The anomaly occurs at about 7.3 s.", 7.3),
        ('{"found": true, "anomaly_time_sec": 14.2, "reasoning": "impact"}', 14.2),
        ('{"found": false, "anomaly_time_sec": 0, "reasoning": "none"}', None),
        ("Step 1: the log says 00:09.\nStep 2: chunk 2 agrees.\nAnswer: 9.4", 9.4),
        ("The car hits the pole at 00:07.\nThis is the moment of impact.", 7.0),
        ("No anomaly is described.", None),
    ],
)
def test_parse_timestamp(text: str, want: float | None) -> None:
    assert parse_timestamp(text) == want


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("00:07", 7.0),
        ("1:05", 65.0),
        ("01:02:03", 3723.0),
        ("0:17.5", 17.5),
        ("75:00", 4500.0),
        ("12", 12.0),
        ("12.5s", 12.5),
        (9, 9.0),
        ("00:75", None),
        ("1:60:00", None),
        ("soon", None),
        ("", None),
        (-3, None),
    ],
)
def test_parse_mmss(value: str | int, want: float | None) -> None:
    assert parse_mmss(value) == want
