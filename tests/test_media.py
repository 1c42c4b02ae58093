"""vr_assets.media against real ffmpeg on generated and real videos."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest

from vr_assets.media import (
    MediaError,
    MediaTool,
    choose_chunk_duration,
    ffmpeg_cpu_seconds,
    find_ffmpeg,
    frame_times,
    group_targets,
    highlight_window,
    plan_chunks,
    video_mime,
    video_workdir,
)

DEFAULT_OPTIONS = [5.0, 10.0, 15.0, 20.0, 30.0]
TOLERANCE = 0.15


def ffprobe_json(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        check=True,
    ).stdout
    return json.loads(out)


def decode_errors(path: Path) -> tuple[int, str]:
    """Full decode: (number of frames, ffmpeg's error output)."""
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "framemd5", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    frames = sum(1 for line in proc.stdout.splitlines() if line and not line.startswith("#"))
    return frames, proc.stderr.strip() if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr}"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part")


# ---------------------------------------------------------------- planning


def reference_choice(duration: float, options: list[float], max_chunks: int) -> float:
    """The reference's own rule, to show both agree away from the sub-second boundary."""
    return next((d for d in sorted(options) if duration / d <= max_chunks), max(options))


@pytest.mark.parametrize(("duration", "expected"), [(4, 5), (10, 5), (45, 5), (95, 10), (300, 30)])
def test_chunk_duration_defaults(duration: float, expected: float) -> None:
    chosen = choose_chunk_duration(duration, DEFAULT_OPTIONS, 10)
    assert chosen == expected
    assert chosen == reference_choice(duration, DEFAULT_OPTIONS, 10)
    assert 1 <= len(plan_chunks(duration, chosen)) <= 10


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (50.0, 5),  # 10 chunks of 5 s
        (50.99, 5),  # the 0.99 s tail is not a chunk (start + 1 > duration), so still 10 chunks
        (51.0, 10),  # an 11th 5 s chunk would start at 50
        (100.0, 10),
        (100.5, 10),  # reference's duration/d rule would say 15; its own chunk loop cuts only 10 here
        (101.0, 15),
        (301.0, 30),  # nothing fits 10 chunks: the largest option
        (0.5, 5),  # too short for any chunk: the smallest option (zero chunks)
    ],
)
def test_chunk_duration_boundaries(duration: float, expected: float) -> None:
    assert choose_chunk_duration(duration, DEFAULT_OPTIONS, 10) == expected


def test_chunk_duration_unsorted_options_and_bad_input() -> None:
    assert choose_chunk_duration(95, [30, 5, 10], 10) == 10
    assert choose_chunk_duration(95, [30, 5, 10], 2) == 30
    with pytest.raises(ValueError):
        choose_chunk_duration(10, [], 10)
    with pytest.raises(ValueError):
        choose_chunk_duration(10, [0, 5], 10)


def test_plan_chunks_reference_rule() -> None:
    assert plan_chunks(10, 5) == [(0, 0.0, 5.0), (1, 5.0, 10.0)]
    assert plan_chunks(11, 5) == [(0, 0.0, 5.0), (1, 5.0, 10.0), (2, 10.0, 11.0)]
    assert plan_chunks(10.5, 5) == [(0, 0.0, 5.0), (1, 5.0, 10.0)]  # 10 + 1 > 10.5: tail dropped
    assert plan_chunks(0.5, 5) == []
    assert plan_chunks(1.0, 5) == [(0, 0.0, 1.0)]
    many = plan_chunks(299.7, 0.1)  # multiplication, not accumulation: no drift over thousands of chunks
    assert [c[0] for c in many] == list(range(len(many)))
    assert all(abs(c[1] - c[0] * 0.1) < 1e-6 for c in many)
    assert many[-1][2] <= 299.7
    with pytest.raises(ValueError):
        plan_chunks(10, 0)


