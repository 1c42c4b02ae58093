"""Shared machinery of the wire-protocol fakes: threaded HTTP/1.1 server, request log, faults.

Built on stdlib ``http.server`` so tests, the offline demo and the benchmark need nothing
beyond the SDKs themselves. Provider subclasses declare routes and render bodies; this
module owns transport details that the SDKs are sensitive to (keep-alive with exact
Content-Length, TCP_NODELAY, a deep listen backlog, silent client disconnects).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from vr_assets.fakes.teacher import Teacher
from vr_assets.fakes.usage_log import UsageLog, WireUsage, video_tokens_mode

log = logging.getLogger(__name__)

ERROR_FAULTS: tuple[str, ...] = ("429", "429_retry_after", "500", "503")
TRANSPORT_FAULTS: tuple[str, ...] = ("timeout", "drop")
ANSWER_FAULTS: tuple[str, ...] = ("empty", "safety", "truncated")
ALL_FAULTS: tuple[str, ...] = ERROR_FAULTS + TRANSPORT_FAULTS + ANSWER_FAULTS
MEDIA_TOKENS = 258  # per media part or frame, like Gemini's fixed per-image cost
MODEL_ROUTES: tuple[str, ...] = ("generateContent", "streamGenerateContent", "chat.completions")

_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@dataclass
class RequestRecord:
    """One request as the fake saw it; large inline media strings are redacted (see `log_media`)."""

    method: str
    path: str
    route: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body_len: int = 0
    json: Any = None
    status: int = 0  # 0 while in flight, and for a connection dropped without a response
    fault: str | None = None
    media_sha256: list[str] = field(default_factory=list)
    # per media part: its videoMetadata time range and rate in seconds ({} when none)
    media_sampling: list[dict[str, float]] = field(default_factory=list)
    # per media part: whether the video has an audio stream (None: not a video, or unreadable)
    media_audio: list[bool | None] = field(default_factory=list)
    cached_content: str | None = None  # the explicit context cache a generate request named
    model: str | None = None
    schema_title: str | None = None
    prompt_text: str = ""
    started_at: float = 0.0
    duration_s: float = 0.0


@dataclass
class FaultPlan:
    """Random faults with a seeded generator, so a run's fault pattern is reproducible."""

    rate: float
    seed: int = 0
    kinds: tuple[str, ...] = ALL_FAULTS
    slow_s: float = 5.0
    routes: tuple[str, ...] = MODEL_ROUTES
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")
        unknown = set(self.kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {ALL_FAULTS}")
        self._rng = random.Random(self.seed)

    def draw(self, applicable: tuple[str, ...]) -> str | None:
        """Two draws per request whatever the outcome, so the sequence does not depend on the route mix."""
        kinds = [k for k in self.kinds if k in applicable]
        with self._lock:
            hit = self._rng.random() < self.rate
            pick = self._rng.random()
        if not hit or not kinds:
            return None
        return kinds[min(int(pick * len(kinds)), len(kinds) - 1)]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status=status, body=json.dumps(obj).encode(), headers=dict(headers or {}))


