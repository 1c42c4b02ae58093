"""Real-world input, the catalogue (issue 21): every kind in one real run, one outcome each, no call paid for
what probing can tell; and the kinds the probe must read right (a lying header, rotation, VFR, a file that
changes after its probe), checked on the media code directly.

The run is `bench/input_catalogue.py`'s (the table in the README comes from it): the CLI's road (workers,
prefetch asking ahead) against the zero-latency OpenAI-compatible fake.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import av
import pytest

from bench.input_catalogue import _clip, _ff, lie_about_duration, run_catalogue, table
from vr_assets.config import parse_spec
from vr_assets.media import MediaError, MediaTool, plan_chunks
from vr_assets.media_cache import media_tool, step0_media


def _frame_size(path: Path) -> tuple[int, int]:
    """The first decoded frame's size after its display rotation (what a player shows)."""
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        w, h = frame.width, frame.height
        return (h, w) if abs(frame.rotation) % 180 == 90 else (w, h)


def test_every_kind_of_input_in_one_run(tmp_path: Path) -> None:
    run = run_catalogue(tmp_path)
    print("\n" + table(run) + f"\n{len(run.rows)} kinds in {run.seconds:.1f} s, {run.requests} requests")
    rows = {r.kind: r for r in run.rows}
    for r in run.rows:
        assert r.ok() and not r.reason.startswith("UNEXPECTED"), r
        assert "\n" not in r.reason
        if r.expect == "annotated":
            assert r.reason.endswith(" items") and r.calls > 0, r
        else:
            assert r.calls == 0, r  # decided by discovery or the probe: nothing paid
    assert run.requests == run.ledger_calls > 0  # every request the fake saw is in the ledger, by video
    one_video = [r.calls for r in run.rows if r.expect == "annotated" and len(r.outcomes) == 1]
    # the same bytes under two names: asked once, answered twice (the call cache keys on content)
    assert 0 < rows["identical content under two names (the pair)"].calls <= max(one_video)
    growing = rows["a file that grows while being read (MPEG-TS, listed)"].reason
    assert "growing.ts: the file changed after its probe (" in growing  # before any call: 0 paid (above)
    # the CLI's own summary lists the outcomes by kind: 15 videos annotated (a JSONL line names one twice)
    shown = next(text for text in run.console if text.startswith("outcome: ")).splitlines()
    assert "  growing.ts: prepare video failed for " in "\n".join(shown)
    head = shown[0]
    assert head == ("outcome: 26 videos, 5 entries skipped: 15 annotated, 3 stopped at step 0, 8 failed, "
                    "5 skipped at discovery"), head


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd")
    out = {"plain": _clip(root / "plain.mp4")}
    out["says_short"] = lie_about_duration(out["plain"], root / "says_short.mp4", 0.2)
    out["says_long"] = lie_about_duration(out["plain"], root / "says_long.mp4", 1800)
    _ff("-i", out["plain"], "-c", "copy", "-metadata:s:v:0", "rotate=90", out.setdefault("rotated", root / "rot.mp4"))
    out["vfr"] = root / "vfr.mp4"
    _ff("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=5", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25",
        "-filter_complex", "[0:v]trim=0:1.5,setpts=PTS-STARTPTS[a];[1:v]trim=0:1.5,setpts=PTS-STARTPTS[b];"
        "[a][b]concat=n=2:v=1[v]", "-map", "[v]", "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast",
        out["vfr"])
    return out


def test_a_lying_duration_header_gives_way_to_the_packets(tmp_path: Path, odd: dict[str, Path]) -> None:
    tool = MediaTool(fps=None)
    short = tool.probe(odd["says_short"])
    assert short.duration_sec == pytest.approx(2.0, abs=0.01) and short.header_duration_sec == pytest.approx(0.4)
    with av.open(str(odd["says_short"])) as c:
        assert float(c.streams.video[0].duration * c.streams.video[0].time_base) == pytest.approx(0.4)  # the lie
    assert tool.probe(odd["says_long"]).duration_sec == pytest.approx(2.0, abs=0.01)  # mvhd's 1 h loses too
    plain = tool.probe(odd["plain"])
    assert plain.header_duration_sec is None and plain.duration_sec == pytest.approx(2.0, abs=0.01)
    # the model never sees the lie: the source is re-muxed (not sent as it is), the copy says 2 s
    assert tool.prepare_video(odd["plain"], tmp_path / "p.mp4", plain) == odd["plain"]
    copy = tool.prepare_video(odd["says_short"], tmp_path / "s.mp4", short)
    assert copy != odd["says_short"]
    again = tool.probe(copy)
    assert again.header_duration_sec is None and again.duration_sec == pytest.approx(2.0, abs=0.15)


def test_a_rotated_video_reaches_the_model_upright(tmp_path: Path, odd: dict[str, Path]) -> None:
    tool = MediaTool(fps=None)
    probe = tool.probe(odd["rotated"])
    assert (probe.width, probe.height, abs(probe.rotation_deg)) == (120, 160, 90)
    copy = tool.prepare_video(odd["rotated"], tmp_path / "r.mp4", probe)
    assert copy != odd["rotated"]  # not passed through with a display matrix a model may ignore
    upright = tool.probe(copy)
    assert (upright.width, upright.height, upright.rotation_deg) == (120, 160, 0)
    with av.open(str(copy)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (120, 160)  # coded upright
    (frame,) = tool.sample_frames(odd["rotated"], [1.0], tmp_path / "frames")
    assert _frame_size(frame) == (120, 160)


def test_variable_frame_rate_probes_and_cuts(tmp_path: Path, odd: dict[str, Path]) -> None:
    tool = MediaTool(fps=2.0)
    probe = tool.probe(odd["vfr"])
    assert probe.duration_sec == pytest.approx(3.0, abs=0.15) and 5 < probe.fps < 25
    chunks = tool.cut_chunks(odd["vfr"], plan_chunks(probe.duration_sec, 1.0), tmp_path / "chunks")
    assert len(chunks) == 3 and all(tool.probe(c).duration_sec == pytest.approx(1.0, abs=0.1) for c in chunks)


def test_a_file_that_changes_after_its_probe_is_never_copied(tmp_path: Path, odd: dict[str, Path]) -> None:
    """Replaced (same size, new mtime) or grown: step 0 fails naming it, before a copy exists or a call is made;
    probed again, each version gets its own copy."""
    spec = parse_spec({"results_dir": str(tmp_path / "results"), "media": {"fps": 2}}, "t", tmp_path)
    tool: Any = media_tool(spec)
    src = tmp_path / "v.mp4"
    src.write_bytes(odd["plain"].read_bytes())
    cache = tmp_path / "cache"
    probe = tool.probe(src)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced by a file of the same size
    with pytest.raises(MediaError, match=r"v\.mp4: the file changed after its probe \(\d+ -> \d+ bytes\)"):
        step0_media(spec, tool, src, probe, cache)
    assert list(cache.glob("video-*")) == []
    with src.open("ab") as fh:
        fh.write(b"\0" * 1000)  # grown
    with pytest.raises(MediaError, match="nothing was sent"):
        step0_media(spec, tool, src, probe, cache)
    kind, (first,) = step0_media(spec, tool, src, tool.probe(src), cache)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    kind, (second,) = step0_media(spec, tool, src, tool.probe(src), cache)
    assert kind == "video" and first != second and first.is_file() and second.is_file()  # never the old copy
