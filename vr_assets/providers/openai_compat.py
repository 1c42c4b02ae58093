"""Teacher on any OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang) via the openai SDK.

Media travel as data URLs (`video_url` for clips, `image_url` for frames), built once per
content hash. The SDK's retries are off (`max_retries=0`) so the shared loop owns them.
"""

from __future__ import annotations

import base64
import copy
import threading
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel

from vr_assets.config import MediaSettings, ModelSpec
from vr_assets.providers.base import (
    Accounting,
    Attempt,
    BadOutput,
    BaseTeacher,
    Failure,
    ModelCall,
    PayloadCache,
    Prepared,
    Scrubber,
    classify_status,
    classify_transport,
    media_sha256,
    parse_retry_after,
    strip_think,
)
from vr_assets.providers.limits import RateLimiter

_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "contains")


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Pydantic's schema made acceptable to `strict: true`: closed objects, every property required, no defaults."""
    schema = copy.deepcopy(model.model_json_schema())

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        node.pop("default", None)
        props = node.get("properties")
        if node.get("type") == "object" or isinstance(props, dict):
            node["additionalProperties"] = False
            node["required"] = list(props) if isinstance(props, dict) else []
        for k in _SCHEMA_MAPS:
            sub = node.get(k)
            if isinstance(sub, dict):
                for v in sub.values():
                    walk(v)
        for k in _SCHEMA_ONE:
            if isinstance(node.get(k), dict):
                walk(node[k])
        for k in _SCHEMA_LISTS:
            if isinstance(node.get(k), list):
                for v in node[k]:
                    walk(v)

    walk(schema)
    return schema


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class OpenAIShared:
    """The client and the data-URL cache shared by every teacher on one endpoint + key."""

    def __init__(self, api_key: str, base_url: str | None) -> None:
        self.scrub = Scrubber([api_key])
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0)
        self.payloads: PayloadCache[list[dict[str, Any]]] = PayloadCache()

    def __repr__(self) -> str:
        return "OpenAIShared(...)"


_SHARED: dict[tuple[str, ...], OpenAIShared] = {}
_SHARED_LOCK = threading.Lock()


def shared_for(api_key: str, base_url: str | None, fingerprint: str) -> OpenAIShared:
    key = (base_url or "", fingerprint)
    with _SHARED_LOCK:
        sh = _SHARED.get(key)
        if sh is None:
            sh = _SHARED[key] = OpenAIShared(api_key, base_url)
        return sh


