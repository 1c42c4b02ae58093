"""`vr-annotate estimate`: the bill before paying it, modelled and then calibrated by the usage ledger."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from vr_assets.config import Pricing
from vr_assets.estimate import Estimate, estimate, main_estimate, media_tokens
from vr_assets.providers.usage import UsageLedger
from vr_assets.records import VideoProbe

REPO = Path(__file__).resolve().parents[1]
PRICES = {"gemini-test": {"input_per_mtok": 0.30, "output_per_mtok": 2.50}}


def test_video_tokens_follow_duration_resolution_and_sound(make_pipeline: Any) -> None:
    env = make_pipeline("gemini")
    spec = env.spec(vlm={"gemini": {"media_resolution": None}})  # media.audio keep
    probe = VideoProbe(duration_sec=10.0, has_audio=True)
    assert media_tokens(spec, probe, 10.0) == 10 * 258 + 10 * 32
    assert media_tokens(spec, probe.model_copy(update={"has_audio": False}), 10.0) == 2580
    low = env.spec(vlm={"gemini": {"media_resolution": "MEDIA_RESOLUTION_LOW"}})
    assert media_tokens(low, probe, 10.0) == 10 * 66 + 320


def test_estimate_without_then_with_the_ledger(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    """No ledger: the model alone, and no model call. After a real run on the fake, the ledger's ratios
    project the same videos within 10% of what the ledger recorded."""
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["clip8"], "a.mp4")
    env.add_video(synthetic_videos["clip16"], "b.mp4")
    spec = env.spec(prices=PRICES)

    before = estimate(spec)
    assert env.calls() == 0, "the model-based estimate asked the teacher"
    assert before.method == "model" and before.videos == 2 and before.seconds == 24.0
    by_step = {s.step: s for s in before.steps}
    # auto mode: filter + classify per video, two captions each; chunk calls follow the chunk plan
    assert by_step["0"].calls == 4 and by_step["1a"].calls == 4
    assert by_step["1b"].calls > 0 and by_step["3"].calls > 0
    # video tokens (the default low media resolution: 66 per frame at 1 fps) dominate step 0's input
    assert by_step["0"].input_tokens > 2 * 24 * 66
    assert before.total_usd > 0 and "model" in before.render()

    summary = env.run(spec)
    assert summary.failed == {}
    ledger = UsageLedger(Path(spec.results_dir) / "usage")
    actual = sum(e.usage.cost_usd for e in ledger.entries())
    assert actual > 0

    after = estimate(spec)
    assert after.method == "ledger" and after.measured_videos == 2
    assert abs(after.total_usd - actual) <= 0.10 * actual, (after.total_usd, actual)
    assert after.remaining_usd == 0 and abs(after.spent_usd - actual) <= 5e-7  # reported to the micro-dollar
    # the fake counts 258 tokens per media part whatever its length: far below the model, which the ratios catch
    assert after.total_usd < before.total_usd
    assert "ledger" in after.render()
    model_only = estimate(spec, use_ledger=False)
    assert model_only.method == "model" and model_only.total_usd == before.total_usd

    # bench/cost.py on the same run: the ledger repriced with the spec's own price gives the ledger's cost
    cost = _bench_cost()
    row = cost.ours_row(env.results, Pricing(**PRICES["gemini-test"]))
    assert row.calls == len([e for e in ledger.entries() if not e.usage.cached])
    assert abs(row.usd - actual) < 1e-6 and row.videos == 2
    dataset_items = sum(len(json.loads(f.read_text())["items"])
                        for f in (env.results / "step_4_output").glob("*.json") if f.name != "dataset_report.json")
    print("items", row.items, "usable", row.usable_items, "dataset", dataset_items)
    assert 0 < row.usable_items <= row.items and row.usable_items >= dataset_items
    assert row.usd_per_usable_item == row.usd / row.usable_items
    ref = cost.reference_row(None)
    assert not ref.measured and "not measured" in cost.render([row, ref], cost.PriceTable.load(), "gemini-2.5-flash")


def _bench_cost() -> Any:
    spec = importlib.util.spec_from_file_location("bench_cost", REPO / "bench" / "cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cost"] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


def test_estimate_sample_calibrates_on_one_video_and_projects_the_other(
    make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    """`vr-annotate estimate --sample 1`: the pipeline runs one video (paid), the rest is projected."""
    import yaml

    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "a.mp4")
    env.add_video(synthetic_videos["clip8"], "b.mp4")
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(env.raw_spec(prices=PRICES, workflow={"max_workers": 1})))
    assert main_estimate(str(cfg), ["workflow.mode=normal"], 1) == 0
    out = capsys.readouterr().out
    assert "calibrating on 1 videos: a.mp4" in out and "method: ledger" in out and "Estimate for 2 videos" in out
    ledger = UsageLedger(env.results / "usage")
    assert {e.video_key for e in ledger.entries()} == {"a.mp4"}
    est = estimate(env.spec(prices=PRICES, workflow={"mode": "normal"}))
    assert est.measured_videos == 1 and est.remaining_usd > 0 and est.spent_usd > 0
    assert isinstance(Estimate.model_validate(est.model_dump()), Estimate)
