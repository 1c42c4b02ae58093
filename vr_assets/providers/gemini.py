"""Gemini teacher on google-genai: inline media or one Files API upload per video.

The SDK's own retries stay off (`retry_options=None`, its default): the shared loop in base.py
retries with knowledge of Retry-After, RetryInfo and bad answers, and the limiter sees every try.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from vr_assets.config import MediaSettings, ModelSpec
from vr_assets.fsnames import printable
from vr_assets.providers.base import (
    Accounting,
    Attempt,
    BadOutput,
    BaseTeacher,
    Failure,
    KeyedLocks,
    MediaRef,
    ModelCall,
    PayloadCache,
    Prepared,
    RetryableError,
    Scrubber,
    classify_status,
    classify_transport,
    file_sha256,
    media_sha256,
    parse_retry_after,
    parse_retry_info,
    strip_think,
)
from vr_assets.providers.context_cache import CacheBook, CacheEntry
from vr_assets.providers.limits import RateLimiter
from vr_assets.providers.upload_registry import MAX_AGE_S, UploadEntry, UploadRegistry
from vr_assets.providers.usage import context_cache_pays

log = logging.getLogger(__name__)

OK_FINISH = frozenset({"", "STOP", "FINISH_REASON_UNSPECIFIED"})
BLOCKED_FINISH = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"}
)
UPLOAD_POLL_INITIAL_S = 0.1
UPLOAD_POLL_MAX_S = 5.0
UPLOAD_MAX_WAIT_S = 600.0
UPLOAD_SLOT_WAIT_S = 120.0


class FileProcessingFailed(Exception):
    """The Files API reported FAILED (or never got ACTIVE): the same bytes will not do better."""


def _enum_name(v: Any) -> str:
    if v is None:
        return ""
    return str(getattr(v, "value", v) or "")


def inline_payload_bytes(size: int) -> int:
    """Inline media travel base64-encoded, so the request grows by 4/3; the limit is on the request."""
    return (size + 2) // 3 * 4


# ---------------------------------------------------------------- uploads


@dataclass
class _Upload:
    sha: str
    name: str
    part: types.Part
    size: int
    created: float
    owners: set[str] = field(default_factory=set)
    in_use: int = 0
    last_used: float = 0.0
    registered: bool = False  # in the on-disk registry: other steps and processes reuse it


class UploadManager:
    """Files API uploads keyed by content hash: one upload per video, bounded number alive here.

    A call holds its upload "in use" while its request runs; only idle uploads are evicted
    (least recently used first) when a new one needs a slot. With a `registry`, uploads are
    recorded on disk: `release` only forgets a video here (a later step, maybe in another process,
    points at the same file) and `discard`, after the video's last model step, deletes the file once
    no video needs it. Without one, `release` deletes what no other video here shares.
    """

    def __init__(
        self, client: genai.Client, scrub: Scrubber, max_live: int, registry: UploadRegistry | None = None
    ) -> None:
        self._client = client
        self._scrub = scrub
        self.max_live = max_live
        self.registry = registry
        self._live: dict[str, _Upload] = {}
        self._reserved = 0
        self._cond = threading.Condition()
        self._locks = KeyedLocks()
        self.uploads = 0
        self.deletes = 0

    def live_count(self) -> int:
        with self._cond:
            return len(self._live)

    def acquire(self, path: Path, mime: str, owner: str, timeout_ms: int) -> tuple[_Upload, int]:
        """The ACTIVE upload for `path` (marked in use) and the bytes this call uploaded (0 on reuse)."""
        sha = file_sha256(path)
        with self._locks.hold(sha):
            stale: _Upload | None = None
            with self._cond:
                up = self._live.get(sha)
                if up is not None and time.monotonic() - up.created > MAX_AGE_S and up.in_use == 0:
                    stale = self._live.pop(sha)
                    up = None
                if up is not None:
                    up.in_use += 1
                    up.last_used = time.monotonic()
                    new_owner = owner not in up.owners
                    up.owners.add(owner)
            if up is not None:
                if new_owner and up.registered and self.registry is not None:
                    self.registry.claim(sha, owner)
                return up, 0
            if stale is not None:
                self._drop(stale)
            self._reserve_slot()
            try:
                up = self._adopt(sha, owner, timeout_ms)
                sent = 0
                if up is None:
                    up = self._upload(path, mime, sha, owner, timeout_ms)
                    sent = up.size
                    if self.registry is not None:
                        up.registered = self.registry.record(sha, _entry(up, mime, owner))
            except BaseException:
                with self._cond:
                    self._reserved -= 1
                    self._cond.notify_all()
                raise
            with self._cond:
                self._reserved -= 1
                up.in_use = 1
                up.owners.add(owner)
                up.last_used = time.monotonic()
                self._live[sha] = up
                if sent:
                    self.uploads += 1
            return up, sent

    def unuse(self, up: _Upload) -> None:
        doomed = False
        with self._cond:
            up.in_use -= 1
            up.last_used = time.monotonic()
            if up.in_use == 0 and not up.owners and self._live.get(up.sha) is up:
                del self._live[up.sha]
                doomed = True
            self._cond.notify_all()
        if doomed:
            self._drop(up)

    def release(self, owner: str) -> int:
        """Forget `owner` here; uploads no video here owns are deleted, unless registered for later steps."""
        doomed: list[_Upload] = []
        with self._cond:
            for sha, up in list(self._live.items()):
                up.owners.discard(owner)
                if not up.owners and up.in_use == 0:
                    del self._live[sha]
                    doomed.append(up)
            self._cond.notify_all()
        for up in doomed:
            self._drop(up)
        return len(doomed)

    def discard(self, owner: str) -> int:
        """`owner`'s last model step is done: give up its claims, delete files no video needs any more."""
        deleted = 0
        if self.registry is not None:
            for sha in self.registry.owned_by(owner):
                entry = self.registry.unclaim(sha, owner)
                if entry is None:
                    continue
                with self._cond:
                    up = self._live.get(sha)
                    if up is not None and up.name == entry.name:
                        up.registered = False  # nobody else needs it: this process deletes it when idle
                        continue
                self._delete_name(entry.name)
                deleted += 1
        return deleted + self.release(owner)

    def close(self) -> None:
        """End of a process: delete what only this process knew about; registered uploads stay."""
        with self._cond:
            gone = list(self._live.values())
            self._live.clear()
        for up in gone:
            self._drop(up)

    def _drop(self, up: _Upload) -> None:
        """An upload leaves this process: deleted unless the registry says other steps still need it."""
        if up.registered and self.registry is not None and self.registry.holders(up.sha):
            return
        if up.registered and self.registry is not None:
            self.registry.forget(up.sha, up.name)
        self._delete(up)

    def _adopt(self, sha: str, owner: str, timeout_ms: int) -> _Upload | None:
        """The upload another step or process registered for these bytes, if the service still has it."""
        if self.registry is None:
            return None
        entry = self.registry.claim(sha, owner)
        if entry is None:
            return None
        try:
            f = self._client.files.get(name=entry.name, config=types.GetFileConfig(
                http_options=types.HttpOptions(timeout=timeout_ms)))
            ok = _enum_name(f.state) == "ACTIVE"
        except Exception as err:  # noqa: BLE001 - gone or unreachable: upload again, as if never recorded
            log.info("registered upload %s unusable (%s): uploading again", entry.name, self._scrub(err))
            ok = False
        if not ok:
            self.registry.forget(sha, entry.name)
            return None
        part = types.Part(file_data=types.FileData(file_uri=entry.uri, mime_type=entry.mime_type))
        age = max(0.0, time.time() - entry.created_unix)
        return _Upload(sha=sha, name=entry.name, part=part, size=entry.size, created=time.monotonic() - age,
                       registered=True)

    def _reserve_slot(self) -> None:
        """Wait for room under `max_live`, evicting the least recently used idle upload.

        Only a media ref with more files than `max_live` (all in use by one request) could wait
        forever; after UPLOAD_SLOT_WAIT_S the upload goes ahead over the cap, with a warning.
        """
        deadline = time.monotonic() + UPLOAD_SLOT_WAIT_S
        while True:
            victim: _Upload | None = None
            with self._cond:
                if len(self._live) + self._reserved < self.max_live:
                    self._reserved += 1
                    return
                if time.monotonic() > deadline:
                    log.warning("all %d live uploads stay in use: uploading over the cap", self.max_live)
                    self._reserved += 1
                    return
                idle = [u for u in self._live.values() if u.in_use == 0]
                if idle:
                    victim = min(idle, key=lambda u: u.last_used)
                    del self._live[victim.sha]
                    self._reserved += 1
                else:
                    self._cond.wait(timeout=1.0)
                    continue
            self._drop(victim)
            return

    def _upload(self, path: Path, mime: str, sha: str, owner: str, timeout_ms: int) -> _Upload:
        size = path.stat().st_size
        opts = types.HttpOptions(timeout=timeout_ms)
        try:
            # an open file, not its path: given a path the SDK sends the file's name in an HTTP header, which
            # must be ASCII (a name such as `café.mp4`, or one that is not UTF-8, failed every upload)
            with open(path, "rb") as fh:
                f = self._client.files.upload(
                    file=fh,
                    config=types.UploadFileConfig(mime_type=mime, display_name=owner[:120], http_options=opts),
                )
        except ValueError as err:  # the SDK's "upload status is not finalized": an interrupted upload
            raise RetryableError(f"upload of {printable(path.name)} did not finish: {self._scrub(err)}") from None
        name = f.name or ""
        deadline = time.monotonic() + UPLOAD_MAX_WAIT_S
        interval = UPLOAD_POLL_INITIAL_S
        while _enum_name(f.state) in ("PROCESSING", "STATE_UNSPECIFIED", ""):
            if time.monotonic() > deadline:
                self._delete_name(name)
                raise FileProcessingFailed(f"file {name} not ACTIVE after {UPLOAD_MAX_WAIT_S:.0f}s")
            time.sleep(interval)
            interval = min(interval * 1.5, UPLOAD_POLL_MAX_S)
            try:
                f = self._client.files.get(name=name, config=types.GetFileConfig(http_options=opts))
            except genai_errors.APIError as err:
                if err.code in (429, 500, 502, 503, 504):
                    continue
                raise
            except Exception as err:  # noqa: BLE001 - a dropped poll is retried until the deadline
                if classify_transport(err, self._scrub) is None:
                    raise
        if _enum_name(f.state) != "ACTIVE":
            detail = f.error.message if f.error is not None and f.error.message else _enum_name(f.state)
            self._delete_name(name)
            raise FileProcessingFailed(f"file {name} processing failed: {self._scrub(detail)}")
        part = types.Part(file_data=types.FileData(file_uri=f.uri, mime_type=f.mime_type or mime))
        log.info("uploaded %s (%d bytes) as %s", printable(path.name), size, name)
        return _Upload(sha=sha, name=name, part=part, size=size, created=time.monotonic())

    def _delete(self, up: _Upload) -> None:
        self._delete_name(up.name)

    def _delete_name(self, name: str) -> None:
        if not name:
            return
        try:
            self._client.files.delete(name=name)
            with self._cond:
                self.deletes += 1
        except Exception as err:  # noqa: BLE001 - the service expires files anyway; never fail a call on cleanup
            log.warning("could not delete upload %s: %s", name, self._scrub(err))


