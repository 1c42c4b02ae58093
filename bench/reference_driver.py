"""Drive the reference pipeline (nvidia-tao-ds) headless, inside bench/.ref-venv.

It only builds the reference's namespace config and calls its entry point; none of its
code is reused here. Its Gemini client takes no base_url, so the fake is reached through
google-genai's own env override (GOOGLE_GEMINI_BASE_URL). Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

ENTRY_MODULE = "nvidia_tao_ds.auto_label.video_reasoning_annotation.inference"
LOGGER_MODULE = "nvidia_tao_ds.core.logging.logging"
STEP_MODULES = (
    "step0_filter",
    "step1a_caption",
    "step1b_chunks",
    "step1c_highlight",
    "step2_description",
    "step3_qa",
    "step4_parse_qa",
)


def _install_logger_stand_in(level: int) -> None:
    """The real logger module imports torch and lightning; the annotation path only logs."""
    stand_in = types.ModuleType(LOGGER_MODULE)
    log = logging.getLogger("tao_reference")
    log.setLevel(level)
    stand_in.logging = log  # type: ignore[attr-defined]
    sys.modules[LOGGER_MODULE] = stand_in


def _ns(**kw: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(**kw)


def _gemini(api_key: str, model: str, media_resolution: str | None) -> types.SimpleNamespace:
    cfg = _ns(api_key=api_key, model=model, temperature=0.3, max_output_tokens=8192, timeout=120)
    if media_resolution:
        cfg.media_resolution = media_resolution
    return cfg


def build_config(args: argparse.Namespace) -> types.SimpleNamespace:
    """The reference reads attributes only, so a namespace tree shaped like its YAML spec works."""
    vlm = _ns(backend="gemini", gemini=_gemini(args.api_key, args.model, "MEDIA_RESOLUTION_LOW"))
    llm = _ns(backend="gemini", gemini=_gemini(args.api_key, args.model, None))
    workflow = _ns(
        steps=["0", "1a", "1b", "1c", "2", "3", "4"],
        mode=args.mode,
        max_workers=args.workers,
        max_video_length_sec=300,
        chunk_duration_options=[5, 10, 15, 20, 30],
        max_chunks=10,
        highlight_before_sec=3.0,
        highlight_after_sec=3.0,
        long_video_threshold_sec=60,
        long_video_sample_fps=0.5,
        long_video_max_frames=60,
        qa_types=list(args.qa_types),
    )
    data = _ns(video_root=str(Path(args.video_root).resolve()), input_jsonl_files=[], filter_field=None)
    vra = _ns(vlm=vlm, llm=llm, workflow=workflow, data=data, license="", description_extra="", prompts_module="")
    return _ns(video_reasoning_annotation=vra, results_dir=args.results_dir)


def _time_steps(module: Any, timings: dict[str, float]) -> None:
    """Wrap each step's run() so the report can show where the step barriers cost time."""
    steps_pkg = sys.modules[module.__name__.rsplit(".", 1)[0] + ".steps"]
    for name in STEP_MODULES:
        step = getattr(steps_pkg, name)
        original = step.run

        def timed(*a: Any, _orig: Any = original, _name: str = name, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _orig(*a, **kw)
            finally:
                timings[_name] = round(time.perf_counter() - t0, 3)

        step.run = timed


def _count_lines(results_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in sorted(results_dir.glob("step_*/*.jsonl")):
        counts[f"{f.parent.name}/{f.name}"] = sum(1 for line in f.read_text().splitlines() if line.strip())
    items = 0
    for f in sorted(results_dir.glob("step_4_output/*.json")):
        try:
            items += len(json.loads(f.read_text()).get("items", []))
        except (OSError, ValueError):
            continue
    counts["step_4_items"] = items
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="only prove the entry point imports")
    p.add_argument("--video-root")
    p.add_argument("--results-dir")
    p.add_argument("--base-url", help="fake Gemini base URL, e.g. http://127.0.0.1:PORT")
    p.add_argument("--api-key", default="bench-key")
    p.add_argument("--model", default="gemini-3.1-flash-lite-preview")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mode", default="auto", choices=["auto", "anomaly", "normal"])
    p.add_argument(
        "--qa-types",
        nargs="+",
        default=[
            "mcq",
            "bcq",
            "open_qa",
            "causal_linkage",
            "temporal_localization",
            "temporal_event_desc",
            "scene_description",
            "event_summary",
        ],
    )
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, format="%(asctime)s ref %(levelname)s %(message)s")
    _install_logger_stand_in(logging.INFO if args.verbose else logging.WARNING)

    if args.base_url:
        os.environ["GOOGLE_GEMINI_BASE_URL"] = args.base_url
    os.environ.setdefault("GOOGLE_API_KEY", args.api_key)

    import importlib

    module = importlib.import_module(ENTRY_MODULE)
    if args.check:
        from importlib.metadata import version

        print(
            json.dumps({"ok": True, "nvidia-tao-ds": version("nvidia-tao-ds"), "google-genai": version("google-genai")})
        )
        return 0
    if not (args.video_root and args.results_dir and args.base_url):
        p.error("--video-root, --results-dir and --base-url are required for a run")

    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_config(args)
    timings: dict[str, float] = {}
    _time_steps(module, timings)
    t0 = time.perf_counter()
    module.run_video_reasoning_annotation_inference(cfg, str(results_dir))
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "wall_s": round(wall, 3),
                "step_wall_s": timings,
                "outputs": _count_lines(results_dir),
                "workers": args.workers,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
