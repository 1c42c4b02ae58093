"""vr-assets benchmark (issue #4): our Dagster pipeline against the reference, on one machine.

Sections: (1) wall time of N videos against a latency-injecting fake Gemini, with the ideal
lower bound; (2) the same workload through the reference pipeline; (3) provider traffic per
video; (4) ffmpeg CPU per minute of video, our MediaTool against the reference's method;
(5) Dagster bookkeeping per partition-asset with a zero-latency fake.

Nothing here asserts on time: it prints a markdown table and writes bench/out/results.json.
Run it with the project venv's python (`make bench`); `--n 2` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from calls import MODEL_ROUTES, CallStats, call_stats, ideal, ramp, utilisation
from ffmpeg_cost import FFMPEG, Cost, children_cpu_s, ref_cut_chunks, ref_frame_times, ref_sample_frames, run_method
from proctree import TreeCpu
from pydantic import BaseModel, Field
from workload import BenchVideo, make_tiny_copies, make_videos, sha256_file, stage, write_manifest

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
REF_VENV = BENCH / ".ref-venv"
API_KEY = "bench-key"
WIRE_USAGE = "wire_usage.jsonl"  # the fake's per-request usage of a run (vr_assets/fakes/usage_log.py)

# The package may not be pip-installed yet; `python bench/run.py` puts only bench/ on sys.path.
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- results records


class PipelineRun(BaseModel):
    name: str
    wall_s: float
    cpu_s: float = Field(description="user+sys CPU of the pipeline's process tree, ffmpeg included")
    fake_cpu_s: float = Field(description="CPU of the bench process, i.e. the in-process fake server")
    exit_code: int
    calls: CallStats
    per_video: dict[str, float]
    ideal_s: float
    critical_path_s: float
    throughput_bound_s: float
    wall_over_ideal: float
    slots_busy: float = Field(0.0, description="provider time / (C x wall): how full the C slots were kept")
    first_call_s: float = Field(0.0, description="launch to the first model call")
    full_at_s: float | None = Field(None, description="launch to the first moment with C calls in flight")
    verdict_videos_seen: int
    dataset_items: int
    dataset_videos: int
    inner_wall_s: float | None = None
    step_wall_s: dict[str, float] = {}
    log_tail: str = ""


class Bookkeeping(BaseModel):
    partitions: int
    assets_per_partition: list[str]
    materializations: int
    runs: int
    wall_s: float
    cpu_s: float
    model_calls: int
    s_per_partition_asset: float
    exit_code: int
    what_ran: str


# ---------------------------------------------------------------- helpers


def probe_reader() -> str:
    """What reads our probes: `media.ffprobe: auto` is PyAV in-process."""
    import av

    return f"probes in-process by PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})"


def machine() -> dict[str, Any]:
    def version(exe: str) -> str:
        lines = subprocess.run([exe, "-version"], capture_output=True, text=True).stdout.splitlines()
        return lines[0].split(" Copyright")[0] if lines else "?"

    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ffmpeg": version(FFMPEG),
        "ffmpeg_path": FFMPEG,
        "ffprobe": probe_reader(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def dataset_summary(results_dir: Path) -> tuple[int, int]:
    """(items, distinct videos) over every step-4 task file."""
    items, videos = 0, set()
    for f in sorted((results_dir / "step_4_output").glob("*.json")):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        for it in doc.get("items", []):
            items += 1
            videos.add(it.get("video_id"))
    return items, len(videos)


def verdict_videos_seen(fake: Any, keys_by_video: dict[str, set[str]]) -> int:
    """How many workload videos reached step 0 with media the teacher recognised (else it guesses)."""
    seen = {sha for r in fake.log for sha in r.media_sha256[:1]}
    return sum(1 for keys in keys_by_video.values() if keys & seen)


class RunOutcome(BaseModel):
    code: int
    wall_s: float
    cpu_s: float = Field(description="user+sys of the whole process tree (rusage + /proc samples)")
    tail: str


def run_logged(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> RunOutcome:
    """Run to completion with output in a file; CPU covers the process and every child it waited for."""
    t0 = time.perf_counter()
    c0 = children_cpu_s()
    with log_path.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        tree = TreeCpu(proc.pid).start()
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -9
    wall = time.perf_counter() - t0
    cpu = tree.total(children_cpu_s() - c0)
    text = log_path.read_text(errors="replace")
    if code == -9:
        text += f"\n[bench] killed after {timeout_s:.0f} s (--run-timeout)"
    return RunOutcome(code=code, wall_s=wall, cpu_s=cpu, tail=text[-3000:])


def pipeline_env(dagster_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_", "OPENAI_", "VR_"))}
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_spec(
    path: Path, base_url: str, video_root: Path, results_dir: Path, workers: int, extra: dict[str, Any] | None = None
) -> None:
    model = {"backend": "gemini", "gemini": {"base_url": base_url, "api_key": API_KEY}}
    spec: dict[str, Any] = {
        "vlm": model,
        "llm": json.loads(json.dumps(model)),
        "workflow": {"max_workers": workers, "mode": "auto"},
        "data": {"video_root": str(video_root)},
        "results_dir": str(results_dir),
    }
    for dotted, value in (extra or {}).items():
        node = spec
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


# ---------------------------------------------------------------- teacher verdicts


def our_media_shas(
    videos: list[BenchVideo], scratch: Path, sizes: dict[str, int] | None = None
) -> dict[str, set[str]]:
    """Fingerprints of what our pipeline sends at step 0: a downscaled copy, or the first sampled frame.

    The teacher keys verdicts on the first media part it receives, so it needs these, not only
    the original file's hash. Made by the pipeline's own step-0 media function and settings.
    """
    from vr_assets.config import Spec
    from vr_assets.media_cache import step0_media
    from vr_assets.resources import MediaResource

    spec = Spec()
    tool = MediaResource.from_spec(spec).tool()
    out: dict[str, set[str]] = {}
    for v in videos:
        src = Path(v.path)
        _, paths = step0_media(spec, tool, src, tool.probe(src), fresh(scratch / f"ours_{v.index:03d}"))
        out[v.name] = {sha256_file(Path(paths[0]))}
        if sizes is not None:  # what the model is to see of the video: the downscaled copy (or frames)
            sizes[v.name] = sum(Path(x).stat().st_size for x in paths)
    return out


def add_media_ratio(run: dict[str, Any], media_bytes: int, n: int) -> None:
    """Media bytes sent per video over the size of the video as the pipeline sends it (ours: the
    downscaled copy step 0 makes; the reference: the file itself), the issue's bytes target."""
    pv = run["per_video"]
    pv["video_mb"] = round(media_bytes / max(n, 1) / 1e6, 3)
    sent = run["calls"]["upload_bytes"] + run["calls"]["inline_media_bytes"]
    pv["sent_over_video"] = round(sent / media_bytes, 2) if media_bytes else 0.0