def _entry(up: _Upload, mime: str, owner: str) -> UploadEntry:
    fd = up.part.file_data
    return UploadEntry(name=up.name, uri=(fd.file_uri if fd else "") or "", mime_type=(fd.mime_type if fd else "")
                       or mime, size=up.size, created_unix=time.time(), owners=[owner])


# ---------------------------------------------------------------- shared per endpoint


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, made the way google-genai makes its own.

    genai builds two per client from the CA files (~0.1 CPU-s); the forkserver makes this one once
    (worker_preload) and every worker's client reuses it.
    """
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    try:
        import httpx2

        return httpx2.create_ssl_context()
    except (ImportError, AttributeError):
        import certifi

        return ssl.create_default_context(cafile=certifi.where())


class GeminiShared:
    """What every Gemini teacher on one endpoint + key shares: the client, the uploads, the payloads."""

    def __init__(
        self, api_key: str, base_url: str | None, api_version: str, max_live: int, registry: UploadRegistry | None
    ) -> None:
        self.scrub = Scrubber([api_key])
        tls = {"verify": tls_context()}
        opts = types.HttpOptions(
            base_url=base_url or None, api_version=api_version, retry_options=None,
            client_args=tls, async_client_args={**tls, "ssl": tls["verify"]},
        )
        self.client = genai.Client(api_key=api_key, http_options=opts)
        self.uploads = UploadManager(self.client, self.scrub, max_live, registry)
        self.payloads: PayloadCache[list[types.Part]] = PayloadCache()
        self.caches = CacheBook(registry.root / "context_caches" if registry is not None else None)
        self.uncacheable: set[str] = set()  # cache keys the service refused to cache (too small, ...)

    def delete_caches(self, owner: str) -> int:
        """Delete the explicit context caches made for `owner`'s video, wherever they were made."""
        gone = self.caches.pop_all(owner)
        for entry in gone:
            try:
                self.client.caches.delete(name=entry.name)
            except Exception as err:  # noqa: BLE001 - it expires by its TTL anyway; never fail a step on cleanup
                log.warning("could not delete context cache %s: %s", entry.name, self.scrub(err))
        return len(gone)

    def close(self) -> None:
        """End of a process: uploads and caches only this process knew about are deleted."""
        self.uploads.close()
        for owner in self.caches.owners():
            self.delete_caches(owner)

    def __repr__(self) -> str:
        return "GeminiShared(...)"