@pytest.mark.parametrize(
    ("t", "duration", "before", "after", "expected"),
    [
        (10, 20, 3, 3, (7.0, 13.0)),
        (1, 20, 3, 3, (0.0, 4.0)),  # clamped at the start
        (19.5, 20, 3, 3, (16.5, 20.0)),  # clamped at the end
        (10, 20, 0.5, 0.5, (8.5, 10.5)),  # too short: grows backwards (reference)
        (0, 20, 0.5, 0.5, (0.0, 2.0)),  # start pinned at 0: grows forwards
        (20, 20, 0.5, 0.5, (18.0, 20.0)),
        (-5, 20, 3, 3, (0.0, 3.0)),  # t clamped into the video
        (50, 20, 3, 3, (17.0, 20.0)),
        (0.7, 1.5, 3, 3, (0.0, 1.5)),  # video shorter than min_len
    ],
)
def test_highlight_window(t, duration, before, after, expected) -> None:
    start, end = highlight_window(t, duration, before, after)
    assert (start, end) == pytest.approx(expected)
    assert 0 <= start < end <= duration
    assert end - start >= min(2.0, duration) - 1e-9


@pytest.mark.parametrize(("duration", "n"), [(75, 37), (300, 60), (1, 1), (0.3, 1), (61, 30)])
def test_frame_times(duration: float, n: int) -> None:
    times = frame_times(duration, 0.5, 60)
    assert len(times) == n
    assert all(0 < t < duration for t in times)
    gaps = {round(b - a, 4) for a, b in zip(times, times[1:], strict=False)}
    assert len(gaps) <= 1  # evenly spaced
    assert times[0] == pytest.approx(duration / n / 2)


def test_group_targets() -> None:
    ts = [1.0, 3.0, 5.0, 7.0, 9.0]
    assert group_targets(ts, None) == [ts]  # unknown keyframe interval: decode straight through
    assert group_targets(ts, 1.0) == [[t] for t in ts]  # a keyframe between every pair: seek each
    assert group_targets(ts, 20.0) == [ts]  # one GOP covers everything
    assert group_targets(ts, 4.0) == [[1.0, 3.0], [5.0, 7.0], [9.0]]  # keyframes at 4 and 8
    assert group_targets([1.0, 1.2, 1.4], 0.1) == [[1.0, 1.2, 1.4]]  # a seek would skip < 0.5 s
    assert group_targets([], 1.0) == []


@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("a.mp4", "video/mp4"),
        ("a.AVI", "video/x-msvideo"),
        ("a.mov", "video/quicktime"),
        ("CLIP.MKV", "video/x-matroska"),
        ("a.webm", "video/webm"),
        ("f.jpg", "image/jpeg"),
    ],
)
def test_video_mime(name: str, mime: str) -> None:
    assert video_mime(Path("/x") / name) == mime


# ---------------------------------------------------------------- probing


@pytest.mark.parametrize(
    ("name", "duration", "size", "fps", "gop"),
    [
        ("short_mp4", 4, (320, 240), 25, 1.0),
        ("clip8", 8, (320, 240), 25, 1.0),
        ("clip16", 16, (320, 240), 25, 1.0),
        ("long_mp4", 75, (160, 120), 5, 2.0),
        ("mkv_upper", 3, (320, 240), 25, None),  # a single keyframe: interval unknown
    ],
)
@pytest.mark.parametrize("reader", ["auto", "ffprobe"])  # in-process PyAV, Debian's ffprobe
def test_probe_synthetic(synthetic_videos, name, duration, size, fps, gop, reader) -> None:
    path = synthetic_videos[name]
    tool = MediaTool(fps=4.0, ffprobe=reader)
    probe = tool.probe(path)
    assert probe.duration_sec == pytest.approx(duration, abs=0.1)
    assert (probe.width, probe.height) == size
    assert probe.fps == pytest.approx(fps)
    assert probe.video_codec == "h264"
    assert probe.has_audio is True
    assert probe.size_bytes == path.stat().st_size
    assert probe.format_name == ffprobe_json(path)["format"]["format_name"]
    assert tool.invocations == 1
    assert tool.keyframe_interval(path) == (pytest.approx(gop) if gop else None)


