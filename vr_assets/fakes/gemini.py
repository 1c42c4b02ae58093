"""Fake Gemini Developer API (the subset google-genai uses): generate, stream, count, Files API, caches.

Follows the observed wire protocol of google-genai 3.x: success is HTTP 200 only, nested
keys arrive in snake_case or camelCase, inline data is url-safe base64, and the resumable
upload answers with an absolute upload URL and always an ``X-Goog-Upload-Status`` header.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vr_assets.fakes.server import (
    ERROR_FAULTS,
    TRANSPORT_FAULTS,
    Exchange,
    FakeServer,
    FaultPlan,
    Reply,
    Route,
    http_error,
    probe_media,
)
from vr_assets.fakes.teacher import Teacher
from vr_assets.fakes.usage_log import PartTokens, count_part, usage_record

CHUNK_GRANULARITY = 8 * 1024 * 1024
_V = r"(?P<v>v1|v1beta|v1alpha)"
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
_FILE_ID = re.compile(r"(?:^|/)files/([A-Za-z0-9_-]+)(?::download)?(?:[?#].*)?$")


def _get(d: Any, camel: str, default: Any = None) -> Any:
    """Look a key up in camelCase and snake_case (the SDK mixes both)."""
    if not isinstance(d, dict):
        return default
    if camel in d:
        return d[camel]
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()
    return d.get(snake, default)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64decode(data: str) -> bytes:
    """Url-safe or standard base64, padding optional."""
    s = data.strip()
    s += "=" * (-len(s) % 4)
    return base64.urlsafe_b64decode(s.encode("ascii"))


def _resolution(value: Any) -> str | None:
    """A media_resolution as the SDK sends it: a bare enum name (generationConfig) or {level: name} (a part)."""
    if isinstance(value, dict):
        value = _get(value, "level")
    return str(value) if value else None


def _modality(mime: str) -> str:
    major = (mime or "").split("/", 1)[0].lower()
    return {"video": "VIDEO", "image": "IMAGE", "audio": "AUDIO"}.get(major, "DOCUMENT")


@dataclass
class UploadedFile:
    """A finalized upload; `data` is freed on delete, the fingerprint stays."""

    id: str
    sha256: str
    size: int
    mime_type: str
    display_name: str = ""
    state: str = "PROCESSING"
    deleted: bool = False
    polls: int = 0
    api_version: str = "v1beta"
    create_time: str = ""
    duration_s: float | None = None
    has_audio: bool | None = None
    data: bytes = field(default=b"", repr=False)

    @property
    def name(self) -> str:
        return f"files/{self.id}"


class _FileTable(dict[str, UploadedFile]):
    """Keys are bare ids; lookups also accept the SDK's ``files/<id>`` names."""

    @staticmethod
    def _key(key: object) -> object:
        return key.removeprefix("files/") if isinstance(key, str) else key

    def __getitem__(self, key: str) -> UploadedFile:
        return super().__getitem__(self._key(key))  # type: ignore[arg-type]

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(self._key(key), default)  # type: ignore[arg-type]


@dataclass
class CachedContent:
    """An explicit context cache: contents (and system instruction) prepended to the requests naming it."""

    id: str
    model: str
    contents: list[dict[str, Any]]
    system: dict[str, Any] | None
    tokens: int
    expire_unix: float
    create_time: str
    display_name: str = ""
    deleted: bool = False
    reads: int = 0  # generateContent requests that named it
    text_tokens: int = 0
    parts: list[PartTokens] = field(default_factory=list)
    created_unix: float = 0.0

    @property
    def name(self) -> str:
        return f"cachedContents/{self.id}"

    def live(self) -> bool:
        return not self.deleted and time.time() < self.expire_unix


@dataclass
class FakeBatch:
    """A batch job: its requests as (key, GenerateContentRequest), answered all at once when its delay is over."""

    id: str
    model: str
    requests: list[tuple[str, dict[str, Any]]]
    from_file: bool
    created: float
    create_time: str
    display_name: str = ""
    state: str = "BATCH_STATE_PENDING"
    end_time: str = ""
    responses_file: str = ""
    inlined: list[dict[str, Any]] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0

    @property
    def name(self) -> str:
        return f"batches/{self.id}"


_BATCH_DONE = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")


@dataclass
class _Session:
    file_id: str
    api_version: str
    size: int
    mime_type: str
    display_name: str
    buf: bytearray = field(default_factory=bytearray)


@dataclass
class _GenInfo:
    model: str
    prompt: str
    text_chars: int
    media: list[tuple[str, str]]  # (sha256, mime)
    sampling: list[dict[str, float]]  # per media part: videoMetadata start/end/fps
    audio: list[bool | None]  # per media part: whether the video carries sound
    schema: dict[str, Any] | None
    mime: str
    include_thoughts: bool
    max_tokens: int | None
    cached_tokens: int = 0  # prompt tokens that came from the named cache
    cache_name: str | None = None
    parts: list[PartTokens] = field(default_factory=list)  # per media part: what it costs in tokens
    cached_text_tokens: int = 0
    tier: str = "standard"  # the request's serviceTier (flex: billed at half)


