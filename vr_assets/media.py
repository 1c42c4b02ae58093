"""All ffmpeg/ffprobe work, each done once and cheaply.

Measured on the 2-core dev box (Debian FFmpeg 5.1): once seeking is fixed, decoding the source dominates, so
chunks come from ONE process that decodes the span once and lets the segment muxer cut at forced keyframes
(frame-accurate, 7-10x less CPU than the reference's per-chunk output seeking + VP9). Frames come from ONE
process with ONE decoder too: the concat demuxer replays the file as a list of entries, each seeking to its
in-point, so a sample costs only the decoding from its keyframe. Whether samples share an entry (decode straight
through) or get their own (seek) follows the keyframe interval that `probe` estimates from the first seconds of
packets (demux only). Separate inputs per sample were measured too: each keeps a decoder alive (~12 MB at 720p).
"""

from __future__ import annotations

import base64
import functools
import inspect
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import ffmpeg as ff
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from vr_assets.fsnames import fs_bytes, is_clean, printable
from vr_assets.records import VideoProbe
from vr_assets.storage import DiskFullError, disk_full, is_disk_full, says_disk_full

GLOBAL_ARGS = ("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
PASSTHROUGH_CONTAINERS = frozenset({".mp4", ".webm", ".mov"})
PASSTHROUGH_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1"})
GOP_SCAN_SEC = 15.0  # packets read by probe to estimate the keyframe interval (demux only)
FRAME_TAIL_SEC = 1.0  # read past a group's last target when the frame rate is unknown
MIN_SEEK_SAVING_SEC = 0.5  # start a new seeking entry only if it skips at least this much decoding
MAX_TIMELINE_SEC = 2.0e6  # image2 numbers frames with a 32-bit int: ms pts must stay below 2^31
STDERR_TAIL_LINES = 6
FS_TOKEN = "vr-fs-bytes:"  # an argument naming a file whose name is not UTF-8 (see `_arg`)
MIN_CHUNK_SEC = 1.0  # plan_chunks starts a chunk only with this much video left: a shorter video has none
AUDIO_RATE = 16000  # Hz: speech models listen at 16 kHz; Gemini keeps ~1 kbit/s mono of an upload's sound anyway

_MIME_BY_EXT = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
}


class _Remembered(NamedTuple):
    """What probe() learnt about one file version, reused by later calls in this process."""

    probe: VideoProbe | None = None
    keyframe_interval: float | None = None
    start_time: float | None = None


class MediaError(Exception):
    """A video could not be probed or processed; the message names the file, the operation and ffmpeg's reason."""

    def __init__(self, path: Path | str, operation: str, cause: str) -> None:
        self.path = str(path)
        self.operation = operation
        self.cause = cause
        super().__init__(f"{operation} failed for {printable(self.path)}: {cause}")  # one line whatever the name

    def __reduce__(self) -> tuple[type[MediaError], tuple[str, str, str]]:  # survives Dagster's process hops
        return type(self), (self.path, self.operation, self.cause)