@pytest.mark.parametrize("reader", ["auto", "ffprobe"])
def test_probe_real(real_videos, reader) -> None:
    tool = MediaTool(fps=4.0, ffprobe=reader)
    bikes = tool.probe(real_videos["bikes"])
    assert (bikes.width, bikes.height, bikes.video_codec, bikes.has_audio) == (640, 272, "h264", False)
    assert bikes.duration_sec == pytest.approx(10.0, abs=0.05)
    assert bikes.fps == pytest.approx(25)
    # keyframes of bikes.mp4 sit 1.2-2.4 s apart (scene cuts): the estimate must land in that range
    assert 1.0 <= tool.keyframe_interval(real_videos["bikes"]) <= 2.5
    vtest = tool.probe(real_videos["vtest"])
    assert (vtest.width, vtest.height, vtest.video_codec) == (768, 576, "msmpeg4v3")
    assert vtest.duration_sec == pytest.approx(79.5, abs=0.05)
    assert vtest.format_name == "avi"
    assert tool.keyframe_interval(real_videos["vtest"]) is None  # keyframes 25 s apart: one in the scanned 15 s


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("corrupt_mp4", ""),
        ("text_as_mp4", ""),
        ("audio_only", "no video stream (audio only)"),
    ],
)
@pytest.mark.parametrize("reader", ["auto", "ffprobe"])
def test_probe_errors_name_the_file(synthetic_videos, name, cause, reader) -> None:
    path = synthetic_videos[name]
    with pytest.raises(MediaError) as err:
        MediaTool(fps=4.0, ffprobe=reader).probe(path)
    assert str(path) in str(err.value)
    assert err.value.path == str(path) and err.value.operation == "probe"
    assert cause in err.value.cause and err.value.cause
    if name != "audio_only":  # ffmpeg's own reason is carried, not a generic text
        assert "no error output" not in err.value.cause


def test_in_process_probe_agrees_with_ffprobe(synthetic_videos, real_videos, tmp_path) -> None:
    """PyAV and ffprobe read the same facts, display rotation included (a phone video held upright)."""
    rotated = tmp_path / "upright.mp4"
    subprocess.run(
        [find_ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(synthetic_videos["clip8"]),
         "-c", "copy", str(rotated)],
        check=True,
    )
    files = [*synthetic_videos.values(), *real_videos.values(), rotated]
    checked = 0
    for path in files:
        in_process, spawned = MediaTool(ffprobe="auto"), MediaTool(ffprobe="ffprobe")
        try:
            expected = spawned.probe(path)
        except MediaError:
            with pytest.raises(MediaError):
                in_process.probe(path)
            continue
        assert in_process.probe(path) == expected, path.name
        assert in_process.keyframe_interval(path) == spawned.keyframe_interval(path), path.name
        checked += 1
    assert checked >= 8
    upright = MediaTool().probe(rotated)
    assert (upright.width, upright.height) == (240, 320)  # the size a viewer sees


def test_probe_errors_for_missing_empty_and_folder(tmp_path) -> None:
    tool = MediaTool(fps=4.0)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path, cause in [(tmp_path / "nope.mp4", "file not found"), (empty, "empty file"), (tmp_path, "not a regular")]:
        with pytest.raises(MediaError, match=cause) as err:
            tool.probe(path)
        assert str(path) in str(err.value)
    assert tool.invocations == 0  # nothing worth starting ffprobe for


def test_media_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(MediaError("/v/a.mp4", "probe", "moov atom not found")))
    assert (err.path, err.operation, err.cause) == ("/v/a.mp4", "probe", "moov atom not found")
    assert str(err) == "probe failed for /v/a.mp4: moov atom not found"


def test_odd_file_names(synthetic_videos, tmp_path) -> None:
    odd = tmp_path / "it's a [clip], 100%.mp4"
    odd.write_bytes(synthetic_videos["short_mp4"].read_bytes())
    tool = MediaTool(fps=4.0)
    assert tool.probe(odd).duration_sec == pytest.approx(4, abs=0.1)
    assert len(tool.sample_frames(odd, [0.5, 2.5], tmp_path / "frames", keyframe_interval=1.0)) == 2
    for (_, start, end), out in zip(
        plan_chunks(4, 2), tool.cut_chunks(odd, plan_chunks(4, 2), tmp_path / "c"), strict=True
    ):
        check_clip(out, end - start, 640, 4.0)


def test_missing_binary_is_a_media_error(synthetic_videos) -> None:
    with pytest.raises(MediaError, match="not found") as err:
        MediaTool(ffprobe="/nonexistent/ffprobe").probe(synthetic_videos["short_mp4"])
    assert "short.mp4" in str(err.value)


