"""Cost per usable item (issue #20 item 5): what one dataset item that passes every error-level check costs.

Both pipelines are measured the same way, on the wire: bench/run.py starts the fake Gemini with a usage log
(`<out>/{ours,reference}/wire_usage.jsonl`, vr_assets/fakes/usage_log.py) that records every billed event
with the facts of each media part (seconds sampled, fps, media_resolution, audio seconds); the video tokens are
counted from those facts as the priced model would (258 tokens/frame, 66 at media_resolution LOW, at 1 fps or
the part's videoMetadata fps, + 32 tok/s of audio), and priced with one dated table
(`bench/prices_2026-12.yaml`). Usable items: ours, each video's exported items (`task_exports`) less those
`vr_assets.checks.item_failures` fails at error level; the reference's, its step-4 files through the same
function. Our own usage ledger (`<results>/usage/calls.jsonl`) is the cross-check of our wire log, and gives
the per-step split for the batch/flex lever and the call cache's hits.

    python bench/cost.py --out bench/out [--model gemini-2.5-flash] [--batch-steps 2,3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from vr_assets.checks import item_failures  # noqa: E402
from vr_assets.config import Pricing, load_spec  # noqa: E402
from vr_assets.estimate import estimate  # noqa: E402
from vr_assets.fakes.usage_log import SAMPLE_FPS, PartTokens, UsageLog, WireUsage  # noqa: E402
from vr_assets.prompts import load_pack  # noqa: E402
from vr_assets.providers.usage import UsageLedger, cache_write_usd, cost_usd  # noqa: E402
from vr_assets.quality import ExampleIndex  # noqa: E402
from vr_assets.records import Captions, TaskExports, TaskItem  # noqa: E402
from vr_assets.registry import VideoRegistry  # noqa: E402
from vr_assets.store import JsonStore  # noqa: E402

PRICES = BENCH / "prices_2026-12.yaml"
DEFAULT_MODEL = "gemini-2.5-flash"
WIRE_USAGE = "wire_usage.jsonl"  # bench/run.py: the fake's usage log in each run dir
DEFAULT_TTL_S = 600.0  # ModelSpec.context_cache_ttl_s's default


class PriceTable(BaseModel):
    date: str
    sources: list[str]
    models: dict[str, Pricing]

    @classmethod
    def load(cls, path: Path = PRICES) -> PriceTable:
        return cls.model_validate(yaml.safe_load(path.read_text()))


class CostRow(BaseModel):
    who: str
    measured: bool
    reason: str = ""
    videos: int = 0
    calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    items: int = 0
    usable_items: int = 0

    @property
    def usd_per_usable_item(self) -> float | None:
        return self.usd / self.usable_items if self.usable_items else None


def ledger_cost(results: Path, price: Pricing, ttl_s: float = DEFAULT_TTL_S) -> CostRow:
    """Every paid call in the ledger (call-cache hits cost nothing), repriced with `price`."""
    row = CostRow(who="ours", measured=True)
    for e in UsageLedger(results / "usage").entries():
        u = e.usage
        if u.cached:
            continue
        row.calls += 1
        row.input_tokens += u.prompt_tokens
        row.cached_tokens += u.cached_tokens
        row.output_tokens += u.output_tokens + u.thinking_tokens
        billed = price.for_tier(u.tier)  # flex and batch calls at their fraction of the table
        row.usd += cost_usd(billed, u.prompt_tokens, u.output_tokens, u.thinking_tokens, u.cached_tokens)
        row.usd += cache_write_usd(price, u.cache_write_tokens, ttl_s)
    row.usd = round(row.usd, 8)
    return row


def usable_items(results: Path, prompt_pack: str = "general", prompts_module: str = "") -> tuple[int, int, int]:
    """(videos exported, items, items passing every error-level check) over the run's per-video exports."""
    store = JsonStore(results)
    examples = ExampleIndex.of(load_pack(prompt_pack, prompts_module))
    videos = items = usable = 0
    for key in sorted(VideoRegistry(results).load()):
        te: TaskExports | None = store.read_optional("task_exports", key)
        if te is None:
            continue
        cap: Captions = store.read("captions", key)
        videos += 1
        bad = {(f.task, f.index) for f in item_failures(te, cap.probe.duration_sec, examples) if f.severity == "error"}
        n = sum(len(v) for v in te.tasks.values())
        items += n
        usable += n - len(bad)
    return videos, items, usable


