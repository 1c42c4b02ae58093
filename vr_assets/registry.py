"""The registry that maps a video partition key back to its file (Dagster-free: the CLI reads it before any
worker has loaded Dagster)."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vr_assets.discovery import MAX_KEY_LEN, _short_hash, partition_key_for
from vr_assets.records import VideoSource
from vr_assets.store import atomic_write_text


class UnknownVideoError(KeyError):
    def __str__(self) -> str:
        return (
            f"video partition {self.args[0]!r} is not in the registry {self.args[1]}; "
            "run discovery (the sensor or vr-annotate run) first"
        )


_PARSED: dict[str, tuple[tuple[int, int, int], dict[str, VideoSource]]] = {}


class VideoRegistry:
    """key -> VideoSource, persisted as `<results_dir>/registry/videos.json`.

    A key, once given to a file, is kept for good so partitions stay stable when new
    videos with clashing names arrive later.
    """

    def __init__(self, results_dir: str | Path) -> None:
        self.path = Path(results_dir) / "registry" / "videos.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self) -> dict[str, VideoSource]:
        return dict(self._parsed())

    def _parsed(self) -> dict[str, VideoSource]:
        """The shared parse; callers that may change the mapping get a copy from `load`."""
        # Every step of every video looks its video up here; at 10 000 videos re-parsing the whole
        # file each time would cost more than the lookup is worth, so a parse is reused until the
        # file is replaced (writes are atomic renames: a new inode).
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = _PARSED.get(str(self.path))
        if hit is None or hit[0] != sig:
            raw = json.loads(self.path.read_text())
            hit = (sig, {k: VideoSource.model_validate(v) for k, v in raw.items()})
            _PARSED[str(self.path)] = hit
        return hit[1]

    def get(self, key: str) -> VideoSource:
        videos = self._parsed()
        if key not in videos:
            raise UnknownVideoError(key, str(self.path))
        return videos[key]

    def sync(self, discovered: list[VideoSource]) -> tuple[dict[str, VideoSource], list[str]]:
        """Merge a discovery result in; returns (all videos, keys that are new)."""
        with self._locked():
            current = self.load()
            by_path = {v.path: k for k, v in current.items()}
            new: list[str] = []
            for v in discovered:
                key = by_path.get(v.path)
                if key is None:
                    key = v.key or partition_key_for(v.rel_path)
                    if key in current:
                        key = f"{key[: MAX_KEY_LEN - 9]}-{_short_hash(v.path)}"
                    new.append(key)
                # Refresh fields (mode/extra may change in the JSONL) but keep the key.
                current[key] = v.model_copy(update={"key": key})
                by_path[v.path] = key
            # JSON mode: a name that is not UTF-8 is stored as its bytes (`fsnames.FsText`), so it opens again
            atomic_write_text(
                self.path, json.dumps({k: v.model_dump(mode="json") for k, v in sorted(current.items())}, indent=1)
            )
            return current, new
