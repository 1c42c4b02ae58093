"""Real-world input (issue 21): every entry gets one outcome, and nothing is paid for nothing.

Odd file names (bytes that are not UTF-8, spaces, quotes, newlines, unicode, upper-case extensions), entries that
are not videos (dangling symlinks, loops, folders named `x.mp4`), and files the probe can judge (too short, a
still image, audio only, empty, garbage, truncated) on tiny ffmpeg-made clips; the pipeline test runs the real
CLI path (workers, prefetch asking ahead) against the OpenAI-compatible fake.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from dagster._core.definitions.partitions.utils.base import INVALID_PARTITION_SUBSTRINGS

from tests.fixtures_media import _ffmpeg, _testsrc
from vr_assets.config import parse_spec
from vr_assets.discovery import partition_key_for, scan
from vr_assets.fsnames import shown
from vr_assets.media import MediaTool, plan_chunks
from vr_assets.outcomes import OutcomeSummary, VideoOutcome, outcome_summary
from vr_assets.providers import UsageLedger
from vr_assets.registry import VideoRegistry
from vr_assets.store import JsonStore

NON_UTF8 = b"clip_\xff\xfe.mp4"
ODD_NAMES: dict[str, bytes] = {
    "non_utf8": NON_UTF8,
    "non_utf8_folder": b"caf\xe9/inner.MOV",  # latin-1 folder name
    "spaces": b"my holiday clip.mp4",
    "quotes": b"it's \"quoted\" [1], 100%.mp4",
    "newline": b"two\nlines.mp4",
    "unicode": "café 摄像头 🎥.mp4".encode(),
    "upper_ext": b"UPPER.MKV",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2 s clips (keyframe every 0.5 s) with distinct content, and the files the probe must judge."""
    root = tmp_path_factory.mktemp("real_input")
    out = {}
    for i, src in enumerate(("testsrc2", "smptebars", "rgbtestsrc", "mandelbrot", "testsrc")):
        out[f"clip{i}"] = root / f"clip{i}.mp4"
        _ffmpeg("-f", "lavfi", "-i", f"{src}=size=160x120:rate=10", "-t", "2", "-g", "5", "-c:v", "libx264",
                "-preset", "ultrafast", "-pix_fmt", "yuv420p", out[f"clip{i}"])
    out["long"] = _testsrc(root / "long.mp4", 5, size="160x120", rate=10, audio=False)
    out["short"] = _testsrc(root / "short.mp4", 0.4, size="160x120", rate=10, audio=False)
    out["still"] = root / "still.mp4"  # a single frame: a still image in a video container
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-frames:v", "1", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", out["still"])
    out["picture"] = root / "picture.png"  # a PNG picture, named .mp4 in the tests
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120", "-frames:v", "1", out["picture"])
    out["audio"] = root / "audio.mp4"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440", "-t", "1", "-c:a", "aac", out["audio"])
    out["empty"] = root / "empty.mp4"
    out["empty"].write_bytes(b"")
    out["garbage"] = root / "garbage.mp4"
    out["garbage"].write_bytes(bytes(range(256)) * 20)
    out["truncated"] = root / "truncated.mp4"
    out["truncated"].write_bytes(out["clip0"].read_bytes()[:1500])
    return out