def ours_row(results: Path, price: Pricing, prompt_pack: str = "general", prompts_module: str = "") -> CostRow:
    row = ledger_cost(results, price)
    row.videos, row.items, row.usable_items = usable_items(results, prompt_pack, prompts_module)
    return row


def reference_row(reference_dir: Path | None) -> CostRow:
    """The reference's row without a measured run: why it is missing."""
    why = []
    if not (BENCH / ".ref-venv" / "bin" / "python").exists():
        why.append("bench/.ref-venv is missing (bench/setup_reference.sh not run here), so no reference run")
    if reference_dir is None or not (reference_dir / WIRE_USAGE).exists():
        why.append("no reference run with a wire usage log (bench/run.py without --skip-reference) given or found")
    return CostRow(who="reference", measured=False, reason="; ".join(why))


# ---------------------------------------------------------------- on the wire (the fake's usage log)


class Levers(BaseModel):
    """Which of our cost levers a repricing keeps as the run had them (False: priced as if it were off)."""

    media: bool = True  # media_resolution as sent (LOW) and the frame budget's fps for long videos
    audio_drop: bool = False  # True: price as if the audio track were dropped
    explicit_cache: bool = True  # explicit context caches as made and read


class WireCost(BaseModel):
    calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    audio_tokens: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    usd: float = 0.0


def wire_cost(entries: list[WireUsage], price: Pricing, model: str, lv: Levers | None = None, *,
              recount: bool = True) -> WireCost:
    """The bill of every billed event in a wire usage log. `recount`: media tokens counted again from each
    part's facts as `model` would (tokens per frame at the part's resolution, 32 tok/s audio), levers as `lv`;
    cache storage for the time the cache lived (the TTL when never deleted). Without `recount`: the counts the
    fake reported and storage for the whole TTL, as the ledger prices them (the cross-check)."""
    lv = lv or Levers()
    lived = {e.cache_name: e.lived_s for e in entries if e.kind == "cache_delete" and e.lived_s is not None}
    out = WireCost()

    def tokens(p: PartTokens) -> tuple[int, int]:
        if not recount:
            return p.video_tokens, p.audio_tokens
        return p.recount(model, resolution="keep" if lv.media else None, fps=None if lv.media else SAMPLE_FPS,
                         audio=not lv.audio_drop)

    for e in entries:
        counted = [tokens(p) for p in e.parts]
        media = sum(v + a for v, a in counted)
        if e.kind == "generate":
            prompt = e.text_tokens + media if recount else e.prompt_tokens
            cached = 0
            if e.cached_tokens and lv.explicit_cache:
                cached = (e.cached_text_tokens + sum(v + a for (v, a), p in zip(counted, e.parts, strict=True)
                                                     if p.from_cache)) if recount else e.cached_tokens
            out.calls += 1
            out.input_tokens += prompt
            out.cached_tokens += cached
            out.output_tokens += e.output_tokens + e.thinking_tokens
            out.audio_tokens += sum(a for _, a in counted)
            out.usd += cost_usd(price.for_tier(e.tier), prompt, e.output_tokens, e.thinking_tokens, cached)
        elif e.kind == "cache_create" and lv.explicit_cache:
            n = e.text_tokens + media if recount else e.prompt_tokens
            ttl = e.ttl_s or 3600.0
            held = min(lived.get(e.cache_name, ttl), ttl) if recount else ttl
            out.cache_write_tokens += n
            out.usd += cache_write_usd(price, n, held)
        elif e.kind == "upload":
            out.uploads += 1
            out.upload_bytes += e.upload_bytes
    out.usd = round(out.usd, 8)
    return out


def wire_row(who: str, run_dir: Path, price: Pricing, model: str, usable: tuple[int, int, int]) -> CostRow:
    w = wire_cost(UsageLog.read(run_dir / WIRE_USAGE), price, model)
    videos, items, good = usable
    return CostRow(who=who, measured=True, videos=videos, calls=w.calls, input_tokens=w.input_tokens,
                   cached_tokens=w.cached_tokens, output_tokens=w.output_tokens, usd=w.usd, items=items,
                   usable_items=good)


