"""The two roads into the same runs: `vr-annotate ui` (sensor → queue → daemon) against `vr-annotate run`.

Both start from nothing on the same videos, spec and fake latencies. The UI road is what a user gets
from `vr-annotate ui` and new files in the folder: the `new_videos` sensor requests a run per video,
Dagster's queue and the run launcher do the rest. Figures: the provider-call span (first request to
last response, from the fake's log), the wall until the last video's run finished, peak PSS / RSS and
processes of the whole process tree. `--memory N` adds a run with N videos in flight at once (a slow
fake holds them there) to read the peak PSS per video in flight.

Nothing is asserted: `python bench/roads.py [--n 24]` prints a table and writes bench/out/roads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import run as bench  # bench/run.py: the workload, the teacher, the spec
from calls import call_stats
from proctree import TreeMemory
from workload import make_videos, stage

OUT = bench.BENCH / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _finished_runs(home: Path) -> tuple[int, int]:
    """(annotate runs finished, runs not finished) in the home's instance."""
    code = (
        "from dagster import DagsterInstance, RunsFilter, DagsterRunStatus as S\n"
        "i = DagsterInstance.get()\n"
        "done = i.get_runs_count(RunsFilter(job_name='annotate_videos', statuses=[S.SUCCESS, S.FAILURE, S.CANCELED]))\n"
        "todo = i.get_runs_count(RunsFilter(statuses=[S.QUEUED, S.NOT_STARTED, S.STARTING, S.STARTED]))\n"
        "print(done, todo)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DAGSTER_HOME": str(home)},
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return 0, 1
    done, todo = out.stdout.split()
    return int(done), int(todo)


def road(name: str, n_videos: int, args: argparse.Namespace, workers: int, latency: tuple[float, float]) -> dict:
    from vr_assets.fakes import FakeGemini

    videos = make_videos(n_videos, args.video_cache)
    keys = bench.our_media_shas(videos, Path(bench.tempfile.mkdtemp(prefix="roads-shas-")))
    work = bench.fresh(OUT / f"road-{name}")
    root = stage(videos, work / "videos")
    fake = FakeGemini(teacher=bench.make_teacher(videos, keys), latency_media_s=latency[0],
                      latency_text_s=latency[1]).start()
    spec = work / "spec.yaml"
    bench.write_spec(spec, fake.base_url, root, work / "results", workers)
    home = work / "dagster_home"
    env = bench.pipeline_env(home)
    ui = name.startswith("ui")
    if ui:
        cmd = [sys.executable, "-m", "vr_assets.cli", "ui", "--config", str(spec), "--port", str(_free_port())]
    else:
        cmd = [sys.executable, "-m", "vr_assets.cli", "run", "--config", str(spec)]
    t0 = time.time()
    with (work / "run.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=bench.REPO,
                                start_new_session=True)
    mem = TreeMemory(proc.pid).start()
    try:
        if ui:
            while True:  # the sensor requests every video's run; wait until all are done and none is left
                time.sleep(2.0)
                done, todo = _finished_runs(home)
                if done >= n_videos and todo == 0:
                    break
                if proc.poll() is not None or time.time() - t0 > args.timeout:
                    raise RuntimeError(f"{name}: ui ended or timed out; see {work / 'run.log'}")
            wall = time.time() - t0
        else:
            proc.wait(timeout=args.timeout)
            wall = time.time() - t0
    finally:
        mem.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        stats = call_stats(fake)
        fake.stop()
    in_flight_peak = max((n for _, n, _ in mem.samples), default=0)
    return {
        "road": name, "videos": n_videos, "max_workers": workers, "wall_s": round(wall, 1),
        "span_s": round(stats.last_end - stats.first_start, 1), "calls": stats.model_calls,
        "peak_calls_in_flight": stats.peak_in_flight,
        "first_call_s": round(stats.first_start - t0, 1),
        "peak_pss_mb": round(mem.peak_pss_mb), "peak_rss_sum_mb": round(mem.peak_rss_mb),
        "peak_processes": mem.peak_procs, "processes_at_peak_sample": in_flight_peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=24, help="videos for the UI/CLI comparison")
    p.add_argument("--concurrency", "-c", type=int, default=8, help="workflow.max_workers (the issue's 8)")
    p.add_argument("--latency-media", type=float, default=1.5)
    p.add_argument("--latency-text", type=float, default=0.5)
    p.add_argument("--memory", type=int, nargs="*", default=[], help="videos in flight for the PSS rows (32 128)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--video-cache", type=Path, default=OUT / "videos")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    lat = (args.latency_media, args.latency_text)
    for name in ("cli", "ui"):
        rows.append(road(name, args.n, args, args.concurrency, lat))
        print(json.dumps(rows[-1]), flush=True)
    for n in args.memory:  # a slow teacher keeps every video's run in flight at once
        rows.append(road(f"cli-memory-{n}", n, args, n, (20.0, 5.0)))
        print(json.dumps(rows[-1]), flush=True)
    cli, ui = rows[0], rows[1]
    print("\n| figure | CLI road (`vr-annotate run`) | UI road (`vr-annotate ui`, sensor) |\n|---|---:|---:|")
    for label, key in (("provider-call span, s", "span_s"), ("wall until the last video, s", "wall_s"),
                       ("first call after start, s", "first_call_s"), ("model calls", "calls"),
                       ("peak PSS of the process tree, MB", "peak_pss_mb"), ("peak RSS sum, MB", "peak_rss_sum_mb"),
                       ("peak processes alive", "peak_processes")):
        print(f"| {label} | {cli[key]} | {ui[key]} |")
    print(f"| UI span ÷ CLI span | {ui['span_s'] / cli['span_s']:.2f} | |")
    for r in rows[2:]:
        print(f"| {r['videos']} videos in flight: peak PSS {r['peak_pss_mb']} MB "
              f"({r['peak_pss_mb'] / r['videos']:.1f} MB per video), RSS sum {r['peak_rss_sum_mb']} MB, "
              f"{r['peak_processes']} processes | | |")
    (OUT / "roads.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
