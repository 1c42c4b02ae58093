"""What the fakes bill, request by request: the wire usage log and the realistic media token count.

Any client's requests (ours, the reference's) are counted the same way, on the wire, so a cost comparison
does not depend on what each client chooses to record. Turned on per server (`usage_log=`) or for every
fake a process starts (env `VR_FAKE_USAGE_LOG=<path.jsonl>`); one JSON line per billed event:
`generate` (a model answer), `cache_create` / `cache_delete` (explicit context caches), `upload`.

Video tokens (`video_tokens="duration"`, env `VR_FAKE_VIDEO_TOKENS=duration`): the media's own duration
as the fake probes it (PyAV, on the received bytes), clipped to the part's videoMetadata range, sampled at
its videoMetadata fps (else 1 fps), times the tokens per frame of the model at the request's
media_resolution (part-level, else generationConfig), plus 32 tokens per second of an audio track —
Gemini's video-understanding doc as quoted in reference/scale_and_cost.md section 5(d). The default
(`per_part`) keeps the fakes' old flat 258 tokens per media part, which the unit tests are written against;
every log line carries the per-part facts, so a log can be recounted with another model's table.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

ENV_LOG = "VR_FAKE_USAGE_LOG"
ENV_VIDEO_TOKENS = "VR_FAKE_VIDEO_TOKENS"
FLAT_MEDIA_TOKENS = 258  # the fakes' old count: per media part, whatever its length
AUDIO_TOKENS_PER_S = 32
SAMPLE_FPS = 1.0
# Tokens per sampled frame by media_resolution (scale_and_cost.md 5d; Gemini 3 per the forum note there).
FRAME_TOKENS_25 = {None: 258, "MEDIA_RESOLUTION_UNSPECIFIED": 258, "MEDIA_RESOLUTION_LOW": 66,
                   "MEDIA_RESOLUTION_MEDIUM": 258, "MEDIA_RESOLUTION_HIGH": 258}
FRAME_TOKENS_3 = {None: 280, "MEDIA_RESOLUTION_UNSPECIFIED": 280, "MEDIA_RESOLUTION_LOW": 70,
                  "MEDIA_RESOLUTION_MEDIUM": 70, "MEDIA_RESOLUTION_HIGH": 280}
VideoTokens = Literal["per_part", "duration"]


def frame_tokens(model: str, resolution: str | None) -> int:
    table = FRAME_TOKENS_3 if "gemini-3" in model else FRAME_TOKENS_25
    return table.get(resolution, table[None])


class PartTokens(BaseModel):
    """One media part of a request: what the model samples of it and what that costs in tokens."""

    sha256: str
    mime: str
    modality: str  # VIDEO | IMAGE | AUDIO | DOCUMENT
    seconds: float | None = None  # of video sampled (the videoMetadata range), None: length unknown
    fps: float = SAMPLE_FPS
    frames: int = 1
    resolution: str | None = None
    audio_s: float = 0.0
    from_cache: bool = False  # came from the explicit cache the request named
    video_tokens: int = 0  # frames (or the image) as counted for the request's model
    audio_tokens: int = 0

    def recount(self, model: str, *, resolution: str | None | Literal["keep"] = "keep", fps: float | None = None,
                audio: bool = True) -> tuple[int, int]:
        """(frame tokens, audio tokens) of this part as `model` would count it, a lever changed if asked."""
        res = self.resolution if resolution == "keep" else resolution
        if self.seconds is None:
            return (FLAT_MEDIA_TOKENS if self.modality != "DOCUMENT" else 0), 0
        frames = self.frames if fps is None else sample_frames(self.seconds, fps)
        return frames * frame_tokens(model, res), (math.ceil(self.audio_s * AUDIO_TOKENS_PER_S) if audio else 0)


def sample_frames(seconds: float, fps: float) -> int:
    return max(1, math.ceil(seconds * fps - 1e-9))


def count_part(model: str, sha: str, mime: str, modality: str, duration_s: float | None, has_audio: bool | None,
               sampling: dict[str, float], resolution: str | None, mode: VideoTokens) -> PartTokens:
    """A part's tokens: by duration for a video whose length is known (see the module doc), one frame for an
    image; the flat per-part count in `per_part` mode (the facts are recorded either way)."""
    part = PartTokens(sha256=sha, mime=mime, modality=modality, resolution=resolution)
    if modality == "VIDEO" and duration_s:
        start = sampling.get("start_s", 0.0)
        end = min(sampling.get("end_s", duration_s), duration_s)
        part.seconds = round(max(end - start, 0.0), 3)
        part.fps = sampling.get("fps", SAMPLE_FPS)
        part.frames = sample_frames(part.seconds, part.fps)
        part.audio_s = part.seconds if has_audio else 0.0
    elif modality == "IMAGE":
        part.seconds = 0.0
    if mode == "per_part" or part.seconds is None:
        part.video_tokens = FLAT_MEDIA_TOKENS
        return part
    part.video_tokens, part.audio_tokens = part.recount(model)
    return part


class WireUsage(BaseModel):
    """One billed event as the fake saw it."""

    kind: Literal["generate", "cache_create", "cache_delete", "upload"]
    ts: float
    server: str
    model: str = ""
    route: str = ""
    fault: str | None = None
    prompt_tokens: int = 0
    text_tokens: int = 0
    by_modality: dict[str, int] = {}
    cached_tokens: int = 0
    cached_text_tokens: int = 0  # of cached_tokens, the cache's text (its media are the parts from_cache)
    output_tokens: int = 0
    thinking_tokens: int = 0
    parts: list[PartTokens] = []
    cache_name: str | None = None
    ttl_s: float | None = None  # cache_create: the TTL asked for
    lived_s: float | None = None  # cache_delete: how long the cache lived
    upload_bytes: int = 0
    video_tokens_mode: str = "per_part"
    tier: str = "standard"  # generate: standard, flex (serviceTier / service_tier) or batch (a batch's entry)


class UsageLog:
    """Appends WireUsage lines to one JSONL file (a lock per process; lines are written whole)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, path: str | os.PathLike[str] | None) -> UsageLog | None:
        chosen = path if path is not None else os.environ.get(ENV_LOG)
        return cls(chosen) if chosen else None

    def write(self, entry: WireUsage) -> None:
        line = entry.model_dump_json(exclude_defaults=False) + "\n"
        with self._lock, self.path.open("a") as fh:
            fh.write(line)

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[WireUsage]:
        p = Path(path)
        if not p.exists():
            return []
        return [WireUsage.model_validate(json.loads(line)) for line in p.read_text().splitlines() if line.strip()]


def video_tokens_mode(choice: str | None) -> VideoTokens:
    got = choice if choice is not None else os.environ.get(ENV_VIDEO_TOKENS, "per_part")
    if got not in ("per_part", "duration"):
        raise ValueError(f"video_tokens must be per_part or duration, got {got!r}")
    return got  # type: ignore[return-value]


def now() -> float:
    return time.time()


def usage_record(**kw: Any) -> WireUsage:
    return WireUsage(ts=now(), **kw)
