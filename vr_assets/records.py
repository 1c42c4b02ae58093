"""Pydantic records that cross a boundary: asset outputs, model answers, usage.

Every step output is one of these models, stored as JSON by the IO manager, so a
step never hands a bare dict to the next one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vr_assets.fsnames import FsText, printable

Mode = Literal["anomaly", "normal"]
QAType = Literal[
    "mcq",
    "bcq",
    "open_qa",
    "causal_linkage",
    "temporal_localization",
    "temporal_event_desc",
    "scene_description",
    "event_summary",
]
ALL_QA_TYPES: tuple[str, ...] = (
    "mcq",
    "bcq",
    "open_qa",
    "causal_linkage",
    "temporal_localization",
    "temporal_event_desc",
    "scene_description",
    "event_summary",
)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- discovery


class VideoSource(Record):
    """One video as found by discovery; the partition registry stores these."""

    key: str = Field(description="Dagster partition key")
    path: FsText = Field(description="absolute path of the video file")
    source: FsText = Field(description="'video_root' or the JSONL file it came from")
    rel_path: FsText = Field(description="path relative to its source root; TAO's `video` field")
    mode: Mode | None = Field(default=None, description="per-line mode from JSONL; wins over step 0")
    extra: dict[str, object] = Field(default_factory=dict, description="other JSONL fields, kept verbatim")


FindingKind = Literal[
    "dangling_symlink", "symlink_loop", "folder", "symlinked_folder", "unreadable_folder", "not_a_file",
    "same_file", "bad_jsonl_line", "duplicate_entry",
]


class DiscoveryFinding(Record):
    """An entry discovery did not make a video of, and why in one line (instead of skipping it without a word)."""

    path: FsText = Field(description="the entry as found (a JSONL file for its bad lines)")
    kind: FindingKind
    reason: str = Field(description="one line, printable: names in it are `fsnames.printable`")

    def line(self) -> str:
        return f"{printable(self.path)}: {self.reason}"


class Discovery(Record):
    """What one discovery found: the videos, and the entries it skipped with their reasons."""

    videos: list[VideoSource] = Field(default_factory=list)
    skipped: list[DiscoveryFinding] = Field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Skipped entries per kind."""
        out: dict[str, int] = {}
        for f in self.skipped:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out

    def summary(self) -> str:
        """One line for the CLI, e.g. `12 videos found; 3 entries skipped (2 dangling_symlink, 1 folder)`."""
        text = f"{len(self.videos)} videos found"
        if self.skipped:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
            text += f"; {len(self.skipped)} entries skipped ({kinds})"
        return text


class VideoProbe(Record):
    """Probe facts (streams, duration, keyframe spacing), read once per video and carried with its records."""

    duration_sec: float
    width: int = 0
    height: int = 0
    fps: float = 0.0
    video_codec: str = ""
    has_audio: bool = False
    size_bytes: int = 0
    format_name: str = ""
    keyframe_interval_sec: float | None = None
    start_time_sec: float = 0.0
    rotation_deg: int = Field(0, description="display rotation (phone videos); width/height are as shown")
    header_duration_sec: float | None = Field(
        None, description="the container's duration when its packets said otherwise (a lying header): "
        "duration_sec is then the packets' span, and the copy the model sees is re-muxed",
    )
    mtime_ns: int | None = Field(None, description="the file's modification time when probed: a file that "
                                 "changes after its probe fails instead of mixing two versions")


# ---------------------------------------------------------------- provider usage


class CallUsage(Record):
    """One model call as billed: what a person needs to see where the money went."""

    provider: str
    model: str
    step: str
    prompt_key: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = Field(0, description="of the prompt tokens, those read from a context cache (cheaper)")
    cache_write_tokens: int = Field(
        0, description="tokens this call put in an explicit context cache it made: billed as input, plus their "
        "storage for the cache's TTL (in cost_usd)",
    )
    latency_s: float = 0.0
    retries: int = 0
    cost_usd: float = 0.0
    uploaded_bytes: int = 0
    inline_bytes: int = 0
    cached: bool = Field(False, description="answered from the call cache: no provider call, no cost")
    outage_wait_s: float = Field(0.0, description="time spent waiting out an outage of the endpoint (breaker open)")
    tier: Literal["standard", "flex", "batch"] = Field(
        "standard", description="the price tier it was sent on (flex and batch: half price, see Pricing)")


class UsageSummary(Record):
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    uploaded_bytes: int = 0
    inline_bytes: int = 0
    outage_wait_s: float = 0.0

    @classmethod
    def of(cls, calls: list[CallUsage]) -> UsageSummary:
        paid = [c for c in calls if not c.cached]
        return cls(
            calls=len(paid),
            cached_calls=len(calls) - len(paid),
            prompt_tokens=sum(c.prompt_tokens for c in paid),
            output_tokens=sum(c.output_tokens for c in paid),
            thinking_tokens=sum(c.thinking_tokens for c in paid),
            cached_tokens=sum(c.cached_tokens for c in paid),
            retries=sum(c.retries for c in paid),
            cost_usd=round(sum(c.cost_usd for c in paid), 6),
            latency_s=round(sum(c.latency_s for c in paid), 3),
            uploaded_bytes=sum(c.uploaded_bytes for c in paid),
            inline_bytes=sum(c.inline_bytes for c in paid),
            outage_wait_s=round(sum(c.outage_wait_s for c in paid), 3),
        )