def reference_usable_items(run_dir: Path, manifest: Path) -> tuple[int, int, int]:
    """(videos with items, items, items passing every error-level check) of the reference's step-4 files, by our
    `item_failures` with the same rules; the rule comparing an item with our own prompt pack's examples is left
    out (the reference's prompts have other examples). Durations and modes from the bench's workload manifest."""
    facts = {v["name"]: v for v in json.loads(manifest.read_text())}
    by_video: dict[str, dict[str, list[TaskItem]]] = {}
    for f in sorted((run_dir / "results" / "step_4_output").glob("*.json")):
        doc = json.loads(f.read_text())
        for raw in doc.get("items", []):
            by_video.setdefault(raw["video_id"], {}).setdefault(f.stem, []).append(TaskItem.model_validate(raw))
    items = usable = 0
    for vid, tasks in by_video.items():
        v = facts.get(Path(vid).name, {})
        mode = "normal" if v.get("label") == "normal" else "anomaly"
        te = TaskExports(video_key=vid, mode=mode, tasks=tasks)
        bad = {(x.task, x.index) for x in item_failures(te, float(v.get("duration_s", 0.0))) if x.severity == "error"}
        n = sum(len(t) for t in tasks.values())
        items += n
        usable += n - len(bad)
    return len(by_video), items, usable


# ---------------------------------------------------------------- the levers


class LeverRow(BaseModel):
    lever: str
    used: str
    usd_toggled: float
    share: float  # of the bill without the lever (used) or of the run's bill (would save)
    note: str = ""


def _share(off: float, on: float) -> float:
    return round((off - on) / off, 4) if off else 0.0


def ledger_step_usd(results: Path, price: Pricing, ttl_s: float) -> tuple[dict[str, float], float, int]:
    """(USD per step of the paid calls, USD the call cache's hits would have cost, hits) from our ledger."""
    per: dict[str, float] = {}
    hits_usd, hits = 0.0, 0
    for e in UsageLedger(results / "usage").entries():
        u = e.usage
        c = cost_usd(price.for_tier(u.tier), u.prompt_tokens, u.output_tokens, u.thinking_tokens, u.cached_tokens)
        if u.cached:
            hits_usd += c
            hits += 1
            continue
        per[u.step] = per.get(u.step, 0.0) + c + cache_write_usd(price, u.cache_write_tokens, ttl_s)
    return per, hits_usd, hits


def levers(out: Path, price: Pricing, model: str, batch_steps: list[str], ttl_s: float) -> list[LeverRow]:
    """Each lever of ours toggled alone on the same wire log (or the same ledger), the rest as the run had them."""
    entries = UsageLog.read(out / "ours" / WIRE_USAGE)
    factor = batch_factor(out, price, batch_steps, ttl_s)  # the batch/flex steps at 50%, as in the run's row

    def bill(lv: Levers | None = None) -> float:
        return wire_cost(entries, price, model, lv).usd * factor

    standard = wire_cost(entries, price, model).usd
    actual = standard * factor
    rows: list[LeverRow] = []
    audio_s = sum(p.audio_s for e in entries if e.kind == "generate" for p in e.parts)
    kept = audio_s > 0
    dropped = bill(Levers(audio_drop=True))
    rows.append(LeverRow(lever="audio drop", used="no (kept: Gemini hears it)" if kept else "no audio in the videos",
                         usd_toggled=dropped, share=_share(actual, dropped),
                         note=f"{audio_s:.0f} s of audio read at 32 tok/s; the share is what dropping would save"))
    off = bill(Levers(explicit_cache=False))
    rows.append(LeverRow(lever="explicit context caching", used="yes", usd_toggled=off, share=_share(off, actual),
                         note="off: the cached tokens at the input price, no cache writes or storage"))
    off = bill(Levers(media=False))
    rows.append(LeverRow(lever="media_resolution LOW + frame-budget fps", used="yes", usd_toggled=off,
                         share=_share(off, actual), note="off: 258 tokens/frame at 1 fps; the downscaled copy "
                         "itself changes bytes, not tokens (Gemini bills per frame)"))
    ups = sum(1 for e in entries if e.kind == "upload")
    rows.append(LeverRow(lever="one upload per video", used=f"yes ({ups} uploads)", usd_toggled=actual, share=0.0,
                         note="Files API uploads are not billed; it saves bytes and time (table above), not dollars"))
    per_step, hits_usd, hits = ledger_step_usd(out / "ours" / "results", price, ttl_s)
    ledger_total = sum(per_step.values())
    rows.append(LeverRow(lever="answer cache (call cache)", used=f"{hits} hits", usd_toggled=actual + hits_usd,
                         share=_share(actual + hits_usd, actual),
                         note="a fresh run has no hits; on a re-run every unchanged call is one"))
    steps = batch_steps or ["2", "3"]
    frac = sum(per_step.get(s, 0.0) for s in steps) / ledger_total if ledger_total else 0.0
    if batch_steps:  # priced so in the run's row already: toggled = standard tier
        rows.append(LeverRow(lever=f"batch/flex at 50% (steps {','.join(steps)})", used="yes (--batch-steps)",
                             usd_toggled=standard, share=round(0.5 * frac, 4),
                             note="the steps' share of the ledger's cost, halved"))
    else:
        rows.append(LeverRow(lever=f"batch/flex at 50% (steps {','.join(steps)})", used="no",
                             usd_toggled=actual * (1 - 0.5 * frac), share=round(0.5 * frac, 4),
                             note="what it would save: the steps' share of the ledger's cost, halved"))
    return rows


