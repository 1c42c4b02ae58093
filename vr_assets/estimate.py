"""`vr-annotate estimate`: the bill a spec would run up on its videos, before paying it.

Without a sample it makes no model call. Each video is probed (PyAV) and every call the pipeline would
make for it is modelled: video tokens from its duration at the media settings, audio at 32 tokens/s when
kept, the prompt pack's rendered templates at ~4 characters per token, and a typical answer length per
prompt. When the usage ledger (`<results_dir>/usage/calls.jsonl`) holds calls of earlier runs, the model is
calibrated per step and teacher by what those videos really cost (measured ÷ modelled tokens and calls),
which also catches what the model cannot know: how many videos stop at step 0, how many are anomalies,
what the service really counts per second of video, how much was read from context caches.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from vr_assets.config import Pricing, Spec
from vr_assets.discovery import scan
from vr_assets.media import MediaError
from vr_assets.media_cache import chunk_plan, keeps_audio, media_tool, step0_fps
from vr_assets.prompts import PLACEHOLDERS, PromptPack, load_pack, qa_prompt_key
from vr_assets.providers.usage import UsageLedger, cache_write_usd, context_cache_pays, cost_usd, with_cache_prices
from vr_assets.records import VideoProbe
from vr_assets.whole_video import (
    CAPTION_FIELDS,
    CLASSIFY_KEY,
    FILTER_KEY,
    SCREENING_FIELDS,
    SCREENING_ONE_KEY,
    asks_relevance,
    both_captions_key,
    one_request_per_step,
    two_tasks,
    whole_video_calls,
)

Role = Literal["vlm", "llm"]
STEPS = ("0", "1a", "1b", "1c", "2", "3")
CHARS_PER_TOKEN = 4
AUDIO_TOKENS_PER_S = 32  # Gemini video-understanding doc (reference/scale_and_cost.md 5d)
GEMINI_SAMPLE_FPS = 1.0  # Gemini samples a video at 1 fps unless told otherwise (same source)
# Tokens per sampled frame by media_resolution (same source; the doc pages disagree, hence a calibration).
GEMINI_FRAME_TOKENS = {None: 258, "MEDIA_RESOLUTION_LOW": 66, "MEDIA_RESOLUTION_MEDIUM": 258,
                       "MEDIA_RESOLUTION_HIGH": 258}
GEMINI3_FRAME_TOKENS = {None: 280, "MEDIA_RESOLUTION_LOW": 70, "MEDIA_RESOLUTION_MEDIUM": 70,
                        "MEDIA_RESOLUTION_HIGH": 280}
QWEN_PATCH = 28  # Qwen-VL: one token per 28x28 pixels, two frames merged in time (an OpenAI-compatible VLM's guess)
ANOMALY_SHARE = 0.5  # workflow.mode auto without a ledger: a guess, replaced by the measured share
# A typical answer's tokens per prompt (guesses; the ledger replaces them).
OUTPUT_TOKENS = {
    FILTER_KEY: 60, CLASSIFY_KEY: 60, SCREENING_ONE_KEY: 120, "global_and_dense_caption": 750,
    "global_caption": 250, "dense_caption": 500, "chunk_caption": 150,
    "highlight_timestamp_extraction": 60, "highlight_chunk_caption": 200, "description": 600, "qa": 700,
}
VLM_KEYS_SUFFIX = ("_caption",)


class CallGuess(BaseModel):
    """One modelled call: what it would send and get back."""

    step: str
    role: Role
    prompt_key: str
    input_tokens: float
    output_tokens: float
    cached_tokens: float = 0.0
    cache_write_tokens: float = 0.0
    calls: float = 1.0  # a weight: 0.5 for a call only anomaly videos make, when the mode is unknown


class StepEstimate(BaseModel):
    step: str
    videos: int = Field(0, description="videos that make at least one call in this step (expected)")
    calls: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cached_tokens: float = Field(0.0, description="of the input tokens, those read from a context cache")
    cache_write_tokens: float = 0.0
    usd: float = 0.0


class Estimate(BaseModel):
    """The projected bill for a spec's discovered videos, per step and in total."""

    videos: int
    seconds: float = Field(0.0, description="video seconds estimated")
    method: str = Field(description="'model' (no ledger) or 'ledger' (model calibrated by measured ratios)")
    method_note: str = ""
    measured_videos: int = Field(0, description="videos of the ledger the ratios come from")
    steps: list[StepEstimate]
    total_usd: float
    spent_usd: float = Field(0.0, description="what the ledger already recorded for these videos")
    remaining_usd: float = Field(0.0, description="projected for the videos the ledger has no call for")
    skipped: dict[str, str] = Field(default_factory=dict, description="video -> why it is not estimated")
    unpriced_models: list[str] = Field(default_factory=list)

    def render(self) -> str:
        lines = [f"Estimate for {self.videos} videos ({self.seconds / 60:.1f} min of video); method: {self.method}"
                 + (f" — {self.method_note}" if self.method_note else ""),
                 f"{'step':<5} {'videos':>6} {'calls':>8} {'input tok':>12} {'cached':>10} {'output tok':>11} "
                 f"{'USD':>10}"]
        for s in self.steps:
            lines.append(f"{s.step:<5} {s.videos:>6} {s.calls:>8.1f} {s.input_tokens:>12,.0f} "
                         f"{s.cached_tokens:>10,.0f} {s.output_tokens:>11,.0f} {s.usd:>10.4f}")
        lines.append(f"{'total':<5} {self.videos:>6} {sum(s.calls for s in self.steps):>8.1f} "
                     f"{sum(s.input_tokens for s in self.steps):>12,.0f} "
                     f"{sum(s.cached_tokens for s in self.steps):>10,.0f} "
                     f"{sum(s.output_tokens for s in self.steps):>11,.0f} {self.total_usd:>10.4f}")
        if self.videos:
            lines.append(f"per video: ${self.total_usd / self.videos:.5f}")
        if self.measured_videos:
            lines.append(f"already spent on {self.measured_videos} videos: ${self.spent_usd:.4f}; "
                         f"still to pay for the rest: ${self.remaining_usd:.4f}")
        for m in self.unpriced_models:
            lines.append(f"warning: no price for model {m!r} in the spec's `prices`: its calls count $0")
        for k, why in self.skipped.items():
            lines.append(f"not estimated: {k}: {why}")
        return "\n".join(lines)