class FakeGemini(FakeServer):
    """Local Gemini endpoint; pass `base_url` with api_version="v1beta" to genai.Client."""

    url_suffix: ClassVar[str] = ""
    answer_routes: ClassVar[tuple[str, ...]] = ("generateContent", "streamGenerateContent")

    def __init__(
        self,
        teacher: Teacher | None = None,
        latency_media_s: float = 0.0,
        latency_text_s: float = 0.0,
        faults: FaultPlan | None = None,
        *,
        processing_polls: int = 2,
        probe_durations: bool = True,
        min_cache_tokens: int = 0,
        batch_delay_s: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(teacher, latency_media_s, latency_text_s, faults, **kwargs)
        #: a batch reports PENDING, then RUNNING, until this long after its creation; then it is answered
        self.batch_delay_s = batch_delay_s
        #: the next this many batch entries answered are failed with a 500 error in the results
        self.batch_entry_failures = 0
        self.batches: dict[str, FakeBatch] = {}
        self._batch_lock = threading.Lock()
        #: GETs that still report PROCESSING for a video file; 0 makes uploads ACTIVE at once
        self.processing_polls = processing_polls
        self.probe_durations = probe_durations
        self.uploaded: _FileTable = _FileTable()
        #: the service refuses to cache less than this (1,024-4,096 tokens by model); 0 takes anything
        self.min_cache_tokens = min_cache_tokens
        self.caches: dict[str, CachedContent] = {}
        self._sessions: dict[str, _Session] = {}
        self._files_lock = threading.Lock()
        self._routes: list[Route] = [
            ("POST", re.compile(rf"/{_V}/models/(?P<model>[^:]+):generateContent"), "generateContent", self._generate),
            (
                "POST",
                re.compile(rf"/{_V}/models/(?P<model>[^:]+):streamGenerateContent"),
                "streamGenerateContent",
                self._generate,
            ),
            ("POST", re.compile(rf"/{_V}/models/(?P<model>[^:]+):countTokens"), "countTokens", self._count_tokens),
            (
                "POST",
                re.compile(rf"/{_V}/models/(?P<model>[^:]+):batchGenerateContent"),
                "batches.create",
                self._batch_create,
            ),
            ("GET", re.compile(rf"/{_V}/batches"), "batches.list", self._batch_list),
            ("GET", re.compile(rf"/{_V}/batches/(?P<bid>[^/:]+)"), "batches.get", self._batch_get),
            ("POST", re.compile(rf"/{_V}/batches/(?P<bid>[^/:]+):cancel"), "batches.cancel", self._batch_cancel),
            ("DELETE", re.compile(rf"/{_V}/batches/(?P<bid>[^/:]+)"), "batches.delete", self._batch_delete),
            ("GET", re.compile(rf"/{_V}/models"), "models.list", self._models_list),
            ("GET", re.compile(rf"/{_V}/models/(?P<model>[^:/]+)"), "models.get", self._models_get),
            ("POST", re.compile(rf"/upload/{_V}/files"), "upload", self._upload),
            ("GET", re.compile(rf"/{_V}/files"), "files.list", self._files_list),
            (
                "GET",
                re.compile(rf"/(?:download/)?{_V}/files/(?P<fid>[^/:]+):download"),
                "files.download",
                self._download,
            ),
            ("GET", re.compile(rf"/{_V}/files/(?P<fid>[^/:]+)"), "files.get", self._files_get),
            ("DELETE", re.compile(rf"/{_V}/files/(?P<fid>[^/:]+)"), "files.delete", self._files_delete),
            ("POST", re.compile(rf"/{_V}/cachedContents"), "caches.create", self._cache_create),
            ("GET", re.compile(rf"/{_V}/cachedContents"), "caches.list", self._cache_list),
            ("GET", re.compile(rf"/{_V}/cachedContents/(?P<cid>[^/:]+)"), "caches.get", self._cache_get),
            ("PATCH", re.compile(rf"/{_V}/cachedContents/(?P<cid>[^/:]+)"), "caches.update", self._cache_update),
            ("DELETE", re.compile(rf"/{_V}/cachedContents/(?P<cid>[^/:]+)"), "caches.delete", self._cache_delete),
        ]

    # ------------------------------------------------------------ public helpers

    def live_files(self) -> int:
        with self._files_lock:
            return sum(1 for f in self.uploaded.values() if not f.deleted)

    def live_caches(self) -> int:
        with self._files_lock:
            return sum(1 for c in self.caches.values() if c.live())

    def expire_caches(self) -> None:
        """Every cache reaches its TTL now (the service then answers 404 for it)."""
        with self._files_lock:
            for c in self.caches.values():
                c.expire_unix = min(c.expire_unix, time.time() - 1)

    def upload_bytes_by_sha(self) -> dict[str, int]:
        """Bytes of finalized uploads per content sha256 (deleted files included)."""
        out: dict[str, int] = {}
        with self._files_lock:
            for f in self.uploaded.values():
                out[f.sha256] = out.get(f.sha256, 0) + f.size
        return out

    # ------------------------------------------------------------ server hooks

    def routes(self) -> list[Route]:
        return self._routes

    def refine_route(self, route: str, query: dict[str, str]) -> str:
        if route == "upload":
            return "upload.chunk" if "upload_id" in query else "upload.start"
        return route

    def decorate(self, route: str, reply: Reply) -> Reply:
        if route.startswith("upload.") and "X-Goog-Upload-Status" not in reply.headers:
            reply.headers["X-Goog-Upload-Status"] = "final"  # makes the SDK stop and raise, not re-send
        return reply

    def applicable_faults(self, route: str) -> tuple[str, ...]:
        if route in self.answer_routes:
            return super().applicable_faults(route)
        return ERROR_FAULTS + TRANSPORT_FAULTS

    def error_reply(
        self, status: int, message: str | None = None, *, retry_after: bool = False, status_name: str | None = None
    ) -> Reply:
        name = status_name or _STATUS_NAMES.get(status, "UNKNOWN")
        err: dict[str, Any] = {
            "code": status,
            "message": message or _DEFAULT_MESSAGES.get(status, f"fake error {status}"),
            "status": name,
        }
        headers: dict[str, str] = {}
        if retry_after:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
            headers["Retry-After"] = "1"
        return Reply.json({"error": err}, status=status, headers=headers)

    def check_auth(self, ex: Exchange) -> Reply | None:
        if ex.record.route == "upload.chunk":
            return None  # the upload id is the credential, the SDK sends no key here
        key = ex.headers.get("x-goog-api-key") or ex.query.get("key")
        if not key:
            return self.error_reply(
                403,
                "Method doesn't allow unregistered callers. Please use API Key or other form of API consumer identity.",
            )
        if self.api_key is not None and key != self.api_key:
            return self.error_reply(400, "API key not valid. Please pass a valid API key.")
        return None

    def prepare(self, ex: Exchange) -> None:
        if ex.record.route not in ("generateContent", "streamGenerateContent", "countTokens"):
            return
        body = ex.json if isinstance(ex.json, dict) else None
        if body is None:
            raise http_error(self.error_reply(400, "Invalid JSON payload received."))
        if ex.record.route == "countTokens" and "generateContentRequest" in body:
            body = body["generateContentRequest"] or {}
        info = self._gen_info(ex.params["model"], body)
        ex.info = info
        ex.has_media = bool(info.media)
        rec = ex.record
        rec.model = info.model
        rec.prompt_text = info.prompt
        rec.media_sha256 = [sha for sha, _ in info.media]
        rec.media_sampling = info.sampling
        rec.media_audio = info.audio
        rec.cached_content = info.cache_name
        rec.schema_title = str(info.schema.get("title")) if info.schema and info.schema.get("title") else None

    # ------------------------------------------------------------ generate

    def _gen_info(self, model: str, body: dict[str, Any]) -> _GenInfo:
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise http_error(self.error_reply(400, "* GenerateContentRequest.contents: contents is not specified"))
        texts: list[str] = []
        media: list[tuple[str, str]] = []
        sampling: list[dict[str, float]] = []
        audio: list[bool | None] = []
        system = _get(body, "systemInstruction")
        blocks = [(b, False) for b in ([system] if isinstance(system, dict) else []) + [c for c in contents
                                                                                    if isinstance(c, dict)]]
        cache = self._cache_for_request(model, body) if _get(body, "cachedContent") else None
        if cache is not None:  # its contents come first, as if the request had them
            blocks = [(b, True) for b in ([cache.system] if cache.system else []) + cache.contents] + blocks
        config = _get(body, "generationConfig") or {}
        resolution = _resolution(_get(config, "mediaResolution"))
        parts: list[PartTokens] = []
        for block, from_cache in blocks:
            for part in block.get("parts") or []:
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                inline = _get(part, "inlineData")
                file_data = _get(part, "fileData")
                if isinstance(inline, dict):
                    sha, got_mime, duration_s, sound = self._inline_media(inline)
                    window = self._sampling(part, None)
                elif isinstance(file_data, dict):
                    sha, got_mime, duration_s, sound = self._file_media(file_data)
                    window = self._sampling(part, duration_s)
                else:
                    continue
                media.append((sha, got_mime))
                sampling.append(window)
                audio.append(sound)
                counted = count_part(model.removeprefix("models/"), sha, got_mime, _modality(got_mime), duration_s,
                                     sound, window, _resolution(_get(part, "mediaResolution")) or resolution,
                                     self.video_tokens)
                counted.from_cache = from_cache
                parts.append(counted)
        mime = str(_get(config, "responseMimeType") or "text/plain")
        schema = (
            _get(config, "responseJsonSchema") or config.get("_responseJsonSchema") or _get(config, "responseSchema")
        )
        if not isinstance(schema, dict):
            schema = {"type": "object"} if mime == "application/json" else None
        thinking = _get(config, "thinkingConfig") or {}
        max_tokens = _get(config, "maxOutputTokens")
        prompt = "\n".join(texts)
        return _GenInfo(
            model=model.removeprefix("models/"),
            prompt=prompt,
            text_chars=len(prompt),
            media=media,
            sampling=sampling,
            audio=audio,
            schema=schema if mime in ("application/json", "text/x.enum") else None,
            mime=mime,
            include_thoughts=bool(_get(thinking, "includeThoughts")),
            max_tokens=int(max_tokens) if max_tokens else None,
            cached_tokens=cache.tokens if cache is not None else 0,
            cache_name=cache.name if cache is not None else None,
            parts=parts,
            cached_text_tokens=cache.text_tokens if cache is not None else 0,
            tier="flex" if str(_get(body, "serviceTier") or "").lower() == "flex" else "standard",
        )

    def _cache_for_request(self, model: str, body: dict[str, Any]) -> CachedContent:
        """The live cache a request names; refused like the service: unknown or expired (404), another
        model, or a request that also sets a system instruction, tools or tool config (400)."""
        name = str(_get(body, "cachedContent"))
        for field_name in ("systemInstruction", "tools", "toolConfig"):
            if _get(body, field_name):
                raise http_error(self.error_reply(
                    400, "CachedContent can not be used with GenerateContent request setting system_instruction, "
                    "tools or tool_config.\n\nProposed fix: move those values to CachedContent from "
                    "GenerateContent request."))
        with self._files_lock:
            cache = self.caches.get(name.removeprefix("cachedContents/"))
            if cache is None or not cache.live():
                raise http_error(self.error_reply(404, f"CachedContent not found (or permission denied): {name}"))
            if cache.model != model.removeprefix("models/"):
                raise http_error(self.error_reply(
                    400, f"Model used by GenerateContent request ({model}) and CachedContent ({cache.model}) "
                    "has to be the same."))
            cache.reads += 1
            return cache

    def _inline_media(self, inline: dict[str, Any]) -> tuple[str, str, float | None, bool | None]:
        mime = str(_get(inline, "mimeType") or "")
        if not mime:
            raise http_error(self.error_reply(400, "* inline_data.mime_type: mime type is required"))
        try:
            raw = _b64decode(str(inline.get("data") or ""))
        except (binascii.Error, ValueError) as exc:
            raise http_error(self.error_reply(400, f"Invalid value at 'inline_data.data': {exc}")) from exc
        sha = hashlib.sha256(raw).hexdigest()
        self.note_inline(sha, len(raw))
        facts = self.media_facts(sha, raw, mime)
        return sha, mime, facts.duration_s, facts.has_audio

    def _sampling(self, part: dict[str, Any], duration_s: float | None) -> dict[str, float]:
        """A part's videoMetadata in seconds; a range that is empty or starts past the video's end is
        refused the way the service refuses a malformed request (400 INVALID_ARGUMENT)."""
        meta = _get(part, "videoMetadata")
        if not isinstance(meta, dict):
            return {}
        out: dict[str, float] = {}
        for field_name, key in (("startOffset", "start_s"), ("endOffset", "end_s")):
            raw = _get(meta, field_name)
            if raw is None:
                continue
            hit = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(raw))
            if hit is None:
                raise http_error(self.error_reply(400, f"Invalid value at 'video_metadata.{field_name}' ({raw!r})"))
            out[key] = float(hit.group(1))
        fps = _get(meta, "fps")
        if fps is not None:
            if not isinstance(fps, (int, float)) or not 0 < float(fps) <= 24:
                raise http_error(self.error_reply(400, f"video_metadata.fps must be in (0, 24], got {fps!r}"))
            out["fps"] = float(fps)
        start, end = out.get("start_s", 0.0), out.get("end_s")
        if end is not None and end <= start:
            raise http_error(self.error_reply(400, f"video_metadata: end_offset {end}s is not after {start}s"))
        if duration_s and start >= duration_s:
            raise http_error(
                self.error_reply(400, f"video_metadata: start_offset {start}s is past the video's end ({duration_s}s)")
            )
        return out

    def _file_media(self, file_data: dict[str, Any]) -> tuple[str, str, float | None, bool | None]:
        """(sha256, mime, duration in seconds when known, whether it has sound) of a fileData part."""
        uri = str(_get(file_data, "fileUri") or "")
        mime = str(_get(file_data, "mimeType") or "")
        hit = _FILE_ID.search(uri)
        if hit is None:
            return hashlib.sha256(uri.encode()).hexdigest(), mime, None, None  # e.g. a YouTube URL: the URI
        fid = hit.group(1)
        with self._files_lock:
            f = self.uploaded.get(fid)
            if f is None or f.deleted:
                raise http_error(
                    self.error_reply(403, f"You do not have permission to access the File {fid} or it may not exist.")
                )
            if f.state != "ACTIVE":
                raise http_error(
                    self.error_reply(
                        400,
                        f"The File {fid} is not in an ACTIVE state and usage is not allowed.",
                        status_name="FAILED_PRECONDITION",
                    )
                )
            return f.sha256, mime or f.mime_type, f.duration_s, f.has_audio

    def _usage(self, info: _GenInfo, answer_chars: int, think_chars: int) -> dict[str, Any]:
        text_tokens = info.text_chars // 4
        details: dict[str, int] = {"TEXT": text_tokens}
        for p in info.parts:
            details[p.modality] = details.get(p.modality, 0) + p.video_tokens
            if p.audio_tokens:
                details["AUDIO"] = details.get("AUDIO", 0) + p.audio_tokens
        prompt_tokens = sum(details.values())
        candidates = answer_chars // 4
        thoughts = think_chars // 4
        usage: dict[str, Any] = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": candidates,
            "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt_tokens + candidates + thoughts,
            "promptTokensDetails": [{"modality": m, "tokenCount": n} for m, n in details.items()],
        }
        if info.cached_tokens:  # part of promptTokenCount, as the service reports it
            usage["cachedContentTokenCount"] = min(info.cached_tokens, prompt_tokens)
        return usage

    def _generate(self, ex: Exchange, fault: str | None) -> Reply:
        body = self._answer(ex.info, fault, ex.record.route)
        if ex.record.route == "streamGenerateContent":
            event = b"data: " + json.dumps(body).encode() + b"\r\n\r\n"
            return Reply(status=200, body=event, content_type="text/event-stream")
        return Reply.json(body)

    def _answer(self, info: _GenInfo, fault: str | None, route: str = "batch") -> dict[str, Any]:
        """A GenerateContentResponse body for one request (live, or one line of a batch)."""
        answer = self.teacher.answer(info.prompt, [sha for sha, _ in info.media], info.schema, info.model)
        text = answer.text
        if info.mime == "text/x.enum":
            try:
                value = json.loads(text)
                text = value if isinstance(value, str) else text
            except ValueError:
                pass
        visible = text if not answer.think or info.include_thoughts else f"<think>{answer.think}</think>\n{text}"
        finish = "STOP"
        if info.max_tokens is not None and len(visible) // 4 > info.max_tokens:
            visible, finish = visible[: info.max_tokens * 4], "MAX_TOKENS"
        if fault == "truncated":
            visible, finish = visible[: len(visible) // 2], "MAX_TOKENS"
        parts: list[dict[str, Any]] = []
        if answer.think and info.include_thoughts:
            parts.append({"text": answer.think, "thought": True})
        parts.append({"text": visible})
        candidate: dict[str, Any] = {
            "content": {"parts": parts, "role": "model"},
            "finishReason": finish,
            "index": 0,
        }
        body: dict[str, Any] = {"candidates": [candidate]}
        answer_chars = len(visible)
        if fault == "empty":
            body["candidates"] = []
            answer_chars = 0
        elif fault == "safety":
            ratings = [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
            ]
            body["candidates"] = [{"finishReason": "SAFETY", "index": 0, "safetyRatings": ratings}]
            body["promptFeedback"] = {
                "safetyRatings": [dict(r, probability="NEGLIGIBLE", blocked=False) for r in ratings]
            }
            answer_chars = 0
        think_chars = len(answer.think) if fault not in ("empty", "safety") else 0
        body["usageMetadata"] = usage = self._usage(info, answer_chars, think_chars)
        self.note_usage(usage_record(
            kind="generate", server="gemini", model=info.model, route=route, fault=fault,
            prompt_tokens=usage["promptTokenCount"], text_tokens=info.text_chars // 4,
            by_modality={d["modality"]: d["tokenCount"] for d in usage["promptTokensDetails"]},
            cached_tokens=usage.get("cachedContentTokenCount", 0), cached_text_tokens=info.cached_text_tokens,
            output_tokens=usage["candidatesTokenCount"], thinking_tokens=usage["thoughtsTokenCount"],
            parts=info.parts, cache_name=info.cache_name, video_tokens_mode=self.video_tokens,
            tier="batch" if route == "batch" else info.tier,
        ))
        body["modelVersion"] = info.model
        body["responseId"] = f"fake-{self.next_id():08d}"
        return body

    def _count_tokens(self, ex: Exchange, fault: str | None) -> Reply:
        usage = self._usage(ex.info, 0, 0)
        return Reply.json(
            {"totalTokens": usage["promptTokenCount"], "promptTokensDetails": usage["promptTokensDetails"]}
        )

    def _models_list(self, ex: Exchange, fault: str | None) -> Reply:
        return Reply.json({"models": [self._model_json("gemini-2.5-flash"), self._model_json("gemini-2.5-pro")]})

    def _models_get(self, ex: Exchange, fault: str | None) -> Reply:
        return Reply.json(self._model_json(ex.params["model"]))

    @staticmethod
    def _model_json(model: str) -> dict[str, Any]:
        return {
            "name": f"models/{model}",
            "displayName": model,
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }

    # ------------------------------------------------------------ files

    def _upload(self, ex: Exchange, fault: str | None) -> Reply:
        if ex.record.route == "upload.chunk":
            return self._upload_chunk(ex)
        return self._upload_start(ex)

    def _upload_start(self, ex: Exchange) -> Reply:
        command = ex.headers.get("x-goog-upload-command", "").lower()
        if "start" not in command:
            return self.error_reply(400, "Expected X-Goog-Upload-Command: start")
        meta = _get(ex.json, "file") if isinstance(ex.json, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        size_header = ex.headers.get("x-goog-upload-header-content-length") or _get(meta, "sizeBytes")
        mime = ex.headers.get("x-goog-upload-header-content-type") or _get(meta, "mimeType")
        if size_header is None:
            return self.error_reply(400, "Upload size is required (X-Goog-Upload-Header-Content-Length).")
        if not mime:
            return self.error_reply(400, "Upload MIME type is required (X-Goog-Upload-Header-Content-Type).")
        name = str(_get(meta, "name") or "").removeprefix("files/") or secrets.token_hex(6)
        upload_id = secrets.token_urlsafe(12)
        with self._files_lock:
            if name in self.uploaded and not self.uploaded[name].deleted:
                return self.error_reply(409, f"File files/{name} already exists.")
            self._sessions[upload_id] = _Session(
                file_id=name,
                api_version=ex.params["v"],
                size=int(size_header),
                mime_type=str(mime),
                display_name=str(_get(meta, "displayName") or ""),
            )
        url = f"{self.root_url}/upload/{ex.params['v']}/files?upload_id={upload_id}&upload_protocol=resumable"
        return Reply(
            status=200,
            body=b"",
            headers={
                "X-Goog-Upload-Status": "active",
                "X-Goog-Upload-URL": url,
                "X-Goog-Upload-Control-URL": url,
                "X-Goog-Upload-Chunk-Granularity": str(CHUNK_GRANULARITY),
            },
        )

    def _upload_chunk(self, ex: Exchange) -> Reply:
        commands = {c.strip() for c in ex.headers.get("x-goog-upload-command", "").lower().split(",")}
        upload_id = ex.query.get("upload_id", "")
        with self._files_lock:
            session = self._sessions.get(upload_id)
            if session is None:
                return self.error_reply(404, f"Upload session {upload_id} not found.")
            if "query" in commands:
                return Reply(
                    body=b"",
                    headers={"X-Goog-Upload-Status": "active", "X-Goog-Upload-Size-Received": str(len(session.buf))},
                )
            if "upload" in commands:
                offset = ex.headers.get("x-goog-upload-offset")
                if offset is None or int(offset) != len(session.buf):
                    return self.error_reply(400, f"Invalid X-Goog-Upload-Offset {offset}; expected {len(session.buf)}.")
                final = "finalize" in commands
                if not final and len(ex.body) % CHUNK_GRANULARITY:
                    return self.error_reply(400, f"Non-final chunks must be multiples of {CHUNK_GRANULARITY} bytes.")
                if len(session.buf) + len(ex.body) > session.size:
                    return self.error_reply(400, f"Upload exceeds the declared size {session.size}.")
                session.buf += ex.body
            if "finalize" not in commands:
                return Reply(body=b"", headers={"X-Goog-Upload-Status": "active"})
            if len(session.buf) != session.size:
                return self.error_reply(400, f"Received {len(session.buf)} bytes, declared {session.size}.")
            del self._sessions[upload_id]
            data = bytes(session.buf)
            is_video = session.mime_type.startswith("video/")
            f = UploadedFile(
                id=session.file_id,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                mime_type=session.mime_type,
                display_name=session.display_name,
                state="PROCESSING" if is_video and self.processing_polls > 0 else "ACTIVE",
                api_version=session.api_version,
                create_time=_ts(_now()),
                data=data,
            )
            self.uploaded[f.id] = f
        self.note_usage(usage_record(kind="upload", server="gemini", route="upload", upload_bytes=f.size))
        if f.state == "ACTIVE":
            self._probe(f)
        return Reply.json({"file": self._file_json(f)}, headers={"X-Goog-Upload-Status": "final"})

    def _probe(self, f: UploadedFile) -> None:
        if f.duration_s is not None or not f.mime_type.startswith("video/"):
            return
        if not self.probe_durations:
            f.duration_s = 0.0
            return
        facts = probe_media(f.data)
        f.duration_s = facts.duration_s if facts.duration_s is not None else _ffprobe_duration(f.data)
        f.has_audio = facts.has_audio

    def _file_json(self, f: UploadedFile) -> dict[str, Any]:
        created = dt.datetime.strptime(f.create_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        out: dict[str, Any] = {"name": f.name}
        if f.display_name:
            out["displayName"] = f.display_name
        out.update(
            {
                "mimeType": f.mime_type,
                "sizeBytes": str(f.size),
                "createTime": f.create_time,
                "updateTime": f.create_time,
                "expirationTime": _ts(created + dt.timedelta(hours=48)),
                "sha256Hash": base64.b64encode(f.sha256.encode()).decode(),
                "uri": f"{self.root_url}/{f.api_version}/files/{f.id}",
                "downloadUri": f"{self.root_url}/{f.api_version}/files/{f.id}:download?alt=media",
                "state": f.state,
                "source": "UPLOADED",
            }
        )
        if f.state == "ACTIVE" and f.mime_type.startswith("video/"):
            out["videoMetadata"] = {"videoDuration": f"{f.duration_s or 0.0:g}s"}
        return out

    def _live(self, fid: str) -> UploadedFile:
        f = self.uploaded.get(fid)
        if f is None or f.deleted:
            raise http_error(
                self.error_reply(403, f"You do not have permission to access the File {fid} or it may not exist.")
            )
        return f

    def _files_get(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            f = self._live(ex.params["fid"])
            if f.state == "PROCESSING":
                f.polls += 1
                if f.polls > self.processing_polls:
                    f.state = "ACTIVE"
        if f.state == "ACTIVE":
            self._probe(f)
        return Reply.json(self._file_json(f))

    def _files_list(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            files = [self._file_json(f) for f in self.uploaded.values() if not f.deleted]
        return Reply.json({"files": files} if files else {})

    def _files_delete(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            f = self._live(ex.params["fid"])
            f.deleted = True
            f.data = b""
        return Reply.json({})

    # ------------------------------------------------------------ caches

    def _cache_create(self, ex: Exchange, fault: str | None) -> Reply:
        body = ex.json if isinstance(ex.json, dict) else {}
        model = str(body.get("model") or "").removeprefix("models/")
        contents = body.get("contents")
        if not model or not isinstance(contents, list) or not contents:
            return self.error_reply(400, "* CreateCachedContentRequest: model and contents are required")
        system = _get(body, "systemInstruction")
        info = self._gen_info(model, {"contents": contents, "systemInstruction": system})  # files checked here
        tokens = info.text_chars // 4 + sum(p.video_tokens + p.audio_tokens for p in info.parts)
        if tokens < self.min_cache_tokens:
            return self.error_reply(
                400, f"Cached content is too small. total_token_count={tokens}, min_total_token_count="
                f"{self.min_cache_tokens}")
        ttl = _get(body, "ttl")
        hit = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(ttl)) if ttl is not None else None
        if ttl is not None and hit is None:
            return self.error_reply(400, f"Invalid value at 'cached_content.ttl' ({ttl!r})")
        cache = CachedContent(
            id=secrets.token_hex(8), model=model, contents=[c for c in contents if isinstance(c, dict)],
            system=system if isinstance(system, dict) else None, tokens=tokens,
            expire_unix=time.time() + (float(hit.group(1)) if hit else 3600.0), create_time=_ts(_now()),
            display_name=str(_get(body, "displayName") or ""),
            text_tokens=info.text_chars // 4, parts=info.parts, created_unix=time.time(),
        )
        with self._files_lock:
            self.caches[cache.id] = cache
        self.note_usage(usage_record(
            kind="cache_create", server="gemini", model=model, route="caches.create", prompt_tokens=tokens,
            text_tokens=cache.text_tokens, parts=info.parts, cache_name=cache.name,
            ttl_s=float(hit.group(1)) if hit else 3600.0, video_tokens_mode=self.video_tokens,
        ))
        return Reply.json(self._cache_json(cache))

    def _cache_json(self, c: CachedContent) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": c.name,
            "model": f"models/{c.model}",
            "createTime": c.create_time,
            "updateTime": c.create_time,
            "expireTime": _ts(dt.datetime.fromtimestamp(c.expire_unix, dt.UTC)),
            "usageMetadata": {"totalTokenCount": c.tokens},
        }
        if c.display_name:
            out["displayName"] = c.display_name
        return out

    def _live_cache(self, cid: str) -> CachedContent:
        c = self.caches.get(cid)
        if c is None or not c.live():
            raise http_error(self.error_reply(404, f"CachedContent not found (or permission denied): {cid}"))
        return c

    def _cache_get(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            return Reply.json(self._cache_json(self._live_cache(ex.params["cid"])))

    def _cache_list(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            live = [self._cache_json(c) for c in self.caches.values() if c.live()]
        return Reply.json({"cachedContents": live} if live else {})

    def _cache_update(self, ex: Exchange, fault: str | None) -> Reply:
        ttl = _get(ex.json, "ttl") if isinstance(ex.json, dict) else None
        hit = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(ttl)) if ttl is not None else None
        with self._files_lock:
            c = self._live_cache(ex.params["cid"])
            if hit is not None:
                c.expire_unix = time.time() + float(hit.group(1))
            return Reply.json(self._cache_json(c))

    def _cache_delete(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            c = self.caches.get(ex.params["cid"])
            if c is None or c.deleted:
                return self.error_reply(404, f"CachedContent not found (or permission denied): {ex.params['cid']}")
            c.deleted = True
        self.note_usage(usage_record(kind="cache_delete", server="gemini", model=c.model, route="caches.delete",
                                     cache_name=c.name, lived_s=round(time.time() - c.created_unix, 3)))
        return Reply.json({})

    # ------------------------------------------------------------ batches

    def _batch_create(self, ex: Exchange, fault: str | None) -> Reply:
        """`models/{model}:batchGenerateContent`: inline requests or the name of an uploaded JSONL file whose lines
        are `{"key": ..., "request": GenerateContentRequest}`."""
        batch = _get(ex.json, "batch") if isinstance(ex.json, dict) else None
        src = _get(batch, "inputConfig") if isinstance(batch, dict) else None
        if not isinstance(src, dict):
            return self.error_reply(400, "* BatchGenerateContentRequest.batch.input_config: required")
        requests: list[tuple[str, dict[str, Any]]] = []
        file_name = _get(src, "fileName")
        if file_name:
            with self._files_lock:
                data = self._live(str(file_name).removeprefix("files/")).data
            for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    return self.error_reply(400, f"input file {file_name} line {n}: not JSON")
                if not isinstance(row, dict) or not isinstance(row.get("request"), dict):
                    return self.error_reply(400, f"input file {file_name} line {n}: no request")
                requests.append((str(row.get("key", n)), row["request"]))
        else:
            inline = _get(_get(src, "requests") or {}, "requests") or []
            for n, item in enumerate(inline):
                meta = _get(item, "metadata") or {}
                requests.append((str(meta.get("key", n)), _get(item, "request") or {}))
        if not requests:
            return self.error_reply(400, "* BatchGenerateContentRequest: the batch has no requests")
        job = FakeBatch(id=secrets.token_hex(8), model=ex.params["model"].removeprefix("models/"),
                        requests=requests, from_file=bool(file_name), created=time.monotonic(),
                        create_time=_ts(_now()), display_name=str(_get(batch, "displayName") or ""))
        with self._files_lock:
            self.batches[job.id] = job
        return Reply.json(self._batch_json(job, ex.params["v"]))

    def _batch_json(self, b: FakeBatch, v: str) -> dict[str, Any]:
        pending = len(b.requests) - b.succeeded - b.failed if b.state not in _BATCH_DONE else 0
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": f"models/{b.model}", "displayName": b.display_name, "state": b.state,
            "createTime": b.create_time, "updateTime": b.end_time or b.create_time,
            "batchStats": {"requestCount": str(len(b.requests)), "successfulRequestCount": str(b.succeeded),
                           "failedRequestCount": str(b.failed), "pendingRequestCount": str(pending)},
        }
        out: dict[str, Any] = {"name": b.name, "metadata": meta, "done": b.state in _BATCH_DONE}
        if b.end_time:
            meta["endTime"] = b.end_time
        if b.state == "BATCH_STATE_SUCCEEDED":
            dest = ({"responsesFile": b.responses_file} if b.from_file
                    else {"inlinedResponses": {"inlinedResponses": b.inlined}})
            meta["output"] = dest
            out["response"] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta."
                               "GenerateContentBatchOutput", **dest}
        return out

    def _advance(self, b: FakeBatch) -> None:
        """PENDING, RUNNING halfway through the delay, then every request answered (some failed on purpose)."""
        if b.state in _BATCH_DONE:
            return
        age = time.monotonic() - b.created
        if age < self.batch_delay_s:
            b.state = "BATCH_STATE_RUNNING" if age >= self.batch_delay_s / 2 else "BATCH_STATE_PENDING"
            return
        lines: list[dict[str, Any]] = []
        for key, request in b.requests:
            error: dict[str, Any] | None = None
            if self.batch_entry_failures > 0:
                self.batch_entry_failures -= 1
                error = {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}
            else:
                try:
                    response = self._answer(self._gen_info(b.model, request), None)
                except Exception as exc:  # noqa: BLE001 - a bad request fails its entry, not the batch
                    reply = getattr(exc, "reply", None)
                    body = json.loads(reply.body) if reply is not None else {"error": {"message": str(exc)}}
                    error = body.get("error") or {"code": 400, "message": str(exc)}
            if error is not None:
                b.failed += 1
                lines.append({"key": key, "error": error})
            else:
                b.succeeded += 1
                lines.append({"key": key, "response": response})
        if b.from_file:
            data = "".join(json.dumps(row) + "\n" for row in lines).encode()
            f = UploadedFile(id=f"batch-{b.id}", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                             mime_type="application/jsonl", state="ACTIVE", create_time=_ts(_now()), data=data)
            with self._files_lock:
                self.uploaded[f.id] = f
            b.responses_file = f.name
        else:
            b.inlined = [{"metadata": {"key": row["key"]}, **{k: v for k, v in row.items() if k != "key"}}
                         for row in lines]
        b.state, b.end_time = "BATCH_STATE_SUCCEEDED", _ts(_now())

    def _batch(self, bid: str) -> FakeBatch:
        b = self.batches.get(bid)
        if b is None:
            raise http_error(self.error_reply(404, f"Batch batches/{bid} not found."))
        return b

    def _batch_get(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            b = self._batch(ex.params["bid"])
        with self._batch_lock:  # not the files lock: answering a request that names a file takes that one
            self._advance(b)
            return Reply.json(self._batch_json(b, ex.params["v"]))

    def _batch_list(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            ops = [self._batch_json(b, ex.params["v"]) for b in self.batches.values()]
        return Reply.json({"operations": ops} if ops else {})

    def _batch_cancel(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            b = self._batch(ex.params["bid"])
            if b.state not in _BATCH_DONE:
                b.state, b.end_time = "BATCH_STATE_CANCELLED", _ts(_now())
        return Reply.json({})

    def _batch_delete(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            self._batch(ex.params["bid"])
            del self.batches[ex.params["bid"]]
        return Reply.json({})

    def _download(self, ex: Exchange, fault: str | None) -> Reply:
        with self._files_lock:
            f = self._live(ex.params["fid"])
            data = f.data
        return Reply(body=data, content_type="application/octet-stream")


def _ffprobe_duration(data: bytes) -> float:
    """Duration for videoMetadata when PyAV (`probe_media`) could not tell; 0 when ffprobe cannot either."""
    ffprobe = shutil.which("ffprobe")
    if not ffprobe or not data:
        return 0.0
    with tempfile.NamedTemporaryFile(suffix=".bin") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            out = subprocess.run(
                [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", tmp.name],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
            return round(float(out), 3) if out and out != "N/A" else 0.0
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return 0.0
