"""The questions asked of the whole video, without Dagster: step 0's screening and step 1a's captions.

The `filter_result` and `captions` assets ask them; so does vr-annotate's prefetch, for videos no
worker has taken yet, while the workers are still loading Dagster (`vr_assets.execution.prefetch`). Both build
the same calls here, so the assets find the prefetch's answers in the call cache instead of paying
for them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vr_assets.config import Spec
from vr_assets.media import MIN_CHUNK_SEC, video_mime
from vr_assets.media_cache import chunk_plan, step0_fps
from vr_assets.parsing import excerpt, parse_classification, parse_relevance
from vr_assets.prompts import PromptPack
from vr_assets.providers import MediaRef, ModelAnswer, ModelCall
from vr_assets.records import AnomalyVerdict, CallUsage, Mode, RelevanceVerdict, VideoProbe

FILTER_KEY = "video_filtering"
CLASSIFY_KEY = "video_anomaly_classification"
SCREENING_KEYS = (FILTER_KEY, CLASSIFY_KEY)
CAPTION_KEYS = ("anomaly_global_caption", "normal_global_caption", "anomaly_dense_caption", "normal_dense_caption")

# Runs one step's calls and returns their answers, or raises naming the video and the step.
RunCalls = Callable[[list[ModelCall], str], list[ModelAnswer]]


class TooShortError(ValueError):
    """A video no chunk can be cut from: any question about it would be paid for nothing."""


def too_short_reason(spec: Spec, probe: VideoProbe) -> str | None:
    """Why step 1b would cut no chunk from this video (decided by step 1b's own `chunk_plan`), or None."""
    if chunk_plan(spec, probe.duration_sec)[1]:
        return None
    frames = probe.duration_sec * probe.fps
    what = "a single frame (a still image)" if 0 < frames < 1.5 else f"{probe.duration_sec:.2f} s"
    return f"too short to chunk: {what}; step 1b's first chunk needs {MIN_CHUNK_SEC:g} s"


def probe_stop_reason(spec: Spec, probe: VideoProbe) -> str | None:
    """Why step 0 stops this video on its probe alone, before any model call (too long, too short), or None."""
    limit = spec.workflow.max_video_length_sec
    if probe.duration_sec > limit:
        return f"too long: {probe.duration_sec:.1f} s > workflow.max_video_length_sec {limit:.0f} s"
    return too_short_reason(spec, probe)


def whole_video_ref(spec: Spec, probe: VideoProbe, kind: str, paths: list[Path], video_key: str) -> MediaRef:
    """Step 0's media (`media_cache.step0_media`, sampled at `media_cache.step0_fps`) as the model gets it,
    in steps 0 and 1a and in the prefetch's questions: one place, so their cache keys cannot drift apart.

    Refused (`TooShortError`) for a video too short to chunk: step 0 stops it before asking, and whoever
    asks ahead of step 0 (the prefetch) cannot pay for questions about it either.
    """
    if (short := too_short_reason(spec, probe)) is not None:
        raise TooShortError(f"video {video_key}: {short}")
    mime = "image/jpeg" if kind == "frames" else video_mime(paths[0])
    fps = step0_fps(spec, probe, kind)
    return MediaRef(kind=kind, paths=paths, mime_type=mime, video_key=video_key, fps=fps,  # type: ignore[arg-type]
                    reuses=whole_video_calls(spec))


def whole_video_calls(spec: Spec) -> int:
    """Questions a video that goes on gets about its whole copy: step 0's relevance and anomaly questions
    (when asked) and step 1a's two captions. An explicit context cache is judged on this count (a video
    that stops at step 0, or whose mode its JSONL line gives, is asked fewer)."""
    return int(asks_relevance(spec)) + int(spec.workflow.mode == "auto") + len(CAPTION_KEYS) // 2


def asks_relevance(spec: Spec) -> bool:
    return "0" in spec.workflow.steps or spec.workflow.mode == "auto"


def known_mode(spec: Spec, video_mode: Mode | None) -> tuple[Mode | None, str]:
    """(mode, where it came from) before step 0's answers; None: the classification question decides."""
    if video_mode is not None:
        return video_mode, "jsonl"
    if spec.workflow.mode in ("anomaly", "normal"):
        return spec.workflow.mode, "workflow"  # type: ignore[return-value]
    return None, "step_0"


class ScreeningError(ValueError):
    """An answer that decides nothing (neither yes nor no; neither anomaly nor normal)."""


@dataclass
class Screening:
    """What step 0's answers decided; `None` where a question was not asked."""

    is_valid: bool | None = None
    reason: str = ""
    raw: str = ""
    label: Mode | None = None
    class_raw: str = ""
    usage: list[CallUsage] = field(default_factory=list)


def screen(
    pack: PromptPack, run: RunCalls, video_key: str, media: MediaRef, *, ask_relevance: bool, mode: Mode | None
) -> Screening:
    """Ask whether the video belongs to the domain (if `ask_relevance`), then, unless it does not or
    its mode is already known, whether it shows an anomaly."""
    out = Screening()
    if ask_relevance:
        (ans,) = run([pack.call("0", FILTER_KEY, video_key, media)], "0 (filter)")
        out.usage.append(ans.usage)
        out.raw = ans.text
        if isinstance(ans.parsed, RelevanceVerdict):
            out.is_valid, out.reason = ans.parsed.relevant, ans.parsed.reason
        else:
            out.is_valid, out.reason = parse_relevance(ans.text)
        if out.is_valid is None:
            raise ScreeningError(
                f"video {video_key}: step 0: the filter answer is neither yes nor no: {excerpt(ans.text, 200)!r}"
            )
    if out.is_valid is not False and mode is None:
        (ans,) = run([pack.call("0", CLASSIFY_KEY, video_key, media)], "0 (classify)")
        out.usage.append(ans.usage)
        out.class_raw = ans.text
        label = ans.parsed.label if isinstance(ans.parsed, AnomalyVerdict) else parse_classification(ans.text)
        if label not in ("anomaly", "normal"):
            raise ScreeningError(
                f"video {video_key}: step 0: the classification answer ends in neither 'anomaly' nor 'normal': "
                f"{excerpt(ans.text, 200)!r}"
            )
        out.label = label  # type: ignore[assignment]
    return out


def caption_calls(pack: PromptPack, mode: Mode, video_key: str, media: MediaRef) -> list[ModelCall]:
    """Step 1a: a global narrative caption and a dense, timestamped one, in the wording of `mode`."""
    return [pack.call("1a", f"{mode}_global_caption", video_key, media),
            pack.call("1a", f"{mode}_dense_caption", video_key, media)]