def ref_media_shas(videos: list[BenchVideo], scratch: Path) -> dict[str, set[str]]:
    """The reference sends short videos as they are and long ones as frames made one ffmpeg per frame."""
    out: dict[str, set[str]] = {}
    for v in videos:
        if v.long:
            d = fresh(scratch / f"ref_{v.index:03d}")
            t = ref_frame_times(v.duration_s)[0]
            frame = d / "f.jpg"
            subprocess.run(
                [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-ss", str(t), "-i", v.path,
                 "-frames:v", "1", "-q:v", "2", str(frame)],
                check=True,
            )  # fmt: skip
            out[v.name] = {sha256_file(frame)}
        else:
            out[v.name] = {v.sha256}
    return out


_YES_NO_ONLY = re.compile(r"answer\s+with\s+only\W+yes\W+or\W+no", re.IGNORECASE)
# A prompt that shows its answer layout with a line of '=' between the question and its "Answer:" section.
_SECTIONED = re.compile(r"^={5,}[ \t]*\n[ \t]*Answer:", re.MULTILINE)
_ANSWER_LINE = re.compile(r"^(Answer:)", re.MULTILINE)


def make_teacher(videos: list[BenchVideo], extra_keys: dict[str, set[str]], **kw: Any) -> Any:
    from vr_assets.fakes import Teacher, TeacherAnswer
    from vr_assets.fakes.teacher import QA_SEPARATOR

    class BenchTeacher(Teacher):
        """Three habits of a real model the offline teacher lacks, so each pipeline gets answers to its own prompts.

        - The reference's free-text suitability question asks for a bare Yes/No without the words the teacher
          routes on, so the teacher would answer with a caption and the reference would drop every video.
        - It routes on the instruction, not on its own earlier answers quoted in the prompt: a pipeline that pastes
          captions holding the teacher's timestamps into later prompts would otherwise get time-span items for
          every question type.
        - It follows a layout the prompt shows: where a line of '=' separates a question from its "Answer:"
          section, its question/answer blocks put one there too (multiple-choice blocks keep their answer after the
          options, as such a layout shows them).
        No-ops for our pipeline's prompts (no quoted answer changes its route, none shows a sectioned layout).
        """

        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self._said: set[str] = set()

        def answer(
            self, prompt_text: str, media_sha256: list[str], schema: dict[str, Any] | None, model: str = ""
        ) -> Any:
            routed = prompt_text
            for said in sorted(self._said, key=len, reverse=True):
                routed = routed.replace(said, " ")
            got = super().answer(routed, media_sha256, schema, model)
            text = got.text
            if schema is None and _YES_NO_ONLY.search(prompt_text) and not re.match(r"(?i)\s*(yes|no)\b", text):
                text = "Yes" if self.verdict_for(media_sha256).relevant else "No"
            elif schema is None and _SECTIONED.search(prompt_text):
                blocks = text.split(f"\n{QA_SEPARATOR}\n")
                text = f"\n{QA_SEPARATOR}\n".join(
                    b if b.startswith("Multiple-Choice") else _ANSWER_LINE.sub(f"{QA_SEPARATOR}\n\\1", b, count=1)
                    for b in blocks
                )
            if schema is None and len(got.text) >= 40:
                self._said.add(got.text)
            return got if text == got.text else TeacherAnswer(text=text, think=got.think)

    teacher = BenchTeacher(**kw)
    for v in videos:
        for sha in {v.sha256, *extra_keys.get(v.name, set())}:
            teacher.set_verdict(sha, relevant=v.relevant, label=v.label)
    return teacher