# ---------------------------------------------------------------- structured answers
# These are the JSON schemas the default prompt packs ask for (Gemini response_schema,
# OpenAI response_format). Titles matter: the offline teacher keys its answers on them.


class RelevanceVerdict(BaseModel):
    """Step 0: is the video inside the dataset's domain?"""

    relevant: bool
    reason: str


class AnomalyVerdict(BaseModel):
    """Step 0 (auto mode): anomaly or normal, with the reasoning first."""

    reasoning: str
    label: Literal["anomaly", "normal"]


class ScreeningVerdict(BaseModel):
    """Step 0 with `workflow.whole_video_requests: one_per_step`: both screening answers in one object."""

    relevant: bool
    reason: str
    reasoning: str
    label: Literal["anomaly", "normal"]


class CaptionPair(BaseModel):
    """Step 1a with `workflow.whole_video_requests: one_per_step`: both captions from one request."""

    global_caption: str
    dense_caption: str


class AnomalyTime(BaseModel):
    """Step 1c: when the anomaly happens, in seconds from the start."""

    found: bool
    anomaly_time_sec: float
    reasoning: str


class MultipleChoiceQA(BaseModel):
    question: str
    options: list[str] = Field(description="option texts without their letters, A first")
    answer: str = Field(description="letter of the correct option")
    reasoning: str


class MultipleChoiceSet(BaseModel):
    items: list[MultipleChoiceQA]


class YesNoQA(BaseModel):
    question: str
    answer: Literal["Yes", "No"]
    explanation: str
    reasoning: str


class YesNoSet(BaseModel):
    items: list[YesNoQA]


class TimeSpanQA(BaseModel):
    question: str
    start_time: str = Field(description="MM:SS")
    end_time: str = Field(description="MM:SS")
    reasoning: str


class TimeSpanSet(BaseModel):
    items: list[TimeSpanQA]


class OpenQA(BaseModel):
    question: str
    answer: str
    reasoning: str


class OpenQASet(BaseModel):
    items: list[OpenQA]


# ---------------------------------------------------------------- canonical QA item


class QAItem(Record):
    """One question as parsed from either a structured or a text answer."""

    qa_type: str
    prompt_key: str
    question: str
    options: list[str] = Field(default_factory=list, description="option texts, no letters")
    answer: str
    reasoning: str = ""
    start_sec: float | None = None
    end_sec: float | None = None


# ---------------------------------------------------------------- asset outputs


class FilterResult(Record):
    """Step 0. `proceed` False stops the video here (not a failure)."""

    video: VideoSource
    probe: VideoProbe
    proceed: bool
    stop_reason: str = ""
    is_valid: bool | None = None
    relevance_reason: str = ""
    raw_response: str = ""
    mode: Mode
    mode_source: Literal["jsonl", "step_0", "workflow"]
    classification_raw: str = ""
    usage: list[CallUsage] = Field(default_factory=list)


class Captions(Record):
    """Step 1a."""

    video: VideoSource
    probe: VideoProbe
    mode: Mode
    global_caption: str
    dense_caption: str
    media_kind: Literal["video", "frames"]
    usage: list[CallUsage] = Field(default_factory=list)


class ChunkCaption(Record):
    chunk_index: int
    timestamp_start: float
    timestamp_end: float
    caption: str


class ChunkCaptions(Record):
    """Step 1b."""

    video_key: str
    chunk_duration: float
    chunks: list[ChunkCaption]
    usage: list[CallUsage] = Field(default_factory=list)


class HighlightChunk(Record):
    anomaly_timestamp_sec: float
    timestamp_start: float
    timestamp_end: float
    caption: str


class Highlight(Record):
    """Step 1c. `applicable` False for normal videos (zero model calls)."""

    video_key: str
    applicable: bool
    note: str = ""
    highlight_chunk: HighlightChunk | None = None
    usage: list[CallUsage] = Field(default_factory=list)


class Description(Record):
    """Step 2."""

    video_key: str
    prompt_key: str
    detailed_description: str
    usage: list[CallUsage] = Field(default_factory=list)


class QAResult(Record):
    """Step 3: raw answers per prompt key plus the parsed items."""

    video_key: str
    raw: dict[str, str] = Field(default_factory=dict, description="prompt key -> raw model text")
    items: list[QAItem] = Field(default_factory=list)
    parse_failures: dict[str, str] = Field(default_factory=dict)
    usage: list[CallUsage] = Field(default_factory=list)


class TaskItem(Record):
    """One item of a tao-vl-reason-v1.0 file."""

    video_id: str
    question: str
    answer: str
    reasoning: str


class McqSource(Record):
    """One MCQ as the teacher wrote it (options cleaned, in the teacher's order), for the dataset pass to place."""

    question: str
    options: list[str]
    correct: int = Field(description="index of the correct option in `options`")
    reasoning: str
    keep_order: str = Field(
        default="", description="why the options must stay in the teacher's order (ambiguous letters); '' = may move"
    )


class TaskExports(Record):
    """Step 4 for one video: its items per TAO task name.

    MCQ items are in the teacher's option order here; ``mcq_sources[i]`` is ``tasks["mcq"][i]`` (and
    ``tasks["mcq_openended"][i]``) before the dataset pass moves its options, which it does over all
    videos at once so the answer letters come out balanced.
    """

    video_key: str
    mode: Mode
    tasks: dict[str, list[TaskItem]] = Field(default_factory=dict)
    mcq_sources: list[McqSource] = Field(default_factory=list)