@dataclass
class Exchange:
    """One request in flight: what the route handlers read and annotate."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    params: dict[str, str]
    record: RequestRecord
    has_media: bool = False
    pending: Reply | None = None
    info: Any = None
    in_batch: bool = False  # one line of a provider batch (billed at the batch price)


@dataclass
class _Scripted:
    status: int
    body: Any
    headers: dict[str, str]
    times: int


class _Drop(Exception):
    """Close the connection without a response."""


Route = tuple[str, re.Pattern[str], str, Callable[[Exchange, str | None], Reply]]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeServer) -> None:
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_sockets(self) -> None:
        """Keep-alive connections would otherwise pin handler threads after stop()."""
        with self._sockets_lock:
            sockets = list(self.open_sockets)
            self.open_sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE) or (isinstance(exc, OSError) and self.fake._stopping.is_set()):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "vr-assets-fake/1.0"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)

    def _go(self) -> None:
        self.server.fake._dispatch(self)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _go


class FakeServer:
    """Base of FakeGemini / FakeOpenAI: start, stop, log, counts, scripted errors, random faults."""

    url_suffix: ClassVar[str] = ""
    #: routes on which answer-shaped faults (empty/safety/truncated) make sense
    answer_routes: ClassVar[tuple[str, ...]] = MODEL_ROUTES

    def __init__(
        self,
        teacher: Teacher | None = None,
        latency_media_s: float = 0.0,
        latency_text_s: float = 0.0,
        faults: FaultPlan | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        log_media: bool = False,
        usage_log: str | os.PathLike[str] | None = None,
        video_tokens: str | None = None,
    ) -> None:
        self.teacher = teacher if teacher is not None else Teacher()
        self.latency_media_s = latency_media_s
        self.latency_text_s = latency_text_s
        self.faults = faults
        self.api_key = api_key
        self.log_media = log_media
        self.host = host
        self.port = port
        self.log: list[RequestRecord] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.inline_bytes: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._scripted: dict[str, collections.deque[_Scripted]] = collections.defaultdict(collections.deque)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._facts_by_sha: dict[str, MediaFacts] = {}
        #: billed events, one JSON line each, when asked (argument or env VR_FAKE_USAGE_LOG); see usage_log.py
        self.usage_log = UsageLog.from_env(usage_log)
        #: how a video part is counted: flat 258 per part (default) or by its duration (usage_log.py)
        self.video_tokens = video_tokens_mode(video_tokens)
        self._outage_until = 0.0
        self._outage_status = 503

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FakeServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name=f"{type(self).__name__}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_open_sockets()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The URL to hand to the SDK."""
        return self.root_url + self.url_suffix

    # ------------------------------------------------------------ test hooks

    def fail_next(
        self,
        route: str,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Queue scripted errors for a route key; they win over random faults.

        `body` None renders the provider's own error format for `status`; a dict is sent
        as JSON; str/bytes are sent verbatim (e.g. an HTML 502 page).
        """
        with self._lock:
            self._scripted[route].append(_Scripted(status, body, dict(headers or {}), times))

    def outage(self, seconds: float, status: int = 503) -> None:
        """The service is down for `seconds` but its front door answers: every request gets `status`."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds
            self._outage_status = status

    def refuse_for(self, seconds: float) -> threading.Thread:
        """The service is gone for `seconds` (connection refused), then back on the same port; join the
        returned thread to wait for it."""
        self.stop()

        def back() -> None:
            time.sleep(seconds)
            self.start()

        t = threading.Thread(target=back, name=f"{type(self).__name__}-restart", daemon=True)
        t.start()
        return t

    def reset(self) -> None:
        """Forget requests and counts; uploaded files and scripted errors stay."""
        with self._lock:
            self.log.clear()
            self.counts.clear()
            self.inline_bytes.clear()

    def inline_bytes_by_sha(self) -> dict[str, int]:
        """Decoded inline media bytes received per content sha256 (re-sent media shows up here)."""
        with self._lock:
            return dict(self.inline_bytes)

    def records(self, route: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.log if r.route == route]

    # ------------------------------------------------------------ subclass interface

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def error_reply(self, status: int, message: str | None = None, *, retry_after: bool = False) -> Reply:
        raise NotImplementedError

    def check_auth(self, ex: Exchange) -> Reply | None:
        return None

    def prepare(self, ex: Exchange) -> None:
        """Inspect the request before faults are decided (fingerprints, prompt, schema)."""

    def refine_route(self, route: str, query: dict[str, str]) -> str:
        """Split one path into several route keys when the query decides (e.g. upload start vs chunk)."""
        return route

    def decorate(self, route: str, reply: Reply) -> Reply:
        """Last look at every reply of a routed request, including faults and scripted errors."""
        return reply

    def applicable_faults(self, route: str) -> tuple[str, ...]:
        if route in self.answer_routes:
            return ALL_FAULTS
        return ERROR_FAULTS + TRANSPORT_FAULTS

    # ------------------------------------------------------------ helpers for subclasses

    def next_id(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def sleep(self, seconds: float) -> None:
        """Interruptible by stop(), so a slow handler never holds up teardown."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def note_inline(self, sha: str, nbytes: int) -> None:
        with self._lock:
            self.inline_bytes[sha] += nbytes

    def has_audio(self, sha: str, data: bytes, mime: str) -> bool | None:
        """Whether received video bytes carry sound, probed once per content hash (None: not a video)."""
        return self.media_facts(sha, data, mime).has_audio

    def media_facts(self, sha: str, data: bytes, mime: str) -> MediaFacts:
        """Duration and sound of received video bytes, probed once per content hash (empty: not a video)."""
        if not mime.startswith("video/"):
            return MediaFacts()
        with self._lock:
            if sha in self._facts_by_sha:
                return self._facts_by_sha[sha]
        found = probe_media(data)
        with self._lock:
            self._facts_by_sha[sha] = found
        return found

    def note_usage(self, entry: WireUsage) -> None:
        if self.usage_log is not None:
            self.usage_log.write(entry)

    # ------------------------------------------------------------ dispatch

    def _match(
        self, method: str, path: str
    ) -> tuple[str, Callable[[Exchange, str | None], Reply], dict[str, str]] | None:
        for m, pattern, key, fn in self.routes():
            if m != method:
                continue
            hit = pattern.fullmatch(path)
            if hit:
                return key, fn, hit.groupdict()
        return None

    def _dispatch(self, h: _Handler) -> None:
        started = time.time()
        t0 = time.monotonic()
        try:
            body = _read_body(h)
        except (OSError, ValueError):
            h.close_connection = True
            return
        url = urlsplit(h.path)
        headers = {k.lower(): v for k, v in h.headers.items()}
        parsed: Any = None
        if body[:1] in (b"{", b"["):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        record = RequestRecord(
            method=h.command,
            path=h.path,
            headers=headers,
            body_len=len(body),
            json=parsed if self.log_media else _redact(parsed),
            started_at=started,
        )
        with self._lock:
            self.log.append(record)  # at arrival: in-flight requests (e.g. a 'timeout' fault) are visible
        match = self._match(h.command, url.path)
        if match is None:
            record.route = "unknown"
            self._send(h, record, self.error_reply(404, f"no route for {h.command} {url.path}"), t0)
            return
        route, fn, params = match
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        route = self.refine_route(route, query)
        record.route = route
        with self._lock:
            self.counts[route] += 1
        ex = Exchange(
            method=h.command,
            path=url.path,
            query=query,
            headers=headers,
            body=body,
            json=parsed,
            params=params,
            record=record,
        )
        try:
            reply = self._serve(ex, fn)
        except _Drop:
            self._drop(h, record, t0)
            return
        except _HttpError as err:
            reply = err.reply
        except Exception as exc:  # the SDK must see a JSON 500, never a dead socket
            log.exception("fake %s handler failed", route)
            reply = self.error_reply(500, f"fake server error: {exc!r}")
        self._send(h, record, self.decorate(route, reply), t0)

    def _serve(self, ex: Exchange, fn: Callable[[Exchange, str | None], Reply]) -> Reply:
        route = ex.record.route
        try:
            self.prepare(ex)
        except _HttpError as err:
            ex.pending = err.reply
        with self._lock:
            down = self._outage_status if time.monotonic() < self._outage_until else None
        if down is not None:
            ex.record.fault = f"outage:{down}"
            return self.error_reply(down)
        scripted = self._pop_scripted(route)
        if scripted is not None:
            ex.record.fault = f"scripted:{scripted.status}"
            return self._scripted_reply(scripted)
        denied = self.check_auth(ex)
        if denied is not None:
            return denied
        kind: str | None = None
        plan = self.faults
        if plan is not None and plan.rate > 0 and route in plan.routes:
            kind = plan.draw(self.applicable_faults(route))
        ex.record.fault = kind
        if kind in ERROR_FAULTS:
            status = int(kind[:3])  # type: ignore[index]
            return self.error_reply(status, retry_after=kind == "429_retry_after")
        if kind == "drop":
            raise _Drop
        if kind == "timeout" and plan is not None:
            self.sleep(plan.slow_s)
        if ex.pending is not None:
            return ex.pending
        if route in self.answer_routes:
            self.sleep(self.latency_media_s if ex.has_media else self.latency_text_s)
        return fn(ex, kind if kind in ANSWER_FAULTS else None)

    def _pop_scripted(self, route: str) -> _Scripted | None:
        with self._lock:
            queue = self._scripted.get(route)
            if not queue:
                return None
            head = queue[0]
            head.times -= 1
            if head.times <= 0:
                queue.popleft()
            return head

    def _scripted_reply(self, s: _Scripted) -> Reply:
        if s.body is None:
            reply = self.error_reply(s.status)
            reply.headers.update(s.headers)
            return reply
        if isinstance(s.body, bytes | str):
            raw = s.body.encode() if isinstance(s.body, str) else s.body
            ctype = s.headers.get("Content-Type", "text/html; charset=UTF-8")
            return Reply(status=s.status, body=raw, content_type=ctype, headers=dict(s.headers))
        return Reply.json(s.body, status=s.status, headers=s.headers)

    def _send(self, h: _Handler, record: RequestRecord, reply: Reply, t0: float) -> None:
        record.status = reply.status  # before writing, so a client never sees a reply its record lacks
        record.duration_s = time.monotonic() - t0
        try:
            h.send_response(reply.status)
            headers = {"Content-Type": reply.content_type, **reply.headers}
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            if reply.body and h.command != "HEAD":
                h.wfile.write(reply.body)
            h.wfile.flush()
        except _CLIENT_GONE:
            h.close_connection = True

    def _drop(self, h: _Handler, record: RequestRecord, t0: float) -> None:
        record.status = 0
        record.duration_s = time.monotonic() - t0
        h.close_connection = True
        with contextlib.suppress(OSError):
            h.connection.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class MediaFacts:
    """What the fake reads from received media bytes, as the service would on its side."""

    duration_s: float | None = None
    has_audio: bool | None = None


def probe_media(data: bytes) -> MediaFacts:
    """Duration and whether there is an audio stream, in-process through PyAV (~ms); nothing for bytes it
    cannot read. The service does this work on its own machines, so the fake should not take an ffprobe
    process's CPU from the client it serves (the benchmark shares 2 cores)."""
    try:
        import av

        with av.open(io.BytesIO(data)) as container:
            duration = round(container.duration / 1_000_000, 3) if container.duration is not None else None
            return MediaFacts(duration, any(s.type == "audio" for s in container.streams))
    except Exception:  # noqa: BLE001 - no PyAV, or bytes it cannot read
        return MediaFacts()


class _HttpError(Exception):
    """Raised by `prepare` when the request itself is invalid; answered after fault decisions."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def http_error(reply: Reply) -> _HttpError:
    return _HttpError(reply)


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    length = h.headers.get("Content-Length")
    if length is not None:
        n = int(length)
        return h.rfile.read(n) if n > 0 else b""
    if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
        out = bytearray()
        while True:
            size_line = h.rfile.readline(65537)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += h.rfile.read(size)
            h.rfile.readline(65537)
    return b""


def _redact(obj: Any) -> Any:
    """Replace inline media payloads by a size marker so a long benchmark log stays small."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k == "data" and isinstance(v, str) and len(v) > 256:
                out[k] = f"<{len(v)} base64 chars>"
            else:
                out[k] = _redact(v)
        return out
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("data:") and len(obj) > 256:
        return f"{obj[: obj.find(',') + 1]}<{len(obj)} chars>"
    return obj