# ---------------------------------------------------------------- sections 1-3


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_against_fake(
    name: str,
    videos: list[BenchVideo],
    args: argparse.Namespace,
    keys: dict[str, set[str]],
    command: Callable[[str, Path, Path], tuple[list[str], dict[str, str]]],
) -> PipelineRun:
    """Stage the videos, start a fresh fake, run `command(base_url, video_root, work)`, read the fake's log."""
    from vr_assets.fakes import FakeGemini

    work = fresh(args.out / name)
    root = stage(videos, work / "videos")
    # every billed request on the wire, counted by the media's duration the same way for both pipelines (issue #20)
    fake = FakeGemini(
        teacher=make_teacher(videos, keys), latency_media_s=args.latency_media, latency_text_s=args.latency_text,
        usage_log=work / WIRE_USAGE, video_tokens="duration", min_cache_tokens=args.min_cache_tokens,
    ).start()
    try:
        cmd, env = command(fake.base_url, root, work)
        log(f"{name}: {len(videos)} videos, C={args.concurrency}, fake {fake.base_url}")
        s0 = self_cpu_s()  # the bench process only serves the fake meanwhile
        started = time.time()
        got = run_logged(cmd, env, work / "run.log", args.run_timeout)
        fake_cpu = self_cpu_s() - s0
        stats = call_stats(fake)
        ok = [r for r in fake.log if r.route in MODEL_ROUTES and r.status == 200]
        spans = [(r.started_at - started, r.duration_s) for r in ok]
        (work / "spans.json").write_text(json.dumps({"launched_at": started, "since_launch": sorted(spans)}))
        first_call_s, full_at_s = ramp(spans, args.concurrency)
        seen = verdict_videos_seen(fake, keys)
    finally:
        fake.stop()
    bound = ideal(
        ((v.relevant, v.label) for v in videos), stats, args.latency_media, args.latency_text, args.concurrency
    )
    items, vids = dataset_summary(work / "results")
    if got.code != 0:
        log(f"{name}: exit code {got.code}; log tail:\n{got.tail[-1500:]}")
    return PipelineRun(
        name=name,
        wall_s=round(got.wall_s, 3),
        cpu_s=round(got.cpu_s, 2),
        fake_cpu_s=round(fake_cpu, 2),
        exit_code=got.code,
        calls=stats,
        per_video=stats.per_video(len(videos)),
        ideal_s=bound.ideal_s,
        critical_path_s=bound.critical_path_s,
        throughput_bound_s=bound.throughput_s,
        wall_over_ideal=round(got.wall_s / bound.ideal_s, 3) if bound.ideal_s else 0.0,
        slots_busy=utilisation(stats, args.concurrency, got.wall_s),
        first_call_s=first_call_s,
        full_at_s=full_at_s,
        verdict_videos_seen=seen,
        dataset_items=items,
        dataset_videos=vids,
        log_tail=got.tail[-1500:],
    )


