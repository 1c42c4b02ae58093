"""`vr-annotate demo`: the bundled samples through the whole graph.

With a key in the environment it annotates for real; without one it starts the project's
offline teacher (the same local fake server the tests use) and says so in every output.
"""

from __future__ import annotations

import os
from pathlib import Path

from vr_assets.assets.common import OFFLINE_NOTE
from vr_assets.config import load_spec
from vr_assets.storage import results_root

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def run_demo(results: str, videos: str | None = None) -> int:
    from vr_assets.cli import run_pipeline

    overrides = [f"results_dir={Path(results).resolve()}"]
    if videos:
        overrides += [f"data.video_root={Path(videos).resolve()}", "data.input_jsonl_files=[]"]
    server = None
    if os.environ.get("GOOGLE_API_KEY"):
        print("demo: annotating with Gemini (GOOGLE_API_KEY is set)")
    elif os.environ.get("OPENAI_BASE_URL"):
        print(f"demo: annotating with the OpenAI-compatible endpoint {os.environ['OPENAI_BASE_URL']}")
        overrides += ["vlm.backend=openai", "llm.backend=openai"]
    else:
        from vr_assets.fakes import FakeGemini, Teacher

        server = FakeGemini(teacher=Teacher()).start()
        print(f"demo: no GOOGLE_API_KEY or OPENAI_BASE_URL — using the {OFFLINE_NOTE} at {server.base_url}")
        for role in ("vlm", "llm"):
            overrides += [f"{role}.gemini.base_url={server.base_url}", f"{role}.gemini.api_key=offline-demo-key"]
        overrides += ["offline_teacher=true", "vlm.retry.initial_delay_s=0.1", "llm.retry.initial_delay_s=0.1"]
    spec = load_spec(SAMPLES / "demo_spec.yaml", overrides)
    try:
        summary = run_pipeline(spec, progress=lambda m: print(m, flush=True))
    finally:
        if server is not None:
            server.stop()
    out = results_root(spec) / "step_4_output"
    print(f"demo: dataset in {out}: {sorted(p.name for p in out.glob('*.json'))}")
    if server is not None:
        print(f"demo: {OFFLINE_NOTE}")
    return 1 if summary.failed else 0