_SHARED: dict[tuple[str, ...], GeminiShared] = {}
_SHARED_LOCK = threading.Lock()


def shared_for(
    api_key: str, base_url: str | None, api_version: str, fingerprint: str, max_live: int,
    registry_dir: Path | None = None,
) -> GeminiShared:
    """`registry_dir`: where this endpoint's uploads are recorded for other steps and processes
    (one folder per endpoint and key, under the results' cache)."""
    key = (base_url or "", api_version, fingerprint, str(registry_dir or ""))
    with _SHARED_LOCK:
        sh = _SHARED.get(key)
        if sh is None:
            registry = None
            if registry_dir is not None:
                endpoint = hashlib.sha256(f"{base_url or ''}|{api_version}|{fingerprint}".encode()).hexdigest()[:16]
                registry = UploadRegistry(registry_dir / endpoint)
            sh = _SHARED[key] = GeminiShared(api_key, base_url, api_version, max_live, registry)
        else:  # teachers sharing the endpoint share the uploads: room for the busiest of them
            sh.uploads.max_live = max(sh.uploads.max_live, max_live)
        return sh


# ---------------------------------------------------------------- the teacher


class GeminiTeacher(BaseTeacher):
    provider = "gemini"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        role: str,
        api_key: str,
        shared: GeminiShared,
        limiter: RateLimiter,
        media: MediaSettings,
        accounting: Accounting,
    ) -> None:
        super().__init__(spec, role=role, api_key=api_key, limiter=limiter, media=media, accounting=accounting)
        self._settings = spec.gemini
        self._shared = shared
        self._timeout_ms = max(1, int(round(spec.gemini.timeout * 1000)))

    @property
    def uploads(self) -> UploadManager:
        return self._shared.uploads

    @property
    def payloads(self) -> PayloadCache[list[types.Part]]:
        return self._shared.payloads

    @property
    def clips_in_place(self) -> bool:
        return self._media.transport == "upload"

    def release(self, video_key: str) -> None:
        self._shared.payloads.release(video_key)
        self._shared.uploads.release(video_key)
        if self._shared.caches.root is None:  # nobody else can find them: like unregistered uploads
            self._shared.delete_caches(video_key)

    def discard(self, video_key: str) -> None:
        self._shared.payloads.release(video_key)
        self._shared.delete_caches(video_key)
        self._shared.uploads.discard(video_key)

    def close(self) -> None:
        """End of a run: delete the uploads (and caches) this endpoint holds, except those registered for
        later steps."""
        self._shared.close()

    # -------------------------------------------------- media

    def _over_inline_limit(self, path: Path) -> bool:
        return inline_payload_bytes(path.stat().st_size) > int(self._media.inline_limit_mb * 1_000_000)

    def _goes_by_upload(self, path: Path) -> bool:
        return self._media.transport == "upload" or self._over_inline_limit(path)

    def _prepare(self, call: ModelCall) -> Prepared:
        media = call.media
        if media is None:
            return Prepared(payload=[])
        owner = media.video_key
        if media.kind == "frames":
            key = "frames:" + media_sha256(media)
            parts, size = self._shared.payloads.get(key, owner, lambda: _frame_parts(media.paths))
            return Prepared(payload=parts, inline_bytes=size)
        parts: list[types.Part] = []
        held: list[_Upload] = []
        uploaded = inline = 0
        try:
            for path in media.paths:
                if self._goes_by_upload(path):
                    up, sent = self._shared.uploads.acquire(path, media.mime_type, owner, self._timeout_ms)
                    held.append(up)
                    parts.append(_with_sampling(up.part, media))
                    uploaded += sent
                else:
                    got, n = self._shared.payloads.get(
                        "inline:" + file_sha256(path), owner, lambda p=path: _inline_parts([p], media.mime_type)
                    )
                    parts.extend(_with_sampling(g, media) for g in got)
                    inline += n
        except BaseException:
            for up in held:
                self._shared.uploads.unuse(up)
            raise

        def done() -> None:
            for up in held:
                self._shared.uploads.unuse(up)

        return Prepared(payload=parts, uploaded_bytes=uploaded, inline_bytes=inline, release=done)

    # -------------------------------------------------- request

    def _send(self, call: ModelCall, prepared: Prepared) -> Attempt:
        """One request: media first, then the prompt, so requests on one video share the longest prefix the
        service's implicit caching can hit (a system instruction, when set, precedes both). A video
        asked several whole-video questions reads its media from an explicit context cache instead, where
        that pays (`_context_cache`); a cache the service no longer has is made again, once."""
        cache, made = self._context_cache(call, prepared)
        try:
            got = self._generate(call, prepared, cache)
        except genai_errors.APIError as err:
            if cache is None or not _cache_gone(err):
                raise
            log.info("context cache %s gone (%s): making it again", cache.name, self._shared.scrub(err))
            self._shared.caches.forget(cache.owner, cache.name)
            cache, made = self._context_cache(call, prepared)
            got = self._generate(call, prepared, cache)
        if made and cache is not None:
            got.cache_write_tokens = cache.tokens
        return got

    def _generate(self, call: ModelCall, prepared: Prepared, cache: CacheEntry | None) -> Attempt:
        s = self._settings
        config = types.GenerateContentConfig(
            temperature=s.temperature,
            max_output_tokens=s.max_output_tokens,
            # with a cache the system instruction is in it (the service refuses a request that names a cache
            # and sets system_instruction, tools or tool_config); on Gemini 3 its part carries the resolution
            media_resolution=(
                s.media_resolution if call.media is not None and (cache is None or not self._part_resolution)
                else None
            ),
            system_instruction=(call.system or None) if cache is None else None,
            cached_content=cache.name if cache is not None else None,
            response_mime_type="application/json" if call.schema_model is not None else None,
            response_schema=call.schema_model,
            http_options=types.HttpOptions(timeout=self._timeout_for(call)),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            service_tier=types.ServiceTier.FLEX if call.tier == "flex" else None,
        )
        parts = [*(prepared.payload if cache is None else []), types.Part(text=call.prompt)]
        resp = self._shared.client.models.generate_content(
            model=s.model, contents=[types.Content(role="user", parts=parts)], config=config
        )
        return read_response(resp)

    def _timeout_for(self, call: ModelCall) -> int:
        if call.tier != "flex":
            return self._timeout_ms
        return max(self._timeout_ms, int(round(self._spec.flex_timeout_s * 1000)))

    @property
    def client(self) -> genai.Client:
        """The SDK client (the batch sensor submits and polls through it)."""
        return self._shared.client

    def batch_request(self, call: ModelCall) -> dict[str, Any]:
        """One GenerateContentRequest as a line of a batch's JSONL input (REST field names): the same prompt,
        system instruction and generation settings as a live call; text only (batch steps send no media).
        The schema goes as `responseJsonSchema` (JSON Schema, what the SDK's `response_schema` conversion
        also accepts; the docs advise it for pydantic models)."""
        if call.media is not None:
            raise ValueError(f"{self._where(call)}: a call with media cannot go in a batch")
        s = self._settings
        gen: dict[str, Any] = {"temperature": s.temperature, "maxOutputTokens": s.max_output_tokens}
        if call.schema_model is not None:
            gen["responseMimeType"] = "application/json"
            gen["responseJsonSchema"] = call.schema_model.model_json_schema()
        req: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": call.prompt}]}],
                               "generationConfig": gen}
        if call.system:
            req["systemInstruction"] = {"parts": [{"text": call.system}]}
        return req

    # -------------------------------------------------- explicit context caching

    def _context_cache(self, call: ModelCall, prepared: Prepared) -> tuple[CacheEntry | None, bool]:
        """(the cache this call reads its media from, whether this call made it); (None, False) for a plain
        request: caching off, media that is not one whole uploaded video asked about more than once, a
        price table that says it does not pay, or content the service refused to cache."""
        media = call.media
        if self._spec.context_cache != "auto" or media is None or media.kind != "video" or not media.reuses:
            return None, False
        if media.start_s is not None or len(prepared.payload) != 1 or prepared.payload[0].file_data is None:
            return None, False
        ttl = self._spec.context_cache_ttl_s
        if not context_cache_pays(self._price(), media.reuses, ttl, call.tier):
            return None, False
        part = prepared.payload[0]
        fd, meta = part.file_data, part.video_metadata
        key = hashlib.sha256(
            "|".join([self.model_name, fd.file_uri or "", meta.model_dump_json() if meta else "",
                      str(self._settings.media_resolution), call.system]).encode()
        ).hexdigest()[:32]
        if key in self._shared.uncacheable:
            return None, False
        return self._shared.caches.get_or_create(media.video_key, key, lambda: self._create_cache(call, part, key))

    @property
    def _part_resolution(self) -> bool:
        """Whether the model takes a media resolution on a part (Gemini 3 and later), so the cached video is
        tokenized at the configured resolution; older models get it in each request's config."""
        hit = re.match(r"(?:models/)?gemini-(\d+)", self._settings.model)
        return hit is not None and int(hit.group(1)) >= 3

    def _create_cache(self, call: ModelCall, part: types.Part, key: str) -> CacheEntry | None:
        ttl = self._spec.context_cache_ttl_s
        resolution = self._settings.media_resolution if self._part_resolution else None
        cached_part = types.Part(
            file_data=part.file_data, video_metadata=part.video_metadata,
            media_resolution=types.PartMediaResolution(level=resolution) if resolution else None,
        )
        try:
            made = self._shared.client.caches.create(
                model=self._settings.model,
                config=types.CreateCachedContentConfig(
                    contents=[types.Content(role="user", parts=[cached_part])],
                    system_instruction=call.system or None,
                    ttl=f"{ttl:.0f}s",
                    display_name=call.video_key[:120],
                    http_options=types.HttpOptions(timeout=self._timeout_ms),
                ),
            )
        except genai_errors.ClientError as err:  # refused (too few tokens, a model without caching): go plain
            log.info("no context cache for video %r: %s", call.video_key, self._shared.scrub(err))
            if err.code != 429:  # a rate limit says nothing about the content: a later call tries again
                self._shared.uncacheable.add(key)
            return None
        except Exception as err:  # noqa: BLE001 - unreachable or overloaded: this call goes plain, the next tries
            log.info("context cache for video %r not made: %s", call.video_key, self._shared.scrub(err))
            return None
        now = time.time()
        expire = made.expire_time.timestamp() if made.expire_time is not None else now + ttl
        tokens = (made.usage_metadata.total_token_count or 0) if made.usage_metadata is not None else 0
        log.info("context cache %s for video %r (%d tokens, %.0f s)", made.name, call.video_key, tokens, ttl)
        return CacheEntry(key=key, name=made.name or "", owner=call.video_key, tokens=tokens, created_unix=now,
                          expire_unix=expire)

    def _classify(self, exc: BaseException) -> Failure:
        scrub = self._shared.scrub
        if isinstance(exc, genai_errors.APIError):
            headers = getattr(getattr(exc, "response", None), "headers", None)
            retry_after = parse_retry_after(headers)
            if retry_after is None:
                retry_after = parse_retry_info(exc.details)
            text = f"HTTP {exc.code} {exc.status or ''}: {exc.message or exc.details}"
            code = exc.code if isinstance(exc.code, int) else 0
            return classify_status(code, scrub(text), retry_after)
        if isinstance(exc, FileProcessingFailed):
            return Failure("upload", False, scrub(exc))
        got = classify_transport(exc, scrub)
        if got is not None:
            return got
        return Failure("unexpected", False, f"{type(exc).__name__}: {scrub(exc)}")