class OpenAITeacher(BaseTeacher):
    provider = "openai"

    def __init__(
        self,
        spec: ModelSpec,
        *,
        role: str,
        api_key: str,
        shared: OpenAIShared,
        limiter: RateLimiter,
        media: MediaSettings,
        accounting: Accounting,
    ) -> None:
        super().__init__(spec, role=role, api_key=api_key, limiter=limiter, media=media, accounting=accounting)
        self._settings = spec.openai
        self._shared = shared

    @property
    def payloads(self) -> PayloadCache[list[dict[str, Any]]]:
        return self._shared.payloads

    def release(self, video_key: str) -> None:
        self._shared.payloads.release(video_key)

    def close(self) -> None:
        """Nothing lives server-side: media go inline."""

    def _prepare(self, call: ModelCall) -> Prepared:
        media = call.media
        if media is None:
            return Prepared(payload=[])
        key = f"{media.kind}:{media.mime_type}:{media_sha256(media)}"
        parts, size = self._shared.payloads.get(key, media.video_key, lambda: _media_parts(media.kind, media.paths,
                                                                                         media.mime_type))
        return Prepared(payload=parts, inline_bytes=size)

    @property
    def client(self) -> openai.OpenAI:
        """The SDK client (the batch sensor submits and polls through it)."""
        return self._shared.client

    def batch_request(self, call: ModelCall) -> dict[str, Any]:
        """The body of one /v1/chat/completions request, as a batch input line carries it (text only)."""
        if call.media is not None:
            raise ValueError(f"{self._where(call)}: a call with media cannot go in a batch")
        return {"model": self._settings.model_name, **self._body(call, Prepared(payload=[]))}

    def _body(self, call: ModelCall, prepared: Prepared) -> dict[str, Any]:
        s = self._settings
        messages: list[dict[str, Any]] = []
        if call.system:
            messages.append({"role": "system", "content": call.system})
        if prepared.payload:
            messages.append({"role": "user", "content": [*prepared.payload, {"type": "text", "text": call.prompt}]})
        else:
            messages.append({"role": "user", "content": call.prompt})
        kwargs: dict[str, Any] = {}
        if call.schema_model is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": call.schema_model.__name__,
                    "strict": True,
                    "schema": strict_json_schema(call.schema_model),
                },
            }
        if call.tier == "flex":
            kwargs["service_tier"] = "flex"
        return {"messages": messages, "temperature": s.temperature, "max_tokens": s.max_tokens, **kwargs}

    def _send(self, call: ModelCall, prepared: Prepared) -> Attempt:
        s = self._settings
        timeout = max(s.timeout, self._spec.flex_timeout_s) if call.tier == "flex" else s.timeout
        resp = self._shared.client.chat.completions.create(
            model=s.model_name, timeout=timeout, **self._body(call, prepared),
        )
        return read_completion(resp)

    def _classify(self, exc: BaseException) -> Failure:
        scrub = self._shared.scrub
        if isinstance(exc, openai.APITimeoutError):
            return Failure("timeout", True, f"timeout: {scrub(exc)}")
        if isinstance(exc, openai.APIConnectionError):
            return Failure("connection", True, f"connection: {scrub(exc)}")
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            if exc.status_code == 429 and body.get("code") == "insufficient_quota":
                return Failure("client", False, scrub(f"HTTP 429 insufficient_quota: {exc.message}"), 429)
            retry_after = parse_retry_after(exc.response.headers)
            return classify_status(exc.status_code, scrub(f"HTTP {exc.status_code}: {exc.message}"), retry_after)
        if isinstance(exc, openai.APIResponseValidationError):
            return Failure("server", True, f"unreadable response: {scrub(exc)}")
        got = classify_transport(exc, scrub)
        if got is not None:
            return got
        return Failure("unexpected", False, f"{type(exc).__name__}: {scrub(exc)}")


def _media_parts(kind: str, paths: list[Path], mime: str) -> tuple[list[dict[str, Any]], int]:
    parts: list[dict[str, Any]] = []
    total = 0
    for p in paths:
        data = p.read_bytes()
        total += len(data)
        if kind == "frames":
            parts.append({"type": "image_url", "image_url": {"url": data_url(data, "image/jpeg")}})
        else:
            parts.append({"type": "video_url", "video_url": {"url": data_url(data, mime)}})
    return parts, total


def read_completion(resp: Any) -> Attempt:
    """Text, usage (reasoning tokens split from visible output), and whether the answer is usable."""
    got = Attempt()
    usage = getattr(resp, "usage", None)
    if usage is not None:
        completion = usage.completion_tokens or 0
        details = usage.completion_tokens_details
        reasoning = (details.reasoning_tokens or 0) if details is not None else 0
        got.prompt_tokens = usage.prompt_tokens or 0
        got.thinking_tokens = reasoning
        got.output_tokens = max(0, completion - reasoning)
    choices = getattr(resp, "choices", None) or []
    if not choices:
        got.bad = BadOutput("empty", "no choices")
        return got
    choice = choices[0]
    got.finish_reason = choice.finish_reason or ""
    msg = choice.message
    raw = (msg.content if msg is not None else None) or ""
    got.text = strip_think(raw)
    refusal = getattr(msg, "refusal", None) if msg is not None else None
    if refusal:
        got.bad = BadOutput("refusal", str(refusal)[:300])
    elif got.finish_reason == "length":
        got.bad = BadOutput("truncated", "finish length")
    elif got.finish_reason == "content_filter":
        got.bad = BadOutput("blocked", "finish content_filter")
    elif not raw.strip():
        got.bad = BadOutput("empty", "empty content")
    elif not got.text:
        got.bad = BadOutput("empty", "nothing left after removing <think>")
    return got