def with_sound(entries: list[WireUsage]) -> list[WireUsage]:
    """The same log as if every video part had a sound track (the bench's clips are silent; most footage is not)."""
    out = []
    for e in entries:
        parts = [p.model_copy(update={"audio_s": p.seconds}) if p.modality == "VIDEO" and p.seconds else p
                 for p in e.parts]
        out.append(e.model_copy(update={"parts": parts}))
    return out


def sound_line(out: Path, price: Pricing, model: str, ours: CostRow, ref: CostRow) -> str:
    """What the audio lever would do on footage with sound: both pipelines' bills with the track heard, and ours
    with it dropped (`media.audio: drop`), per usable item against the reference's."""
    o = with_sound(UsageLog.read(out / "ours" / WIRE_USAGE))
    keep, drop = wire_cost(o, price, model).usd, wire_cost(o, price, model, Levers(audio_drop=True)).usd
    text = (f"if the videos had sound (32 tok/s over every video part's seconds): ours keeping it ${keep:.5f}, "
            f"dropping it ${drop:.5f} ({_share(keep, drop):.1%} saved)")
    if ref.measured and (out / "reference" / WIRE_USAGE).exists() and ours.usable_items and ref.usable_items:
        r = wire_cost(with_sound(UsageLog.read(out / "reference" / WIRE_USAGE)), price, model).usd
        text += (f"; the reference ${r:.5f}; per usable item ours (drop) ÷ reference "
                 f"{(drop / ours.usable_items) / (r / ref.usable_items):.3f}x")
    return text


def batch_factor(out: Path, price: Pricing, batch_steps: list[str], ttl_s: float) -> float:
    """The run's bill multiplier when `batch_steps` ran on the batch/flex tier (table x 0.5 for them)."""
    if not batch_steps:
        return 1.0
    per_step, _, _ = ledger_step_usd(out / "ours" / "results", price, ttl_s)
    total = sum(per_step.values())
    return 1 - 0.5 * sum(per_step.get(s, 0.0) for s in batch_steps) / total if total else 1.0


def estimate_vs_actual(spec_path: Path, table: PriceTable, model: str = DEFAULT_MODEL) -> tuple[float, float]:
    """(model-based estimate, actual) in USD for a finished run, both priced with `model` from `table`:
    the estimate as `vr-annotate estimate` would have printed it before the run (no ledger), the actual the
    ledger (the tokens the service reported, here the fake counting video by duration)."""
    est, actual, _ = estimate_by_step(spec_path, table, model)
    return est, actual


