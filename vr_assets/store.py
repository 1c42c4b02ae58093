"""The results folder: one JSON file per asset per video, written atomically.

Paths are plain and predictable (`<results_dir>/assets/<asset>/<partition>.json`) so a
person can inspect a video's outputs without Dagster, and a crash mid-write never leaves
a half-written file: data goes to a temp file in the same folder, then `os.replace`.
Dagster-free, like the registry: the CLI uses both before any worker has loaded Dagster.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from vr_assets import records


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """`write` fills a temp file in the target's folder; only a complete file is renamed over the target."""
    path = Path(path)
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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# asset name -> record type stored for it
ASSET_RECORDS: dict[str, type[BaseModel]] = {
    "filter_result": records.FilterResult,
    "captions": records.Captions,
    "chunk_captions": records.ChunkCaptions,
    "highlight": records.Highlight,
    "description": records.Description,
    "qa": records.QAResult,
    "task_exports": records.TaskExports,
}


class JsonStore:
    """Read/write step records by (asset, partition) without going through Dagster."""

    def __init__(self, results_dir: str | Path) -> None:
        self.root = Path(results_dir) / "assets"

    def path(self, asset: str, partition: str) -> Path:
        return self.root / asset / f"{partition}.json"

    def write(self, asset: str, partition: str, value: BaseModel) -> Path:
        p = self.path(asset, partition)
        atomic_write_text(p, value.model_dump_json(indent=2))
        return p

    def exists(self, asset: str, partition: str) -> bool:
        return self.path(asset, partition).exists()

    def read(self, asset: str, partition: str) -> Any:
        got = self.read_optional(asset, partition)
        if got is None:
            expected = self.path(asset, partition)
            raise FileNotFoundError(f"no stored {asset} for video {partition!r} (expected {expected})")
        return got

    def read_optional(self, asset: str, partition: str) -> Any | None:
        p = self.path(asset, partition)
        return ASSET_RECORDS[asset].model_validate_json(p.read_text()) if p.exists() else None

    def partitions(self, asset: str) -> list[str]:
        d = self.root / asset
        return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


class ReadOnce(JsonStore):
    """A JsonStore that parses each record at most once. The dataset makes one per video, so a video's
    records serve its export, its TAO step-file lines and its usage without holding every video's."""

    def __init__(self, results_dir: str | Path) -> None:
        super().__init__(results_dir)
        self._seen: dict[tuple[str, str], Any | None] = {}

    def read_optional(self, asset: str, partition: str) -> Any | None:
        key = (asset, partition)
        if key not in self._seen:
            self._seen[key] = super().read_optional(asset, partition)
        return self._seen[key]