@pytest.mark.parametrize("name", ["corrupt_mp4", "text_as_mp4", "audio_only"])
def test_operations_on_bad_files_raise_and_leave_nothing(synthetic_videos, tmp_path, name) -> None:
    path = synthetic_videos[name]
    tool = MediaTool(fps=4.0)
    with pytest.raises(MediaError) as err:
        tool.cut_chunks(path, plan_chunks(4, 2), tmp_path / "chunks")
    assert str(path) in str(err.value) and err.value.operation == "cut chunks"
    assert list((tmp_path / "chunks").iterdir()) == []
    with pytest.raises(MediaError) as err:
        tool.sample_frames(path, [0.5, 1.5], tmp_path / "frames")
    assert str(path) in str(err.value) and err.value.operation == "sample frames"
    assert list((tmp_path / "frames").iterdir()) == []
    with pytest.raises(MediaError):
        tool.cut_clip(path, 0.0, 2.0, tmp_path / "clip.mp4")
    assert list(tmp_path.glob("*clip*")) == []


# ---------------------------------------------------------------- chunks and clips


def check_clip(path: Path, expected_sec: float, max_side: int, fps: float | None) -> dict:
    info = ffprobe_json(path)
    streams = info["streams"]
    assert [s["codec_type"] for s in streams] == ["video"]  # no audio
    video = streams[0]
    assert video["codec_name"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert max(video["width"], video["height"]) <= max_side
    assert video["width"] % 2 == 0 and video["height"] % 2 == 0
    assert float(info["format"]["duration"]) == pytest.approx(expected_sec, abs=TOLERANCE)
    if fps is not None:
        num, den = video["avg_frame_rate"].split("/")
        assert float(num) / float(den) == pytest.approx(fps, abs=0.01)
    frames, errors = decode_errors(path)
    assert errors == "" and frames > 0
    head = path.read_bytes()[:64]
    assert head[4:8] == b"ftyp" and b"moov" in path.read_bytes()[:4096]  # +faststart: index before media
    return video


def test_cut_chunks_clip16_one_process(synthetic_videos, tmp_path) -> None:
    path = synthetic_videos["clip16"]
    tool = MediaTool(max_side=160, fps=4.0)
    duration = tool.probe(path).duration_sec
    chunks = plan_chunks(duration, choose_chunk_duration(duration, DEFAULT_OPTIONS, 10))
    assert [(s, e) for _, s, e in chunks] == [(0, 5), (5, 10), (10, 15), (15, 16)]
    before = tool.invocations
    outputs = tool.cut_chunks(path, chunks, tmp_path)
    assert tool.invocations - before == 1
    assert [p.name for p in outputs] == [f"chunk_{i:03d}.mp4" for i, _, _ in chunks]
    for (_, start, end), out in zip(chunks, outputs, strict=True):
        video = check_clip(out, end - start, 160, 4.0)
        assert (video["width"], video["height"]) == (160, 120)
    assert leftovers(tmp_path) == []


def test_cut_chunks_bikes_planned_durations(real_videos, tmp_path) -> None:
    path = real_videos["bikes"]
    tool = MediaTool(max_side=320, fps=None)  # keep 25 fps: cuts land on the source's own frame grid
    duration = tool.probe(path).duration_sec
    chunks = plan_chunks(duration, 2.5)
    outputs = tool.cut_chunks(path, chunks, tmp_path / "out")
    assert tool.invocations == 2
    assert len(outputs) == 4
    for (_, start, end), out in zip(chunks, outputs, strict=True):
        video = check_clip(out, end - start, 320, 25.0)
        assert (video["width"], video["height"]) == (320, 136)
    default = MediaTool(max_side=320, fps=4.0)
    planned = plan_chunks(duration, choose_chunk_duration(duration, DEFAULT_OPTIONS, 10))
    for (_, start, end), out in zip(planned, default.cut_chunks(path, planned, tmp_path / "default"), strict=True):
        check_clip(out, end - start, 320, 4.0)
    assert default.invocations == 1


def test_cut_chunks_last_chunk_shorter_and_offset_start(synthetic_videos, tmp_path) -> None:
    path = synthetic_videos["clip8"]
    tool = MediaTool(fps=4.0)
    chunks = [(3, 1.5, 4.5), (4, 4.5, 7.5), (5, 7.5, 8.0)]  # contiguous, not from 0, indices kept
    outputs = tool.cut_chunks(path, chunks, tmp_path)
    assert [p.name for p in outputs] == ["chunk_003.mp4", "chunk_004.mp4", "chunk_005.mp4"]
    for (_, start, end), out in zip(chunks, outputs, strict=True):
        check_clip(out, end - start, 640, 4.0)
    assert tool.invocations == 1


def test_cut_chunks_overlapping_windows_still_one_process(synthetic_videos, tmp_path) -> None:
    path = synthetic_videos["clip8"]
    tool = MediaTool(fps=4.0)
    windows = [(0, 1.0, 3.0), (1, 2.0, 5.0), (2, 6.0, 7.0)]  # overlap and gap: no segment muxer
    outputs = tool.cut_chunks(path, windows, tmp_path)
    assert tool.invocations == 1
    for (_, start, end), out in zip(windows, outputs, strict=True):
        check_clip(out, end - start, 640, 4.0)
    assert tool.cut_chunks(path, [], tmp_path) == [] and tool.invocations == 1
    with pytest.raises(ValueError):
        tool.cut_chunks(path, [(0, 3.0, 1.0)], tmp_path)


def test_cut_chunks_replaces_existing_outputs(synthetic_videos, tmp_path) -> None:
    stale = tmp_path / "chunk_000.mp4"
    stale.write_bytes(b"stale")
    outputs = MediaTool(fps=4.0).cut_chunks(synthetic_videos["short_mp4"], plan_chunks(4, 2), tmp_path)
    assert outputs[0] == stale and stale.stat().st_size > 5
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("t", "before", "after"), [(8.0, 3.0, 3.0), (0.2, 3.0, 3.0), (15.9, 3.0, 1.0), (5, 0.5, 0.5)])
def test_cut_clip_highlight_windows(synthetic_videos, tmp_path, t, before, after) -> None:
    path = synthetic_videos["clip16"]
    tool = MediaTool(fps=4.0)
    duration = tool.probe(path).duration_sec
    start, end = highlight_window(t, duration, before, after)
    out = tool.cut_clip(path, start, end, tmp_path / "hl" / "highlight.mp4")
    assert tool.invocations == 2
    assert out == tmp_path / "hl" / "highlight.mp4"
    check_clip(out, end - start, 640, 4.0)
    assert leftovers(out.parent) == []


