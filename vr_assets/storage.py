"""Where results and the dataset live: one storage URL, a local folder by default, `s3://` / `gs://` on a cluster.

The results folder (`vr_assets.store`), the IO manager and the dataset writers reach storage only through
this module: `storage_root` turns the spec's `storage_url` into a root path and `atomic_write` writes one
file or object so that a reader sees the old content or the new, never a part. A plain path (or `file://`)
stays a `pathlib.Path` and is written as before: temp file in the same folder, then `os.replace`. Any other
URL is a `upath.UPath` over fsspec, and is written with ONE call that sends the whole object (`pipe_file`):
an object store replaces an object only when its upload completes (a single PUT, or a multipart upload's
final request), so a failed write leaves the previous object as it was. Nothing is appended or streamed.

What must stay on local disk (the media cache, the Dagster home, lock files, the answer cache, the video
registry) keeps using `results_dir` directly: that folder is the local working folder whatever `storage_url` is.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from upath import UPath

    from vr_assets.config import Spec

# fsspec protocols that are object stores: no folders to create, an object appears whole when its upload ends
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
# the pip extra that brings each protocol's fsspec implementation (named in the error when it is missing)
EXTRAS = {"s3": "vr-assets[s3]", "s3a": "vr-assets[s3]", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


class StorageError(ValueError):
    """A storage URL that cannot be used (unknown protocol, client library missing)."""


# ENOSPC: no space left on the filesystem; EDQUOT: the user's quota is used up. Both: free space and re-run.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# what a child process (ffmpeg) prints for them
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


class DiskFullError(OSError):
    """A write that found no space: one line naming the file and the space left where it was going.

    An OSError (errno ENOSPC or EDQUOT), so code that handles OSError still does; raised in place of the
    original error by every writer of results and media, after its temp file is removed.
    """

    def __init__(self, path: str | os.PathLike[str], free: int | None = None, mount: str = "", code: int = 0) -> None:
        self.path = os.fspath(path)
        remote = "://" in self.path and protocol_of(self.path) not in ("file", "local")
        if remote:  # an sftp/ftp server's disk: its free space is not ours to measure
            self.mount = mount or self.path.split("://", 1)[0] + "://" + self.path.split("://", 1)[1].split("/", 1)[0]
        else:
            self.mount = mount or _mount_of(self.path)
            free = free_bytes(self.path) if free is None else free
        self.free = free
        code = code or errno.ENOSPC
        where = f"{free} bytes free on {self.mount}" if free is not None else f"free space unknown on {self.mount}"
        super().__init__(code, f"disk full writing {self.path} ({where})")
        self.filename = None  # str() stays the one line above, without OSError's "[Errno 28] ...: 'path'"

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type[DiskFullError], tuple[str, int | None, str, int]]:  # crosses processes
        return type(self), (self.path, self.free, self.mount, self.errno or errno.ENOSPC)


def is_disk_full(err: BaseException) -> bool:
    """An ENOSPC / EDQUOT OSError (a DiskFullError included)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def says_disk_full(text: str) -> bool:
    """A child process's error output reporting a full disk or quota (ffmpeg: "No space left on device")."""
    return any(t in text for t in DISK_FULL_TEXTS)


def _existing(path: str) -> str:
    """`path`, or the nearest folder above it that exists (a disk-full write may not have made its own)."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def _mount_of(path: str) -> str:
    p = _existing(path)
    while not os.path.ismount(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged writer can still use on the filesystem holding `path` (None: unknown)."""
    try:
        return shutil.disk_usage(_existing(os.fspath(path))).free
    except OSError:
        return None


def disk_full(path: str | os.PathLike[str], err: BaseException | None = None) -> DiskFullError:
    """The DiskFullError for a failed write to `path` (keeps an EDQUOT's errno)."""
    if isinstance(err, DiskFullError):
        return err
    code = err.errno if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS else errno.ENOSPC
    return DiskFullError(path, code=code or errno.ENOSPC)