def bench_prices() -> dict[str, Any]:
    """The spec's `prices`: the teacher priced from the dated table bench/cost.py prices both pipelines with, so
    our cost decisions (whether an explicit context cache pays) are made on the same prices."""
    from cost import DEFAULT_MODEL, PriceTable

    from vr_assets.config import Spec

    price = PriceTable.load().models[DEFAULT_MODEL].model_dump(exclude_none=True)
    spec = Spec()
    return {spec.vlm.model_name: price, spec.llm.model_name: price}


def run_ours(
    videos: list[BenchVideo], args: argparse.Namespace, keys: dict[str, set[str]], name: str = "ours"
) -> PipelineRun:
    def command(base_url: str, root: Path, work: Path) -> tuple[list[str], dict[str, str]]:
        spec = work / "spec.yaml"
        extra: dict[str, Any] = {"prices": bench_prices()}
        if args.tier != "standard":  # every model step on that tier (workflow.tier)
            from vr_assets.config import TIER_STEPS

            extra["workflow.tier"] = {step: args.tier for step in TIER_STEPS}
        if args.whole_video_requests != "separate":
            extra["workflow.whole_video_requests"] = args.whole_video_requests
        write_spec(spec, base_url, root, work / "results", args.concurrency, extra)
        cmd = [sys.executable, "-m", "vr_assets.cli", "run", "--config", str(spec)]
        return cmd, pipeline_env(work / "dagster_home")

    return run_against_fake(name, videos, args, keys, command)


def repeat_ours(
    first: dict[str, Any], videos: list[BenchVideo], args: argparse.Namespace, keys: dict[str, set[str]]
) -> dict[str, Any]:
    """`--repeat N`: ours N times in all, each from nothing (its folder is removed after), the first run
    included. One run of a 2-core machine moves by a second or so; the median and the spread say more."""
    walls = [first["wall_s"]]
    codes = [first["exit_code"]]
    for i in range(2, args.repeat + 1):
        again = run_ours(videos, args, keys, name=f"ours-repeat-{i}")
        shutil.rmtree(args.out / f"ours-repeat-{i}", ignore_errors=True)
        walls.append(again.wall_s)
        codes.append(again.exit_code)
    ideal_s = first["ideal_s"] or 0.0
    median = statistics.median(walls)
    return {
        "runs": len(walls),
        "wall_s": walls,
        "exit_codes": codes,
        "median_wall_s": round(median, 3),
        "mean_wall_s": round(statistics.fmean(walls), 3),
        "median_over_ideal": round(median / ideal_s, 3) if ideal_s else 0.0,
        "mean_over_ideal": round(statistics.fmean(walls) / ideal_s, 3) if ideal_s else 0.0,
    }


