"""Files API uploads recorded on disk, so a video crosses the wire once whichever process asks.

A video's steps may run in different processes (vr-annotate's prefetch asks steps 0 and 1a, the
worker runs the rest; a Dagster step each in its own process). Each records the upload it made
here, keyed by content hash with the videos that still need it; the next process points at the
same file. The last video to let go (`unclaim`) gets the entry back and deletes the file. Entries
of a run that died stay for its retry: the service itself drops files after 48 hours.

The entries are JSON files under the registry's folder on one host, and rows in the instance's
Postgres database when it is on Postgres, so every host reuses one upload (`vr_assets.shared_state`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from vr_assets.shared_state import Records, coordinator

# Gemini deletes uploads after 48 h; an older entry is not worth a look.
MAX_AGE_S = 46 * 3600.0


class UploadEntry(BaseModel):
    name: str
    uri: str
    mime_type: str
    size: int
    created_unix: float
    owners: list[str] = []

    def fresh(self) -> bool:
        return time.time() - self.created_unix < MAX_AGE_S


class UploadRegistry:
    """One record per content hash (a JSON file under `root`, or a row); every change holds the lock
    over all of them. `root`'s name (the endpoint) names the records' namespace on Postgres."""

    def __init__(self, root: Path, records: Records | None = None) -> None:
        self.root = root
        self.records = records or coordinator().records(f"uploads:{root.name}", root)

    def _locked(self) -> Any:
        return self.records.locked()

    def _unlink(self, sha: str) -> None:
        self.records.delete(sha)

    def _read(self, sha: str) -> UploadEntry | None:
        try:
            text = self.records.get(sha)
        except OSError:
            text = ""
        if text is None:
            return None
        try:
            return UploadEntry.model_validate_json(text)
        except (ValidationError, ValueError):  # a torn or foreign record: as if absent
            self._unlink(sha)
            return None

    def _write(self, sha: str, entry: UploadEntry) -> None:
        self.records.put(sha, entry.model_dump_json())

    def claim(self, sha: str, owner: str) -> UploadEntry | None:
        """The live entry for `sha`, with `owner` added; None (and a stale entry dropped) otherwise."""
        with self._locked():
            entry = self._read(sha)
            if entry is None:
                return None
            if not entry.fresh():
                self._unlink(sha)
                return None
            if owner not in entry.owners:
                entry.owners.append(owner)
                self._write(sha, entry)
            return entry

    def record(self, sha: str, entry: UploadEntry) -> bool:
        """Register a new upload; False when another process registered the same bytes first."""
        with self._locked():
            old = self._read(sha)
            if old is not None and old.fresh() and old.name != entry.name:
                return False
            self._write(sha, entry)
            return True

    def unclaim(self, sha: str, owner: str) -> UploadEntry | None:
        """Drop `owner`; the entry (now removed) when nobody is left, for the caller to delete its file."""
        with self._locked():
            entry = self._read(sha)
            if entry is None or owner not in entry.owners:
                return None
            entry.owners.remove(owner)
            if entry.owners:
                self._write(sha, entry)
                return None
            self._unlink(sha)
            return entry

    def forget(self, sha: str, name: str) -> None:
        """Drop the entry for a file that is gone (deleted, or the service no longer knows it)."""
        with self._locked():
            entry = self._read(sha)
            if entry is not None and entry.name == name:
                self._unlink(sha)

    def owned_by(self, owner: str) -> list[str]:
        """Content hashes `owner` still holds an upload for."""
        out = []
        for sha in self.records.names():
            entry = self._read(sha)
            if entry is not None and owner in entry.owners:
                out.append(sha)
        return out

    def holders(self, sha: str) -> list[str]:
        entry = self._read(sha)
        return list(entry.owners) if entry is not None else []