# ---------------------------------------------------------------- the model of one video's calls


def _frame_tokens(spec: Spec) -> int:
    g = spec.vlm.gemini
    table = GEMINI3_FRAME_TOKENS if "gemini-3" in g.model else GEMINI_FRAME_TOKENS
    return table[g.media_resolution]


def media_tokens(spec: Spec, probe: VideoProbe, seconds: float, fps: float | None = None) -> float:
    """Tokens the VLM reads for `seconds` of the video as step 0's copy sends it."""
    audio = AUDIO_TOKENS_PER_S * seconds if keeps_audio(spec) and probe.has_audio else 0.0
    if spec.vlm.backend == "gemini":
        rate = fps if fps is not None else GEMINI_SAMPLE_FPS
        return seconds * rate * _frame_tokens(spec) + audio
    w, h = probe.width or 640, probe.height or 480
    side = spec.media.max_side
    if side and max(w, h) > side:
        scale = side / max(w, h)
        w, h = w * scale, h * scale
    per_frame = math.ceil(w / QWEN_PATCH) * math.ceil(h / QWEN_PATCH) / 2
    rate = fps if fps is not None else (spec.media.fps or 2.0)
    return seconds * rate * per_frame + audio


def _template_tokens(pack: PromptPack, key: str) -> float:
    """The prompt's own text, its placeholders left empty (what fills them is added by the caller)."""
    if key == SCREENING_ONE_KEY:
        return len(two_tasks(pack, FILTER_KEY, CLASSIFY_KEY, SCREENING_FIELDS)) / CHARS_PER_TOKEN
    if key.endswith("_global_and_dense_caption"):
        mode = key.removesuffix("_global_and_dense_caption")
        text = two_tasks(pack, f"{mode}_global_caption", f"{mode}_dense_caption", CAPTION_FIELDS)
        return len(text) / CHARS_PER_TOKEN
    text = pack.render(key, **{p: "" for p in PLACEHOLDERS.get(key, ())})
    return len(text) / CHARS_PER_TOKEN