def run_reference(videos: list[BenchVideo], args: argparse.Namespace, keys: dict[str, set[str]]) -> PipelineRun:
    def command(base_url: str, root: Path, work: Path) -> tuple[list[str], dict[str, str]]:
        cmd = [
            str(REF_VENV / "bin" / "python"), str(BENCH / "reference_driver.py"),
            "--video-root", str(root), "--results-dir", str(work / "results"),
            "--base-url", base_url, "--api-key", API_KEY, "--workers", str(args.concurrency),
        ]  # fmt: skip
        env = pipeline_env(work / "unused_dagster_home")
        # the reference calls `ffmpeg` from PATH: give it the same binary our pipeline runs
        shim = work / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "ffmpeg").symlink_to(shutil.which(FFMPEG) or FFMPEG)
        env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
        return cmd, env

    run = run_against_fake("reference", videos, args, keys, command)
    for line in reversed(run.log_tail.splitlines()):
        if line.startswith("{") and "wall_s" in line:
            inner = json.loads(line)
            run.inner_wall_s = inner["wall_s"]
            run.step_wall_s = inner.get("step_wall_s", {})
            break
    return run


# ---------------------------------------------------------------- section 4


def ffmpeg_section(videos: list[BenchVideo], max_files: int) -> dict[str, dict[str, Cost]]:
    from vr_assets.config import Spec
    from vr_assets.media import choose_chunk_duration, frame_times, plan_chunks
    from vr_assets.resources import MediaResource

    spec = Spec()
    wf = spec.workflow
    tool = MediaResource.from_spec(spec).tool()
    chosen = videos[:max_files] if max_files else videos
    all_files = [(Path(v.path), v.duration_s) for v in chosen]
    long_files = [(Path(v.path), v.duration_s) for v in chosen if v.long]

    def ours_chunks(src: Path, length: float, out: Path) -> list[Path]:
        d = choose_chunk_duration(length, wf.chunk_duration_options, wf.max_chunks)
        return [Path(p) for p in tool.cut_chunks(src, plan_chunks(length, d), out)]

    def ours_frames(src: Path, length: float, out: Path) -> list[Path]:
        times = frame_times(length, wf.long_video_sample_fps, wf.long_video_max_frames)
        return [Path(p) for p in tool.sample_frames(src, times, out)]

    log(f"ffmpeg: chunking {len(all_files)} files, frames from {len(long_files)} long files")
    out: dict[str, dict[str, Cost]] = {"chunks": {}, "frames": {}}
    out["chunks"]["ours"] = run_method("ours (MediaTool)", "chunks", all_files, ours_chunks)
    out["chunks"]["reference"] = run_method("reference method", "chunks", all_files, ref_cut_chunks)
    if long_files:
        out["frames"]["ours"] = run_method("ours (MediaTool)", "frames", long_files, ours_frames)
        out["frames"]["reference"] = run_method("reference method", "frames", long_files, ref_sample_frames)
    return out


# ---------------------------------------------------------------- section 5


def count_materializations(dagster_home: Path) -> tuple[int, int, dict[str, int]]:
    """(materialized partition-assets incl. the dataset, runs, per asset) read back from the instance."""
    code = (
        "import json\n"
        "from dagster import AssetKey, DagsterInstance\n"
        "i = DagsterInstance.get()\n"
        "per = {k.to_user_string(): len(i.get_materialized_partitions(k)) for k in i.get_asset_keys()}\n"
        "ds = i.fetch_materializations(AssetKey('dataset'), limit=1000).records\n"
        "if 'dataset' in per: per['dataset'] = len(ds)\n"
        "print(json.dumps({'per': per, 'runs': i.get_runs_count()}))\n"
    )
    env = pipeline_env(dagster_home)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        log(f"could not read the Dagster instance: {res.stderr[-800:]}")
        return 0, 0, {}
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return sum(got["per"].values()), got["runs"], got["per"]


