"""Find the videos a spec points at and give each a stable, readable partition key."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path

from vr_assets.config import Spec
from vr_assets.fsnames import fs_bytes, printable
from vr_assets.records import Discovery, DiscoveryFinding, FindingKind, VideoSource

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv"})
MAX_KEY_LEN = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as Python decodes file names


def _short_hash(text: str) -> str:
    return hashlib.sha256(fs_bytes(text)).hexdigest()[:8]


def _readable(part: str) -> str:
    """Each undecodable byte of a name as `xFF`: the key stays readable ASCII (and lossy, so it gets the hash)."""
    return _UNDECODABLE.sub(lambda m: f"x{ord(m.group()) - 0xDC00:02X}", part)


def partition_key_for(rel_path: str) -> str:
    """`cams/north/clip.mp4` -> `cams__north__clip.mp4`: readable in the UI, valid for Dagster.

    Keys never contain `/` (they appear in URLs) nor `...` (Dagster rejects it); long or
    lossy names (a byte that is not UTF-8 shows as `xFF`) get a short hash of the original
    path so they stay unique.
    """
    parts = [p for p in Path(rel_path).as_posix().split("/") if p not in ("", ".")]
    cleaned = "__".join(_UNSAFE.sub("_", _readable(p)) for p in parts)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip("._") or "video"
    lossy = cleaned != "__".join(parts)
    if lossy or len(cleaned) > MAX_KEY_LEN:
        cleaned = f"{cleaned[: MAX_KEY_LEN - 9]}-{_short_hash(rel_path)}"
    return cleaned


def is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _finding(path: Path | str, kind: FindingKind, reason: str) -> DiscoveryFinding:
    return DiscoveryFinding(path=str(path), kind=kind, reason=reason)


def classify_entry(path: Path) -> DiscoveryFinding | None:
    """None for a regular file (or a symlink to one); else why this entry is not a video file."""
    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return _finding(path, "symlink_loop", "symlink loop (following it never reaches a file)")
        if path.is_symlink():
            try:
                target = printable(os.readlink(path))
            except OSError:
                target = "?"
            return _finding(path, "dangling_symlink", f"dangling symlink to {target} (the target does not exist)")
        return _finding(path, "not_a_file", f"cannot be read: {e.strerror or e}")
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return _finding(path, "folder", "a folder named like a video, not a video file")
    return _finding(path, "not_a_file", f"not a regular file ({_file_type(st.st_mode)})")


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "unknown type"


def scan_video_root(root: Path) -> tuple[list[Path], list[DiscoveryFinding]]:
    """Video files under `root` (any depth, any case of extension) and the entries named like videos, or
    folders, that are skipped, with the reason. Symlinked folders are not followed (loops, duplicates)."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.video_root {printable(str(root))} is not a folder")
    files: list[Path] = []
    findings: list[DiscoveryFinding] = []

    def unreadable(e: OSError) -> None:
        findings.append(_finding(e.filename, "unreadable_folder", f"folder cannot be listed: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        here = Path(dirpath)
        for d in dirnames:  # symlinks to folders are listed here; os.walk does not descend into them
            if (here / d).is_symlink():
                why = "symlink to a folder, not followed (its videos are not included)"
                findings.append(_finding(here / d, "symlinked_folder", why))
            elif is_video_name(d):
                findings.append(_finding(here / d, "folder", "a folder named like a video, not a video file"))
        for name in filenames:  # symlinks to files, dangling symlinks and loops are listed here
            if not is_video_name(name):
                continue
            found = classify_entry(here / name)
            if found is None:
                files.append(here / name)
            else:
                findings.append(found)
    return sorted(files), sorted(findings, key=lambda f: f.path)


def walk_video_root(root: Path) -> list[Path]:
    return scan_video_root(root)[0]


def _rel_to(path: Path, root: Path | None) -> str | None:
    if root is None:
        return None
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


def _lines(file: Path) -> list[str]:
    """The file's lines; bytes that are not UTF-8 (a listed file name) survive as surrogate escapes."""
    return file.read_bytes().decode("utf-8", "surrogateescape").split("\n")


def read_jsonl(
    file: Path, video_root: Path | None, filter_field: str | None, findings: list[DiscoveryFinding] | None = None,
    seen: dict[str, str] | None = None,
) -> list[VideoSource]:
    """Lines with `video_path` or `video`; a bad line, or an entry that is not a file, is skipped with its line
    number and reason (logged, and added to `findings`). A path that does not exist stays: its step 0 fails.
    A second line naming a file a line of this or an earlier JSONL (`seen`: path -> where) named is skipped
    too: the first line's mode and fields stand, the video is annotated once."""
    out: list[VideoSource] = []
    skipped = findings if findings is not None else []
    seen = {} if seen is None else seen
    if not file.exists():
        raise FileNotFoundError(f"data.input_jsonl_files: {printable(str(file))} does not exist")
    for n, line in enumerate(_lines(file), start=1):
        if not line.strip():
            continue

        def bad(why: str, n: int = n) -> None:
            skipped.append(_finding(file, "bad_jsonl_line", f"line {n}: {why}; line skipped"))

        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad(f"not JSON ({e})")
            continue
        if not isinstance(row, dict):
            bad("not an object")
            continue
        raw = row.get("video_path") or row.get("video")
        if not isinstance(raw, str) or not raw:
            bad("no video_path/video field")
            continue
        if filter_field and not row.get(filter_field):
            continue
        p = Path(raw)
        if not p.is_absolute():
            # Relative paths resolve against video_root first (TAO's convention), then the JSONL's folder.
            candidates = ([video_root / p] if video_root else []) + [file.parent / p]
            p = next((c for c in candidates if c.exists()), candidates[0])
        if p.is_symlink() or p.exists():
            found = classify_entry(p)
            if found is not None:
                where = f"line {n} of {printable(str(file))}"
                skipped.append(found.model_copy(update={"reason": f"{found.reason} ({where})"}))
                continue
        p = p.resolve()
        if str(p) in seen:
            why = f"line {n}: the same file as {seen[str(p)]}, a duplicate entry; line skipped"
            skipped.append(_finding(file, "duplicate_entry", why))
            continue
        seen[str(p)] = f"line {n} of {printable(str(file))}"
        mode = row.get("mode")
        if mode not in ("anomaly", "normal", None):
            log.warning("%s:%d: mode %r is not anomaly/normal; ignored", printable(str(file)), n, mode)
            mode = None
        rel = _rel_to(p, video_root) or _rel_to(p, file.parent.resolve()) or p.as_posix().lstrip("/")
        extra = {k: v for k, v in row.items() if k not in ("video_path", "video", "mode")}
        out.append(
            VideoSource(key="", path=str(p), source=str(file), rel_path=rel, mode=mode, extra=extra)
        )
    return out


def scan(spec: Spec) -> Discovery:
    """Merge video_root and JSONL inputs; one record per file, JSONL lines win (they carry mode/extra).

    Every entry that is named like a video (or listed in a JSONL) and is not made a video is in `skipped` with
    a one-line reason, and logged.
    """
    root = Path(spec.data.video_root).resolve() if spec.data.video_root else None
    by_path: dict[str, VideoSource] = {}
    skipped: list[DiscoveryFinding] = []
    if root is not None:
        files, skipped = scan_video_root(root)
        for p in sorted(files, key=lambda p: (p.is_symlink(), p)):  # real files first, then links to them
            rp = p.resolve()
            if str(rp) in by_path:
                first = printable(by_path[str(rp)].rel_path)
                skipped.append(_finding(p, "same_file", f"a symlink to {first}, a video found already"))
                continue
            # a symlink to a file outside the root keeps its own place in the tree
            rel = _rel_to(rp, root) or p.relative_to(root).as_posix()
            by_path[str(rp)] = VideoSource(key="", path=str(rp), source="video_root", rel_path=rel)
    listed: dict[str, str] = {}
    for f in spec.data.input_jsonl_files:
        for v in read_jsonl(Path(f), root, spec.data.filter_field, skipped, listed):
            by_path[v.path] = v
    for finding in skipped:
        log.warning("discovery skipped %s", finding.line())
    return Discovery(videos=assign_keys(list(by_path.values())), skipped=skipped)


def discover(spec: Spec) -> list[VideoSource]:
    """The videos of `scan` (the skipped entries are logged there)."""
    return scan(spec).videos


def assign_keys(videos: list[VideoSource]) -> list[VideoSource]:
    """Keys from relative paths; a clash (same relative path from two sources) gets a path hash."""
    seen: dict[str, str] = {}
    out: list[VideoSource] = []
    for v in sorted(videos, key=lambda v: (v.rel_path, v.path)):
        key = partition_key_for(v.rel_path)
        if key in seen and seen[key] != v.path:
            key = f"{key[: MAX_KEY_LEN - 9]}-{_short_hash(v.path)}"
        seen[key] = v.path
        out.append(v.model_copy(update={"key": key}))
    return out