def _out(key: str) -> float:
    for k, n in OUTPUT_TOKENS.items():
        if key == k or key.endswith(k):
            return float(n)
    return float(OUTPUT_TOKENS["qa"])


def video_calls(spec: Spec, pack: PromptPack, probe: VideoProbe, mode: str | None = None) -> list[CallGuess]:
    """Every call the pipeline would make for a video that goes all the way, each weighted by its chance."""
    wf = spec.workflow
    d = probe.duration_sec
    price = _price(spec, "vlm")
    uploads = spec.vlm.backend == "gemini" and spec.media.transport == "upload"
    long_fps = step0_fps(spec, probe, "video")
    whole = media_tokens(spec, probe, d, long_fps)
    cache = (uploads and spec.vlm.context_cache == "auto"
             and context_cache_pays(price, whole_video_calls(spec, pack), spec.vlm.context_cache_ttl_s,
                                    wf.tier_of("0")))
    fixed = mode or (wf.mode if wf.mode in ("anomaly", "normal") else None)
    modes = [(fixed, 1.0)] if fixed else [("anomaly", ANOMALY_SHARE), ("normal", 1 - ANOMALY_SHARE)]
    out: list[CallGuess] = []
    first_whole = True

    def whole_call(step: str, key: str, weight: float) -> None:
        nonlocal first_whole
        cached = whole if cache else 0.0
        write = whole if cache and first_whole else 0.0
        first_whole = False
        out.append(CallGuess(step=step, role="vlm", prompt_key=key, input_tokens=whole + _template_tokens(pack, key),
                             output_tokens=_out(key), cached_tokens=cached, cache_write_tokens=write, calls=weight))

    if asks_relevance(spec) and not fixed and one_request_per_step(spec, pack):
        whole_call("0", SCREENING_ONE_KEY, 1.0)
    else:
        if asks_relevance(spec):
            whole_call("0", FILTER_KEY, 1.0)
        if not fixed:
            whole_call("0", CLASSIFY_KEY, 1.0)
    chunk_len, plan = chunk_plan(spec, d)
    for m, w in modes:
        captions_out = 0.0
        if one_request_per_step(spec, pack):
            whole_call("1a", both_captions_key(m), w)  # type: ignore[arg-type]
            captions_out += _out("global_caption") + _out("dense_caption")
        else:
            for kind in ("global_caption", "dense_caption"):
                whole_call("1a", f"{m}_{kind}", w)
                captions_out += _out(kind)
        for _, start, end in plan:
            key = f"{m}_chunk_caption"
            out.append(CallGuess(step="1b", role="vlm", prompt_key=key, calls=w, output_tokens=_out(key),
                                 input_tokens=media_tokens(spec, probe, end - start) + _template_tokens(pack, key)))
            captions_out += _out(key)
        highlight_out = 0.0
        if m == "anomaly" and "1c" in wf.steps:
            key = "highlight_timestamp_extraction"
            out.append(CallGuess(step="1c", role="llm", prompt_key=key, calls=w, output_tokens=_out(key),
                                 input_tokens=_template_tokens(pack, key) + captions_out))
            clip = min(d, wf.highlight_before_sec + wf.highlight_after_sec)
            key = "highlight_chunk_caption"
            out.append(CallGuess(step="1c", role="vlm", prompt_key=key, calls=w, output_tokens=_out(key),
                                 input_tokens=media_tokens(spec, probe, clip) + _template_tokens(pack, key)))
            highlight_out = _out(key)
        key = f"{m}_description"
        out.append(CallGuess(step="2", role="llm", prompt_key=key, calls=w, output_tokens=_out(key),
                             input_tokens=_template_tokens(pack, key) + captions_out + highlight_out))
        for t in wf.qa_types:
            key = qa_prompt_key(t, m)
            out.append(CallGuess(step="3", role="llm", prompt_key=key, calls=w, output_tokens=_out(key),
                                 input_tokens=_template_tokens(pack, key) + captions_out + highlight_out
                                 + _out("description")))
    return out


