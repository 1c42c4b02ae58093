"""The run spec: one YAML file, validated by pydantic when definitions load.

Field names follow the reference pipeline's spec so a TAO user's YAML loads as is;
fields the reference lacks (limits, prices, budget, exports) have safe defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vr_assets.records import ALL_QA_TYPES

DEFAULT_SPEC_ENV = "VR_CONFIG"
DEFAULT_SPEC_PATH = "spec.yaml"


def private_key_env(role: str) -> str:
    """The environment variable a key written in the spec moves to (role `vlm` or `llm`), so it never shows in
    the UI or on disk; the processes a command starts inherit it."""
    return f"VR_ASSETS_{role.upper()}_API_KEY"


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class GeminiSettings(SpecModel):
    api_key: str = Field("", repr=False, description="leave empty: read from env GOOGLE_API_KEY")
    model: str = "gemini-3.1-flash-lite-preview"
    media_resolution: Literal["MEDIA_RESOLUTION_LOW", "MEDIA_RESOLUTION_MEDIUM", "MEDIA_RESOLUTION_HIGH"] | None = (
        "MEDIA_RESOLUTION_LOW"
    )
    temperature: float = 0.3
    max_output_tokens: int = Field(8192, gt=0)
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    base_url: str | None = Field(None, description="override the API endpoint (proxies, local fakes)")
    api_version: str = "v1beta"


class OpenAISettings(SpecModel):
    api_key: str = Field("", repr=False, description="leave empty: read from env OPENAI_API_KEY")
    base_url: str | None = Field(None, description="e.g. http://host:8000/v1 for vLLM; env OPENAI_BASE_URL if unset")
    model_name: str = "Qwen/Qwen3-VL-8B-Instruct"
    temperature: float = 0.3
    max_tokens: int = Field(8192, gt=0)
    timeout: float = Field(120.0, gt=0)
    flex: bool = Field(
        False, description="the endpoint takes `service_tier: flex` (OpenAI's own API does; vLLM and NIM do not): "
        "needed for a step on the flex tier (workflow.tier)",
    )
    batch_api: bool = Field(
        False, description="the endpoint has OpenAI's Files and Batch API (/v1/files, /v1/batches; OpenAI's own "
        "API does, vLLM and NIM do not): needed for a step on the batch tier (workflow.tier)",
    )


class RateLimits(SpecModel):
    """Shared by every asset in one process; a Dagster pool spreads them across processes."""

    max_concurrency: int | None = Field(None, ge=1, description="defaults to workflow.max_workers")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)


class RetrySettings(SpecModel):
    max_attempts: int = Field(6, ge=1)
    initial_delay_s: float = Field(1.0, ge=0)
    max_delay_s: float = Field(60.0, gt=0)
    bad_output_attempts: int = Field(2, ge=1, description="retries for empty/truncated/blocked answers")
    outage_deadline_s: float = Field(
        600.0, gt=0, description="how long calls wait out an endpoint that is down (connection refused, 5xx) "
        "once its circuit breaker is open, counted from the outage's start; then they fail with one line",
    )
    breaker_failures: int = Field(
        5, ge=1, description="consecutive connection failures/5xx on an endpoint (any thread or process on the "
        "host) that open its circuit breaker: calls then wait instead of sending, one probe request at a time. "
        "Keep it below max_attempts, or a lone call gives up before the breaker opens",
    )
    probe_interval_s: float = Field(5.0, gt=0, description="while the breaker is open, one probe request this often")
    fatal_hold_s: float = Field(
        600.0, gt=0, description="a rejected API key (401/403) or missing model (404) recorded in the results dir "
        "fails later calls at once, without a request, for this long (or until a call on the endpoint succeeds)",
    )


class ModelSpec(SpecModel):
    backend: Literal["gemini", "openai"] = "gemini"
    gemini: GeminiSettings = Field(default_factory=GeminiSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    limits: RateLimits = Field(default_factory=RateLimits)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    context_cache: Literal["auto", "off"] = Field(
        "auto", description="Gemini with uploads: a video asked several questions about as a whole (steps 0 and "
        "1a) gets one explicit context cache holding its upload, created once, read by each of those calls at "
        "the cached-input price and deleted with the upload after the video's last step. auto: only where "
        "`prices` says it pays (needs the model's cached_input_per_mtok and cache_storage_per_mtok_hour, known "
        "for a few models); off: never. Implicit caching (free, not guaranteed) applies either way",
    )
    context_cache_ttl_s: float = Field(
        600.0, gt=0, description="lifetime of an explicit context cache unless deleted first; the break-even "
        "counts its storage for this long. An expired cache is recreated once when a later call needs it",
    )

    flex_timeout_s: float = Field(
        900.0, gt=0, description="seconds per request of a step on the flex tier (workflow.tier), instead of "
        "<gemini|openai>.timeout when that is shorter: flex answers with variable latency (OpenAI advises 15 min)",
    )

    @property
    def model_name(self) -> str:
        return self.gemini.model if self.backend == "gemini" else self.openai.model_name


class MediaSettings(SpecModel):
    """How clips are prepared before they are sent; models sample ~1-2 fps anyway."""

    max_side: int | None = Field(640, ge=16, description="downscale longest side; null keeps the source size")
    fps: float | None = Field(
        2.0, gt=0, description="re-encode frame rate; null keeps the source rate. Gemini samples video at 1 fps "
        "and Qwen-VL at 2 fps, so more frames only cost encoding and upload"
    )
    ffmpeg: str = Field(
        "auto", description="ffmpeg executable. auto: the static build shipped by the imageio-ffmpeg package "
        "(starts in ~0.01 s; Debian's, linking 200+ libraries, takes ~0.12 CPU-s per process), else ffmpeg on PATH",
    )
    ffprobe: str = Field(
        "auto", description="one probe per video. auto: read in-process through PyAV (~6 ms); else an ffprobe "
        "executable (Debian's takes ~0.14 CPU-s per process, mostly loading its libraries)",
    )
    ffmpeg_threads: int = Field(
        1, ge=0, description="threads per ffmpeg process; videos already run in parallel, and one thread each "
        "used a third less CPU than ffmpeg's own choice (0) on the benchmark",
    )
    skip_nonref_frames: bool = Field(
        True, description="when re-encoding at most half the source frame rate, skip decoding the frames no other "
        "frame refers to (ffmpeg -skip_frame noref): a fifth less ffmpeg CPU on the benchmark clips; the frames "
        "kept are decoded exactly, up to a few source frames from the exact output time",
    )
    prefetch: bool = Field(
        True, description="vr-annotate with several workers: make step 0's media (the downscaled copy, a long "
        "video's frames) for the videos no worker has taken yet, at a lower CPU priority, so it is ready when "
        "their turn comes instead of all landing on the first wave",
    )
    transport: Literal["upload", "inline"] = Field(
        "upload", description="Gemini: how a video reaches the model. upload: its downscaled copy goes through "
        "the Files API once and every call on it (steps 0 and 1a, each chunk of 1b, the clip of 1c) points at "
        "it, chunks and clip as time ranges, long videos sampled by the model at the frame budget's rate; "
        "bytes sent = the copy's size. inline: each request carries its media (the copy, cut chunks, a long "
        "video's JPEG frames), no upload round trip, ~5x the bytes. OpenAI-compatible servers always get inline "
        "media",
    )
    audio: Literal["keep", "drop"] | None = Field(
        None, description="the video's sound in what the model gets. keep: the downscaled copy, its chunks and "
        "clip carry the audio re-encoded small (mono AAC, `audio_kbps`, 16 kHz; a source small enough to go as "
        "it is keeps its own sound; a source without sound simply has none); drop: video only. null: keep for "
        "a Gemini VLM (Gemini hears a video's audio track, ~32 tokens/s), drop for an OpenAI-compatible server: "
        "vision-language models served by vLLM or NIM (Qwen-VL, Cosmos) read "
        "the frames only, so the sound would be bytes sent for nothing; set keep for a model that hears it (an "
        "omni model such as Qwen2.5-Omni with `use_audio_in_video`). A long video sent as JPEG frames (inline, "
        "OpenAI) has no sound either way",
    )
    audio_kbps: int = Field(24, ge=8, le=256, description="bitrate of the kept audio (mono AAC, 16 kHz)")
    inline_limit_mb: float = Field(20.0, gt=0, description="Gemini: larger files go through the Files API")
    max_live_uploads: int = Field(
        8, ge=1, description="Gemini Files API uploads one process keeps alive at once, at least the VLM's "
        "concurrency (a call in flight needs its upload); uploads registered for a video's later steps are "
        "only forgotten, not deleted, when evicted",
    )


Tier = Literal["standard", "flex", "batch"]
# the model steps a tier is chosen for, by asset name, and the step id each one's calls carry
TIER_STEPS: dict[str, str] = {
    "filter_result": "0", "captions": "1a", "chunk_captions": "1b", "highlight": "1c", "description": "2", "qa": "3",
}
# steps whose calls can wait in a batch: text-only LLM calls (a VLM call would need its upload alive for a day)
BATCH_STEPS = ("description", "qa")


class BatchSettings(SpecModel):
    """How calls of steps on the batch tier are gathered, submitted and watched (the `provider_batches` sensor)."""

    max_entries: int = Field(200, ge=1, description="submit a batch once this many calls wait")
    max_wait_s: float = Field(
        600.0, ge=0, description="submit what waits once the oldest call has waited this long, however few",
    )
    max_resubmits: int = Field(
        2, ge=0, description="an entry the provider answered with an error goes into a later batch at most this "
        "many times; then its video's step fails with the provider's message",
    )
    poll_interval_s: float = Field(30.0, gt=0, description="how often the sensor runs (submits and polls)")


class WorkflowSettings(SpecModel):
    steps: list[str] = Field(default_factory=lambda: ["0", "1a", "1b", "1c", "2", "3", "4"])
    mode: Literal["auto", "anomaly", "normal"] = "auto"
    max_workers: int = Field(4, ge=1, description="videos in flight (the run queue's limit, whichever road started "
                             "them) and provider concurrency (per backend override: <model>.limits)")
    interrupt_grace_s: float = Field(
        30.0, ge=0, description="vr-annotate run after ^C / SIGTERM: how long the videos in flight may take to "
        "finish before they are stopped (queued videos are canceled at once)",
    )
    ask_ahead: bool = Field(
        True, description="vr-annotate with media.prefetch: ask a prefetched video's step 0 and step 1a questions "
        "while the workers still load Dagster; the answers wait in the call cache (an upload in the upload "
        "registry) and the video's run records them as its own calls, paid once",
    )
    whole_video_requests: Literal["separate", "one_per_step"] = Field(
        "separate", description="how steps 0 and 1a ask their two questions each about the whole video (in the "
        "domain? anomaly or normal?; the global and the dense caption). separate: one request per question, as the "
        "reference does. one_per_step: one request per step with one JSON answer holding both, so the video is read "
        "(and paid for) once per step instead of twice; needs a pack with structured output (else separate)",
    )
    max_video_length_sec: float = Field(300.0, gt=0)
    chunk_duration_options: list[float] = Field(default_factory=lambda: [5, 10, 15, 20, 30])
    max_chunks: int = Field(10, ge=1)
    highlight_before_sec: float = Field(3.0, ge=0)
    highlight_after_sec: float = Field(3.0, ge=0)
    long_video_threshold_sec: float = Field(60.0, gt=0)
    long_video_sample_fps: float = Field(0.5, gt=0)
    long_video_max_frames: int = Field(60, ge=1)
    qa_types: list[str] = Field(default_factory=lambda: list(ALL_QA_TYPES))
    tier: dict[str, Tier] = Field(
        default_factory=dict, description="price tier per model step (asset name: filter_result, captions, "
        "chunk_captions, highlight, description, qa), e.g. {qa: batch, description: batch}. standard: the default. "
        "flex: same request, synchronous, half price, slower and may be refused under load (Gemini; OpenAI with "
        "<model>.openai.flex). batch: description and qa only; the call waits in a provider batch (half price, "
        "up to 24 h): the run ends without the step, holding no worker, and the provider_batches sensor re-runs "
        "it once the answers are in",
    )
    batch: BatchSettings = Field(default_factory=BatchSettings)

    @field_validator("tier")
    @classmethod
    def _known_tier_steps(cls, v: dict[str, Tier]) -> dict[str, Tier]:
        by_id = {i: name for name, i in TIER_STEPS.items()}
        out: dict[str, Tier] = {}
        for step, tier in v.items():
            name = by_id.get(str(step), str(step))
            if name not in TIER_STEPS:
                raise ValueError(f"unknown step {step!r}; choose from {list(TIER_STEPS)}")
            if tier == "batch" and name not in BATCH_STEPS:
                raise ValueError(f"{name}: the batch tier is for {' and '.join(BATCH_STEPS)} only (text calls); "
                                 "use flex for a step that sends video")
            out[name] = tier
        return out

    def tier_of(self, step_id: str) -> Tier:
        """The tier of the step whose calls carry `step_id` ("2", "3", …)."""
        for name, i in TIER_STEPS.items():
            if i == step_id:
                return self.tier.get(name, "standard")
        return "standard"

    @field_validator("qa_types")
    @classmethod
    def _known_qa_types(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in ALL_QA_TYPES]
        if bad:
            raise ValueError(f"unknown qa types {bad}; choose from {list(ALL_QA_TYPES)}")
        return v

    @field_validator("chunk_duration_options")
    @classmethod
    def _positive_options(cls, v: list[float]) -> list[float]:
        if not v or any(d <= 0 for d in v):
            raise ValueError("chunk_duration_options needs at least one positive duration")
        return sorted(v)


class DataSettings(SpecModel):
    video_root: str = ""
    input_jsonl_files: list[str] = Field(default_factory=list)
    filter_field: str | None = None


class ExportSettings(SpecModel):
    formats: list[Literal["tao", "parquet", "sharegpt"]] = Field(default_factory=lambda: ["tao"])
    exclude_failed_checks: bool = Field(True, description="drop items that fail error-level checks")
    mcq_seed: str = Field("", description="extra seed text for MCQ option shuffling")


class ViewerSettings(SpecModel):
    """`vr-annotate view`: the dataset viewer and review page."""

    base_url: str = Field(
        "http://127.0.0.1:8765", description="where the viewer is reached; each video's task_exports metadata links "
        "to <base_url>/video/<key>",
    )
    port: int = Field(8765, ge=0, le=65535, description="port `vr-annotate view` listens on unless --port is given")
    host: str = Field("127.0.0.1", description="interface to listen on; 0.0.0.0 to share it on the network")


class Pricing(SpecModel):
    """USD per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    thinking_per_mtok: float | None = Field(None, description="defaults to the output price")
    cached_input_per_mtok: float | None = Field(
        None, description="Gemini: prompt tokens read from a context cache. null: Google's published price for "
        "the models in providers.usage.KNOWN_CACHE_PRICES, else the input price",
    )
    cache_storage_per_mtok_hour: float | None = Field(
        None, description="Gemini: keeping an explicit context cache, per million tokens per hour. null: the "
        "published price for known models, else unknown (then no explicit cache is made: it cannot be judged)",
    )
    flex_factor: float = Field(
        0.5, gt=0, le=1, description="a flex-tier call costs this fraction of the prices above (Gemini and OpenAI: "
        "half, their optimization and pricing pages)",
    )
    batch_factor: float = Field(
        0.5, gt=0, le=1, description="a batch-tier call costs this fraction of the prices above (both: half)",
    )

    def for_tier(self, tier: str) -> Pricing:
        """These prices as billed on `tier` (standard: unchanged)."""
        factor = {"flex": self.flex_factor, "batch": self.batch_factor}.get(tier, 1.0)
        if factor == 1.0:
            return self
        scale = ("input_per_mtok", "output_per_mtok", "thinking_per_mtok", "cached_input_per_mtok")
        return self.model_copy(update={k: getattr(self, k) * factor for k in scale if getattr(self, k) is not None})


