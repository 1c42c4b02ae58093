"""`vr-annotate estimate`: the bill before paying it, modelled and then calibrated by the usage ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vr_assets.estimate import Estimate, estimate, main_estimate, media_tokens
from vr_assets.providers.usage import UsageLedger
from vr_assets.records import VideoProbe

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
    assert after.remaining_usd == 0 and abs(after.spent_usd - actual) < 1e-9
    # the fake counts 258 tokens per media part whatever its length: far below the model, which the ratios catch
    assert after.total_usd < before.total_usd
    assert "ledger" in after.render()
    model_only = estimate(spec, use_ledger=False)
    assert model_only.method == "model" and model_only.total_usd == before.total_usd


def test_estimate_cli_prints_the_bill(make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path,
                                      capsys: Any) -> None:
    import yaml

    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "s.mp4")
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(env.raw_spec(prices=PRICES)))
    assert main_estimate(str(cfg), ["workflow.mode=normal"], None) == 0
    out = capsys.readouterr().out
    assert "Estimate for 1 videos" in out and "total" in out and env.calls() == 0
    assert isinstance(Estimate.model_validate(estimate(env.spec(prices=PRICES)).model_dump()), Estimate)
