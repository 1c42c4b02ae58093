"""Issue #21 item 4: a full disk while writing results or media.

Every test writes to a REAL small filesystem: a tmpfs mounted by the test with a size limit (root in the
sandbox), which gives the kernel's own ENOSPC, to ffmpeg in its own process and to the Dagster run
processes alike (a monkeypatch in the test process would not reach those). Unmounted in a finally.
The disk is filled with a filler file, and space is freed by deleting it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vr_assets.call_cache import spec_teacher
from vr_assets.media import MediaTool
from vr_assets.providers import ModelCall, UsageLedger
from vr_assets.records import CallUsage
from vr_assets.storage import DiskFullError, atomic_write_text, free_bytes

pytest_plugins = ["tests.fixtures_pipeline"]

PAGE = 4096


@contextlib.contextmanager
def small_fs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the block; skips the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); needs root or CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(fs: Path, leave: int = 0) -> Path:
    """A filler file taking all but about `leave` bytes (whole pages) of the filesystem holding `fs`."""
    filler = fs / "filler.bin"
    with open(filler, "ab") as f:
        for block in (1 << 20, 64 << 10, PAGE):
            while (free_bytes(fs) or 0) - leave >= block:
                try:
                    f.write(b"\0" * block)
                    f.flush()
                except OSError:
                    break
    return filler


def leftovers(root: Path) -> list[Path]:
    """Temp files and staging folders a failed write could leave behind."""
    pats = ("*.tmp", "*.part", ".staging-*")
    return sorted(p for pat in pats for p in root.rglob(pat))


def assert_disk_full_line(text: str, path: Path | str, mount: Path) -> None:
    want = rf"disk full writing {re.escape(str(path))} \((\d+) bytes free on {re.escape(str(mount))}\)"
    assert re.search(want, text), (want, text)


# ---------------------------------------------------------------- the writers, one by one


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path: Path) -> None:
    with small_fs(tmp_path / "fs", "256k") as fs:
        target = fs / "assets" / "qa" / "v.json"
        atomic_write_text(target, '{"old": true}')
        filler = fill(fs)
        with pytest.raises(DiskFullError) as info:
            atomic_write_text(target, json.dumps({"new": "x" * 50_000}))
        assert_disk_full_line(str(info.value), target, fs)
        assert info.value.errno == 28 and "\n" not in str(info.value)
        assert json.loads(target.read_text()) == {"old": True}  # the previous file, whole
        assert leftovers(fs) == [] and sorted(p.name for p in target.parent.iterdir()) == ["v.json"]
        filler.unlink()  # space freed: the same write completes
        atomic_write_text(target, json.dumps({"new": "x" * 50_000}))
        assert len(json.loads(target.read_text())["new"]) == 50_000


def test_ledger_never_keeps_half_a_line(tmp_path: Path) -> None:
    """A line that crosses into a page the disk no longer has is written in part by the kernel, then cut off."""
    with small_fs(tmp_path / "fs", "256k") as fs:
        ledger = UsageLedger(fs / "usage")
        usage = CallUsage(provider="gemini", model="m", step="0", prompt_key="k", cost_usd=0.25)
        ledger.append(usage, video_key="v", ok=True, error="")
        one = ledger.path.stat().st_size  # a line with an empty error; "e" * k makes it k bytes longer
        ledger.append(usage, video_key="v", ok=True, error="e" * (PAGE - 100 - 2 * one))
        size = ledger.path.stat().st_size  # the next line starts 100 bytes before the page's end
        assert PAGE - 150 < size < PAGE - 50, size  # (the timestamp varies in length)
        filler = fill(fs)
        with pytest.raises(DiskFullError) as info:
            ledger.append(usage, video_key="v", ok=True)
        assert_disk_full_line(str(info.value), ledger.path, fs)
        assert ledger.path.stat().st_size == size  # the part that fitted was cut off again
        assert all(e.video_key == "v" for e in ledger.entries())
        before = len(ledger.entries())
        filler.unlink()
        ledger.append(usage, video_key="v", ok=True)
        assert len(ledger.entries()) == before + 1


def _clip(out: Path) -> Path:
    """4 s of noise at 320x240: incompressible, so its downscaled copy needs far more than a few pages."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
           "cellauto=size=320x240:rate=10:rule=30:seed=3", "-t", "4", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(cmd, capture_output=True, check=True)
    return out


def test_ffmpeg_output_on_a_full_disk(tmp_path: Path) -> None:
    src = _clip(tmp_path / "src.mp4")
    tool = MediaTool(max_side=240, fps=5)
    with small_fs(tmp_path / "fs", "1m") as fs:
        out = fs / "cache" / "media" / "v" / "video.mp4"
        filler = fill(fs, leave=8 * PAGE)  # room for ffmpeg to start writing, not to finish
        with pytest.raises(DiskFullError) as info:
            tool.prepare_video(src, out)
        assert_disk_full_line(str(info.value), out, fs)
        assert not out.exists() and leftovers(fs) == []
        frames = fs / "cache" / "media" / "v" / "frames"
        fill(fs)
        with pytest.raises(DiskFullError) as info:
            tool.sample_frames(src, [0.5, 1.5, 2.5, 3.5], frames)
        assert_disk_full_line(str(info.value), frames, fs)
        assert list(frames.iterdir()) == [] and leftovers(fs) == []
        filler.unlink()
        (fs / "filler.bin").unlink(missing_ok=True)
        assert tool.prepare_video(src, out) == out and tool.probe(out).width == 240


