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
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, ClassVar

from vr_assets.fakes.server import (
    MEDIA_TOKENS,
    Exchange,
    FakeServer,
    FaultPlan,
    Reply,
    RequestRecord,
    Route,
    http_error,
)
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


@dataclass
class StoredFile:
    """A file of the Files API (batch input, output and error files)."""

    id: str
    filename: str
    purpose: str
    data: bytes = field(repr=False)
    created_at: int = 0

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None}


@dataclass
class FakeBatchJob:
    """A batch of /v1/chat/completions requests, answered all at once when its delay is over."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created: float
    created_at: int
    metadata: dict[str, Any] | None = None
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window, "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "in_progress_at": None, "expires_at": self.created_at + 86400,
            "finalizing_at": None, "completed_at": self.completed_at, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


_BATCH_DONE = ("completed", "failed", "expired", "cancelled")


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
        *,
        batch_api: bool = True,
        batch_delay_s: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(teacher, latency_media_s, latency_text_s, faults, **kwargs)
        self.models: list[str] = ["fake-vlm", "Qwen/Qwen3-VL-8B-Instruct"]
        #: a batch reports validating, then in_progress, until this long after its creation; then it is answered
        self.batch_delay_s = batch_delay_s
        #: the next this many batch requests answered fail with a 500 in the batch's error file
        self.batch_entry_failures = 0
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatchJob] = {}
        self._batch_lock = threading.Lock()
        batch_routes: list[Route] = [
            ("POST", re.compile(r"/v1/files"), "files.create", self._file_create),
            ("GET", re.compile(r"/v1/files/(?P<fid>[^/]+)/content"), "files.content", self._file_content),
            ("GET", re.compile(r"/v1/files/(?P<fid>[^/]+)"), "files.retrieve", self._file_get),
            ("DELETE", re.compile(r"/v1/files/(?P<fid>[^/]+)"), "files.delete", self._file_delete),
            ("POST", re.compile(r"/v1/batches"), "batches.create", self._batch_create),
            ("GET", re.compile(r"/v1/batches"), "batches.list", self._batch_list),
            ("GET", re.compile(r"/v1/batches/(?P<bid>[^/]+)"), "batches.retrieve", self._batch_get),
            ("POST", re.compile(r"/v1/batches/(?P<bid>[^/]+)/cancel"), "batches.cancel", self._batch_cancel),
        ]
        self._routes: list[Route] = [
            *(batch_routes if batch_api else []),  # like vLLM without them: 404
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
            tier="batch" if ex.in_batch else "flex" if body.get("service_tier") == "flex" else "standard",
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

    # ------------------------------------------------------------ files and batches

    def _file_create(self, ex: Exchange, fault: str | None) -> Reply:
        """multipart/form-data with `purpose` and `file`, as the SDK sends it."""
        ctype = ex.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return self.error_reply(400, "Expected multipart/form-data.")
        msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + ex.body)
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields or "purpose" not in fields:
            return self.error_reply(400, "'file' and 'purpose' are required.")
        f = StoredFile(id=f"file-{secrets.token_hex(12)}", filename=fields["file"][0] or "upload",
                       purpose=fields["purpose"][1].decode(), data=fields["file"][1], created_at=int(time.time()))
        with self._batch_lock:
            self.files[f.id] = f
        return Reply.json(f.json())

    def _stored(self, fid: str) -> StoredFile:
        f = self.files.get(fid)
        if f is None:
            raise http_error(self.error_reply(404, f"No such File object: {fid}"))
        return f

    def _file_get(self, ex: Exchange, fault: str | None) -> Reply:
        with self._batch_lock:
            return Reply.json(self._stored(ex.params["fid"]).json())

    def _file_content(self, ex: Exchange, fault: str | None) -> Reply:
        with self._batch_lock:
            data = self._stored(ex.params["fid"]).data
        return Reply(body=data, content_type="application/octet-stream")

    def _file_delete(self, ex: Exchange, fault: str | None) -> Reply:
        with self._batch_lock:
            self._stored(ex.params["fid"])
            del self.files[ex.params["fid"]]
        return Reply.json({"id": ex.params["fid"], "object": "file", "deleted": True})

    def _batch_create(self, ex: Exchange, fault: str | None) -> Reply:
        body = ex.json if isinstance(ex.json, dict) else {}
        endpoint = body.get("endpoint")
        if endpoint not in ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions"):
            return self.error_reply(400, f"Invalid endpoint {endpoint!r}.")
        if body.get("completion_window") != "24h":
            return self.error_reply(400, "completion_window must be '24h'.")
        with self._batch_lock:
            src = self._stored(str(body.get("input_file_id")))
            if src.purpose != "batch":
                return self.error_reply(400, f"File {src.id} does not have purpose 'batch'.")
            lines = [ln for ln in src.data.decode("utf-8", "replace").splitlines() if ln.strip()]
            job = FakeBatchJob(id=f"batch_{secrets.token_hex(12)}", input_file_id=src.id, endpoint=endpoint,
                               completion_window="24h", created=time.monotonic(), created_at=int(time.time()),
                               metadata=body.get("metadata"), total=len(lines))
            self.batches[job.id] = job
        return Reply.json(job.json())

    def _advance(self, b: FakeBatchJob) -> None:
        """validating, in_progress halfway through the delay, then completed: output and error files written."""
        if b.status in _BATCH_DONE or b.status == "cancelling":
            return
        age = time.monotonic() - b.created
        if age < self.batch_delay_s:
            b.status = "in_progress" if age >= self.batch_delay_s / 2 else "validating"
            return
        out: list[str] = []
        errors: list[str] = []
        for n, line in enumerate(self._stored(b.input_file_id).data.decode().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            custom_id = row.get("custom_id", str(n))
            request_id = f"req_{secrets.token_hex(8)}"
            status, body = self._one(row.get("body") or {}, row.get("url") or b.endpoint)
            result = {"id": f"batch_req_{secrets.token_hex(8)}", "custom_id": custom_id,
                      "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}
            if status == 200:
                b.completed += 1
                out.append(json.dumps(result))
            else:
                b.failed += 1
                errors.append(json.dumps(result))
        for kind, rows in (("output", out), ("error", errors)):
            if not rows:
                continue
            f = StoredFile(id=f"file-{secrets.token_hex(12)}", filename=f"batch_{b.id}_{kind}.jsonl",
                           purpose=f"batch_{kind}", data=("\n".join(rows) + "\n").encode(),
                           created_at=int(time.time()))
            self.files[f.id] = f
            if kind == "output":
                b.output_file_id = f.id
            else:
                b.error_file_id = f.id
        b.status, b.completed_at = "completed", int(time.time())

    def _one(self, body: dict[str, Any], url: str) -> tuple[int, dict[str, Any]]:
        """One batch line answered as /v1/chat/completions would answer it (or failed on purpose)."""
        if self.batch_entry_failures > 0:
            self.batch_entry_failures -= 1
            return 500, json.loads(self.error_reply(500).body)
        if url != "/v1/chat/completions":
            return 400, json.loads(self.error_reply(400, f"fake batches answer /v1/chat/completions, not {url}").body)
        record = RequestRecord(method="POST", path=url, route="chat.completions")
        ex = Exchange(method="POST", path=url, query={}, headers={}, body=b"", json=body, params={}, record=record)
        try:
            self.prepare(ex)
            ex.in_batch = True
            reply = self._chat(ex, None)
        except Exception as exc:  # noqa: BLE001 - a bad line fails alone, like the service
            reply = getattr(exc, "reply", None) or self.error_reply(400, str(exc))
        return reply.status, json.loads(reply.body)

    def _batch_job(self, bid: str) -> FakeBatchJob:
        b = self.batches.get(bid)
        if b is None:
            raise http_error(self.error_reply(404, f"No such Batch object: {bid}"))
        return b

    def _batch_get(self, ex: Exchange, fault: str | None) -> Reply:
        with self._batch_lock:
            b = self._batch_job(ex.params["bid"])
            self._advance(b)
            return Reply.json(b.json())

    def _batch_list(self, ex: Exchange, fault: str | None) -> Reply:
        with self._batch_lock:
            data = [b.json() for b in self.batches.values()]
        return Reply.json({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None, "has_more": False})

    def _batch_cancel(self, ex: Exchange, fault: str | None) -> Reply:
        with self._batch_lock:
            b = self._batch_job(ex.params["bid"])
            if b.status not in _BATCH_DONE:
                b.status = "cancelled"
            return Reply.json(b.json())

    def _models_list(self, ex: Exchange, fault: str | None) -> Reply:
        return Reply.json({"object": "list", "data": [self._model_json(m) for m in self.models]})

    def _models_get(self, ex: Exchange, fault: str | None) -> Reply:
        return Reply.json(self._model_json(ex.params["model"]))

    @staticmethod
    def _model_json(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "vr-assets-fake"}