def _cache_gone(err: genai_errors.APIError) -> bool:
    """The service no longer has the named cache: expired, deleted, or not (yet) usable."""
    return err.code in (403, 404) or (err.status or "") in ("NOT_FOUND", "FAILED_PRECONDITION")


def _with_sampling(part: types.Part, media: MediaRef) -> types.Part:
    """The shared part, or a copy naming a time range and/or sampling rate (videoMetadata)."""
    if not media.sampling:
        return part
    meta = types.VideoMetadata(
        start_offset=f"{media.start_s:.3f}s" if media.start_s is not None else None,
        end_offset=f"{media.end_s:.3f}s" if media.end_s is not None else None,
        fps=media.fps,
    )
    return types.Part(file_data=part.file_data, inline_data=part.inline_data, video_metadata=meta)


def _frame_parts(paths: list[Path]) -> tuple[list[types.Part], int]:
    parts, total = [], 0
    for p in paths:
        data = p.read_bytes()
        total += len(data)
        parts.append(types.Part.from_bytes(data=data, mime_type="image/jpeg"))
    return parts, total


def _inline_parts(paths: list[Path], mime: str) -> tuple[list[types.Part], int]:
    parts, total = [], 0
    for p in paths:
        data = p.read_bytes()
        total += len(data)
        parts.append(types.Part.from_bytes(data=data, mime_type=mime))
    return parts, total


