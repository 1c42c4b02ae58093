"""`media.audio`: the model hears the video's sound (keep) or not (drop), whichever way the media travel.

Real ffmpeg makes the copy, chunks and clip; the real SDKs send them to the fakes, which probe every
video they receive (uploaded file or inline payload) for an audio stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import av
import pytest

from tests.fixtures_media import _testsrc
from vr_assets.call_cache import spec_teacher
from vr_assets.config import Spec, parse_spec
from vr_assets.fakes import FakeGemini, FakeOpenAI
from vr_assets.media import AUDIO_RATE, MediaTool, plan_chunks, video_mime
from vr_assets.media_cache import audio_version, keeps_audio, media_tool, step0_media
from vr_assets.providers import MediaRef, ModelCall
from vr_assets.whole_video import whole_video_ref

pytestmark = pytest.mark.usefixtures("clean_providers")

KEY = "vr-test-key-audio-0a0d10"


def streams(path: Path) -> list[tuple[str, int | None, int | None]]:
    """(type, sample rate, channels) of every stream."""
    with av.open(str(path)) as c:
        return [(s.type, getattr(s.codec_context, "sample_rate", None), getattr(s.codec_context, "channels", None))
                for s in c.streams]


def make_spec(fake: FakeGemini | FakeOpenAI, results: Path, audio: str | None, transport: str = "upload") -> Spec:
    if isinstance(fake, FakeGemini):
        endpoint: dict[str, Any] = {"backend": "gemini", "gemini": {"base_url": fake.base_url, "api_key": KEY,
                                                                   "model": "gemini-test"}}
    else:
        endpoint = {"backend": "openai", "openai": {"base_url": fake.base_url, "api_key": KEY, "model_name": "vl"}}
    raw = {"vlm": endpoint, "llm": endpoint, "results_dir": str(results),
           "media": {"audio": audio, "transport": transport, "max_side": 160},
           "workflow": {"chunk_duration_options": [4], "max_chunks": 4}}
    return parse_spec(raw, "test", results)


def heard(fake: FakeGemini | FakeOpenAI, spec: Spec, src: Path, tmp: Path) -> list[bool | None]:
    """Send the video the way the steps do (whole, its chunks, a clip) and say, per request, whether the
    video the server received had sound."""
    tool = media_tool(spec)
    probe = tool.probe(src)
    kind, paths = step0_media(spec, tool, src, probe, tmp / "cache")
    whole = whole_video_ref(spec, probe, kind, paths, "v")
    model = spec_teacher(spec, "vlm")
    plan = plan_chunks(probe.duration_sec, 4)
    if model.clips_in_place:  # Gemini uploads: ranges of the one upload
        parts = [whole.between(start, end) for _, start, end in plan] + [whole.between(1.0, 3.5)]
    else:  # inline / OpenAI: chunks stream-copied from the copy, the clip cut from it
        clips = tool.split_copy(paths[0], plan, tmp / "chunks")
        clips.append(tool.cut_clip(paths[0], 1.0, 3.5, tmp / "clip.mp4"))
        parts = [MediaRef(kind="video", paths=[c], mime_type=video_mime(c), video_key="v") for c in clips]
    calls = [ModelCall(step="t", prompt_key="k", video_key="v", prompt=f"Describe {i}.", media=m)
             for i, m in enumerate([whole, *parts])]
    for answer in model.generate_many(calls):
        assert not isinstance(answer, Exception), answer
    model.discard("v")
    route = "generateContent" if isinstance(fake, FakeGemini) else "chat.completions"
    records = fake.records(route)
    assert len(records) == len(calls)
    return [a for r in records for a in r.media_audio]


@pytest.mark.parametrize(
    ("backend", "transport", "audio", "expect"),
    [
        ("gemini", "upload", None, True),  # Gemini's default: keep
        ("gemini", "upload", "drop", False),
        ("gemini", "inline", "keep", True),
        ("openai", "upload", "keep", True),
        ("openai", "upload", None, False),  # an OpenAI-compatible server's default: drop
    ],
)
def test_the_sound_reaches_the_server_when_kept_and_not_when_dropped(
    backend: str, transport: str, audio: str | None, expect: bool, synthetic_videos: dict[str, Path],
    tmp_path: Path,
) -> None:
    src = synthetic_videos["clip8"]  # testsrc2 + a 440 Hz sine tone
    assert ("audio", 48000, 1) in streams(src)
    cls = FakeGemini if backend == "gemini" else FakeOpenAI
    with cls() as fake:
        spec = make_spec(fake, tmp_path / "results", audio, transport)
        assert keeps_audio(spec) is expect
        got = heard(fake, spec, src, tmp_path)
        if backend == "gemini" and transport == "upload":
            assert fake.counts["upload.start"] == 1 and fake.live_files() == 0  # one upload, ranges of it
    assert got == [expect] * 4  # the whole video, 2 chunks, the clip


def test_kept_sound_is_small_and_a_silent_source_works(synthetic_videos: dict[str, Path], tmp_path: Path) -> None:
    keep, drop = MediaTool(max_side=160, audio=True, audio_kbps=24), MediaTool(max_side=160)
    src = synthetic_videos["clip8"]
    with_sound = keep.prepare_video(src, tmp_path / "keep.mp4", keyframes=[4.0])
    without = drop.prepare_video(src, tmp_path / "drop.mp4", keyframes=[4.0])
    assert [s[0] for s in streams(with_sound)] == ["video", "audio"]
    assert streams(with_sound)[1][1:] == (AUDIO_RATE, 1)  # mono, 16 kHz
    assert [s[0] for s in streams(without)] == ["video"]
    extra_kbit_s = (with_sound.stat().st_size - without.stat().st_size) * 8 / 1000 / 8.0
    assert 10 < extra_kbit_s < 40, extra_kbit_s  # ~24 kbit/s of sound, not the source's 64
    for chunk in keep.split_copy(with_sound, plan_chunks(8.0, 4), tmp_path / "chunks"):
        assert [s[0] for s in streams(chunk)] == ["video", "audio"]
    for chunk in keep.cut_chunks(src, plan_chunks(8.0, 4), tmp_path / "cut"):  # from the source, re-encoded
        assert streams(chunk)[1:] == [("audio", AUDIO_RATE, 1)]
    # a source without sound: no audio stream, no error, whatever is asked
    silent = _testsrc(tmp_path / "silent.mp4", 4, audio=False, gop=25)
    for tool in (keep, drop):
        copy = tool.prepare_video(silent, tmp_path / f"silent-{tool.audio}.mp4", keyframes=[2.0])
        assert [s[0] for s in streams(copy)] == ["video"]
        assert [s[0] for s in streams(tool.cut_clip(silent, 0.5, 3.0, tmp_path / f"c-{tool.audio}.mp4"))] == ["video"]
        for chunk in tool.cut_chunks(silent, plan_chunks(4.0, 2), tmp_path / f"sc-{tool.audio}"):
            assert [s[0] for s in streams(chunk)] == ["video"]
    # already small: a source passed through keeps its own sound; dropping it copies the picture only
    small = _testsrc(tmp_path / "small.mp4", 3, size="128x96", rate=2)
    assert keep.prepare_video(small, tmp_path / "small-keep.mp4") == small
    stripped = drop.prepare_video(small, tmp_path / "small-drop.mp4")
    assert stripped != small and [s[0] for s in streams(stripped)] == ["video"]


def test_a_silent_source_reaches_gemini_without_sound_and_without_error(tmp_path: Path) -> None:
    silent = _testsrc(tmp_path / "silent.mp4", 8, audio=False, gop=25)
    with FakeGemini() as fake:
        spec = make_spec(fake, tmp_path / "results", "keep")
        assert heard(fake, spec, silent, tmp_path) == [False] * 4


def test_the_audio_setting_versions_the_steps_whose_media_it_changes(tmp_path: Path) -> None:
    from vr_assets.graph import build_definitions

    def versions(audio: str) -> dict[str, str | None]:
        spec = parse_spec({"results_dir": str(tmp_path), "media": {"audio": audio}}, "test", tmp_path)
        defs = build_definitions(spec)
        return {n.key.to_user_string(): n.code_version for n in defs.resolve_asset_graph().asset_nodes}

    keep, drop = versions("keep"), versions("drop")
    changed = {k for k in keep if keep[k] != drop[k]}
    assert changed == {"filter_result", "captions", "chunk_captions", "highlight"}
    spec = parse_spec({"results_dir": str(tmp_path), "media": {"audio_kbps": 32}}, "test", tmp_path)
    assert audio_version(spec) == "audio-keep-32k"
    openai = parse_spec({"results_dir": str(tmp_path), "vlm": {"backend": "openai"}}, "test", tmp_path)
    assert audio_version(openai) == "audio-drop"


@pytest.mark.parametrize("name", [b"clip_\xff\xfe.mp4", b"two\nlines 'q'.mp4"])
def test_sound_survives_names_that_are_not_utf8_or_hold_a_line_break(name: bytes, tmp_path: Path) -> None:
    """Both features at once: ffmpeg-python's name tokens carry the sound's extra streams and options too."""
    src = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name)))
    _testsrc(tmp_path / "src.mp4", 4, size="320x240", rate=10, gop=10).rename(src)
    keep, drop = MediaTool(max_side=160, audio=True), MediaTool(max_side=160)
    out = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"out_" + name)))  # outputs odd-named too
    copy = keep.prepare_video(src, out, keyframes=[2.0])
    assert [s[0] for s in streams(copy)] == ["video", "audio"]
    for chunk in [*keep.split_copy(copy, plan_chunks(4.0, 2), tmp_path / "split"),
                  *keep.cut_chunks(src, plan_chunks(4.0, 2), tmp_path / "cut"),
                  keep.cut_clip(src, 0.5, 3.0, tmp_path / "clip.mp4")]:
        assert streams(chunk)[1:] == [("audio", AUDIO_RATE, 1)]
    small = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"small_" + name)))
    _testsrc(tmp_path / "s.mp4", 2, size="128x96", rate=2).rename(small)
    stripped = drop.prepare_video(small, tmp_path / "stripped.mp4")  # the stream copy without the sound
    assert stripped != small and [s[0] for s in streams(stripped)] == ["video"]
