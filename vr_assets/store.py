"""The results folder: one JSON file per asset per video, written atomically.

Paths are plain and predictable (`<storage root>/assets/<asset>/<partition>.json`) so a person can
inspect a video's outputs without Dagster, and a crash mid-write never leaves a half-written file
(`vr_assets.storage.atomic_write`: temp file + rename on disk, one whole-object PUT on an object store).
The root is the spec's storage URL (`storage.results_url`): a local folder by default, or `s3://…`.
Dagster-free, like the registry: the CLI uses both before any worker has loaded Dagster.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from vr_assets import records
from vr_assets.storage import atomic_write as atomic_write
from vr_assets.storage import atomic_write_text as atomic_write_text
from vr_assets.storage import read_many, storage_root

if TYPE_CHECKING:
    from upath import UPath


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
# The per-video steps in graph order (each upstream of the next): the graph's job, the batch sensor's re-runs and
# the viewer all read this one list.
PER_VIDEO_ASSETS: tuple[str, ...] = tuple(ASSET_RECORDS)


class JsonStore:
    """Read/write step records by (asset, partition) without going through Dagster."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        """`url`: the storage root (a results folder, `file://…`, `s3://bucket/prefix`, or a Path/UPath)."""
        self.root = storage_root(url) / "assets"

    def path(self, asset: str, partition: str) -> Path | UPath:
        return self.root / asset / f"{partition}.json"

    def write(self, asset: str, partition: str, value: BaseModel) -> Path | UPath:
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
        try:
            text = self.path(asset, partition).read_bytes()  # one request on an object store, not exists + get
        except FileNotFoundError:
            return None
        return ASSET_RECORDS[asset].model_validate_json(text)

    def partitions(self, asset: str) -> list[str]:
        d = self.root / asset
        try:
            return sorted(p.name[: -len(".json")] for p in d.iterdir() if p.name.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError):  # an object store has no folder before its first record
            return []


class ReadOnce(JsonStore):
    """A JsonStore that parses each record at most once. The dataset makes one per video, so a video's
    records serve its export, its TAO step-file lines and its usage without holding every video's."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        super().__init__(url)
        self._seen: dict[tuple[str, str], Any | None] = {}
        self._fetched: dict[tuple[str, str], bytes | None] = {}

    def read_optional(self, asset: str, partition: str) -> Any | None:
        key = (asset, partition)
        if key not in self._seen:
            if key in self._fetched:
                raw = self._fetched.pop(key)
                self._seen[key] = None if raw is None else ASSET_RECORDS[asset].model_validate_json(raw)
            else:
                self._seen[key] = super().read_optional(asset, partition)
        return self._seen[key]


def each_video(
    url: str | os.PathLike[str], keys: Iterable[str], assets: Iterable[str], batch: int = 64
) -> Iterator[tuple[str, ReadOnce]]:
    """Every video's records, in `keys` order and in one pass: (key, its ReadOnce).

    The records of `batch` videos are fetched with one `read_many` (concurrent GETs on an object store,
    so 100k videos cost ~100k/batch round trips, not 8 per video); only one batch is held at a time.
    """
    root = storage_root(url)
    keys, assets = list(keys), list(assets)
    for i in range(0, len(keys), batch):
        chunk = keys[i : i + batch]
        stores = {k: ReadOnce(root) for k in chunk}
        paths = {(a, k): stores[k].path(a, k) for k in chunk for a in assets}
        got = read_many(paths.values())
        for k in chunk:
            store = stores[k]
            for a in assets:
                store._fetched[(a, k)] = got.get(str(paths[(a, k)]))
            yield k, store