class Spec(SpecModel):
    vlm: ModelSpec = Field(default_factory=ModelSpec)
    llm: ModelSpec = Field(default_factory=ModelSpec)
    workflow: WorkflowSettings = Field(default_factory=WorkflowSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    viewer: ViewerSettings = Field(default_factory=ViewerSettings)
    license: str = ""
    description_extra: str = ""
    prompts_module: str = Field("", description="dotted module with PROMPT_TEMPLATES (TAO style)")
    prompt_pack: str = Field("general", description="a folder name under prompts/ or a path to a pack folder")
    results_dir: str = Field("results", description="the local working folder (media cache, Dagster home, answer "
                             "cache, locks); also where results go when storage_url is empty")
    storage_url: str = Field("", description="where per-video results and the dataset are written: a folder, "
                             "file://…, s3://bucket/prefix (pip install 'vr-assets[s3]'), gs://…; empty = results_dir")
    prices: dict[str, Pricing] = Field(default_factory=dict, description="per model name")
    budget_usd: float | None = Field(None, gt=0, description="stop new calls once spent")
    offline_teacher: bool = Field(False, description="set by the keyless demo: outputs are marked as not real")

    @model_validator(mode="after")
    def _tiers_offered(self) -> Spec:
        """A tier the chosen endpoint does not offer fails loading, naming the step and what to set."""
        for step, tier in self.workflow.tier.items():
            if tier == "standard":
                continue
            role = "vlm" if step in ("filter_result", "captions", "chunk_captions") else "llm"
            roles = ("vlm", "llm") if step == "highlight" else (role,)
            for r in roles:
                ms = self.vlm if r == "vlm" else self.llm
                if ms.backend != "openai":
                    continue
                flag = "flex" if tier == "flex" else "batch_api"
                if not getattr(ms.openai, flag):
                    raise ValueError(
                        f"workflow.tier.{step}: {tier} needs an endpoint that offers it; the {r} endpoint "
                        f"({ms.openai.base_url or 'OPENAI_BASE_URL'}) is OpenAI-compatible: set {r}.openai.{flag}: "
                        "true if it does (OpenAI's API; vLLM and NIM do not)"
                    )
        return self

    @field_validator("storage_url")
    @classmethod
    def _usable_storage(cls, v: str) -> str:
        from vr_assets.storage import check_url

        check_url(v)  # an s3:// URL without s3fs installed fails here, not in the middle of a run
        return v

    def resolved(self, base: Path) -> Spec:
        """Relative paths in a spec are relative to the spec file, not the cwd."""
        data = self.model_copy(deep=True)

        def fix(p: str) -> str:
            return p if not p or Path(p).is_absolute() else str((base / p).resolve())

        data.results_dir = fix(data.results_dir)
        if data.storage_url and "://" not in data.storage_url:
            data.storage_url = fix(data.storage_url)
        if "/" in data.prompt_pack or data.prompt_pack.startswith("."):
            data.prompt_pack = fix(data.prompt_pack)
        data.data.video_root = fix(data.data.video_root)
        data.data.input_jsonl_files = [fix(p) for p in data.data.input_jsonl_files]
        return data


class SpecError(ValueError):
    """An invalid spec; the message names each bad field."""


def _unwrap(raw: dict[str, Any]) -> dict[str, Any]:
    # TAO specs nest everything under `video_reasoning_annotation`.
    if "video_reasoning_annotation" in raw and isinstance(raw["video_reasoning_annotation"], dict):
        inner = dict(raw["video_reasoning_annotation"])
        if "results_dir" in raw and "results_dir" not in inner:
            inner["results_dir"] = raw["results_dir"]
        return inner
    return raw


def apply_override(raw: dict[str, Any], dotted: str) -> None:
    """`workflow.max_workers=8` style override; the value is parsed as YAML."""
    if "=" not in dotted:
        raise SpecError(f"override {dotted!r} must look like key.sub=value")
    key, value = dotted.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {dotted!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid spec {origin}:"]
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "(root)"
        lines.append(f"  {field}: {e['msg']}")
    return "\n".join(lines)


def parse_spec(raw: dict[str, Any], origin: str = "<dict>", base: Path | None = None) -> Spec:
    try:
        spec = Spec.model_validate(_unwrap(raw))
    except ValidationError as err:
        raise SpecError(format_validation_error(err, origin)) from None
    return spec.resolved(base or Path.cwd())


def load_spec(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Spec:
    """Load the spec from `path`, else $VR_CONFIG, else ./spec.yaml, else defaults."""
    chosen = Path(path or os.environ.get(DEFAULT_SPEC_ENV) or DEFAULT_SPEC_PATH)
    raw: dict[str, Any] = {}
    if chosen.exists():
        loaded = yaml.safe_load(chosen.read_text()) or {}
        if not isinstance(loaded, dict):
            raise SpecError(f"invalid spec {chosen}: top level must be a mapping")
        raw = loaded
    elif path or os.environ.get(DEFAULT_SPEC_ENV):
        raise SpecError(f"spec file not found: {chosen}")
    raw = _unwrap(raw)
    for o in overrides or []:
        apply_override(raw, o)
    return parse_spec(raw, str(chosen), chosen.resolve().parent)