def estimate_by_step(spec_path: Path, table: PriceTable, model: str = DEFAULT_MODEL) -> tuple[float, float, str]:
    """estimate_vs_actual, and per step: estimated/actual USD, input and output tokens (where the error is)."""
    spec = load_spec(spec_path)
    price = table.models[model]
    spec = spec.model_copy(update={"prices": {spec.vlm.model_name: price, spec.llm.model_name: price}})
    est = estimate(spec, use_ledger=False)
    results = Path(spec.results_dir)
    actual = ledger_cost(results, price, spec.vlm.context_cache_ttl_s).usd
    tok: dict[str, list[float]] = {}
    for e in UsageLedger(results / "usage").entries():
        if not e.usage.cached:
            t = tok.setdefault(e.usage.step, [0.0, 0.0, 0.0])
            t[0] += 1
            t[1] += e.usage.prompt_tokens
            t[2] += e.usage.output_tokens + e.usage.thinking_tokens
    parts = []
    for s in est.steps:
        calls, tin, tout = tok.get(s.step, [0.0, 0.0, 0.0])
        parts.append(f"{s.step}: calls {s.calls:.0f}/{calls:.0f}, input {s.input_tokens:,.0f}/{tin:,.0f}, "
                     f"output {s.output_tokens:,.0f}/{tout:,.0f}")
    return est.total_usd, actual, "; ".join(parts)


def bench_lines(out: Path, model: str = DEFAULT_MODEL, batch_steps: list[str] | None = None) -> str:
    """What bench/run.py prints after its report: cost per usable item (ours, the reference, the ratio), the share
    each lever saves, the ledger against the wire, and the estimate's error against the actual bill."""
    spec_path, results = out / "ours" / "spec.yaml", out / "ours" / "results"
    if not spec_path.exists() or not (results / "usage").exists():
        return f"cost per usable item: not measured: no run of ours in {out}"
    batch_steps = batch_steps or []
    table = PriceTable.load()
    price = table.models[model]
    spec = load_spec(spec_path)
    ttl = spec.vlm.context_cache_ttl_s
    ours_usable = usable_items(results, spec.prompt_pack, spec.prompts_module)
    lines: list[str] = []
    if (out / "ours" / WIRE_USAGE).exists():
        ours = wire_row("ours", out / "ours", price, model, ours_usable)
        ours.usd = round(ours.usd * batch_factor(out, price, batch_steps, ttl), 8)
    else:
        ours = ours_row(results, price, spec.prompt_pack, spec.prompts_module)
        ours.who = "ours (ledger)"
    ref_dir = out / "reference"
    if (ref_dir / WIRE_USAGE).exists() and (out / "manifest.json").exists():
        ref = wire_row("reference", ref_dir, price, model, reference_usable_items(ref_dir, out / "manifest.json"))
    else:
        ref = reference_row(ref_dir)
    lines.append(render([ours, ref], table, model))
    lines.append(ratio_line(ours, ref))
    if (out / "ours" / WIRE_USAGE).exists():
        lines.append("")
        lines.append(render_levers(levers(out, price, model, batch_steps, ttl)))
        lines.append(sound_line(out, price, model, ours, ref))
        lines.append(cross_check(out, price, ttl))
    est, actual, steps = estimate_by_step(spec_path, table, model)
    error = f"{(est - actual) / actual:+.1%}" if actual else "n/a (actual $0)"
    lines.append(f"estimate vs actual (ours, priced as {model}; `vr-annotate estimate` before the run, no ledger, "
                 f"against the ledger of the run; the fake counts video by duration x fps x tokens/frame + audio): "
                 f"estimated ${est:.5f}, actual ${actual:.5f}, error {error}")
    lines.append(f"… per step, estimated/actual: {steps}")
    sampled = sampled_estimate(spec_path, table, model)
    if sampled is not None and actual:
        n, est_n = sampled
        lines.append(f"estimate calibrated on {n} of the videos (what `vr-annotate estimate --sample {n}` does: their "
                     f"ledger entries only, the other videos modelled and scaled by the measured ratios): "
                     f"estimated ${est_n:.5f}, actual ${actual:.5f}, error {(est_n - actual) / actual:+.1%}")
    return "\n".join(lines)


