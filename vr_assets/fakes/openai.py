"""Fake OpenAI-compatible endpoint (chat completions + models), shaped like OpenAI/vLLM answers.

Media arrive as data URLs in ``image_url`` / ``video_url`` / ``input_audio`` / ``file``
parts; structured output as ``response_format`` (json_schema or json_object) or vLLM's
``guided_json``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from typing import Any, ClassVar

from vr_assets.fakes.server import MEDIA_TOKENS, Exchange, FakeServer, FaultPlan, Reply, Route, http_error
from vr_assets.fakes.teacher import KNOWN_TITLES, Teacher
from vr_assets.fakes.usage_log import PartTokens, usage_record

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
_ERROR_SHAPES: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", "permission_denied", "You are not allowed to access this resource."),
    404: ("invalid_request_error", "not_found", "The requested resource does not exist."),
    409: ("invalid_request_error", "conflict", "Conflict."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "service_unavailable", "The server is overloaded or not ready yet."),
}
_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^,]*)?),(?P<data>.*)", re.S)


def _decode_data_url(url: str) -> tuple[bytes, str] | None:
    hit = _DATA_URL.fullmatch(url)
    if hit is None:
        return None
    data = hit.group("data")
    if ";base64" in hit.group("params"):
        s = data.strip()
        s += "=" * (-len(s) % 4)
        return (base64.b64decode(s.replace("-", "+").replace("_", "/"), validate=True), hit.group("mime"))
    return data.encode(), hit.group("mime")


class FakeOpenAI(FakeServer):
    """Local OpenAI-compatible endpoint; `base_url` already ends in /v1."""

    url_suffix: ClassVar[str] = "/v1"
    answer_routes: ClassVar[tuple[str, ...]] = ("chat.completions",)

    def __init__(
        self,
        teacher: Teacher | None = None,
        latency_media_s: float = 0.0,
        latency_text_s: float = 0.0,
        faults: FaultPlan | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(teacher, latency_media_s, latency_text_s, faults, **kwargs)
        self.models: list[str] = ["fake-vlm", "Qwen/Qwen3-VL-8B-Instruct"]
        self._routes: list[Route] = [
            ("POST", re.compile(r"/v1/chat/completions"), "chat.completions", self._chat),
            ("GET", re.compile(r"/v1/models"), "models.list", self._models_list),
            ("GET", re.compile(r"/v1/models/(?P<model>.+)"), "models.get", self._models_get),
        ]

    def routes(self) -> list[Route]:
        return self._routes

    def error_reply(self, status: int, message: str | None = None, *, retry_after: bool = False) -> Reply:
        err_type, code, default = _ERROR_SHAPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, f"fake error {status}")
        )
        headers = {"Retry-After": "1"} if retry_after else {}
        body = {"error": {"message": message or default, "type": err_type, "param": None, "code": code}}
        return Reply.json(body, status=status, headers=headers)

    def check_auth(self, ex: Exchange) -> Reply | None:
        auth = ex.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key:
            return self.error_reply(401, "You didn't provide an API key.")
        if self.api_key is not None and key != self.api_key:
            return self.error_reply(401, "Incorrect API key provided.")
        return None

    def prepare(self, ex: Exchange) -> None:
        if ex.record.route != "chat.completions":
            return
        body = ex.json if isinstance(ex.json, dict) else None
        if body is None:
            raise http_error(self.error_reply(400, "Request body must be a JSON object."))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise http_error(self.error_reply(400, "'messages' must be a non-empty array."))
        texts: list[str] = []
        media: list[str] = []
        audio: list[bool | None] = []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                for part in content:
                    self._part(part, texts, media, audio)
        schema, title = self._schema(body)
        ex.info = {"prompt": "\n".join(texts), "media": media, "schema": schema}
        ex.has_media = bool(media)
        rec = ex.record
        rec.model = str(body.get("model") or "") or None
        rec.prompt_text = ex.info["prompt"]
        rec.media_sha256 = media
        rec.media_audio = audio
        rec.schema_title = title

    def _part(self, part: Any, texts: list[str], media: list[str], audio: list[bool | None]) -> None:
        if isinstance(part, str):
            texts.append(part)
            return
        if not isinstance(part, dict):
            return
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            return
        url: str | None = None
        if kind in ("image_url", "video_url", "audio_url"):
            ref = part.get(kind)
            url = ref.get("url") if isinstance(ref, dict) else ref if isinstance(ref, str) else None
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            url = f"data:audio/{part['input_audio'].get('format', 'wav')};base64,{part['input_audio'].get('data', '')}"
        elif kind == "file" and isinstance(part.get("file"), dict):
            url = part["file"].get("file_data") or part["file"].get("file_id")
        if not url:
            return
        try:
            decoded = _decode_data_url(url)
        except (binascii.Error, ValueError) as exc:
            raise http_error(self.error_reply(400, f"Invalid base64 in {kind}: {exc}")) from exc
        raw = decoded[0] if decoded is not None else url.encode()
        sha = hashlib.sha256(raw).hexdigest()
        if decoded is not None:
            self.note_inline(sha, len(raw))
        media.append(sha)
        audio.append(self.has_audio(sha, raw, decoded[1] or "") if decoded is not None else None)

    @staticmethod
    def _schema(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        fmt = body.get("response_format")
        if isinstance(body.get("guided_json"), dict):
            schema = dict(body["guided_json"])
            return schema, schema.get("title")
        if not isinstance(fmt, dict):
            return None, None
        if fmt.get("type") == "json_object":
            return {"type": "object"}, None
        if fmt.get("type") != "json_schema":
            return None, None
        spec = fmt.get("json_schema") or {}
        schema = dict(spec.get("schema") or {"type": "object"})
        names = [n for n in (schema.get("title"), spec.get("name")) if isinstance(n, str) and n]
        title = next((n for n in names if n in KNOWN_TITLES), names[0] if names else None)
        if title:
            schema["title"] = title
        return schema, title

    def _chat(self, ex: Exchange, fault: str | None) -> Reply:
        body: dict[str, Any] = ex.json
        info = ex.info
        model = str(body.get("model") or "fake-vlm")
        answer = self.teacher.answer(info["prompt"], info["media"], info["schema"], model)
        content: str | None = answer.rendered()
        refusal: str | None = None
        finish = "stop"
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0 and len(content) // 4 > max_tokens:
            content, finish = content[: max_tokens * 4], "length"
        if fault == "truncated":
            content, finish = content[: len(content) // 2], "length"
        elif fault == "empty":
            content = ""
        elif fault == "safety":
            content, refusal, finish = None, REFUSAL_TEXT, "content_filter"
        think_tokens = len(answer.think) // 4 if content else 0
        completion_tokens = len(content or "") // 4
        prompt_tokens = len(info["prompt"]) // 4 + MEDIA_TOKENS * len(info["media"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": min(think_tokens, completion_tokens)},
        }
        self.note_usage(usage_record(
            kind="generate", server="openai", model=model, route=ex.record.route, fault=fault,
            prompt_tokens=prompt_tokens, text_tokens=len(info["prompt"]) // 4,
            by_modality={"TEXT": len(info["prompt"]) // 4, "MEDIA": MEDIA_TOKENS * len(info["media"])},
            output_tokens=completion_tokens - min(think_tokens, completion_tokens),
            thinking_tokens=min(think_tokens, completion_tokens),
            parts=[PartTokens(sha256=sha, mime="", modality="IMAGE", video_tokens=MEDIA_TOKENS)
                   for sha in info["media"]],
        ))
        n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
        ident = f"chatcmpl-fake{self.next_id():010d}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._stream(ident, created, model, n, content, refusal, finish, usage if include_usage else None)
        message = {"role": "assistant", "content": content, "refusal": refusal}
        return Reply.json(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": i, "message": dict(message), "logprobs": None, "finish_reason": finish} for i in range(n)
                ],
                "usage": usage,
                "system_fingerprint": "fp_vr_assets_fake",
            }
        )

    @staticmethod
    def _stream(
        ident: str,
        created: int,
        model: str,
        n: int,
        content: str | None,
        refusal: str | None,
        finish: str,
        usage: dict[str, Any] | None,
    ) -> Reply:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        base["system_fingerprint"] = "fp_vr_assets_fake"

        def chunk(choices: list[dict[str, Any]], with_usage: Any = None) -> bytes:
            obj = dict(base, choices=choices)
            if usage is not None:
                obj["usage"] = with_usage
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        def choice(i: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}

        out = bytearray()
        for i in range(n):
            out += chunk([choice(i, {"role": "assistant", "content": ""})])
            if refusal is not None:
                out += chunk([choice(i, {"refusal": refusal})])
            text = content or ""
            for start in range(0, len(text), 48):
                out += chunk([choice(i, {"content": text[start : start + 48]})])
            out += chunk([choice(i, {}, finish)])
        if usage is not None:
            out += chunk([], usage)
        out += b"data: [DONE]\n\n"
        return Reply(status=200, body=bytes(out), content_type="text/event-stream; charset=utf-8")

    def _models_list(self, ex: Exchange, fault: str | None) -> Reply:
        return Reply.json({"object": "list", "data": [self._model_json(m) for m in self.models]})

    def _models_get(self, ex: Exchange, fault: str | None) -> Reply:
        return Reply.json(self._model_json(ex.params["model"]))

    @staticmethod
    def _model_json(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "vr-assets-fake"}