def test_cut_clip_downscales_real_video(real_videos, tmp_path) -> None:
    out = MediaTool(max_side=384, fps=4.0).cut_clip(real_videos["vtest"], 30.0, 36.0, tmp_path / "v.mp4")
    video = check_clip(out, 6.0, 384, 4.0)
    assert (video["width"], video["height"]) == (384, 288)


def test_prepare_video(synthetic_videos, real_videos, tmp_path) -> None:
    tool = MediaTool()
    short = synthetic_videos["short_mp4"]
    out = tool.prepare_video(short, tmp_path / "short_prepared.mp4")  # 25 fps > 2 fps: re-encoded
    assert out == tmp_path / "short_prepared.mp4"
    check_clip(out, 4.0, 640, 2.0)
    keep_rate = MediaTool(fps=None, audio=True)  # the sound kept: nothing to change (test_audio: dropping it)
    probe = keep_rate.probe(short)
    assert keep_rate.prepare_video(short, tmp_path / "unused.mp4", probe) == short  # already small mp4 H.264
    assert keep_rate.invocations == 1 and not (tmp_path / "unused.mp4").exists()
    mkv = MediaTool(fps=None).prepare_video(synthetic_videos["mkv_upper"], tmp_path / "from_mkv.mp4")  # container
    check_clip(mkv, 3.0, 640, 25.0)
    big = MediaTool(max_side=320, fps=None).prepare_video(real_videos["bikes"], tmp_path / "bikes_small.mp4")
    video = check_clip(big, 10.0, 320, 25.0)
    assert (video["width"], video["height"]) == (320, 136)
    assert leftovers(tmp_path) == []


def _frame_count(path: Path, *decoder_args: str) -> int:
    out = subprocess.run(
        [find_ffmpeg(), "-v", "error", *decoder_args, "-i", str(path), "-f", "framecrc", "-"],
        capture_output=True, text=True, check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line and not line.startswith("#"))