def sampled_estimate(spec_path: Path, table: PriceTable, model: str = DEFAULT_MODEL,
                     sample: int = 3) -> tuple[int, float] | None:
    """The estimate after a `--sample N` calibration, replayed without paying again: a copy of the run's ledger
    cut down to the first N videos it names (in a scratch results dir), then `estimate` over every video."""
    import tempfile

    spec = load_spec(spec_path)
    price = table.models[model]
    results = Path(spec.results_dir)
    entries = UsageLedger(results / "usage").entries()
    first: list[str] = []
    for e in entries:
        if e.video_key not in first and len(first) < sample:
            first.append(e.video_key)
    if len(first) < sample:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "usage"
        ledger.mkdir()
        kept = [line for line in (results / "usage" / "calls.jsonl").read_text().splitlines()
                if json.loads(line)["video_key"] in first]
        (ledger / "calls.jsonl").write_text("\n".join(kept) + "\n")
        cut = spec.model_copy(update={"results_dir": tmp,
                                      "prices": {spec.vlm.model_name: price, spec.llm.model_name: price}})
        return sample, estimate(cut).total_usd


def ratio_line(ours: CostRow, ref: CostRow) -> str:
    a, b = ours.usd_per_usable_item, ref.usd_per_usable_item
    per_video = f"; the bill on the same videos {ours.usd / ref.usd:.2f}x" if ref.measured and ref.usd else ""
    per_item = (f"; per exported item {(ours.usd / ours.items) / (ref.usd / ref.items):.2f}x"
                if ref.measured and ours.items and ref.items and ref.usd else "")
    if a is None or b is None:
        why = "ours has no usable item" if a is None else f"the reference has {ref.usable_items} usable items"
        return f"cost per usable item ours ÷ reference: not defined ({why}){per_video}{per_item}"
    ratio = a / b
    return (f"**cost per usable item ours ÷ reference: {ratio:.3f}x** (floor <= 0.40x: "
            f"{'met' if ratio <= 0.40 else 'NOT met'}){per_video}{per_item}")


def render_levers(rows: list[LeverRow]) -> str:
    lines = ["| lever (ours, same wire log repriced) | used in the run | USD with it toggled | share saved | how |",
             "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.lever} | {r.used} | {r.usd_toggled:.5f} | {r.share:.1%} | {r.note} |")
    return "\n".join(lines)


def cross_check(out: Path, price: Pricing, ttl_s: float) -> str:
    """Our ledger against the wire, both with the counts the fake reported and storage for the whole TTL."""
    w = wire_cost(UsageLog.read(out / "ours" / WIRE_USAGE), price, "", recount=False)
    led = ledger_cost(out / "ours" / "results", price, ttl_s)
    return (f"cross-check, ours: wire {w.calls} calls ${w.usd:.5f} (input {w.input_tokens:,}, cached "
            f"{w.cached_tokens:,}, output {w.output_tokens:,}) against our ledger {led.calls} calls ${led.usd:.5f} "
            f"(input {led.input_tokens:,}, cached {led.cached_tokens:,}, output {led.output_tokens:,})")


def render(rows: list[CostRow], table: PriceTable, model: str) -> str:
    lines = [f"Cost per usable item, priced as {model} (price table {table.date}: {', '.join(table.sources)})",
             "| who | videos | calls | input tok | cached tok | output tok | USD | items | usable | USD/usable item |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.measured:
            lines.append(f"| {r.who} | not measured: {r.reason} | | | | | | | | |")
            continue
        per = r.usd_per_usable_item
        lines.append(f"| {r.who} | {r.videos} | {r.calls} | {r.input_tokens:,} | {r.cached_tokens:,} | "
                     f"{r.output_tokens:,} | {r.usd:.5f} | {r.items} | {r.usable_items} | "
                     f"{'-' if per is None else f'{per:.6f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=BENCH / "out", help="a bench/run.py output dir (ours/, reference/)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batch-steps", default="", help="steps run on the batch/flex tier (priced at 50%%), e.g. 2,3")
    args = p.parse_args(argv)
    table = PriceTable.load()
    if args.model not in table.models:
        print(f"error: model {args.model!r} is not in {PRICES} (has {', '.join(table.models)})")
        return 2
    print(bench_lines(args.out, args.model, [s for s in args.batch_steps.split(",") if s]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