def bookkeeping_section(args: argparse.Namespace) -> Bookkeeping:
    from vr_assets.fakes import FakeGemini

    work = fresh(args.out / "bookkeeping")
    make_tiny_copies(args.bookkeeping_partitions, args.video_cache, work / "videos")
    qa_types = ["scene_description"]
    fake = FakeGemini(teacher=make_teacher([], {}, default_relevant=True, default_label="normal")).start()
    try:
        spec = work / "spec.yaml"
        write_spec(
            spec,
            fake.base_url,
            work / "videos",
            work / "results",
            args.concurrency,
            {"workflow.mode": "normal", "workflow.qa_types": qa_types},
        )
        cmd = [sys.executable, "-m", "vr_assets.cli", "run", "--config", str(spec)]
        log(f"bookkeeping: {args.bookkeeping_partitions} partitions of one 2 s clip, 0-latency fake")
        got = run_logged(cmd, pipeline_env(work / "dagster_home"), work / "run.log", args.run_timeout)
        calls = call_stats(fake).model_calls
    finally:
        fake.stop()
    if got.code != 0:
        log(f"bookkeeping: exit code {got.code}; log tail:\n{got.tail[-1500:]}")
    mats, runs, per = count_materializations(work / "dagster_home")
    return Bookkeeping(
        partitions=args.bookkeeping_partitions,
        assets_per_partition=sorted(per),
        materializations=mats,
        runs=runs,
        wall_s=round(got.wall_s, 3),
        cpu_s=round(got.cpu_s, 2),
        model_calls=calls,
        s_per_partition_asset=round(got.wall_s / mats, 4) if mats else 0.0,
        exit_code=got.code,
        what_ran=f"mode normal, filter relevant, qa_types {qa_types}, hardlinks of one 2 s 320x240 clip",
    )


# ---------------------------------------------------------------- report


def fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def render(res: dict[str, Any]) -> str:
    p, w = res["params"], res["workload"]
    ours: dict[str, Any] | None = res.get("ours")
    ref: dict[str, Any] | None = res.get("reference")
    ref_ok = bool(ref) and "skipped" not in ref
    lines = [
        f"## vr-assets benchmark — {res['machine']['cores']} cores; {res['machine']['ffmpeg']} "
        f"(both pipelines, both methods), {res['machine'].get('ffprobe', 'ffprobe')}",
        "",
        f"Workload: {w['videos']} videos ({w['short']} short 8–20 s, {w['long']} long >60 s, which the reference "
        f"sends as JPEG frames and ours as its uploaded copy sampled at the same frame budget; "
        f"{w['anomaly']} anomaly, {w['normal']} normal, {w['filtered_out']} off-domain), "
        f"{w['video_minutes']:.1f} min of {w['resolution']} video. Fake Gemini latency: media "
        f"{p['latency_media_s']} s, text {p['latency_text_s']} s; concurrency C = {p['concurrency']}.",
        "",
        "| metric | ours | reference |",
        "|---|---:|---:|",
    ]

    def row(label: str, key: str, nd: int = 2, src: str = "") -> None:
        a = (ours or {}).get(key) if not src else ((ours or {}).get(src) or {}).get(key)
        b = None
        if ref_ok and ref is not None:
            b = ref.get(key) if not src else (ref.get(src) or {}).get(key)
        lines.append(f"| {label} | {fmt(a, nd)} | {fmt(b, nd)} |")

    row("1. wall time (s)", "wall_s")
    row("ideal lower bound (s)", "ideal_s")
    row("… critical path of one video (s)", "critical_path_s")
    row("… provider time ÷ C (s)", "throughput_bound_s")
    row("wall ÷ ideal", "wall_over_ideal")
    reps = res.get("ours_repeats")
    if reps:
        lines.append(f"| … median wall of {reps['runs']} runs (s) | {fmt(reps['median_wall_s'])} | — |")
        lines.append(f"| … median wall ÷ ideal | {fmt(reps['median_over_ideal'], 3)} | — |")
    row("provider slots busy (time in calls ÷ C × wall)", "slots_busy")
    row("… launch to the first model call (s)", "first_call_s")
    row("… launch to C calls in flight (s)", "full_at_s")
    row("peak calls in flight", "peak_in_flight", 0, src="calls")
    row("CPU s of the pipeline process tree (2 cores)", "cpu_s")
    row("CPU s of the fake server", "fake_cpu_s")
    row("exit code", "exit_code")
    row("dataset items", "dataset_items")
    row("videos in the dataset", "dataset_videos")
    row("videos whose step-0 media the teacher recognised", "verdict_videos_seen")
    row("3. model calls / video", "model_calls", src="per_video")
    row("… media calls / video", "media_calls", src="per_video")
    row("… text calls / video", "text_calls", src="per_video")
    row("uploads / video", "uploads", src="per_video")
    row("request MB sent / video", "request_mb", 3, src="per_video")
    row("… inline media MB / video", "inline_media_mb", 3, src="per_video")
    row("… uploaded MB / video", "upload_mb", 3, src="per_video")
    row("uploads left on the service after the run", "files_left", 0, src="calls")
    row("video MB / video as sent (ours: the downscaled copy; reference: the file)", "video_mb", 3, src="per_video")
    row("media bytes sent ÷ that video size", "sent_over_video", 2, src="per_video")
    lines.append("")
    if reps:
        walls = ", ".join(f"{w:.2f}" for w in reps["wall_s"])
        lines += [f"1. ours, {reps['runs']} runs from nothing: {walls} s (exit codes {reps['exit_codes']}); median "
                  f"{fmt(reps['median_wall_s'])} s = {fmt(reps['median_over_ideal'], 3)}× ideal, mean "
                  f"{fmt(reps['mean_wall_s'])} s = {fmt(reps['mean_over_ideal'], 3)}× ideal", ""]
    if ref_ok and ref is not None:
        lines.append(
            f"**2. reference ÷ ours (wall): {fmt(res.get('reference_over_ours'))}×**"
            f" (reference in-process wall {fmt(ref.get('inner_wall_s'))} s; per step {ref.get('step_wall_s')})"
        )
    else:
        lines.append(f"2. reference skipped: {(ref or {}).get('skipped', 'not run')}")
    ff = res.get("ffmpeg")
    if ff:
        lines += [
            "",
            "| 4. ffmpeg | method | files | video min | outputs | CPU s | CPU s / video min | wall s | out MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for op in ("chunks", "frames"):
            for who in ("ours", "reference"):
                c = ff.get(op, {}).get(who)
                if c:
                    per_min = c["cpu_s"] / c["video_min"] if c["video_min"] else 0.0
                    lines.append(
                        f"| {op} | {c['method']} | {c['files']} | {c['video_min']:.2f} | {c['outputs']} | "
                        f"{c['cpu_s']:.2f} | {per_min:.2f} | {c['wall_s']:.2f} | {c['output_bytes'] / 1e6:.2f} |"
                    )
    elif "ffmpeg_skipped" in res:
        lines += ["", f"4. ffmpeg skipped: {res['ffmpeg_skipped']}"]
    bk = res.get("bookkeeping")
    if bk:
        lines += [
            "",
            "| 5. Dagster bookkeeping | value |",
            "|---|---:|",
            f"| partitions | {bk['partitions']} |",
            f"| partition-assets materialized | {bk['materializations']} |",
            f"| runs | {bk['runs']} |",
            f"| model calls (0-latency fake) | {bk['model_calls']} |",
            f"| wall (s) | {bk['wall_s']:.2f} |",
            f"| CPU s of the pipeline process tree | {bk['cpu_s']:.2f} |",
            f"| ms per partition-asset | {bk['s_per_partition_asset'] * 1000:.1f} |",
            f"| exit code | {bk['exit_code']} |",
            "",
            f"What ran: {bk['what_ran']}.",
        ]
    elif "bookkeeping_skipped" in res:
        lines += ["", f"5. bookkeeping skipped: {res['bookkeeping_skipped']}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40, help="videos in the workload")
    p.add_argument("--concurrency", "-c", type=int, default=16, help="provider concurrency C for both pipelines")
    p.add_argument("--latency-media", type=float, default=1.5)
    p.add_argument("--latency-text", type=float, default=0.5)
    p.add_argument("--repeat", type=int, default=1,
                   help="run ours this many times in all and print every wall, the median and the mean")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--skip-ours", action="store_true")
    p.add_argument("--skip-ffmpeg", action="store_true")
    p.add_argument("--ffmpeg-max-files", type=int, default=0, help="0: every workload file")
    p.add_argument("--min-cache-tokens", type=int, default=2048,
                   help="the fake refuses explicit caches smaller than this (2.5 Flash: 2,048 on 2026 doc pages)")
    p.add_argument("--tier", default="standard", choices=["standard", "flex"],
                   help="ours: every model step on this price tier (workflow.tier; flex: half price, same calls)")
    p.add_argument("--whole-video-requests", default="separate", choices=["separate", "one_per_step"],
                   help="ours: steps 0 and 1a's two questions each in separate requests or in one per step "
                   "(workflow.whole_video_requests)")
    p.add_argument("--batch-steps", default="", help="cost: steps priced on the batch/flex tier (50%%), e.g. 2,3")
    p.add_argument("--bookkeeping-partitions", type=int, default=500, help="0 skips section 5")
    p.add_argument("--run-timeout", type=float, default=4 * 3600, help="seconds before a pipeline run is killed")
    p.add_argument("--out", type=Path, default=BENCH / "out")
    p.add_argument("--video-cache", type=Path, default=BENCH / "out" / "videos", help="generated clips, reused")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    log(f"generating/reusing {args.n} videos in {args.video_cache}")
    videos = make_videos(args.n, args.video_cache)
    write_manifest(videos, args.out / "manifest.json")
    res: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "n": args.n,
            "concurrency": args.concurrency,
            "latency_media_s": args.latency_media,
            "latency_text_s": args.latency_text,
            "bookkeeping_partitions": args.bookkeeping_partitions,
        },
        "workload": {
            "videos": len(videos),
            "short": sum(not v.long for v in videos),
            "long": sum(v.long for v in videos),
            "anomaly": sum(v.relevant and v.label == "anomaly" for v in videos),
            "normal": sum(v.relevant and v.label == "normal" for v in videos),
            "filtered_out": sum(not v.relevant for v in videos),
            "video_minutes": round(sum(v.duration_s for v in videos) / 60, 3),
            "bytes": sum(v.size_bytes for v in videos),
            "resolution": "320x240 25 fps H.264",
        },
    }
    out_json = args.out / "results.json"

    def save() -> None:
        """After every section, so a long run that dies late keeps what it measured."""
        out_json.write_text(json.dumps(res, indent=2))

    scratch = Path(tempfile.mkdtemp(prefix="bench-shas-"))
    try:
        if not args.skip_ours:
            sizes: dict[str, int] = {}
            keys = our_media_shas(videos, scratch, sizes)
            res["ours"] = run_ours(videos, args, keys).model_dump()
            add_media_ratio(res["ours"], sum(sizes.values()), len(videos))
            save()
            if args.repeat > 1:
                res["ours_repeats"] = repeat_ours(res["ours"], videos, args, keys)
                save()
        if args.skip_reference:
            res["reference"] = {"skipped": "--skip-reference"}
        elif not (REF_VENV / "bin" / "python").exists():
            why = f"{REF_VENV} is missing; create it with bench/setup_reference.sh"
            log(f"reference skipped: {why}")
            res["reference"] = {"skipped": why}
        else:
            keys = ref_media_shas(videos, scratch)
            res["reference"] = run_reference(videos, args, keys).model_dump()
            add_media_ratio(res["reference"], sum(v.size_bytes for v in videos), len(videos))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ours, ref = res.get("ours"), res.get("reference")
    if ours and ref and "skipped" not in ref and ours["wall_s"]:
        res["reference_over_ours"] = round(ref["wall_s"] / ours["wall_s"], 3)
    save()
    if args.skip_ffmpeg:
        res["ffmpeg_skipped"] = "--skip-ffmpeg"
    else:
        ff = ffmpeg_section(videos, args.ffmpeg_max_files)
        res["ffmpeg"] = {
            op: {who: c.model_dump() | {"cpu_s_per_video_min": round(c.cpu_s_per_video_min, 3)} for who, c in d.items()}
            for op, d in ff.items()
        }
        save()
    if args.bookkeeping_partitions > 0:
        res["bookkeeping"] = bookkeeping_section(args).model_dump()
    else:
        res["bookkeeping_skipped"] = "--bookkeeping-partitions 0"
    res["bench_wall_s"] = round(time.perf_counter() - t_start, 1)
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save()
    print(render(res))
    print(f"\nJSON: {out_json}")
    if not args.skip_ours:
        from cost import bench_lines  # issue #20: the estimate's error and the cost per usable item

        print("\n" + bench_lines(args.out, batch_steps=[s for s in args.batch_steps.split(",") if s]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