@contextlib.contextmanager
def reporting_disk_full(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turns an ENOSPC / EDQUOT OSError raised inside into a DiskFullError naming `path`."""
    try:
        yield
    except OSError as e:
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full(path, e) from None  # its line says it all; a cause would be reported instead
        raise


def protocol_of(url: str | os.PathLike[str]) -> str:
    """`s3` for `s3://bucket/x`, `file` for `file:///x` and for a plain path."""
    text = os.fspath(url)
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def check_url(url: str) -> None:
    """Raise StorageError (one line naming the URL and the fix) if fsspec cannot open `url`'s protocol."""
    proto = protocol_of(url)
    if proto in ("file", "local"):
        return
    import fsspec

    try:
        fsspec.get_filesystem_class(proto)
    except (ImportError, ValueError) as e:
        extra = EXTRAS.get(proto)
        hint = f": pip install '{extra}'" if extra else ""
        raise StorageError(f"storage_url {url}: protocol {proto!r} is not usable ({e}){hint}") from None


def storage_root(url: str | os.PathLike[str] | UPath) -> Path | UPath:
    """The root of a storage URL: a `Path` for a plain path or `file://`, else a `UPath` (fsspec)."""
    if isinstance(url, Path) or type(url).__module__.startswith("upath"):  # already a root (Path or UPath)
        return url  # type: ignore[return-value]
    text = os.fspath(url)
    if protocol_of(text) in ("file", "local"):
        return Path(text.split("://", 1)[1]) if "://" in text else Path(text)
    check_url(text)
    from upath import UPath

    return UPath(text)


def results_url(spec: Spec) -> str:
    """The spec's storage URL: `storage_url`, or `results_dir` when it is not set."""
    return spec.storage_url or spec.results_dir


def results_root(spec: Spec) -> Path | UPath:
    return storage_root(results_url(spec))


def _local(path: Path | UPath) -> bool:
    return type(path).__module__.startswith("pathlib") or getattr(path, "protocol", "file") in ("", "file", "local")


def atomic_write(path: Path | UPath, write: Callable[[IO[bytes]], None]) -> None:
    """`write` fills a buffer; only complete content ever replaces the file or object at `path`.

    Local: a temp file in the target's folder, fsynced, then `os.replace`. Remote: the bytes are built in
    memory first (a `write` that raises sends nothing). An object store gets them in one `pipe_file` call (one
    PUT; above s3fs's 2 × 50 MiB a multipart upload, which also shows nothing until its final request). Other
    fsspec filesystems (sftp, ftp …) write in place, so there: a temp name beside the target, then a rename.
    """
    if _local(path):
        with reporting_disk_full(path):
            _atomic_write_local(Path(os.fspath(path)), write)
        return
    with reporting_disk_full(str(path)):
        _atomic_write_remote(path, write)


def _atomic_write_remote(path: UPath, write: Callable[[IO[bytes]], None]) -> None:
    buf = io.BytesIO()
    write(buf)
    fs = path.fs
    if path.protocol in OBJECT_STORES:
        fs.pipe_file(path.path, buf.getvalue())
        return
    ensure_dir(path.parent)
    tmp = f"{path.parent.path}/.{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.pipe_file(tmp, buf.getvalue())
        fs.mv(tmp, path.path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def ensure_dir(path: Path | UPath) -> None:
    """A folder for files to come; object stores have none to make."""
    if _local(path):
        Path(os.fspath(path)).mkdir(parents=True, exist_ok=True)
    elif path.protocol not in OBJECT_STORES:
        path.fs.makedirs(path.path, exist_ok=True)


def atomic_write_text(path: Path | UPath, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _atomic_write_local(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_many(paths: Iterable[Path | UPath]) -> dict[str, bytes]:
    """The bytes of every path that exists (str(path) -> bytes); missing ones are left out.

    Remote: one fsspec `cat` for all of them, which an async filesystem (s3fs, gcsfs) fetches concurrently,
    so a video's records cost one round trip, not one per record.
    """
    paths = list(paths)
    out: dict[str, bytes] = {}
    remote = [p for p in paths if not _local(p)]
    for p in paths:
        if _local(p):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                out[str(p)] = Path(os.fspath(p)).read_bytes()
    by_fs: dict[int, list[Any]] = {}
    for p in remote:
        by_fs.setdefault(id(p.fs), []).append(p)
    for group in by_fs.values():
        got = group[0].fs.cat([p.path for p in group], on_error="omit")
        for p in group:
            if p.path in got:
                out[str(p)] = got[p.path]
    return out