def test_skipping_nonreference_frames_keeps_the_prepared_copy(tmp_path) -> None:
    """A B-frame source (x264 veryfast, as cameras and phones rarely are but web video often is) re-encoded at
    2 fps: skipping the frames nothing refers to must give the same copy, frame for frame."""
    src = tmp_path / "bframes.mp4"
    subprocess.run(
        [find_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "6",
         "-c:v", "libx264", "-preset", "veryfast", "-g", "25", "-pix_fmt", "yuv420p", str(src)],
        check=True,
    )
    assert _frame_count(src, "-skip_frame", "noref") < _frame_count(src) == 150  # the fixture has such frames

    skipping, full = MediaTool(threads=1), MediaTool(threads=1, skip_nonref=False)
    assert skipping._decoder_opts(25.0)["skip_frame"] == "noref"
    assert "skip_frame" not in full._decoder_opts(25.0)
    assert "skip_frame" not in skipping._decoder_opts(3.0)  # under 2x the output rate every frame may count
    assert "skip_frame" not in MediaTool(fps=None)._decoder_opts(25.0)  # keeping the rate keeps every frame

    a = skipping.prepare_video(src, tmp_path / "skipping.mp4")
    b = full.prepare_video(src, tmp_path / "full.mp4")
    check_clip(a, 6.0, 640, 2.0)
    assert _frame_count(a) == _frame_count(b) == 12
    psnr = subprocess.run(
        [find_ffmpeg(), "-i", str(a), "-i", str(b), "-lavfi", "psnr", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    ).stderr
    average = psnr.rsplit("average:", 1)[1].split()[0]
    # identical here (inf); one source frame of shift on testsrc2 measures ~25 dB
    assert average == "inf" or float(average) >= 30.0, psnr[-300:]


# ---------------------------------------------------------------- frames


def jpeg_size(path: Path) -> tuple[int, int]:
    stream = ffprobe_json(path)["streams"][0]
    assert stream["codec_name"] == "mjpeg"
    return stream["width"], stream["height"]


def test_sample_frames_long_video(synthetic_videos, tmp_path) -> None:
    path = synthetic_videos["long_mp4"]
    tool = MediaTool(fps=4.0)
    duration = tool.probe(path).duration_sec
    times = frame_times(duration, 0.5, 60)
    frames = tool.sample_frames(path, times, tmp_path)
    assert tool.invocations == 2  # probe + one ffmpeg
    assert frames == [tmp_path / f"frame_{i:03d}.jpg" for i in range(len(times))]
    assert len(frames) == 37
    for f in frames:
        assert f.read_bytes()[:3] == b"\xff\xd8\xff"
        assert jpeg_size(f) == (160, 120)  # never upscaled
    assert len({f.read_bytes() for f in frames}) == len(frames)  # testsrc2 moves: distinct instants
    assert sorted(p.name for p in tmp_path.iterdir()) == [f.name for f in frames]  # nothing else left


def test_sample_frames_strategies_pick_the_same_frames(synthetic_videos, tmp_path) -> None:
    """Straight decode + select, seek-per-sample inputs and one call per time must agree byte for byte."""
    path = synthetic_videos["long_mp4"]
    times = [61.0, 2.0, 30.3, 30.3, 44.9, 12.2, 74.9]  # unsorted, duplicated, 74.9 is past the last frame (74.8)
    tool = MediaTool(fps=4.0)
    tool.probe(path)
    through = tool.sample_frames(path, times, tmp_path / "through", keyframe_interval=1e9)
    assert tool.invocations == 2
    seeked = tool.sample_frames(path, times, tmp_path / "seeked", keyframe_interval=1.0)
    assert tool.invocations == 3
    singles = [tool.sample_frames(path, [t], tmp_path / f"single_{i}")[0] for i, t in enumerate(times)]
    for a, b, c in zip(through, seeked, singles, strict=True):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    assert through[2].read_bytes() == through[3].read_bytes()
    assert through[1].read_bytes() != through[0].read_bytes()


def test_sample_frames_past_the_end(synthetic_videos, tmp_path) -> None:
    path = synthetic_videos["short_mp4"]
    tool = MediaTool(fps=4.0)
    probe = MediaTool(fps=4.0).probe(path)  # another tool: the probe is passed, not remembered
    times = [0.0, 1.0, 2.0, 3.0, 3.99, 50.0]
    frames = tool.sample_frames(path, times, tmp_path / "a", probe=probe, keyframe_interval=0.5)
    assert tool.invocations == 1 and len(frames) == 6
    last = tool.sample_frames(path, [3.96], tmp_path / "last")[0]  # 25 fps, 4 s: the last frame starts at 3.96
    assert frames[4].read_bytes() == frames[5].read_bytes() == last.read_bytes()  # past the end: the last frame
    assert frames[3].read_bytes() != last.read_bytes()
    assert jpeg_size(frames[0]) == (320, 240)
    blind = MediaTool(fps=4.0).sample_frames(path, [1.0, 50.0], tmp_path / "blind")  # no duration known
    assert blind[1].read_bytes() == blind[0].read_bytes()  # nearest earlier sampled frame
    assert tool.sample_frames(path, [], tmp_path) == []


def test_sample_frames_container_start_offset(tmp_path) -> None:
    """Concat in-points are file timestamps: a file starting at 2 s must still give frames at relative times."""
    path = tmp_path / "offset.mkv"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-t", "4"]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-output_ts_offset", "2", str(path)],
        check=True,
    )
    tool = MediaTool(fps=4.0)
    tool.probe(path)
    times = [0.0, 1.0, 2.0, 3.0]
    seeked = tool.sample_frames(path, times, tmp_path / "seeked")  # remembered: 1 s keyframes, start at 2 s
    through = tool.sample_frames(path, times, tmp_path / "through", keyframe_interval=1e9)
    blind = MediaTool(fps=4.0).sample_frames(path, times, tmp_path / "blind")  # nothing known: plain input seek
    assert len({f.read_bytes() for f in seeked}) == 4
    for a, b, c in zip(seeked, through, blind, strict=True):
        assert a.read_bytes() == b.read_bytes() == c.read_bytes()


