"""Quality rules: each one catches what it names, with the right severity."""

from __future__ import annotations

from dagster import AssetCheckSeverity

from vr_assets.checks import check_captions, check_chunks, check_exports, check_highlight, item_errors
from vr_assets.records import (
    Captions,
    ChunkCaption,
    ChunkCaptions,
    Highlight,
    HighlightChunk,
    TaskExports,
    TaskItem,
    VideoProbe,
    VideoSource,
)


def item(q: str, a: str, r: str = "Because the person is visible at 0:03.") -> TaskItem:
    return TaskItem(video_id="v.mp4", question=q, answer=a, reasoning=r)


def failures(outcomes: list, name: str) -> list[str]:
    return next(o.failures for o in outcomes if o.name == name)


GOOD_MCQ = "What does the man carry?\nA. A box\nB. A bag\nC. Nothing\nD. A ladder\nAnswer with the letter."


def test_export_checks_catch_each_problem() -> None:
    te = TaskExports(video_key="v", mode="anomaly", tasks={
        "mcq": [item(GOOD_MCQ, "B"), item("Which?\nA. x\nB. y", "A"), item(GOOD_MCQ.replace("man", "woman"), "E")],
        "mcq_openended": [item(GOOD_MCQ, "B. A bag")],
        "bcq": [item("Is the door open?", "Yes"), item("Does it rain?", "Maybe")],
        "temporal_localization": [item("When?", '{"start": "00:05", "end": "00:02"}'),
                                  item("Then?", '{"start": "00:01", "end": "09:00"}'),
                                  item("Ok?", '{"start": "00:01", "end": "00:03"}')],
        "open_qa": [item("What is shown in the caption?", "A street."), item("Why stop?", "Red light.", r=" "),
                    item("what does the man carry?", "A bag.")],
    })
    out = check_exports(te, duration=10.0)
    assert len(failures(out, "mcq_well_formed")) == 2  # two options only; letter E not an option
    assert len(failures(out, "bcq_yes_no")) == 1
    assert len(failures(out, "temporal_span_valid")) == 2  # start after end; end past the video
    assert len(failures(out, "reasoning_present")) == 1
    assert len(failures(out, "no_caption_talk")) == 1
    dup = failures(out, "no_cross_task_duplicates")
    assert len(dup) == 1 and "open_qa" in dup[0]  # same stem as the MCQ, case-folded; the openended twin is fine
    assert failures(out, "no_duplicate_questions") == []  # no question twice within one task
    severities = {o.name: o.severity for o in out}
    assert severities["no_cross_task_duplicates"] == AssetCheckSeverity.WARN
    assert severities["no_duplicate_questions"] == AssetCheckSeverity.ERROR
    assert severities["mcq_well_formed"] == AssetCheckSeverity.ERROR


def test_item_errors_decide_dataset_exclusion() -> None:
    assert item_errors("mcq", item(GOOD_MCQ, "B"), 10.0) == []
    assert item_errors("mcq", item(GOOD_MCQ, "Z"), 10.0)
    assert item_errors("bcq_openended", item("Is it dark?", "No, the lights are on."), 10.0) == []
    assert item_errors("open_qa", item("According to the description, what happens?", "x"), 10.0)


def video() -> tuple[VideoSource, VideoProbe]:
    return VideoSource(key="v", path="/v.mp4", source="video_root", rel_path="v.mp4"), VideoProbe(duration_sec=12.0)


def test_caption_chunk_and_highlight_checks() -> None:
    src, probe = video()
    caps = Captions(video=src, probe=probe, mode="normal", global_caption="I'm sorry, I cannot view videos.",
                    dense_caption=" ", media_kind="video")
    (c,) = check_captions(caps)
    assert len(c.failures) == 2
    chunks = ChunkCaptions(video_key="v", chunk_duration=5, chunks=[
        ChunkCaption(chunk_index=0, timestamp_start=0, timestamp_end=5, caption="a"),
        ChunkCaption(chunk_index=1, timestamp_start=6, timestamp_end=10, caption=""),
    ])
    (cc,) = check_chunks(chunks, 12.0)
    assert len(cc.failures) == 3  # gap at 5-6 s, empty caption, ends 2 s early
    ok = ChunkCaptions(video_key="v", chunk_duration=5, chunks=[
        ChunkCaption(chunk_index=0, timestamp_start=0, timestamp_end=5, caption="a"),
        ChunkCaption(chunk_index=1, timestamp_start=5, timestamp_end=10, caption="b"),
        ChunkCaption(chunk_index=2, timestamp_start=10, timestamp_end=11.5, caption="c"),
    ])
    assert check_chunks(ok, 12.0)[0].failures == []
    bad = Highlight(video_key="v", applicable=True, highlight_chunk=HighlightChunk(
        anomaly_timestamp_sec=14, timestamp_start=11, timestamp_end=17, caption="x"))
    assert len(check_highlight(bad, 12.0)[0].failures) == 2
    assert check_highlight(Highlight(video_key="v", applicable=False), 12.0)[0].failures == []
