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
from vr_assets.records import (
    AnomalyVerdict,
    CallUsage,
    CaptionPair,
    Mode,
    RelevanceVerdict,
    ScreeningVerdict,
    VideoProbe,
)

FILTER_KEY = "video_filtering"
CLASSIFY_KEY = "video_anomaly_classification"
SCREENING_KEYS = (FILTER_KEY, CLASSIFY_KEY)
SCREENING_ONE_KEY = "video_screening"  # the ledger's name for step 0's two questions asked in one request

# How `workflow.whole_video_requests: one_per_step` joins a step's two prompts into one request. Not prompts of
# their own: they only say which fields belong to which task, so the pack's texts stay the only wording to edit.
TWO_TASKS = (
    "This request holds two tasks about the same video. Do both, and answer with ONE flat JSON object holding "
    "the fields of both tasks: {fields}.{note}\n\n=== Task 1 ===\n{first}\n\n=== Task 2 ===\n{second}\n\n"
    "Shape of the whole answer: {shape}"
)
SCREENING_FIELDS = dict(
    fields="task 1's `relevant` and `reason`, then task 2's `reasoning` and `label`",
    note=" Do task 2 even when task 1 rejects the video.",
    shape='{"relevant": <true or false>, "reason": "...", "reasoning": "...", "label": "<anomaly or normal>"}',
)
CAPTION_FIELDS = dict(
    fields="task 1's answer, as plain text, in `global_caption`; task 2's answer, as plain text, in `dense_caption`",
    note=" Write each caption as its task asks, as if it were the only task.",
    shape='{"global_caption": "...", "dense_caption": "..."}',
)
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


def whole_video_calls(spec: Spec, pack: PromptPack | None = None) -> int:
    """Requests a video that goes on makes about its whole copy: step 0's relevance and anomaly questions
    (when asked) and step 1a's two captions, each step's in one request with `whole_video_requests:
    one_per_step`. An explicit context cache is judged on this count (a video that stops at step 0, or whose
    mode its JSONL line gives, is asked fewer)."""
    screening = int(asks_relevance(spec)) + int(spec.workflow.mode == "auto")
    captions = len(CAPTION_KEYS) // 2
    if one_request_per_step(spec, pack):
        screening, captions = min(screening, 1), 1
    return screening + captions


def one_request_per_step(spec: Spec, pack: PromptPack | None) -> bool:
    """Whether steps 0 and 1a ask their two questions in one request each: asked for, and the pack answers in
    JSON (a free-text pack's two answers could not be told apart). Without the pack: what the spec asks for."""
    return spec.workflow.whole_video_requests == "one_per_step" and (pack is None or pack.structured_output)


def whole_video_requests_version(spec: Spec, pack: PromptPack | None) -> tuple[str, ...]:
    """What steps 0 and 1a add to their code versions for `whole_video_requests`: nothing at the default, so
    partitions materialized before the setting existed do not turn stale."""
    return ("one_per_step",) if one_request_per_step(spec, pack) else ()


def two_tasks(pack: PromptPack, first: str, second: str, fields: dict[str, str]) -> str:
    """The pack's texts of `first` and `second` as one request's prompt (`TWO_TASKS`)."""
    return TWO_TASKS.format(first=pack.render(first), second=pack.render(second), **fields)


def screening_call(pack: PromptPack, video_key: str, media: MediaRef) -> ModelCall:
    """Both screening questions in one request."""
    return ModelCall(step="0", prompt_key=SCREENING_ONE_KEY, video_key=video_key, media=media,
                     prompt=two_tasks(pack, FILTER_KEY, CLASSIFY_KEY, SCREENING_FIELDS), schema_model=ScreeningVerdict)


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
    pack: PromptPack, run: RunCalls, video_key: str, media: MediaRef, *, ask_relevance: bool, mode: Mode | None,
    one_request: bool = False,
) -> Screening:
    """Ask whether the video belongs to the domain (if `ask_relevance`), then, unless it does not or
    its mode is already known, whether it shows an anomaly. `one_request` (both are asked, the pack answers
    in JSON): both questions in one request."""
    out = Screening()
    if one_request and ask_relevance and mode is None and pack.structured_output:
        (ans,) = run([screening_call(pack, video_key, media)], "0 (screen)")
        out.usage.append(ans.usage)
        out.raw = out.class_raw = ans.text
        if not isinstance(ans.parsed, ScreeningVerdict):
            raise ScreeningError(
                f"video {video_key}: step 0: the screening answer is not the JSON asked for: {excerpt(ans.text, 200)!r}"
            )
        out.is_valid, out.reason = ans.parsed.relevant, ans.parsed.reason
        out.label = ans.parsed.label if ans.parsed.relevant else None  # a rejected video has no mode to decide
        return out
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


def both_captions_key(mode: Mode) -> str:
    """The ledger's name for step 1a's two captions asked in one request."""
    return f"{mode}_global_and_dense_caption"


def caption_calls(
    pack: PromptPack, mode: Mode, video_key: str, media: MediaRef, *, one_request: bool = False
) -> list[ModelCall]:
    """Step 1a: a global narrative caption and a dense, timestamped one, in the wording of `mode`; one request
    for both when `one_request` and the pack answers in JSON."""
    if one_request and pack.structured_output:
        prompt = two_tasks(pack, f"{mode}_global_caption", f"{mode}_dense_caption", CAPTION_FIELDS)
        return [ModelCall(step="1a", prompt_key=both_captions_key(mode), video_key=video_key, prompt=prompt,
                          media=media, schema_model=CaptionPair)]
    return [pack.call("1a", f"{mode}_global_caption", video_key, media),
            pack.call("1a", f"{mode}_dense_caption", video_key, media)]


def caption_texts(video_key: str, answers: list[ModelAnswer]) -> tuple[str, str]:
    """(global caption, dense caption) from `caption_calls`' answers, one request's or two."""
    if len(answers) == 2:
        return answers[0].text, answers[1].text
    (ans,) = answers
    if not isinstance(ans.parsed, CaptionPair) or not ans.parsed.global_caption.strip() \
            or not ans.parsed.dense_caption.strip():
        raise ValueError(f"video {video_key}: step 1a: the captions answer is not the JSON asked for (two "
                         f"non-empty captions): {excerpt(ans.text, 200)!r}")
    return ans.parsed.global_caption.strip(), ans.parsed.dense_caption.strip()