def read_response(resp: types.GenerateContentResponse) -> Attempt:
    """Text without thought parts, usage, and whether the answer is usable."""
    um = resp.usage_metadata
    got = Attempt(
        prompt_tokens=(um.prompt_token_count or 0) if um else 0,
        output_tokens=(um.candidates_token_count or 0) if um else 0,
        thinking_tokens=(um.thoughts_token_count or 0) if um else 0,
        cached_tokens=(um.cached_content_token_count or 0) if um else 0,
    )
    cands = resp.candidates or []
    if not cands:
        pf = resp.prompt_feedback
        if pf is not None and pf.block_reason is not None:
            got.bad = BadOutput("blocked", f"prompt blocked: {_enum_name(pf.block_reason)}")
        else:
            got.bad = BadOutput("empty", "no candidates")
        return got
    cand = cands[0]
    got.finish_reason = _enum_name(cand.finish_reason)
    parts = (cand.content.parts if cand.content is not None else None) or []
    raw = "".join(p.text for p in parts if p.text and not p.thought)
    got.text = strip_think(raw)
    if got.finish_reason == "MAX_TOKENS":
        got.bad = BadOutput("truncated", "finish MAX_TOKENS")
    elif got.finish_reason in BLOCKED_FINISH:
        got.bad = BadOutput("blocked", f"finish {got.finish_reason}")
    elif got.finish_reason not in OK_FINISH:
        got.bad = BadOutput("bad_finish", f"finish {got.finish_reason}")
    elif not raw.strip():
        got.bad = BadOutput("empty", "empty text")
    elif not got.text:
        got.bad = BadOutput("empty", "nothing left after removing <think>")
    return got
