"""`vr-annotate view`: the dataset viewer and review page, served by the standard library.

Why no web framework: the viewer is three static files and five JSON routes over the results folder,
for one team on a trusted network; `http.server.ThreadingHTTPServer` does that with no dependency
to install or keep up to date, and range requests (so the player can seek) are a few lines. The
pages are plain HTML/JS/CSS shipped in `vr_assets/viewer/static/`.

Routes:
  GET  /                          the index page        GET /api/videos?q=&mode=&task=&check=&review=&outcome=&page=
  GET  /video/<key>               a video's page        GET /api/video/<key>
  GET  /media/<key>[?src=copy]    the video, with HTTP range requests
  POST /api/video/<key>/review    {"item_key", "action": accept|reject|edit|null, "edit": {...}}
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import ValidationError

from vr_assets.config import Spec
from vr_assets.fsnames import printable
from vr_assets.media_cache import media_cache_dir
from vr_assets.quality import ExampleIndex
from vr_assets.records import QAItem, TaskExports, TaskItem, VideoSource
from vr_assets.registry import VideoRegistry
from vr_assets.reviews import ItemEdit, edited_item, item_key, load_reviews, save_review
from vr_assets.store import JsonStore
from vr_assets.viewer.failures import DagsterFailures
from vr_assets.viewer.index import DatasetIndex, Query, check_failures, query
from vr_assets.viewer.media import BrowserCopyError, browser_copy, browser_copy_path

STATIC = Path(__file__).resolve().parent / "static"
BROWSER_CONTAINERS = {".mp4", ".m4v", ".webm", ".mov"}
BROWSER_CODECS = {"h264", "vp8", "vp9", "av1", ""}
CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class NotFound(Exception):
    pass


def dagster_home(spec: Spec) -> Path:
    """The home `vr-annotate run` uses: $DAGSTER_HOME, else `<results_dir>/dagster_home`."""
    return Path(os.environ.get("DAGSTER_HOME") or Path(spec.results_dir) / "dagster_home")


def pack_examples(spec: Spec) -> tuple[ExampleIndex | None, str]:
    """The spec's prompt examples for the leakage rule, as the assets load them; (None, why) if the pack does
    not load, so the viewer still shows everything else and says which rule it could not run."""
    from vr_assets.prompts import load_pack

    try:
        return ExampleIndex.of(load_pack(spec.prompt_pack, spec.prompts_module)), ""
    except Exception as e:  # a broken pack must not keep the viewer from starting
        return None, f"prompt pack {spec.prompt_pack!r} did not load, so no_example_leakage is not judged: {e}"


def video_json(video: VideoSource) -> dict[str, Any]:
    """A registry entry for the page: names as readable text (a byte that is not UTF-8 as \\xff, a newline as
    \\n), which JSON can carry; the exact bytes stay in the registry."""
    return {**video.model_dump(mode="json"), "path": printable(video.path), "source": printable(video.source),
            "rel_path": printable(video.rel_path)}


def video_repeats(
    items: list[QAItem], key: str, mode: str, video_id: str, duration: float, examples: ExampleIndex | None,
    seed: str,
) -> dict[int, tuple[list[str], list[str]]]:
    """(error-level, warn-level) flags of the rules that compare a video's items (`quality.VIDEO_RULES`: a question
    or answer repeated), per QA item index: the page judges each item alone, these need the whole video."""
    from vr_assets.checks import item_failures
    from vr_assets.export import TASKS, task_items_for_video
    from vr_assets.quality import VIDEO_RULES

    tasks: dict[str, list[TaskItem]] = {t: [] for t in TASKS}
    owner: dict[tuple[str, int], int] = {}
    for n, item in enumerate(items):
        for task, its in task_items_for_video([item], video_id, seed)[0].items():
            for it in its:
                owner[(task, len(tasks[task]))] = n
                tasks[task].append(it)
    te = TaskExports(video_key=key, mode=mode, tasks={t: its for t, its in tasks.items() if its})
    out: dict[int, tuple[list[str], list[str]]] = {}
    for f in item_failures(te, duration, examples):
        if f.rule in VIDEO_RULES:
            errors, warnings = out.setdefault(owner[(f.task, f.index)], ([], []))
            (errors if f.severity == "error" else warnings).append(f"{f.task}: {f.rule}: {f.reason}")
    return out


class Viewer:
    """The viewer's data side: index rows, a video's detail, its media file, reviews."""

    def __init__(self, spec: Spec, *, failures: bool = True) -> None:
        self.spec = spec
        self.results = Path(spec.results_dir)
        self.store = JsonStore(self.results)
        self.registry = VideoRegistry(self.results)
        self.examples, self.examples_error = pack_examples(spec)
        self.index = DatasetIndex(self.results, DagsterFailures(dagster_home(spec)) if failures else None,
                                  examples=self.examples)

    def video(self, key: str) -> VideoSource:
        try:
            return self.registry.get(key)
        except KeyError:
            raise NotFound(f"no video {key!r} in {printable(str(self.registry.path))}") from None

    def media_file(self, key: str, want: str = "", *, make: bool = True) -> tuple[Path, str]:
        """(file, what it is): the source when a browser plays it, else step 0's prepared copy while it is
        still cached, else the viewer's own browser copy (made here unless `make` is off)."""
        video = self.video(key)
        src = Path(video.path)  # FsText: a name that is not UTF-8 as surrogate escapes, which os calls take as is
        fr = self.store.read_optional("filter_result", key)
        codec = fr.probe.video_codec if fr else ""
        cache = media_cache_dir(self.spec, key)
        copies = sorted(cache.glob("video-*.mp4"), key=lambda p: p.stat().st_mtime) if cache.is_dir() else []
        if want == "copy" and copies:
            return copies[-1], "prepared copy"
        if src.is_file() and src.suffix.lower() in BROWSER_CONTAINERS and codec in BROWSER_CODECS:
            return src, "source"
        if copies:
            return copies[-1], "prepared copy"
        if src.is_file():
            if not make:
                return browser_copy_path(self.results, key, src), "browser copy (H.264 MP4, made on first view)"
            return browser_copy(self.results, key, src, self.spec.media.ffmpeg), "browser copy (H.264 MP4)"
        raise NotFound(f"video {key}: neither {printable(str(src))} nor a prepared copy exists")

    def items(self, key: str) -> list[QAItem]:
        qa = self.store.read_optional("qa", key)
        return list(qa.items) if qa else []

    def detail(self, key: str) -> dict[str, Any]:
        """Everything the video page shows, in one answer."""
        from vr_assets.checks import item_failures
        from vr_assets.export import task_items_for_video

        video = self.video(key)
        row = self.index.row(key)
        read = self.store.read_optional
        fr, cap, cc, hl = read("filter_result", key), read("captions", key), read("chunk_captions", key), read(
            "highlight", key)
        desc, qa, te = read("description", key), read("qa", key), read("task_exports", key)
        duration = (cap or fr).probe.duration_sec if (cap or fr) else 0.0
        mode = (cap.mode if cap else fr.mode if fr else video.mode) or "normal"
        reviews = load_reviews(self.results, key)
        video_id = printable(video.rel_path)

        repeats = video_repeats(list(qa.items) if qa else [], key, mode, video_id, duration, self.examples,
                                self.spec.export.mcq_seed)

        def problems(item: QAItem) -> tuple[list[str], list[str]]:
            """(error-level, warn-level) flags: the dataset's item rules (`item_failures`) on the task items the
            QA item becomes, MCQ options placed as the dataset places them; an error leaves it out of the dataset."""
            tasks, skipped = task_items_for_video([item], video_id, self.spec.export.mcq_seed)
            errors = [f"skipped by step 4: {s.split('] ', 1)[-1]}" for s in skipped]
            warnings: list[str] = []
            alone = TaskExports(video_key=key, mode=mode, tasks=tasks)
            for f in item_failures(alone, duration, self.examples):
                (errors if f.severity == "error" else warnings).append(f"{f.task}: {f.rule}: {f.reason}")
            return sorted(set(errors), key=errors.index), sorted(set(warnings), key=warnings.index)

        items = []
        present: set[str] = set()
        for n, item in enumerate(qa.items if qa else []):
            k = item_key(item)
            present.add(k)
            r = reviews.reviews.get(k)
            errors, warnings = problems(item)
            errors += repeats.get(n, ([], []))[0]
            warnings += repeats.get(n, ([], []))[1]
            entry: dict[str, Any] = {"index": n, "key": k, **item.model_dump(), "problems": errors,
                                     "warnings": warnings, "review": r.model_dump() if r else None}
            if r is not None and r.action == "edit" and r.edit is not None:
                edited = edited_item(item, r.edit)
                entry["edited"] = edited.model_dump()
                entry["edited_problems"], entry["edited_warnings"] = problems(edited)
            items.append(entry)
        try:
            path, what = self.media_file(key, make=False)
            media = {"url": f"/media/{key}", "kind": what, "file": printable(str(path))}
        except NotFound as e:
            media = {"url": None, "kind": str(e), "file": None}
        return {
            "key": key,
            "video": video_json(video),
            "row": row.model_dump() if row else None,
            "duration_sec": duration,
            "media": media,
            "filter": None if fr is None else {
                "proceed": fr.proceed, "stop_reason": fr.stop_reason, "relevance_reason": fr.relevance_reason,
                "mode": fr.mode, "mode_source": fr.mode_source, "probe": fr.probe.model_dump()},
            "global_caption": cap.global_caption if cap else None,
            "dense_caption": cap.dense_caption if cap else None,
            "chunks": [c.model_dump() for c in cc.chunks] if cc else [],
            "highlight": None if hl is None else {
                "applicable": hl.applicable, "note": hl.note,
                "chunk": hl.highlight_chunk.model_dump() if hl.highlight_chunk else None},
            "description": desc.detailed_description if desc else None,
            "parse_failures": qa.parse_failures if qa else {},
            "items": items,
            "checks": check_failures(cap, cc, hl, te, duration, self.examples),
            "checks_note": self.examples_error,
            "orphaned_reviews": [r.model_dump() for k, r in reviews.reviews.items() if k not in present],
        }

    def review(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        self.video(key)
        wanted = str(body.get("item_key", ""))
        item = next((i for i in self.items(key) if item_key(i) == wanted), None)
        if item is None:
            raise NotFound(f"video {key}: no QA item with key {wanted!r} (re-run since the page loaded?)")
        action = body.get("action")
        if action not in ("accept", "reject", "edit", None):
            raise ValueError(f"video {key}: action must be accept, reject, edit or null, not {action!r}")
        edit = ItemEdit.model_validate(body["edit"]) if body.get("edit") else None
        if edit is not None:
            # only what differs from the original counts as edited
            orig = item.model_dump()
            edit = ItemEdit(**{f: v for f, v in edit.model_dump(exclude_none=True).items() if v != orig[f]})
        save_review(self.results, key, item, action, edit, note=str(body.get("note", "")))
        self.index.refresh(force=True)
        return self.detail(key)


# ---------------------------------------------------------------- HTTP


def _handler(viewer: Viewer, log_requests: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vr-annotate-view"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib's name)
            if log_requests:
                sys.stderr.write(f"view: {self.address_string()} {format % args}\n")

        # ---------------------------------------------------------- plumbing

        def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200) -> None:
            # backslashreplace: a stray surrogate (a name not UTF-8 that no field made printable) shows as
            # \\udcff instead of failing the answer
            body = json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace")
            self._send(status, body, "application/json; charset=utf-8")

        def _error(self, status: int, message: str) -> None:
            self._json({"error": message}, status)

        def _static(self, name: str) -> None:
            path = (STATIC / name).resolve()
            if not path.is_relative_to(STATIC) or not path.is_file():
                return self._error(404, f"no such file {name!r}")
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            self._send(200, path.read_bytes(), ctype)

        def _media(self, key: str, want: str) -> None:
            path, _ = viewer.media_file(key, want)
            size = path.stat().st_size
            ctype = mimetypes.guess_type(path.name)[0] or "video/mp4"
            start, end, status = 0, size - 1, 200
            rng = self.headers.get("Range")
            if rng:
                m = _RANGE.match(rng.strip())
                if not m or (not m.group(1) and not m.group(2)):
                    return self._send(416, b"", ctype, {"Content-Range": f"bytes */{size}"})
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # the last N bytes
                    start = max(0, size - int(m.group(2)))
                if start >= size or start > end:
                    return self._send(416, b"", ctype, {"Content-Range": f"bytes */{size}"})
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with path.open("rb") as f:
                f.seek(start)
                left = end - start + 1
                while left > 0:
                    buf = f.read(min(CHUNK, left))
                    if not buf:
                        break
                    self.wfile.write(buf)
                    left -= len(buf)

        def _route(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if self.command == "POST":
                if len(parts) == 4 and parts[:2] == ["api", "video"] and parts[3] == "review":
                    n = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(n) or b"{}")
                    return self._json(viewer.review(parts[2], body))
                return self._error(404, f"no route POST {url.path}")
            if not parts:
                return self._static("index.html")
            if parts[0] == "static" and len(parts) == 2:
                return self._static(parts[1])
            if parts[0] == "video" and len(parts) == 2:
                viewer.video(parts[1])
                return self._static("video.html")
            if parts[0] == "media" and len(parts) == 2:
                return self._media(parts[1], params.get("src", ""))
            if parts == ["api", "videos"]:
                return self._json(query(viewer.index, Query.model_validate(params)))
            if len(parts) == 3 and parts[:2] == ["api", "video"]:
                return self._json(viewer.detail(parts[2]))
            if parts == ["api", "status"]:
                viewer.index.refresh()
                return self._json({"results_dir": printable(str(viewer.results)), "refresh": viewer.index.last_refresh,
                                   "failures_error": viewer.index.failure_error,
                                   "checks_note": viewer.examples_error})
            return self._error(404, f"no route {url.path}")

        def _handle(self) -> None:
            try:
                self._route()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the player dropped a range request it no longer needs (a seek)
            except NotFound as e:
                self._error(404, str(e))
            except BrowserCopyError as e:
                self._error(422, str(e))
            except (ValidationError, ValueError) as e:
                self._error(400, str(e).splitlines()[0] if str(e) else type(e).__name__)
            except Exception as e:  # one bad request must not take the viewer down
                self._error(500, f"{type(e).__name__}: {e}")

        do_GET = do_HEAD = do_POST = _handle

    return Handler



class ViewerServer:
    """The viewer on a port, in a background thread (tests) or the foreground (`serve`)."""

    def __init__(self, spec: Spec, port: int | None = None, host: str | None = None, *,
                 failures: bool = True, log_requests: bool = False) -> None:
        self.viewer = Viewer(spec, failures=failures)
        self.httpd = ThreadingHTTPServer((host or spec.viewer.host, spec.viewer.port if port is None else port),
                                         _handler(self.viewer, log_requests))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ViewerServer:
        self.viewer.index.refresh(force=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vr-viewer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.viewer.index.save()
        if self._thread is not None:
            self._thread.join(timeout=10)


def serve(spec: Spec, port: int | None = None, host: str | None = None) -> None:
    """`vr-annotate view`: build the index, then serve until ^C."""
    server = ViewerServer(spec, port, host)
    print(f"indexing {spec.results_dir} …", flush=True)
    server.viewer.index.refresh(force=True)
    rows = server.viewer.index.rows()
    print(f"{len(rows)} videos; viewer at {server.url}  (^C to stop)", flush=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the same clean stop as ^C: the index is saved for the next start

    signal.signal(signal.SIGTERM, stop)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        server.viewer.index.save()