def put(root: Path, name: bytes, src: Path) -> bytes:
    """Copy `src` to `root`/`name` (raw bytes, folders made); returns the file's full path as bytes."""
    target = os.path.join(os.fsencode(root), name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(src, target)
    return target


def spec_for(tmp_path: Path, root: Path, **data: Any) -> Any:
    return parse_spec({"data": {"video_root": str(root), **data}, "results_dir": str(tmp_path / "results")},
                      "t", tmp_path)


# ---------------------------------------------------------------- 1. names


@pytest.mark.parametrize("case", list(ODD_NAMES))
def test_odd_names_get_a_stable_key_a_lossless_registry_entry_and_open_again(
    tmp_path: Path, tiny: dict[str, Path], case: str
) -> None:
    root = tmp_path / "videos"
    raw = put(root, ODD_NAMES[case], tiny["clip0"])
    spec = spec_for(tmp_path, root)
    found = scan(spec)
    assert found.skipped == [] and len(found.videos) == 1
    (video,) = found.videos
    key = video.key
    assert key.isascii() and "/" not in key and not any(s in key for s in INVALID_PARTITION_SUBSTRINGS), key
    assert key == scan(spec).videos[0].key == partition_key_for(video.rel_path)  # stable
    if case == "non_utf8":
        assert key.startswith("clip_xFFxFE.mp4-")  # undecodable bytes readable as xFF, plus the clash hash

    registry = VideoRegistry(spec.results_dir)
    registry.sync(found.videos)
    text = registry.path.read_bytes().decode("utf-8")  # strict: the registry is valid UTF-8 JSON
    stored = json.loads(text)[key]["path"]
    if case.startswith("non_utf8"):
        assert base64.b64decode(stored["fs_b64"]) == os.fsencode(video.path)
        assert "\\x" in stored["shown"]
    else:
        assert stored == video.path  # plain names stay plain strings, as before
    again = VideoRegistry(spec.results_dir).get(key).path
    assert os.fsencode(again) == os.path.realpath(raw)  # the exact bytes: the file opens again
    assert Path(again).read_bytes() == tiny["clip0"].read_bytes()

    # PyAV, and ffmpeg arguments and its concat listing, take the name as it is
    tool = MediaTool(fps=4.0)
    assert tool.probe(again).duration_sec == pytest.approx(2.0, abs=0.1)
    assert len(tool.cut_chunks(again, plan_chunks(2.0, 1.0), tmp_path / "chunks")) == 2
    frames = tool.sample_frames(again, [0.2, 1.6], tmp_path / "frames", keyframe_interval=0.5)  # two seeks
    assert [f.stat().st_size > 0 for f in frames] == [True, True]
    assert tool.prepare_video(again, tmp_path / "small.mp4").stat().st_size > 0


def test_a_name_that_is_not_utf8_is_printable_everywhere_it_is_written(tmp_path: Path, tiny: dict[str, Path]) -> None:
    """Messages, JSON records and log lines carry the `\\xff` form; none raises."""
    from vr_assets.media import MediaError
    from vr_assets.records import FilterResult

    raw = put(tmp_path, b"gone_\xff.mp4", tiny["clip0"])
    name = os.fsdecode(raw)
    os.unlink(raw)
    with pytest.raises(MediaError) as err:
        MediaTool().probe(name)
    assert str(err.value).encode("utf-8") and "gone_\\xff.mp4: file not found" in str(err.value)
    found = scan(spec_for(tmp_path, tmp_path))
    assert found.videos == []
    put(tmp_path, b"here_\xff.mp4", tiny["clip0"])
    (video,) = scan(spec_for(tmp_path, tmp_path)).videos
    record = FilterResult(video=video, probe=MediaTool().probe(video.path), proceed=True, mode="normal",
                          mode_source="workflow")
    JsonStore(tmp_path / "r").write("filter_result", video.key, record)
    assert JsonStore(tmp_path / "r").read("filter_result", video.key) == record  # the JSON round trip is exact


@pytest.mark.usefixtures("clean_providers")
def test_gemini_uploads_files_whatever_their_names(tmp_path: Path, tiny: dict[str, Path]) -> None:
    """The SDK given a path sends the name in an ASCII-only HTTP header; an open file has no such header."""
    from tests.test_providers import answers, call, gemini_spec, video
    from vr_assets.config import MediaSettings
    from vr_assets.fakes import FakeGemini, sha256_file
    from vr_assets.providers import get_model

    names = [ODD_NAMES["non_utf8"], ODD_NAMES["unicode"], ODD_NAMES["newline"]]
    paths = [Path(os.fsdecode(put(tmp_path, n, tiny[f"clip{i}"]))) for i, n in enumerate(names)]
    with FakeGemini(processing_polls=0, probe_durations=False) as gem:
        model = get_model(gemini_spec(gem), media=MediaSettings(), upload_registry=tmp_path / "uploads")
        got = answers(model.generate_many([call("Describe.", video(p, f"v{i}")) for i, p in enumerate(paths)]))
        assert len(got) == 3 and gem.counts["upload.start"] == 3
        assert set(gem.upload_bytes_by_sha()) == {sha256_file(p) for p in paths}


# ---------------------------------------------------------------- 2. entries that are not videos


def test_entries_that_are_not_videos_are_reported_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "videos"
    for rel in ("x/clip.mp4", "y/clip.mp4", "folder.mp4/inner.mp4", "notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"same bytes")  # identical content under several names
    (root / "x" / "copy.mp4").write_bytes(b"same bytes")
    (root / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    (root / "loop.mp4").symlink_to("loop.mp4")
    (root / "alias.mp4").symlink_to(root / "x" / "clip.mp4")
    os.mkfifo(root / "pipe.mp4")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / "far.mp4").write_bytes(b"far")
    (root / "linked_folder").symlink_to(elsewhere / "sub")
    (root / "outside.mp4").symlink_to(elsewhere / "sub" / "far.mp4")  # a link to a file outside the root
    listing = tmp_path / "in.jsonl"
    listing.write_text("\n".join([
        "not json", json.dumps({"nothing": 1}), json.dumps({"video": "folder.mp4"}),
        json.dumps({"video": "dangling.mp4"}), json.dumps({"video": str(tmp_path / "missing.mp4")}),
    ]))
    caplog.set_level(logging.WARNING, "vr_assets.discovery")
    found = scan(spec_for(tmp_path, root, input_jsonl_files=[str(listing)]))

    keys = sorted(v.key for v in found.videos)
    # same basename in two folders, identical content under two names: separate partitions each; a plain
    # missing JSONL path stays a video (its step 0 fails naming it)
    assert keys == ["folder.mp4__inner.mp4", "missing.mp4", "outside.mp4", "x__clip.mp4", "x__copy.mp4",
                    "y__clip.mp4"]
    got = sorted((shown(f.path).removeprefix(str(tmp_path) + "/"), f.kind) for f in found.skipped)
    assert got == [
        ("in.jsonl", "bad_jsonl_line"), ("in.jsonl", "bad_jsonl_line"),
        ("videos/alias.mp4", "same_file"),
        ("videos/dangling.mp4", "dangling_symlink"), ("videos/dangling.mp4", "dangling_symlink"),  # root + JSONL
        ("videos/folder.mp4", "folder"), ("videos/folder.mp4", "folder"),
        ("videos/linked_folder", "symlinked_folder"),
        ("videos/loop.mp4", "symlink_loop"),
        ("videos/pipe.mp4", "not_a_file"),
    ]
    reasons = {f.kind: f.reason for f in found.skipped}
    assert reasons["dangling_symlink"].startswith(f"dangling symlink to {root / 'nowhere.mp4'}")
    assert reasons["not_a_file"] == "not a regular file (a named pipe)"
    assert reasons["same_file"] == "a symlink to x/clip.mp4, a video found already"
    assert {f.reason for f in found.skipped if f.kind == "bad_jsonl_line"} == {
        "line 1: not JSON (Expecting value: line 1 column 1 (char 0)); line skipped",
        "line 2: no video_path/video field; line skipped",
    }
    assert all("\n" not in f.line() for f in found.skipped)
    assert found.summary() == (
        "6 videos found; 10 entries skipped (2 bad_jsonl_line, 2 dangling_symlink, 2 folder, 1 not_a_file, "
        "1 same_file, 1 symlink_loop, 1 symlinked_folder)"
    )
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("discovery skipped ")]
    assert sorted(logged) == sorted(f"discovery skipped {f.line()}" for f in found.skipped)


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists every folder")
def test_a_folder_that_cannot_be_listed_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "videos" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0)
    try:
        found = scan(spec_for(tmp_path, tmp_path / "videos"))
    finally:
        locked.chmod(0o755)
    assert [(f.kind, f.reason) for f in found.skipped] == [("unreadable_folder", "folder cannot be listed: "
                                                                                 "Permission denied")]


