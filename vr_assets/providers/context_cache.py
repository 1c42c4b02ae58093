"""Gemini explicit context caches, one per video and content, made once whichever process asks.

A video's whole-video questions (steps 0 and 1a) may be asked by vr-annotate's prefetch and the
worker, or by one Dagster step process each. The cache one of them made is recorded here, by video,
beside the upload registry, so the others read it instead of making their own; the video's last
model step (`discard`, with its upload) deletes it. Without a folder, the book lives in this process.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ValidationError

from vr_assets.store import atomic_write_text

EXPIRY_MARGIN_S = 30.0  # a cache this close to its end is made anew rather than pointed at


class CacheEntry(BaseModel):
    key: str  # what it holds: model, file, sampling, resolution, system instruction
    name: str  # cachedContents/<id>
    owner: str  # the video
    tokens: int = 0
    created_unix: float
    expire_unix: float

    def fresh(self) -> bool:
        return self.expire_unix - EXPIRY_MARGIN_S > time.time()


class _Book(BaseModel):
    entries: list[CacheEntry] = []


class CacheBook:
    """The caches made for each video; every change holds the video's lock (a thread lock and, with a
    folder, an flock), so two callers asking for the same cache at once create it once."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._memory: dict[str, list[CacheEntry]] = {}
        self._guard = threading.Lock()
        self._thread_locks: dict[str, threading.Lock] = {}

    def _file(self, owner: str) -> Path:
        assert self.root is not None
        return self.root / f"{hashlib.sha256(owner.encode()).hexdigest()[:24]}.json"

    @contextmanager
    def _locked(self, owner: str) -> Iterator[None]:
        with self._guard:
            lock = self._thread_locks.setdefault(owner, threading.Lock())
        with lock:
            if self.root is None:
                yield
                return
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self._file(owner).with_suffix(".lock"), "a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self, owner: str) -> list[CacheEntry]:
        if self.root is None:
            with self._guard:
                return list(self._memory.get(owner, []))
        try:
            return _Book.model_validate_json(self._file(owner).read_text()).entries
        except FileNotFoundError:
            return []
        except (ValidationError, OSError, ValueError):  # torn or foreign: as if empty (the TTL ends them)
            return []

    def _write(self, owner: str, entries: list[CacheEntry]) -> None:
        if self.root is None:
            with self._guard:
                if entries:
                    self._memory[owner] = list(entries)
                else:
                    self._memory.pop(owner, None)
            return
        path = self._file(owner)
        if entries:
            atomic_write_text(path, _Book(entries=entries).model_dump_json())
        else:  # the lock file stays: a waiter may hold it open, and a new one would let two in at once
            path.unlink(missing_ok=True)

    def get_or_create(
        self, owner: str, key: str, create: Callable[[], CacheEntry | None]
    ) -> tuple[CacheEntry | None, bool]:
        """(the fresh cache for `key`, whether this call made it); `create` runs at most once at a time per
        video. A stale entry is dropped first (its cache has expired or is about to)."""
        with self._locked(owner):
            entries = self._read(owner)
            hit = next((e for e in entries if e.key == key and e.fresh()), None)
            if hit is not None:
                return hit, False
            made = create()
            if made is not None:
                self._write(owner, [e for e in entries if e.key != key] + [made])
            return made, made is not None

    def forget(self, owner: str, name: str) -> None:
        """The service no longer has this cache (expired or deleted): the next call makes it again."""
        with self._locked(owner):
            entries = self._read(owner)
            self._write(owner, [e for e in entries if e.name != name])

    def pop_all(self, owner: str) -> list[CacheEntry]:
        """Every cache recorded for `owner`, now forgotten here (the caller deletes them)."""
        with self._locked(owner):
            entries = self._read(owner)
            self._write(owner, [])
        return entries

    def owners(self) -> list[str]:
        """Videos with caches in this process's memory (a book without a folder)."""
        with self._guard:
            return list(self._memory)