def test_sample_frames_real_videos(real_videos, tmp_path) -> None:
    tool = MediaTool(fps=4.0)
    vtest = real_videos["vtest"]
    probe = tool.probe(vtest)
    frames = tool.sample_frames(vtest, frame_times(probe.duration_sec, 0.5, 60), tmp_path / "vtest")
    assert len(frames) == 39 and tool.invocations == 2
    assert {jpeg_size(f) for f in frames} == {(640, 480)}
    bikes = real_videos["bikes"]
    probe = tool.probe(bikes)
    times = frame_times(probe.duration_sec, 2, 60)
    frames = tool.sample_frames(bikes, times, tmp_path / "bikes")  # keyframe interval known from the probe
    assert len(frames) == 20 and tool.invocations == 4
    assert {jpeg_size(f) for f in frames} == {(640, 272)}
    check = tool.sample_frames(bikes, times, tmp_path / "bikes_through", keyframe_interval=1e9)
    assert [f.read_bytes() for f in frames] == [f.read_bytes() for f in check]


# ---------------------------------------------------------------- workdir and accounting


def test_video_workdir_cleans_up(tmp_path) -> None:
    with video_workdir(tmp_path, "cams/door 1.mp4") as a, video_workdir(tmp_path, "cams/door 1.mp4") as b:
        assert a != b and a.parent == tmp_path and b.parent == tmp_path
        assert "/" not in a.name and " " not in a.name
        (a / "x.mp4").write_bytes(b"x")
    assert not a.exists() and not b.exists()
    with pytest.raises(RuntimeError), video_workdir(tmp_path / "nested", "k") as c:
        (c / "sub").mkdir()
        raise RuntimeError("boom")
    assert not c.exists() and list((tmp_path / "nested").iterdir()) == []
    with video_workdir(None, "k") as d:
        assert d.is_dir()
    assert not d.exists()


def test_ffmpeg_cpu_seconds_counts_children(synthetic_videos, tmp_path) -> None:
    before = ffmpeg_cpu_seconds()
    MediaTool(fps=4.0).cut_chunks(synthetic_videos["clip8"], plan_chunks(8, 4), tmp_path)
    assert ffmpeg_cpu_seconds() > before