class _FfmpegDiskFull(MediaError):
    """ffmpeg stopped because its output's disk is full; the operation turns it into a DiskFullError naming
    the file it was making (`_writes`)."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _writes(target: str) -> Callable[[_F], _F]:
    """An operation whose writes (ffmpeg's or its own) that find the disk full raise one DiskFullError naming
    its argument `target` (the output file or folder); its temp files are gone by then (each cleans up)."""

    def wrap(fn: _F) -> _F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (_FfmpegDiskFull, OSError) as e:
                if isinstance(e, DiskFullError) or not (isinstance(e, _FfmpegDiskFull) or is_disk_full(e)):
                    raise
                out = sig.bind(*args, **kwargs).arguments[target]
                raise disk_full(out, e if isinstance(e, OSError) else None) from None  # the one line, not a cause

        return run  # type: ignore[return-value]

    return wrap


# ---------------------------------------------------------------- planning (pure)


def plan_chunks(duration: float, chunk_duration: float) -> list[tuple[int, float, float]]:
    """Chunk windows as the reference cuts them: a chunk starts while start + 1 <= duration (sub-second tails drop)."""
    if chunk_duration <= 0:
        raise ValueError(f"chunk_duration must be positive, got {chunk_duration}")
    chunks: list[tuple[int, float, float]] = []
    index = 0
    while (start := index * chunk_duration) + MIN_CHUNK_SEC <= duration:  # multiply, not accumulate: no float drift
        chunks.append((index, round(start, 6), round(min(start + chunk_duration, duration), 6)))
        index += 1
    return chunks


def choose_chunk_duration(duration: float, options: Sequence[float], max_chunks: int) -> float:
    """Smallest option whose actual chunk count (plan_chunks) fits max_chunks, else the largest option."""
    if not options or any(d <= 0 for d in options):
        raise ValueError(f"chunk duration options must be positive and non-empty, got {list(options)}")
    ordered = sorted(float(d) for d in options)
    for d in ordered:
        if len(plan_chunks(duration, d)) <= max_chunks:
            return d
    return ordered[-1]


def highlight_window(
    t: float, duration: float, before: float, after: float, min_len: float = 2.0
) -> tuple[float, float]:
    """Clip around an anomaly time, clamped to the video and at least min_len long when the video allows."""
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    t = min(max(t, 0.0), duration)
    start, end = max(0.0, t - before), min(duration, t + after)
    if (short := min_len - (end - start)) > 0:
        start = max(0.0, start - short)  # like the reference: grow backwards first ...
        if (short := min_len - (end - start)) > 0:
            end = min(duration, end + short)  # ... then forwards when the start is pinned at 0
    return round(start, 6), round(end, 6)


def frame_times(duration: float, fps: float, max_frames: int) -> list[float]:
    """Centres of n equal slices: never the black first frame, never past the last one."""
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    n = max(1, min(int(duration * fps), max_frames))
    step = duration / n
    return [round((i + 0.5) * step, 6) for i in range(n)]


# ---------------------------------------------------------------- small helpers


def video_mime(path: Path | str) -> str:
    """MIME type by extension; unknown extensions fall back to video/mp4 like the reference."""
    return _MIME_BY_EXT.get(Path(path).suffix.lower(), "video/mp4")


@contextmanager
def video_workdir(root: Path | str | None, key: str) -> Iterator[Path]:
    """Per-video scratch folder, removed even when the work inside fails."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:60] or "video"
    workdir = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=base))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def ffmpeg_cpu_seconds() -> float:
    """User+sys CPU of all waited-for child processes so far; benchmarks take deltas."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _num(x: float) -> str:
    """Seconds for an ffmpeg argument: fixed-point, no exponent, no trailing zeros."""
    return f"{x:.6f}".rstrip("0").rstrip(".")


def _stderr_tail(raw: bytes | None) -> str:
    lines = [ln.strip() for ln in (raw or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    return " | ".join(lines[-STDERR_TAIL_LINES:]) or "no error output"


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _ratio(value: str | None) -> float:
    """ffprobe rates such as '30000/1001'; '0/0' and garbage give 0."""
    num, _, den = (value or "").partition("/")
    try:
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


def _positive(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _rotation(stream: dict[str, Any]) -> int:
    """Display rotation (phone videos): the size a viewer sees swaps at +-90 degrees."""
    values = [stream.get("tags", {}).get("rotate")]
    values += [side.get("rotation") for side in stream.get("side_data_list", []) or []]
    for value in values:
        if value is not None:
            return int(_finite(value))
    return 0


def _keyframe_interval(packets: list[dict[str, Any]], video_index: int) -> float | None:
    """Median keyframe spacing in the scanned packets; None (treated as long) with fewer than two keyframes."""
    keys = sorted(
        {
            t
            for p in packets
            if p.get("stream_index") == video_index
            and "K" in p.get("flags", "")
            and (t := _positive_or_zero(p.get("pts_time"))) is not None
        }
    )
    if len(keys) < 2:
        return None
    return round(statistics.median(b - a for a, b in zip(keys, keys[1:], strict=False)), 3)


def _finite(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0


def _positive_or_zero(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x >= 0 else None


def group_targets(targets: Sequence[float], keyframe_interval: float | None) -> list[list[float]]:
    """Split sorted sample times into runs decoded straight through. A new run (a new seek) starts where the
    keyframe predicted before a target skips enough decoding; an unknown or long interval gives one run."""
    if not targets:
        return []
    if keyframe_interval is None or not math.isfinite(keyframe_interval) or keyframe_interval <= 0:
        return [list(targets)]
    groups = [[targets[0]]]
    for t in targets[1:]:
        keyframe = math.floor(t / keyframe_interval + 1e-9) * keyframe_interval
        if keyframe - groups[-1][-1] >= MIN_SEEK_SAVING_SEC:
            groups.append([t])
        else:
            groups[-1].append(t)
    return groups


def _segment_opts(cuts: str) -> dict[str, Any]:
    """The segment muxer as both chunk paths use it: mp4 pieces starting at 0, cut at `cuts` (seconds)."""
    return {
        "f": "segment",
        "segment_times": cuts,
        "segment_time_delta": "0.01",
        "segment_format": "mp4",
        "segment_format_options": "movflags=+faststart",
        "reset_timestamps": 1,
        "avoid_negative_ts": "disabled",  # else B-frame delay shifts the first segment to start at 0.5 s
    }


def _arg(path: Path | str) -> str:
    """A path as an ffmpeg-python argument. ffmpeg-python hashes its arguments as UTF-8, so a name that is not
    UTF-8 travels as a token that `MediaTool._run` turns back into the name (subprocess passes its bytes)."""
    text = str(path)
    return text if is_clean(text) else FS_TOKEN + base64.urlsafe_b64encode(fs_bytes(text)).decode("ascii")


def _unarg(arg: str) -> str:
    return os.fsdecode(base64.urlsafe_b64decode(arg[len(FS_TOKEN):])) if arg.startswith(FS_TOKEN) else arg


def _one_line_name(path: Path, tmp: Path) -> Path:
    """`path`, or for a name with a line break (an ffconcat listing is read line by line) a symlink to it in `tmp`."""
    if "\n" not in str(path) and "\r" not in str(path):
        return path
    alias = tmp / f"source{path.suffix if path.suffix.isascii() else ''}"
    alias.symlink_to(path)
    return alias


def _concat_quote(path: Path) -> str:
    return "'" + str(path).replace("'", "'\\''") + "'"


# ---------------------------------------------------------------- probing in-process (PyAV)


def _rate(value: Any) -> str:
    return f"{value.numerator}/{value.denominator}" if value else "0/0"


def _probe_in_process(path: Path) -> dict[str, Any]:
    """What `ffprobe -show_streams -show_format` and the first GOP_SCAN_SEC s of video packets would report."""
    import av  # a compiled extension: imported where it is used (worker_preload loads it ahead)
    from av.stream import Disposition

    try:
        with av.open(str(path)) as container:
            streams = [_stream_facts(s, Disposition) for s in container.streams]
            packets: list[dict[str, Any]] = []
            shown = [s for s in container.streams if s.type == "video" and not s.disposition & Disposition.attached_pic]
            if shown:
                packets, rotation = _scan_video(container, shown[0])
                if rotation:
                    streams[shown[0].index]["side_data_list"] = [{"rotation": rotation}]
                # MP4/MOV: the sample table makes the seek to the end free; elsewhere (Matroska without cues,
                # MPEG-TS) it can read the whole file, so the header stands there
                indexed = container.format.name.startswith("mov,")
                if indexed and (span := _packet_span(container, shown[0])) is not None:
                    streams[shown[0].index]["packet_span"] = span
            scale = 1 / av.time_base
            fmt = {
                "format_name": container.format.name,
                "duration": container.duration * scale if container.duration is not None else None,
                "start_time": container.start_time * scale if container.start_time is not None else None,
            }
    except av.FFmpegError as e:
        raise MediaError(path, "probe", e.strerror or str(e)) from None
    return {"streams": streams, "format": fmt, "packets": packets}


def _stream_facts(stream: Any, disposition: Any) -> dict[str, Any]:
    ctx = stream.codec_context
    facts: dict[str, Any] = {
        "index": stream.index,
        "codec_type": stream.type,
        "codec_name": ctx.codec.canonical_name if ctx is not None and ctx.codec is not None else "",
        "tags": dict(stream.metadata),
        "disposition": {"attached_pic": int(bool(stream.disposition & disposition.attached_pic))},
    }
    if stream.duration is not None and stream.time_base is not None:
        facts["duration"] = float(stream.duration * stream.time_base)
    if stream.type == "video":
        facts.update(
            width=ctx.width,
            height=ctx.height,
            avg_frame_rate=_rate(stream.average_rate),
            r_frame_rate=_rate(stream.base_rate),
        )
    return facts


def _scan_video(container: Any, stream: Any) -> tuple[list[dict[str, Any]], float]:
    """The stream's packets up to GOP_SCAN_SEC (demux only), and the display rotation of its first frame.

    PyAV shows the rotation (display-matrix side data) on decoded frames only, so the first frame is
    decoded, with one thread; a first frame that does not decode counts as unrotated (the steps that
    decode report the error).
    """
    import av

    stream.codec_context.thread_count = 1
    packets: list[dict[str, Any]] = []
    rotation: float | None = None
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            t = float(packet.pts * packet.time_base)
            if t > GOP_SCAN_SEC:
                break
            packets.append({"stream_index": stream.index, "pts_time": t, "flags": "K" if packet.is_keyframe else "_"})
        if rotation is None and packet.size:
            try:
                rotation = next((frame.rotation for frame in packet.decode()), None)
            except (av.FFmpegError, ValueError):
                rotation = 0.0
    return packets, rotation or 0.0


def _packet_span(container: Any, stream: Any, max_packets: int = 4000) -> float | None:
    """The stream's length as its packets tell it: from its start to the end of its last packet, read after
    one seek to the last keyframe (demux only; MP4's sample table makes it as cheap for hours as for seconds).

    The header's duration is only a claim (an edited or half-written file lies); this is what decodes. None
    when the seek fails or does not reach the end within `max_packets` (no index: the header stands).
    """
    import av

    tb = stream.time_base
    if tb is None:
        return None
    try:
        container.seek(int(1e7 / tb), stream=stream, backward=True, any_frame=False)
        end: float | None = None
        for n, packet in enumerate(container.demux(stream)):
            if n >= max_packets:
                return None
            if packet.pts is not None and packet.size:
                end = max(end or 0.0, float((packet.pts + (packet.duration or 0)) * tb))
    except (av.FFmpegError, OverflowError, ValueError):
        return None
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    return round(end - start, 6) if end is not None and end > start else None


def _measured_duration(header: float | None, span: float | None) -> tuple[float | None, float | None]:
    """(duration, the header's lie or None): the packets' span wins when the header is off by more than half
    a second and 5 %; a header alone stands (a picture has no span worth trusting)."""
    if header is None or span is None or abs(span - header) <= max(0.5, 0.05 * span):
        return header, None
    return span, header


def check_unchanged(path: Path | str, probe: VideoProbe, operation: str = "read") -> None:
    """Raise MediaError when the file is not the version `probe` read (a recording still growing, a file
    replaced mid-run): what was decided, made or hashed from the old one must not meet the new one's bytes.
    A probe record without `mtime_ns` (an older record) is checked on size alone."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise MediaError(path, operation, f"the file went away after its probe ({e.strerror or e})") from None
    if st.st_size != probe.size_bytes or (probe.mtime_ns is not None and st.st_mtime_ns != probe.mtime_ns):
        raise MediaError(
            path, operation, f"the file changed after its probe ({probe.size_bytes} -> {st.st_size} bytes): still "
            "being written or replaced; nothing was sent, run again once it is complete",
        )


def file_has_audio(path: Path | str) -> bool:
    """Whether a media file has an audio stream (PyAV, in-process, reads the header only); an unreadable
    file has none (the step that decodes it reports why)."""
    import av

    try:
        with av.open(str(path)) as container:
            return any(s.type == "audio" for s in container.streams)
    except (av.FFmpegError, OSError):
        return False


# ---------------------------------------------------------------- the tool


@functools.cache
def find_ffmpeg(name: str = "auto") -> str:
    """`name` itself, or for "auto" the statically linked ffmpeg that the imageio-ffmpeg package ships.

    Debian's ffmpeg links 200+ shared libraries and spends ~0.12 CPU-s resolving their symbols before it
    reads a byte; the static build starts in ~0.01 s. A video costs three or more ffmpeg processes, so at
    scale that start-up is most of the ffmpeg CPU of a short clip. imageio-ffmpeg's own lookup honours
    IMAGEIO_FFMPEG_EXE and falls back to `ffmpeg` on PATH (as do we when the package is missing).
    """
    if name != "auto":
        return name
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        return "ffmpeg"


class MediaTool(BaseModel):
    """ffmpeg settings plus the operations; the Dagster resource wraps one of these."""

    model_config = ConfigDict(extra="forbid")

    ffmpeg: str = Field("auto", description="executable; 'auto' is `find_ffmpeg`'s choice")
    ffprobe: str = Field("auto", description="'auto' probes in-process through PyAV; else an ffprobe executable")
    max_side: int | None = Field(640, ge=16, description="downscale the longest side; None keeps the size")
    fps: float | None = Field(2.0, gt=0, description="output frame rate of clips; None keeps the source rate")
    threads: int = Field(0, ge=0, description="ffmpeg -threads for decoders and encoders; 0 lets ffmpeg decide")
    preset: str = Field("veryfast", description="x264 preset: veryfast gives 2.3x smaller files than ultrafast")
    crf: int = Field(23, ge=0, le=51)
    jpeg_qscale: int = Field(3, ge=2, le=31, description="mjpeg -q:v (2 best)")
    skip_nonref: bool = Field(
        True,
        description="when re-encoding at most half the source frame rate, do not decode frames nothing refers "
        "to (-skip_frame noref): the fps filter drops most of them anyway; each kept frame is decoded exactly",
    )
    timeout_s: float = Field(900.0, gt=0, description="per ffmpeg process")
    audio: bool = Field(
        False, description="keep the sound: the copy, chunks and clips carry the source's audio re-encoded small "
        "(mono AAC at `audio_kbps`, AUDIO_RATE Hz); a source without audio gives files without. False: video only",
    )
    audio_kbps: int = Field(24, ge=8, le=256, description="bitrate of the kept audio")

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _invocations: int = PrivateAttr(default=0)
    _known: dict[tuple[str, int, int], _Remembered] = PrivateAttr(default_factory=dict)

    @property
    def invocations(self) -> int:
        """ffmpeg processes and probes run by this tool (tests assert one per operation)."""
        return self._invocations

    # ------------------------------------------------------------ probing

    def probe(self, path: Path | str) -> VideoProbe:
        """Streams, format and the first seconds of packets (for the keyframe interval), read once.

        `ffprobe: auto` reads them in-process through PyAV (~6 ms); an executable name runs that ffprobe
        (Debian's spends ~0.14 CPU-s per process loading its 200+ libraries). Both give ffprobe's JSON shape.
        """
        path = Path(path)
        self._require_file(path, "probe")
        self._count()
        mtime_ns = path.stat().st_mtime_ns  # before reading: a change while probing shows as a newer mtime
        info = _probe_in_process(path) if self.ffprobe == "auto" else self._probe_process(path)
        streams = info.get("streams", [])
        fmt = info.get("format", {})
        videos = [
            s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
        ]
        has_audio = any(s.get("codec_type") == "audio" for s in streams)
        if not videos:
            kind = "audio only" if has_audio else f"streams: {[s.get('codec_type') for s in streams] or 'none'}"
            raise MediaError(path, "probe", f"no video stream ({kind})")
        video = videos[0]
        header = _positive(video.get("duration")) or _positive(fmt.get("duration"))
        duration, lied = _measured_duration(header, _positive(video.get("packet_span")))
        if duration is None:
            fmt_name = str(fmt.get("format_name", ""))
            if fmt_name.endswith("_pipe") or fmt_name == "image2":  # a picture (png_pipe, jpeg_pipe ...)
                raise MediaError(path, "probe", f"a still image ({fmt_name}), not a video")
            raise MediaError(path, "probe", "zero or unknown duration (not a playable video)")
        width, height = int(video.get("width") or 0), int(video.get("height") or 0)
        rotation = _rotation(video)
        if abs(rotation) % 180 == 90:
            width, height = height, width
        fps = _ratio(video.get("avg_frame_rate")) or _ratio(video.get("r_frame_rate"))
        gop = _keyframe_interval(info.get("packets", []), int(video.get("index", 0)))
        start_time = _finite(fmt.get("start_time"))
        optional = {"keyframe_interval_sec": gop, "start_time_sec": start_time}  # filled once records carry them
        extra = {k: v for k, v in optional.items() if k in VideoProbe.model_fields}
        result = VideoProbe(
            duration_sec=round(duration, 6),
            width=width,
            height=height,
            fps=round(fps, 6),
            video_codec=str(video.get("codec_name", "")),
            has_audio=has_audio,
            size_bytes=path.stat().st_size,
            format_name=str(fmt.get("format_name", "")),
            rotation_deg=rotation,
            header_duration_sec=round(lied, 6) if lied is not None else None,
            mtime_ns=mtime_ns,
            **extra,
        )
        with self._lock:
            self._known[_file_key(path)] = _Remembered(result, gop, start_time)
        return result

    def _probe_process(self, path: Path) -> dict[str, Any]:
        try:
            return ff.probe(
                str(path),
                cmd=self.ffprobe,
                v="error",
                show_entries="packet=stream_index,pts_time,flags",
                read_intervals=f"%+{_num(GOP_SCAN_SEC)}",
            )
        except ff.Error as e:
            raise MediaError(path, "probe", _stderr_tail(e.stderr)) from None
        except FileNotFoundError:
            raise MediaError(path, "probe", f"ffprobe executable {self.ffprobe!r} not found") from None
        except ValueError as e:  # ffprobe printed something that is not JSON
            raise MediaError(path, "probe", f"unreadable ffprobe output ({e})") from None

    def keyframe_interval(self, path: Path | str) -> float | None:
        """Interval measured by an earlier probe() of this exact file in this process, if any."""
        return self._remembered(Path(path)).keyframe_interval

    def _remembered(self, path: Path) -> _Remembered:
        try:
            key = _file_key(path)
        except OSError:
            return _Remembered()
        with self._lock:
            return self._known.get(key, _Remembered())

    # ------------------------------------------------------------ clips

    @_writes("out_dir")
    def cut_chunks(
        self, path: Path | str, chunks: Sequence[tuple[int, float, float]], out_dir: Path | str
    ) -> list[Path]:
        """Exact windows as H.264 mp4 (chunk_<index>.mp4), one ffmpeg process, source decoded once.

        Contiguous windows (what plan_chunks gives) go through the segment muxer with keyframes forced at the
        boundaries; other layouts use one input-seeked input per window, still in a single process.
        """
        path, out_dir = Path(path), Path(out_dir)
        if not chunks:
            return []
        for index, start, end in chunks:
            if start < 0 or end <= start:
                raise ValueError(f"bad chunk window {index}: {start}..{end}")
        self._require_file(path, "cut chunks")
        out_dir.mkdir(parents=True, exist_ok=True)
        finals = [out_dir / f"chunk_{index:03d}.mp4" for index, _, _ in chunks]
        with self._staging(out_dir) as tmp:
            contiguous = all(abs(b[1] - a[2]) < 1e-6 for a, b in zip(chunks, chunks[1:], strict=False))
            if len(chunks) > 1 and contiguous:
                parts = self._segment_pass(path, chunks, tmp)
            else:
                parts = self._windows_pass(path, chunks, tmp)
            for part in parts:
                if not part.is_file() or part.stat().st_size == 0:
                    raise MediaError(path, "cut chunks", f"ffmpeg wrote no {part.name} (window has no video frames?)")
            for part, final in zip(parts, finals, strict=True):
                os.replace(part, final)
        return finals

    @_writes("out_dir")
    def split_copy(
        self, path: Path | str, chunks: Sequence[tuple[int, float, float]], out_dir: Path | str
    ) -> list[Path]:
        """Chunks by stream copy (no decode, no encode) from a file with keyframes at every chunk start.

        Made for `prepare_video(..., keyframes=...)` output, keyframes at every window start and at the last
        window's end; windows must be contiguous from 0. A file without those keyframes gives the wrong
        number of pieces: that raises MediaError, and the caller cuts from the source instead.
        """
        path, out_dir = Path(path), Path(out_dir)
        if not chunks:
            return []
        if abs(chunks[0][1]) > 1e-6 or any(abs(b[1] - a[2]) > 1e-6 for a, b in zip(chunks, chunks[1:], strict=False)):
            raise ValueError("split_copy needs contiguous windows starting at 0")
        self._require_file(path, "split chunks")
        out_dir.mkdir(parents=True, exist_ok=True)
        finals = [out_dir / f"chunk_{index:03d}.mp4" for index, _, _ in chunks]
        with self._staging(out_dir) as tmp:
            # a cut at the last window's end too: a sub-second tail the plan drops becomes an extra piece
            cuts = ",".join(_num(t) for t in [*(start for _, start, _ in chunks[1:]), chunks[-1][2]])
            output = ff.input(_arg(path), **self._decoder_opts(audio=self.audio)).output(
                _arg(tmp / "seg_%03d.mp4"), **_segment_opts(cuts), c="copy"
            )
            self._run(output, path, "split chunks")
            parts = sorted(tmp.glob("seg_*.mp4"))
            if not len(chunks) <= len(parts) <= len(chunks) + 1 or any(p.stat().st_size == 0 for p in parts):
                raise MediaError(path, "split chunks", f"{len(parts)} pieces for {len(chunks)} windows (keyframes?)")
            for part, final in zip(parts, finals, strict=False):
                os.replace(part, final)
        return finals

    @_writes("out")
    def cut_clip(self, path: Path | str, start: float, end: float, out: Path | str) -> Path:
        """One window with input seeking (decodes from the keyframe before start only), same encoding."""
        path, out = Path(path), Path(out)
        if start < 0 or end <= start:
            raise ValueError(f"bad clip window {start}..{end}")
        self._require_file(path, "cut clip")
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self._windows_pass(path, [(0, start, end)], out.parent, names=[part])
            if not part.is_file() or part.stat().st_size == 0:
                raise MediaError(path, "cut clip", f"no video frames in {_num(start)}..{_num(end)} s")
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
        return out

    @_writes("out")
    def prepare_video(
        self, path: Path | str, out: Path | str, probe: VideoProbe | None = None, keyframes: Sequence[float] = ()
    ) -> Path:
        """Whole video, downscaled and fps-reduced, for models; the source itself when it is already small.

        With `audio` the sound goes along re-encoded small; a source passed through keeps its own. Without,
        a small source that has sound is stream-copied without it. `keyframes` (the later chunk starts)
        lets `split_copy` cut the chunks from this file without re-encoding.
        """
        path, out = Path(path), Path(out)
        info = probe or self.probe(path)
        small = self.max_side is None or max(info.width, info.height) <= self.max_side
        slow = self.fps is None or (0 < info.fps <= self.fps + 0.01)
        # a rotated picture goes upright (ffmpeg applies the display matrix when it re-encodes: a model may not);
        # a header that lies about the length is re-muxed, so the model reads the length the packets have
        as_is = (path.suffix.lower() in PASSTHROUGH_CONTAINERS and info.video_codec in PASSTHROUGH_CODECS
                 and not info.rotation_deg and info.header_duration_sec is None)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
        extra: dict[str, Any] = {"force_key_frames": ",".join(_num(t) for t in keyframes)} if keyframes else {}
        try:
            if small and slow and as_is:
                if self.audio or not info.has_audio:
                    return path  # sent as it is, its own sound included: no work, no second file
                # the picture is fine as it is; only the sound goes (one stream copy, no decoding)
                output = ff.input(_arg(path), an=None, sn=None, dn=None).output(
                    _arg(part), f="mp4", vcodec="copy", movflags="+faststart"
                )
            else:
                stream = ff.input(_arg(path), **self._decoder_opts(info.fps, audio=self.audio))
                streams = [self._filters(stream.video)] + ([stream.audio] if self.audio and info.has_audio else [])
                output = ff.output(*streams, _arg(part), f="mp4", **self._x264_opts(), movflags="+faststart",
                                   **extra, **self._sound_opts(info.has_audio))
            self._run(output, path, "prepare video")
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
        return out

    # ------------------------------------------------------------ frames

    @_writes("out_dir")
    def sample_frames(
        self,
        path: Path | str,
        times: Sequence[float],
        out_dir: Path | str,
        *,
        probe: VideoProbe | None = None,
        keyframe_interval: float | None = None,
    ) -> list[Path]:
        """JPEGs (frame_<i>.jpg, in the order of `times`) of the first frame at or after each time; one process,
        one decoder.

        Samples a keyframe or more apart get their own concat entry (a seek); closer ones share an entry. Seeking
        needs the keyframe interval (argument, probe record once it carries `keyframe_interval_sec`, or an earlier
        probe() of this file by this tool) and the container start time (probe record `start_time_sec` or an
        earlier probe()), as concat in-points are file timestamps; without them the span from the first to the
        last time is decoded once, after an ordinary input seek. With a known duration (probe argument or earlier
        probe()) a time past the last frame gets the last frame; without one, the nearest earlier sampled frame.
        """
        path, out_dir = Path(path), Path(out_dir)
        if not times:
            return []
        self._require_file(path, "sample frames")
        out_dir.mkdir(parents=True, exist_ok=True)
        known = self._remembered(path)
        info = probe or known.probe
        gop = next(
            (g for g in (keyframe_interval, getattr(probe, "keyframe_interval_sec", None)) if g is not None),
            known.keyframe_interval,
        )
        origin = getattr(probe, "start_time_sec", None)
        origin = known.start_time if origin is None else origin
        last, tail = math.inf, FRAME_TAIL_SEC
        if info is not None and info.fps > 0:  # the last frame starts one frame before the stream's end
            last, tail = max(0.0, info.duration_sec - 1.0 / info.fps), 1.5 / info.fps
        order = sorted(range(len(times)), key=lambda i: times[i])
        targets = [min(max(0.0, float(times[i])), last) for i in order]
        groups = group_targets(targets, gop) if origin is not None else [targets]
        # each entry gets its own stretch of the concat timeline, longer than its run plus any keyframe preroll
        span = max(g[-1] - g[0] for g in groups) + tail + 4 * (gop or 0.0) + 30.0
        if len(groups) == 1 or len(groups) * span > MAX_TIMELINE_SEC:
            groups, span = [targets], 0.0
        finals = [out_dir / f"frame_{i:03d}.jpg" for i in range(len(times))]
        with self._staging(out_dir) as tmp:
            entries, picks = ["ffconcat version 1.0"], []
            listed = _concat_quote(_one_line_name(path.resolve(), tmp)) if len(groups) > 1 else ""
            for k, group in enumerate(groups):
                first = group[0]
                entries += [
                    f"file {listed}",
                    f"inpoint {_num((origin or 0.0) + first)}",  # concat points are file timestamps
                    f"outpoint {_num((origin or 0.0) + group[-1] + tail)}",
                    f"duration {_num(span)}",
                ]
                for x in sorted(set(group)):
                    at = _num(k * span + x - first)
                    picks.append(f"gte(t,{at})*(isnan(prev_t)+lt(prev_t,{at}))")
            if len(groups) == 1:  # one run: a plain input seek, times relative to the start like -ss everywhere
                first = targets[0]
                span_t = _num(targets[-1] - first + tail)
                stream = ff.input(_arg(path), ss=_num(first), t=span_t, **self._decoder_opts())
            else:
                listing = tmp / "entries.ffconcat"
                listing.write_bytes(fs_bytes("\n".join(entries) + "\n"))  # a name's own bytes, UTF-8 or not
                stream = ff.input(_arg(listing), f="concat", safe=0, copyts=None, **self._decoder_opts())
            video = self._scale(stream.video.filter("select", "+".join(picks)))
            output = video.output(
                _arg(tmp / "f_%015d.jpg"),
                fps_mode="passthrough",
                enc_time_base="1/1000",
                frame_pts=1,  # file names carry the pts in ms: the way back to the entry and the time
                **{"frames:v": len(picks), "q:v": self.jpeg_qscale},
            )
            self._run(output, path, "sample frames")
            decoded = self._collect_frames(tmp, groups, span)
            if not decoded:
                raise MediaError(
                    path, "sample frames", f"no frame decoded at {_num(targets[0])}..{_num(targets[-1])} s"
                )
            staged = []
            for rank, target in enumerate(targets):
                copy = tmp / f"out_{order[rank]:06d}.jpg"
                shutil.copyfile(self._frame_for(decoded, target), copy)
                staged.append((copy, finals[order[rank]]))
            for copy, final in staged:
                os.replace(copy, final)
        return finals

    @staticmethod
    def _collect_frames(tmp: Path, groups: list[list[float]], span: float) -> list[tuple[float, Path]]:
        """(time in the video, file) of every frame written, from the concat timeline time in its name."""
        frames = []
        for file in tmp.glob("f_*.jpg"):
            at = int(file.stem[2:]) / 1000.0
            k = min(int((at + 0.01) // span), len(groups) - 1) if span else 0
            frames.append((groups[k][0] + at - k * span, file))
        return sorted(frames)

    @staticmethod
    def _frame_for(decoded: list[tuple[float, Path]], target: float) -> Path:
        for t, file in decoded:
            if t >= target - 0.002:  # pts are rounded to ms
                return file
        return decoded[-1][1]

    # ------------------------------------------------------------ command building

    def _segment_pass(self, path: Path, chunks: Sequence[tuple[int, float, float]], tmp: Path) -> list[Path]:
        origin, last_end = chunks[0][1], chunks[-1][2]
        cuts = ",".join(_num(start - origin) for _, start, _ in chunks[1:])
        sound = self._has_audio(path)
        stream = ff.input(
            _arg(path), ss=_num(origin), t=_num(last_end - origin),
            **self._decoder_opts(self._known_fps(path), audio=sound),
        )
        streams = [self._filters(stream.video)] + ([stream.audio] if sound else [])
        output = ff.output(
            *streams, _arg(tmp / "seg_%03d.mp4"), **_segment_opts(cuts), force_key_frames=cuts, **self._x264_opts(),
            **self._sound_opts(sound),
        )
        self._run(output, path, "cut chunks")
        return [tmp / f"seg_{k:03d}.mp4" for k in range(len(chunks))]

    def _windows_pass(
        self,
        path: Path,
        windows: Sequence[tuple[int, float, float]],
        tmp: Path,
        names: Sequence[Path] | None = None,
    ) -> list[Path]:
        parts = list(names) if names is not None else [tmp / f"win_{index:03d}.mp4" for index, _, _ in windows]
        outputs = []
        sound = self._has_audio(path)
        decoder = self._decoder_opts(self._known_fps(path), audio=sound)
        for (_, start, end), part in zip(windows, parts, strict=True):
            stream = ff.input(_arg(path), ss=_num(start), t=_num(end - start), **decoder)
            streams = [self._filters(stream.video)] + ([stream.audio] if sound else [])
            outputs.append(
                ff.output(*streams, _arg(part), f="mp4", movflags="+faststart", **self._x264_opts(),
                          **self._sound_opts(sound))
            )
        self._run(ff.merge_outputs(*outputs), path, "cut clip" if names is not None else "cut chunks")
        return parts

    def _filters(self, video: Any) -> Any:
        if self.fps is not None:
            video = video.filter("fps", fps=_num(self.fps))
        return self._scale(video)

    def _scale(self, video: Any) -> Any:
        """Fit the longest side into max_side (never upscale); even sizes, as yuv420p H.264 needs."""
        if self.max_side is None:
            return video.filter("scale", w="trunc(iw/2)*2", h="trunc(ih/2)*2")
        m = self.max_side
        return video.filter(
            "scale",
            w=f"if(gte(iw,ih),trunc(min(iw,{m})/2)*2,-2)",
            h=f"if(gte(iw,ih),-2,trunc(min(ih,{m})/2)*2)",
        )

    def _x264_opts(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"vcodec": "libx264", "preset": self.preset, "crf": self.crf, "pix_fmt": "yuv420p"}
        if self.threads:
            opts["threads"] = self.threads
        return opts

    def _audio_opts(self) -> dict[str, Any]:
        """The kept sound, small: mono AAC (ffmpeg's own encoder, in every build) at a speech sample rate."""
        return {"acodec": "aac", "ac": 1, "ar": AUDIO_RATE, "b:a": f"{self.audio_kbps}k"}

    def _sound_opts(self, has_audio: bool) -> dict[str, Any]:
        return self._audio_opts() if self.audio and has_audio else {}

    def _has_audio(self, path: Path) -> bool:
        """Whether outputs cut from `path` carry sound: kept, and the file has some (an earlier probe of it,
        else a look at its streams in-process)."""
        if not self.audio:
            return False
        known = self._remembered(path).probe
        if known is not None:
            return known.has_audio
        return file_has_audio(path)

    def _known_fps(self, path: Path) -> float | None:
        known = self._remembered(path).probe
        return known.fps if known is not None else None

    def _decoder_opts(self, source_fps: float | None = None, *, audio: bool = False) -> dict[str, Any]:
        """Input options: the video stream (and with `audio` the sound); with the source's rate known, the
        frame skip.

        The skipped frames are non-reference B frames, single or in short runs between the frames others
        predict from, so at half the source rate or less the fps filter still finds a decoded frame a few
        source frames from each output time; every frame it keeps is decoded exactly.
        """
        opts: dict[str, Any] = {"sn": None, "dn": None} if audio else {"an": None, "sn": None, "dn": None}
        if self.skip_nonref and self.fps is not None and source_fps and source_fps >= 2 * self.fps:
            opts["skip_frame"] = "noref"
        if self.threads:
            opts["threads"] = self.threads
        return opts

    # ------------------------------------------------------------ running

    def _count(self) -> None:
        with self._lock:
            self._invocations += 1

    def _run(self, node: Any, path: Path, operation: str) -> None:
        exe = find_ffmpeg(self.ffmpeg)
        compiled = [_unarg(a) for a in node.compile(cmd=exe)]
        args = [compiled[0], *GLOBAL_ARGS, *compiled[1:]]
        self._count()
        try:
            proc = subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError:
            raise MediaError(path, operation, f"ffmpeg executable {exe!r} not found") from None
        except subprocess.TimeoutExpired as e:
            raise MediaError(
                path, operation, f"timed out after {self.timeout_s:g} s; {_stderr_tail(e.stderr)}"
            ) from None
        if proc.returncode != 0:
            tail = _stderr_tail(proc.stderr)
            if says_disk_full(tail):
                raise _FfmpegDiskFull(path, operation, f"ffmpeg exit {proc.returncode}: {tail}")
            raise MediaError(path, operation, f"ffmpeg exit {proc.returncode}: {tail}")

    @staticmethod
    def _require_file(path: Path, operation: str) -> None:
        if not path.exists():
            raise MediaError(path, operation, "file not found")
        if not path.is_file():
            raise MediaError(path, operation, "not a regular file")
        if path.stat().st_size == 0:
            raise MediaError(path, operation, "empty file (0 bytes)")

    @staticmethod
    @contextmanager
    def _staging(out_dir: Path) -> Iterator[Path]:
        """Hidden temp folder next to the outputs, so the final os.replace is an atomic same-filesystem rename."""
        tmp = out_dir / f".staging-{uuid.uuid4().hex[:10]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
