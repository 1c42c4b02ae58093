"""A copy of a video that any browser plays, made on first view when the source will not play there.

Step 0's prepared copy is deleted once a video's steps are done, so an AVI, MKV or HEVC source has
nothing a browser can show afterwards. The viewer then makes its own H.264/AAC MP4 once (moov atom
first, so playback and seeking start before the whole file arrives), named for the source's size and
mtime, under `<results_dir>/viewer/media/`; a second request for the same video waits for the first
to finish instead of encoding it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
from pathlib import Path

from vr_assets.fsnames import fs_bytes, printable
from vr_assets.media import find_ffmpeg

MAX_SIDE = 960
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class BrowserCopyError(RuntimeError):
    pass


def browser_copy_path(results_dir: str | Path, key: str, src: Path) -> Path:
    st = src.stat()
    # the name's bytes: a source named with bytes that are not UTF-8 (surrogate escapes in the str) hashes too
    tag = hashlib.sha256(fs_bytes(str(src)) + f"|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(results_dir) / "viewer" / "media" / f"{key}-{tag}.mp4"


def browser_copy(results_dir: str | Path, key: str, src: Path, ffmpeg: str = "auto", timeout_s: float = 900) -> Path:
    """The browser copy of `src`, made now if it does not exist yet (a clear error naming the video if
    ffmpeg cannot read it).

    `src` may hold a name that is not UTF-8 (`fsnames.FsText`): subprocess passes its bytes to ffmpeg as
    they are, and messages show it with `fsnames.printable`."""
    out = browser_copy_path(results_dir, key, src)
    where = f"video {key} ({printable(str(src))})"
    with _locks_guard:
        lock = _locks.setdefault(str(out), threading.Lock())
    with lock:
        if out.is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        for old in out.parent.glob(f"{key}-*.mp4"):  # an earlier copy of a since-replaced source
            old.unlink(missing_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.part.mp4")
        scale = f"scale='if(gt(iw,ih),min({MAX_SIDE},iw),-2)':'if(gt(iw,ih),-2,min({MAX_SIDE},ih))'"
        cmd = [find_ffmpeg(ffmpeg), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
               "-map", "0:v:0", "-map", "0:a:0?", "-vf", f"{scale},format=yuv420p", "-c:v", "libx264",
               "-preset", "veryfast", "-crf", "26", "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart",
               str(tmp)]
        try:
            # ffmpeg echoes the input name in its errors: its bytes need not be UTF-8
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="backslashreplace", timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)
            raise BrowserCopyError(f"{where}: browser copy took over {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tail = (proc.stderr.strip().splitlines() or ["ffmpeg failed"])[-1]
            raise BrowserCopyError(f"{where}: cannot make a browser copy: {printable(tail)}")
        os.replace(tmp, out)
        return out