def role_of(prompt_key: str) -> Role:
    """Which teacher a prompt goes to: the VLM for screening and captions, the LLM for the rest."""
    if prompt_key in (FILTER_KEY, CLASSIFY_KEY, SCREENING_ONE_KEY) or (
        prompt_key.endswith("_caption") and prompt_key != "highlight_timestamp_extraction"
    ):
        return "vlm"
    return "llm"


def _price(spec: Spec, role: Role) -> Pricing | None:
    ms = spec.vlm if role == "vlm" else spec.llm
    name = ms.model_name
    price = spec.prices.get(name) or spec.prices.get(name.removeprefix("models/"))
    return with_cache_prices(name, price) if price is not None else None


# ---------------------------------------------------------------- calibration from the ledger


class Ratios(BaseModel):
    """Measured ÷ modelled, per (step, role), over the ledger's videos."""

    calls: float = 1.0
    input: float = 1.0
    output: float = 1.0
    cached_share: float | None = None  # measured cached ÷ measured input; None keeps the model's
    write_share: float | None = None


def _ratios(spec: Spec, measured: dict[str, list[CallGuess]], ledger: UsageLedger) -> dict[tuple[str, str], Ratios]:
    modelled: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * 3)
    for guesses in measured.values():
        for g in guesses:
            m = modelled[(g.step, g.role)]
            m[0] += g.calls
            m[1] += g.input_tokens * g.calls
            m[2] += g.output_tokens * g.calls
    actual: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * 5)
    for e in ledger.entries():
        u = e.usage
        if u.cached or e.video_key not in measured:
            continue
        a = actual[(u.step, role_of(u.prompt_key))]
        a[0] += 1
        a[1] += u.prompt_tokens
        a[2] += u.output_tokens + u.thinking_tokens
        a[3] += u.cached_tokens
        a[4] += u.cache_write_tokens
    out: dict[tuple[str, str], Ratios] = {}
    for key in set(modelled) | set(actual):
        m, a = modelled.get(key, [0.0] * 3), actual.get(key, [0.0] * 5)
        out[key] = Ratios(
            calls=a[0] / m[0] if m[0] else 0.0, input=a[1] / m[1] if m[1] else 0.0,
            output=a[2] / m[2] if m[2] else 0.0,
            cached_share=a[3] / a[1] if a[1] else 0.0, write_share=a[4] / a[1] if a[1] else 0.0,
        )
    return out


# ---------------------------------------------------------------- the estimate