# ---------------------------------------------------------------- 3 + 4. the run: decided before the first call


def test_every_file_gets_one_outcome_and_bad_ones_cost_no_call(make_pipeline: Any, tiny: dict[str, Path]) -> None:
    env = make_pipeline("openai")
    root = env.videos
    good = {  # partition key -> file name (bytes)
        "a__clip.mp4": b"a/clip.mp4", "b__clip.mp4": b"b/clip.mp4", "same_as_a.mp4": b"same_as_a.mp4",
    }
    put(root, b"a/clip.mp4", tiny["clip0"])
    put(root, b"b/clip.mp4", tiny["clip1"])  # the same basename in another folder
    put(root, b"same_as_a.mp4", tiny["clip0"])  # identical content under another name
    put(root, NON_UTF8, tiny["clip2"])
    put(root, b"new\nline 'q' \xc3\xa9.MP4", tiny["clip3"])
    for name in ("short", "still", "long", "picture", "audio", "empty", "garbage", "truncated"):
        put(root, f"{name}.mp4".encode(), tiny[name])
    (root / "dangling.mp4").symlink_to(root / "gone.mp4")
    (root / "folder.mp4").mkdir()
    spec = env.spec(workflow={"qa_types": ["mcq"], "max_video_length_sec": 4})
    found = scan(spec)
    by_name = {os.fsencode(v.rel_path): v.key for v in found.videos}
    good[by_name[NON_UTF8]] = NON_UTF8
    good[by_name[b"new\nline 'q' \xc3\xa9.MP4"]] = b"new\nline 'q' \xc3\xa9.MP4"
    assert by_name[NON_UTF8].startswith("clip_xFFxFE.mp4-")

    summary = env.run(spec, parallel=2)  # workers, and the prefetch asking steps 0 and 1a ahead

    stopped = {"short.mp4": "too short to chunk: 0.40 s", "still.mp4": "too short to chunk: a single frame",
               "long.mp4": "too long: 5.0 s > workflow.max_video_length_sec 4 s"}
    failed = {"audio.mp4": "no video stream (audio only)", "empty.mp4": "empty file (0 bytes)",
              "picture.mp4": "a still image (png_pipe), not a video",
              "garbage.mp4": "probe failed", "truncated.mp4": "probe failed"}
    assert sorted(summary.failed) == sorted(failed), summary.failed
    for key, cause in failed.items():
        why = summary.failed[key]
        assert "\n" not in why and why.startswith(f"video {key}: ") and str(root / key) in why and cause in why, why
    assert sorted(summary.succeeded) == sorted([*good, *stopped])
    store = JsonStore(env.results)
    for key, reason in stopped.items():
        record = store.read("filter_result", key)
        assert not record.proceed and record.stop_reason.startswith(reason) and record.usage == []
        assert not store.exists("captions", key)
    assert all(store.exists("task_exports", k) for k in good)

    # zero requests for any file the probe could judge: every request is in the ledger, none for those
    entries = UsageLedger(env.results / "usage").entries()
    assert env.calls() == len(entries) > 0
    assert {e.video_key for e in entries} <= set(good)
    assert not {e.video_key for e in entries} & {*stopped, *failed}

    # the dataset carries the odd names as text; the registry keeps them exactly
    mcq = json.loads((env.results / "step_4_output" / "mcq.json").read_bytes().decode("utf-8"))
    ids = {i["video_id"] for i in mcq["items"]}
    assert {"clip_\\xff\\xfe.mp4", "new\nline 'q' é.MP4", "a/clip.mp4", "b/clip.mp4", "same_as_a.mp4"} <= ids

    outcome = outcome_summary(env.results, summary.failed, found.skipped)
    kinds = {o.key or shown(o.name): (o.kind, o.reason) for o in outcome.outcomes}
    assert {k for k, (kind, _) in kinds.items() if kind == "annotated"} == set(good)
    assert {k: r for k, (kind, r) in kinds.items() if kind == "stopped"}.keys() == stopped.keys()
    assert {k for k, (kind, _) in kinds.items() if kind == "failed"} == set(failed)
    skipped = sorted(r for kind, r in kinds.values() if kind == "skipped")
    assert skipped == [f"dangling symlink to {root / 'gone.mp4'} (the target does not exist)",
                       "a folder named like a video, not a video file"][::-1]
    assert outcome.counts() == {"annotated": 5, "stopped": 3, "failed": 5, "skipped": 2, "not_run": 0}
    text = outcome.render()
    print("\n" + text)
    assert text.splitlines()[0] == (
        "outcome: 13 videos, 2 entries skipped: 5 annotated, 3 stopped at step 0, 5 failed, 2 skipped at discovery"
    )
    assert "  short.mp4: too short to chunk: 0.40 s" in text
    assert f"  audio.mp4: probe failed for {root / 'audio.mp4'}: no video stream" in text


def test_outcome_summary_renders_at_most_a_few_lines_per_kind() -> None:
    many = OutcomeSummary(outcomes=[
        *(VideoOutcome(name=f"v{i}.mp4", key=f"v{i}.mp4", kind="failed", reason=f"cause {i}") for i in range(13)),
        VideoOutcome(name="ok.mp4", key="ok.mp4", kind="annotated", reason="4 items"),
        VideoOutcome(name="late.mp4", key="late.mp4", kind="not_run", reason="no failure and no task items yet"),
    ])
    lines = many.render(per_kind=3).splitlines()
    assert lines == [
        "outcome: 15 videos, 0 entries skipped: 1 annotated, 13 failed, 1 not run yet",
        "failed (13):", "  v0.mp4: cause 0", "  v1.mp4: cause 1", "  v2.mp4: cause 2", "  ... and 10 more",
        "not run yet (1):", "  late.mp4: no failure and no task items yet",
    ]
