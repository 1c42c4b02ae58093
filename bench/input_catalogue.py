"""The real-world input catalogue (issue 21): every kind of bad or odd input in one real run, and what it cost.

Builds tiny files of each kind with ffmpeg (odd names, broken files, odd codecs, rotated, VFR, a lying duration
header, a file still growing, a JSONL with garbage, missing and duplicate lines), runs `vr-annotate run`'s code
path once over all of them against the zero-latency OpenAI-compatible fake, and prints one row per kind: the
outcome (annotated / stopped / failed / skipped), the model requests it cost (from the usage ledger, which
`tests/test_input_catalogue.py` checks against the fake's own request log) and the reason line.

    python bench/input_catalogue.py [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/input_catalogue.py` puts only bench/ on sys.path
    sys.path.insert(1, str(REPO))

FF = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
SMALL = "size=160x120:rate=10"
KEY = "catalogue-test-key-0123456789"
RECORDING_S = 600  # the growing file's full length: longer than any run of the catalogue


class Kind(BaseModel):
    """One input kind: the entries it made and the outcome it must get."""

    kind: str
    names: list[str] = Field(description="entries under the video root (surrogate-escaped bytes), or JSONL lines")
    expect: str = Field(description="annotated | stopped | failed | skipped")
    cause: str = Field("", description="a piece of the reason line each entry must carry")
    jsonl_line: int | None = Field(None, description="a JSONL line's number, for a kind that is one line")


class Row(BaseModel):
    kind: str
    expect: str
    outcomes: list[str]
    calls: int
    reason: str

    def ok(self) -> bool:
        return bool(self.outcomes) and all(o == self.expect for o in self.outcomes)


# ---------------------------------------------------------------- making the files


def _ff(*args: str | Path) -> None:
    proc = subprocess.run([*FF, *map(str, args)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"catalogue ffmpeg failed: {proc.stderr[-800:]}")


def _clip(out: Path, src: str = "testsrc2", secs: float = 2.0, vf: str = "", codec: tuple[str, ...] = ()) -> Path:
    """A `secs` clip (keyframe every 0.5 s) of lavfi `src`; H.264 yuv420p unless `codec` says otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args: list[str | Path] = ["-f", "lavfi", "-i", f"{src}={SMALL}", "-t", str(secs), "-g", "5"]
    args += ["-vf", vf] if vf else []
    args += list(codec or ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"))
    _ff(*args, out)
    return out


def lie_about_duration(src: Path, dst: Path, factor: float) -> Path:
    """Copy an MP4 with the duration fields of its movie, track and media headers (mvhd, tkhd, mdhd; version
    0) multiplied by `factor`: the packets stay as they are, the header claims another length."""
    data = bytearray(src.read_bytes())
    offsets = {b"mvhd": 24, b"mdhd": 24, b"tkhd": 28}  # after size+type, version/flags and what precedes it

    def walk(start: int, end: int) -> None:
        i = start
        while i + 8 <= end:
            size, typ = struct.unpack(">I4s", data[i:i + 8])
            if size < 8:
                return
            if typ in (b"moov", b"trak", b"mdia"):
                walk(i + 8, i + size)
            elif typ in offsets and data[i + 8] == 0:
                at = i + offsets[typ]
                (value,) = struct.unpack(">I", data[at:at + 4])
                struct.pack_into(">I", data, at, int(value * factor))
            i += size

    walk(0, len(data))
    dst.write_bytes(bytes(data))
    return dst


def _put(root: Path, name: str, src: Path | None = None, data: bytes | None = None) -> None:
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if src is not None:
        shutil.copyfile(src, target)
    else:
        target.write_bytes(data or b"")


def build_catalogue(root: Path, work: Path, jsonl: Path) -> list[Kind]:
    """Every kind's entries under `root` (and lines in `jsonl`), made from scratch in a few seconds."""
    work.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    clip_a = _clip(work / "a.mp4", "testsrc2")
    clip_b = _clip(work / "b.mp4", "smptebars")
    non_utf8 = os.fsdecode(b"caf\xe9_\xff.mp4")  # latin-1 bytes: not UTF-8
    odd_name = "new\nline 'q' \"x\" [1] 100% caf\u00e9 \U0001f3a5.MKV"
    _put(root, "a/clip.mp4", clip_a)
    _put(root, "b/clip.mp4", clip_b)
    _put(root, "same.mp4", clip_a_too := _clip(work / "a2.mp4", "testsrc2", vf="negate"))
    _put(root, "same copy.mp4", clip_a_too)
    _put(root, non_utf8, _clip(work / "c.mp4", "rgbtestsrc"))
    _put(root, odd_name, _clip(work / "d.mkv", "mandelbrot"))
    _put(root, "empty.mp4")
    _put(root, "truncated.mp4", data=clip_b.read_bytes()[:1500])
    _put(root, "random.mp4", data=os.urandom(4096))
    _put(root, "text.mp4", data=b"this is a text file named like a video\n" * 20)
    _ff("-f", "lavfi", "-i", "sine=frequency=440", "-t", "1", "-c:a", "aac", root / "audio_only.mp4")
    _ff("-f", "lavfi", "-i", f"testsrc2={SMALL}", "-frames:v", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
        root / "still.mp4")
    _ff("-f", "lavfi", "-i", "testsrc2=size=160x120", "-frames:v", "1", "-f", "image2", "-c:v", "png",
        root / "picture.mp4")
    (root / "folder.mp4").mkdir()
    (root / "dangling.mp4").symlink_to(root / "gone.mp4")
    (root / "loop.mp4").symlink_to("loop.mp4")
    _clip(root / "short.mp4", secs=0.4)
    # three hours at 1 frame/s, 32x32: an hours-long video in 0.5 MB and about a second of encoding
    _ff("-f", "lavfi", "-i", "testsrc=size=32x32:rate=1", "-t", "10800", "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "600", root / "hours.mp4")
    _clip(root / "odd_444.mp4", "testsrc", vf="scale=161:121",
          codec=("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"))
    _clip(root / "vp9.webm", "smptehdbars", codec=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"))
    _clip(root / "av1.mp4", "testsrc2", vf="hue=h=90", codec=("-c:v", "libsvtav1", "-preset", "12"))
    _clip(root / "mjpeg.avi", "rgbtestsrc", vf="hflip", codec=("-c:v", "mjpeg", "-q:v", "5"))
    upright = _clip(work / "upright.mp4", "testsrc2", vf="vflip")
    _ff("-i", upright, "-c", "copy", "-metadata:s:v:0", "rotate=90", root / "rotated.mp4")  # a display matrix
    _clip(root / "portrait.mp4", "testsrc2", vf="transpose=1")
    _ff("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=5", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25",
        "-filter_complex", "[0:v]trim=0:1.5,setpts=PTS-STARTPTS[a];[1:v]trim=0:1.5,setpts=PTS-STARTPTS[b];"
        "[a][b]concat=n=2:v=1[v]", "-map", "[v]", "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast",
        "-g", "5", root / "vfr.mp4")
    lie_about_duration(_clip(work / "e.mp4", "mandelbrot", vf="negate"), root / "header_says_0.4s.mp4", 0.2)
    lie_about_duration(_clip(work / "f.mp4", "smptebars", vf="negate"), root / "header_says_1h.mp4", 1800)
    # a recording in progress: the first 2 s are there, `growing` appends the rest as it is "recorded"
    _ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-t", str(RECORDING_S), "-g", "5", "-c:v", "libx264",
        "-preset", "ultrafast", "-f", "mpegts", work / "recording.ts")
    recording = (work / "recording.ts").read_bytes()
    _put(root, "growing.ts", data=recording[:len(recording) * 2 // RECORDING_S // 188 * 188])
    lines = ["{not json", json.dumps({"video": "a/clip.mp4", "mode": "normal"}), json.dumps({"video": "a/clip.mp4"}),
             json.dumps({"video": str(root.parent / "missing.mp4")}),
             # the walk takes the reference's .mp4 .avi .mov .mkv; a listing names any container
             json.dumps({"video": "vp9.webm"}), json.dumps({"video": "growing.ts"})]
    jsonl.write_text("\n".join(lines) + "\n")
    return [
        Kind(kind="same basename in two folders (a/clip.mp4, b/clip.mp4)", names=["a/clip.mp4", "b/clip.mp4"],
             expect="annotated"),
        Kind(kind="identical content under two names (the pair)", names=["same.mp4", "same copy.mp4"],
             expect="annotated"),
        Kind(kind="name with invalid UTF-8 bytes", names=[non_utf8], expect="annotated"),
        Kind(kind="name with newline, quotes, spaces, unicode, .MKV", names=[odd_name], expect="annotated"),
        Kind(kind="zero-byte file", names=["empty.mp4"], expect="failed", cause="empty file (0 bytes)"),
        Kind(kind="truncated (no index)", names=["truncated.mp4"], expect="failed", cause="probe failed"),
        Kind(kind="random bytes", names=["random.mp4"], expect="failed", cause="probe failed"),
        Kind(kind="text named .mp4", names=["text.mp4"], expect="failed", cause="probe failed"),
        Kind(kind="audio only", names=["audio_only.mp4"], expect="failed", cause="no video stream (audio only)"),
        Kind(kind="a single still image in a video container", names=["still.mp4"], expect="stopped",
             cause="too short to chunk: a single frame"),
        Kind(kind="a PNG picture named .mp4", names=["picture.mp4"], expect="failed", cause="a still image"),
        Kind(kind="a directory named *.mp4", names=["folder.mp4"], expect="skipped", cause="a folder named like"),
        Kind(kind="dangling symlink", names=["dangling.mp4"], expect="skipped", cause="dangling symlink"),
        Kind(kind="symlink loop", names=["loop.mp4"], expect="skipped", cause="symlink loop"),
        Kind(kind="very short (0.4 s)", names=["short.mp4"], expect="stopped", cause="too short to chunk: 0.40 s"),
        Kind(kind="very long (3 h)", names=["hours.mp4"], expect="stopped", cause="too long: 10800.0 s"),
        Kind(kind="odd size 161x121, 4:4:4 chroma", names=["odd_444.mp4"], expect="annotated"),
        Kind(kind="VP9 (WebM, listed in the JSONL)", names=["vp9.webm"], expect="annotated"),
        Kind(kind="AV1 (MP4)", names=["av1.mp4"], expect="annotated"),
        Kind(kind="MJPEG (AVI)", names=["mjpeg.avi"], expect="annotated"),
        Kind(kind="rotated 90 deg (display matrix)", names=["rotated.mp4"], expect="annotated"),
        Kind(kind="portrait 120x160", names=["portrait.mp4"], expect="annotated"),
        Kind(kind="variable frame rate (5 then 25 fps)", names=["vfr.mp4"], expect="annotated"),
        Kind(kind="duration header lies: says 0.4 s, packets 2 s", names=["header_says_0.4s.mp4"],
             expect="annotated"),
        Kind(kind="duration header lies: says 1 h, packets 2 s", names=["header_says_1h.mp4"], expect="annotated"),
        Kind(kind="a file that grows while being read (MPEG-TS, listed)", names=["growing.ts"], expect="failed",
             cause="the file changed after its probe"),
        Kind(kind="JSONL: a garbage line", names=[], jsonl_line=1, expect="skipped", cause="not JSON"),
        Kind(kind="JSONL: a duplicate entry", names=[], jsonl_line=3, expect="skipped", cause="a duplicate entry"),
        Kind(kind="JSONL: a missing file", names=["missing.mp4"], expect="failed", cause="file not found"),
    ]


@contextmanager
def growing(path: Path, recording: Path, every_s: float = 0.02) -> Iterator[None]:
    """Append `recording`'s bytes past what `path` holds, in real time (a second of video per second), as
    a recorder writing the file would, until the block ends or the recording does."""
    data = recording.read_bytes()
    per_tick = max(188, int(len(data) / RECORDING_S * every_s) // 188 * 188)
    stop = threading.Event()

    def grow() -> None:
        at = path.stat().st_size
        with path.open("ab") as fh:
            while at < len(data) and not stop.wait(every_s):
                fh.write(data[at:at + per_tick])
                fh.flush()
                at += per_tick

    thread = threading.Thread(target=grow, name="grow", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------- the run


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class CatalogueRun(BaseModel):
    root: str = Field(description="the work folder (left out of the table's reasons)")
    rows: list[Row]
    requests: int = Field(description="model requests the fake server received")
    ledger_calls: int = Field(description="calls the usage ledger recorded (every request is one)")
    seconds: float
    summary: str = Field(description="the run's outcome summary, as the CLI prints it")
    console: list[str] = Field(default_factory=list)


def run_catalogue(base: Path, parallel: int = 2) -> CatalogueRun:
    """Build the catalogue under `base`, run the pipeline once over it, one row per kind."""
    from vr_assets.cli import run_pipeline
    from vr_assets.config import parse_spec
    from vr_assets.discovery import scan
    from vr_assets.fakes import FakeOpenAI, Teacher
    from vr_assets.outcomes import outcome_summary
    from vr_assets.providers import UsageLedger, reset_registry

    root, results, jsonl = base / "videos", base / "results", base / "listed.jsonl"
    kinds = build_catalogue(root, base / "work", jsonl)
    console: list[str] = []
    with FakeOpenAI(teacher=Teacher()) as fake, _env(DAGSTER_HOME=str(base / "dagster_home"),
                                                      VR_HOST_SLOTS_DIR=str(base / "slots")):
        endpoint = {"backend": "openai", "retry": {"initial_delay_s": 0.01, "max_delay_s": 0.05},
                    "openai": {"base_url": fake.base_url, "api_key": KEY, "model_name": "test-vl"}}
        raw: dict[str, Any] = {
            "vlm": endpoint, "llm": json.loads(json.dumps(endpoint)),
            "data": {"video_root": str(root), "input_jsonl_files": [str(jsonl)]},
            "results_dir": str(results), "workflow": {"max_workers": 4, "qa_types": ["mcq"]},
            "media": {"fps": None}, "license": "test-license", "description_extra": "input catalogue",
        }
        spec = parse_spec(raw, "catalogue", base)
        reset_registry()
        t0 = time.perf_counter()
        try:
            with growing(root / "growing.ts", base / "work" / "recording.ts"):
                summary = run_pipeline(spec, parallel=parallel, progress=console.append)
        finally:
            reset_registry()
        seconds = time.perf_counter() - t0
        requests = sum(1 for r in fake.log if r.route in ("chat.completions", "generateContent"))
    found = scan(spec)
    key_of = {v.rel_path: v.key for v in found.videos}
    outcome = outcome_summary(results, summary.failed, found.skipped)
    by_key = {o.key: o for o in outcome.outcomes if o.key}
    skipped = [o for o in outcome.outcomes if not o.key]
    entries = UsageLedger(results / "usage").entries()
    calls: dict[str, int] = {}
    for e in entries:
        calls[e.video_key] = calls.get(e.video_key, 0) + 1
    rows = []
    for k in kinds:
        got: list[tuple[str, str]] = []
        paid = 0
        if k.jsonl_line is not None:
            got += [(o.kind, o.reason) for o in skipped if o.reason.startswith(f"line {k.jsonl_line}:")]
        for name in k.names:
            if name in key_of:
                o = by_key[key_of[name]]
                got.append((o.kind, o.reason))
                paid += calls.get(key_of[name], 0)
            else:
                path = str(root / name)
                got += [(o.kind, o.reason) for o in skipped if str(o.name) == path]
        reason = next((r for kind, r in got if kind != "annotated" and r), got[0][1] if got else "no outcome")
        rows.append(Row(kind=k.kind, expect=k.expect, outcomes=[kind for kind, _ in got], calls=paid,
                        reason=reason if k.cause in reason else f"UNEXPECTED: {reason}"))
    return CatalogueRun(root=str(base), rows=rows, requests=requests, ledger_calls=len(entries),
                        seconds=round(seconds, 1), summary=outcome.render(per_kind=20), console=console)


def table(run: CatalogueRun) -> str:
    """The catalogue as a markdown table (README, the closing note)."""
    from vr_assets.fsnames import printable

    lines = ["| input kind | outcome | paid calls | reason (one line) |", "|---|---|---|---|"]
    for r in run.rows:
        outcome = ", ".join(f"{n} {o}" if n > 1 else o for o in sorted(set(r.outcomes))
                            if (n := r.outcomes.count(o))) or "none"
        why = printable(r.reason).replace(run.root + "/", "").replace("|", "\\|")
        lines.append(f"| {r.kind} | {outcome} | {r.calls} | {why[:200]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    base = args.out or Path(tempfile.mkdtemp(prefix="vr-input-catalogue-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        run = run_catalogue(base)
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(base, ignore_errors=True)
    print(table(run))
    print(f"\n{len(run.rows)} kinds in one run of {run.seconds:.1f} s; {run.requests} model requests in all "
          f"({run.ledger_calls} in the usage ledger)")
    bad = [r.kind for r in run.rows if not r.ok() or r.reason.startswith("UNEXPECTED")]
    if bad:
        print(f"outcome other than expected: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