# ---------------------------------------------------------------- the pipeline, results_dir on a small disk


MCQ_ONLY = {"qa_types": ["mcq"]}


def test_pipeline_on_a_full_disk_fails_cleanly_and_resumes(make_pipeline: Any, tmp_path: Path) -> None:
    """results_dir on a 2 MiB tmpfs left with 24 pages: the records and answers of steps 0 and 1a fit, the
    chunk step 1b cuts from a 4 s noise clip does not (ffmpeg: "No space left on device"). The video fails
    with one line naming it, the path and "disk full"; nothing half-written is left. With the filler deleted
    the re-run resumes at step 1b and completes, and no model call is made twice (the answers of steps 0
    and 1a were stored before the disk filled up)."""
    env = make_pipeline("openai")  # an OpenAI-compatible teacher gets each chunk as a file step 1b cuts
    env.add_video(_clip(tmp_path / "noise.mp4"), "v00.mp4")
    spec = env.spec(workflow=MCQ_ONLY)
    with small_fs(env.results, "2m") as fs:
        filler = fill(fs, leave=24 * PAGE)
        first = env.run(spec)
        assert first.succeeded == [] and list(first.failed) == ["v00.mp4"], first
        why = first.failed["v00.mp4"]
        assert why.startswith("video v00.mp4") and "\n" not in why, why
        m = re.search(r"disk full writing (\S+) \((\d+) bytes free on (\S+)\)", why)
        assert m is not None, why
        assert Path(m.group(1)).is_relative_to(fs) and m.group(3) == str(fs), why
        assert leftovers(fs) == [], leftovers(fs)
        for record in fs.rglob("*.json"):  # every file there is whole
            json.loads(record.read_text())
        calls_before = env.calls()
        assert calls_before > 0
        print(f"\nrun 1: {why}\n{calls_before} model calls; {shutil.disk_usage(fs).free} bytes free")

        filler.unlink()
        second = env.run(spec)
        assert second.succeeded == ["v00.mp4"] and second.failed == {}, second
        assert leftovers(fs) == []
        asked = Counter((r.prompt_text, tuple(r.media_sha256)) for r in env.model_requests())
        assert max(asked.values()) == 1, [k[0][:80] for k, n in asked.items() if n > 1]  # none paid twice
        assert env.calls() > calls_before
        assert json.loads((fs / "assets" / "qa" / "v00.mp4.json").read_text())["raw"]
        print(f"run 2: {env.calls() - calls_before} more calls, none repeated")


def test_answer_cache_on_a_full_disk_pays_the_call_again(make_pipeline: Any) -> None:
    """What a full disk costs when the answer cache is on it (the default: `<results_dir>/cache/calls`): the
    call is made and paid (the ledger records it), its answer cannot be stored, the step fails naming the
    cache entry, and once space is freed the same call is made, and paid, again. Only then is it cached."""
    env = make_pipeline("openai")
    spec = env.spec()
    call = ModelCall(step="2", prompt_key="probe", video_key="v00.mp4", prompt="Describe a quiet street.")
    with small_fs(env.results, "256k") as fs:
        teacher = spec_teacher(spec, "llm")
        filler = fill(fs, leave=PAGE)  # one page: the ledger's first line takes it
        with pytest.raises(DiskFullError) as info:
            teacher.generate(call)
        entry = teacher._path(teacher.key_for(call))
        assert_disk_full_line(str(info.value), entry, fs)
        assert env.calls() == 1 and len(UsageLedger(fs / "usage").entries()) == 1  # made, paid, recorded
        assert not entry.exists() and leftovers(fs) == []
        filler.unlink()
        first = teacher.generate(call)
        assert env.calls() == 2 and not first.usage.cached  # paid again: the answer was never stored
        again = teacher.generate(call)
        assert env.calls() == 2 and again.usage.cached and again.text == first.text


def test_records_on_a_full_disk_fail_the_step_naming_the_record(make_pipeline: Any, tmp_path: Path) -> None:
    """`storage_url` (the records and the dataset) on a full tmpfs, results_dir elsewhere: the first record,
    step 0's, cannot be written; the video fails with one line naming it, the step and the record's path,
    and no temp file is left where the record was going."""
    env = make_pipeline("gemini")
    env.add_video(_clip(tmp_path / "noise.mp4"), "v00.mp4")
    with small_fs(tmp_path / "records", "64k") as fs:
        fill(fs)
        summary = env.run(env.spec(workflow=MCQ_ONLY, storage_url=str(fs)))
        assert sorted(summary.failed) == ["dataset", "v00.mp4"], summary
        why = summary.failed["v00.mp4"]
        record = fs / "assets" / "filter_result" / "v00.mp4.json"
        assert why.startswith("video v00.mp4: filter_result: disk full writing"), why
        assert_disk_full_line(why, record, fs)
        # the dataset (written after the runs, to the same storage) fails with its own disk-full line
        assert re.search(rf"disk full writing {re.escape(str(fs))}/\S+ \(\d+ bytes free", summary.failed["dataset"])
        assert not record.exists() and leftovers(fs) == []
        print(f"\n{why}\ndataset: {summary.failed['dataset']}")