def estimate(
    spec: Spec, *, use_ledger: bool = True, videos: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Estimate:
    """The projected bill for the spec's discovered videos (or `videos` of them). No model call."""
    found = scan(spec)
    wanted = set(videos) if videos is not None else None
    pack = load_pack(spec.prompt_pack, spec.prompts_module)
    tool = media_tool(spec)
    skipped: dict[str, str] = {}
    per_video: dict[str, list[CallGuess]] = {}
    seconds = 0.0
    for v in found.videos:
        if wanted is not None and v.key not in wanted:
            continue
        try:
            probe = tool.probe(v.path)
        except (MediaError, OSError) as e:
            skipped[v.key] = f"probe failed: {e}"
            continue
        if probe.duration_sec > spec.workflow.max_video_length_sec or not chunk_plan(spec, probe.duration_sec)[1]:
            skipped[v.key] = "step 0 stops it on its probe (too long or too short): no call"
            continue
        seconds += probe.duration_sec
        per_video[v.key] = video_calls(spec, pack, probe, v.mode)
    ledger = UsageLedger(Path(spec.results_dir) / "usage")
    entries = ledger.entries() if use_ledger else []
    in_ledger = {e.video_key for e in entries if not e.usage.cached}
    measured = {k: g for k, g in per_video.items() if k in in_ledger}
    ratios = _ratios(spec, measured, ledger) if measured else {}
    method = "ledger" if ratios else "model"
    if ratios:
        note = (f"per-step ratios measured on {len(measured)} videos in {ledger.path} "
                "(measured ÷ modelled calls, input, output tokens; cached share)")
    else:
        note = ("modelled: video tokens/s at the media settings, audio 32 tok/s, templates at 4 chars/token, "
                f"typical answer lengths, {ANOMALY_SHARE:.0%} anomalies; no ledger"
                + ("" if use_ledger else " (not used)"))
    steps = {s: StepEstimate(step=s) for s in STEPS}
    step_videos: dict[str, set[str]] = defaultdict(set)
    unpriced: set[str] = set()
    remaining = 0.0
    for key, guesses in per_video.items():
        video_usd = 0.0
        for g in guesses:
            r = ratios.get((g.step, g.role))
            if ratios and r is None:
                r = Ratios(calls=0.0, input=0.0, output=0.0)  # the measured videos never made this call
            calls = g.calls * (r.calls if r else 1.0)
            inp = g.input_tokens * g.calls * (r.input if r else 1.0)
            outp = g.output_tokens * g.calls * (r.output if r else 1.0)
            cached = inp * r.cached_share if r and r.cached_share is not None else g.cached_tokens * g.calls
            write = inp * r.write_share if r and r.write_share is not None else g.cache_write_tokens * g.calls
            price = _price(spec, g.role)
            if price is None:
                unpriced.add((spec.vlm if g.role == "vlm" else spec.llm).model_name)
            ttl = (spec.vlm if g.role == "vlm" else spec.llm).context_cache_ttl_s
            billed = price.for_tier(spec.workflow.tier_of(g.step)) if price is not None else None  # flex/batch: half
            usd = (cost_usd(billed, round(inp), round(outp), 0, round(cached))
                   + cache_write_usd(price, round(write), ttl))
            s = steps[g.step]
            s.calls += calls
            s.input_tokens += inp
            s.output_tokens += outp
            s.cached_tokens += cached
            s.cache_write_tokens += write
            s.usd += usd
            video_usd += usd
            if calls > 0:
                step_videos[g.step].add(key)
        if key not in measured:
            remaining += video_usd
    for s in steps.values():
        s.videos = len(step_videos[s.step])
        s.usd = round(s.usd, 6)
    spent = sum(e.usage.cost_usd for e in entries if e.video_key in measured)
    return Estimate(
        videos=len(per_video), seconds=round(seconds, 2), method=method, method_note=note,
        measured_videos=len(measured), steps=list(steps.values()),
        total_usd=round(sum(s.usd for s in steps.values()), 6), spent_usd=round(spent, 6),
        remaining_usd=round(remaining, 6), skipped=skipped, unpriced_models=sorted(unpriced),
    )


def main_estimate(config: str | None, overrides: list[str] | None, sample: int | None) -> int:
    """`vr-annotate estimate`: with `sample`, first run the pipeline on that many videos not yet in the
    ledger (they are paid for) to calibrate, then print the projected bill."""
    from vr_assets.config import SpecError, load_spec

    try:
        spec = load_spec(config, overrides)
        if sample:
            from vr_assets.cli import run_pipeline

            done = {e.video_key for e in UsageLedger(Path(spec.results_dir) / "usage").entries()}
            keys = sorted(v.key for v in scan(spec).videos if v.key not in done)[:sample]
            if keys:
                print(f"calibrating on {len(keys)} videos: {', '.join(keys)}")
                run_pipeline(spec, only=keys, build_dataset=False)  # a dataset of the sample alone is no use
        print(estimate(spec).render())
    except (SpecError, FileNotFoundError) as e:  # a bad spec, a missing video_root
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