@pytest.mark.parametrize("ffmpeg", ["auto", "ffmpeg"])  # the static build by default; Debian's on PATH too
def test_split_copy_cuts_the_prepared_copy_without_reencoding(synthetic_videos, tmp_path, ffmpeg: str) -> None:
    """Step 0's copy carries keyframes at the chunk starts; step 1b then only copies packets."""
    path = synthetic_videos["clip16"]
    tool = MediaTool(ffmpeg=ffmpeg, max_side=160, fps=4.0)
    probe = tool.probe(path)
    chunks = plan_chunks(probe.duration_sec, choose_chunk_duration(probe.duration_sec, DEFAULT_OPTIONS, 10))
    copy = tool.prepare_video(path, tmp_path / "copy.mp4", probe, keyframes=[4.0] + [s for _, s, _ in chunks[1:]])
    before = tool.invocations
    outputs = tool.split_copy(copy, chunks, tmp_path / "chunks")
    assert tool.invocations - before == 1
    assert [p.name for p in outputs] == [f"chunk_{i:03d}.mp4" for i, _, _ in chunks]
    for (_, start, end), out in zip(chunks, outputs, strict=True):
        check_clip(out, end - start, 160, 4.0)
    # the same bytes as the copy's packets: stream copy, not a new encode
    assert sum(p.stat().st_size for p in outputs) < copy.stat().st_size * 1.05
    assert leftovers(tmp_path / "chunks") == []
    # one window that ends before the file does (a tail the plan drops): the tail is left out
    (single,) = tool.split_copy(copy, [(0, 0.0, 4.0)], tmp_path / "one")
    check_clip(single, 4.0, 160, 4.0)
    assert leftovers(tmp_path / "one") == []


def test_split_copy_refuses_a_file_without_the_keyframes(synthetic_videos, tmp_path) -> None:
    """Without keyframes at the cuts the pieces would be off: it says so, and the caller re-encodes."""
    path = synthetic_videos["mkv_upper"]  # one keyframe in 3 s
    tool = MediaTool(max_side=160, fps=4.0)
    with pytest.raises(MediaError, match="pieces for 3 windows"):
        tool.split_copy(path, [(0, 0.0, 1.0), (1, 1.0, 2.0), (2, 2.0, 3.0)], tmp_path / "out")
    assert not list((tmp_path / "out").glob("chunk_*"))
    with pytest.raises(ValueError, match="contiguous"):
        tool.split_copy(path, [(0, 0.5, 1.0)], tmp_path / "out")


def test_find_ffmpeg_prefers_the_static_build(monkeypatch, tmp_path) -> None:
    """'auto' is imageio-ffmpeg's statically linked binary (no shared ffmpeg libraries to load)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    find_ffmpeg.cache_clear()
    exe = Path(find_ffmpeg())
    assert exe.is_file() and exe.resolve().is_relative_to(Path(imageio_ffmpeg.__file__).resolve().parent)
    libs = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    assert "libavcodec" not in libs and "libx264" not in libs
    assert find_ffmpeg("/usr/bin/ffmpeg") == "/usr/bin/ffmpeg"  # an explicit choice is kept as it is
    # imageio-ffmpeg's own override is honoured
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", "/usr/bin/ffmpeg")
    find_ffmpeg.cache_clear()
    try:
        assert find_ffmpeg() == "/usr/bin/ffmpeg"
    finally:
        find_ffmpeg.cache_clear()


def test_a_missing_ffmpeg_names_the_executable(synthetic_videos, tmp_path) -> None:
    with pytest.raises(MediaError, match="ffmpeg executable '/nonexistent/ffmpeg' not found"):
        MediaTool(ffmpeg="/nonexistent/ffmpeg").prepare_video(synthetic_videos["short_mp4"], tmp_path / "o.mp4")


def test_media_resource_takes_the_binaries_from_the_spec() -> None:
    from vr_assets.config import Spec
    from vr_assets.resources import MediaResource

    spec = Spec.model_validate({"media": {"ffmpeg": "/opt/ff/ffmpeg", "ffprobe": "/opt/ff/ffprobe"}})
    tool = MediaResource.from_spec(spec).tool()
    assert (tool.ffmpeg, tool.ffprobe) == ("/opt/ff/ffmpeg", "/opt/ff/ffprobe")
    assert MediaResource.from_spec(Spec()).tool().ffmpeg == "auto"
