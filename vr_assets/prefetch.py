"""Step 0's media for the videos next in line, made with spare CPU while earlier videos wait on the model.

A video's first step cannot call the model before its downscaled copy (and a long video's frames) exist.
Made inside the run, that ffmpeg work lands all at once on the first wave of workers, when the CPU is
busiest and the provider still empty. The runner instead hands videos out one at a time and this
thread prepares the ones not handed out yet, at a lower CPU priority, so a worker finds them ready.

It only ever saves time: each video's media goes through `step0_media` under the video's lock, so
a worker that takes a video mid-preparation waits for it instead of doing it twice, and anything
that fails here is left for the step, which does the work again and reports the error with the run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from vr_assets.config import Spec
from vr_assets.media import MediaTool
from vr_assets.media_cache import media_cache_dir, media_lock, prepared_copy_path, step0_media
from vr_assets.records import VideoSource

# Below the workers (nice 0): the prefetch uses the CPU they leave idle while waiting on the model.
NICENESS = 10


class MediaPrefetch:
    """One background thread walking the videos in hand-out order, skipping those already handed out."""

    def __init__(self, spec: Spec, tool: MediaTool, videos: Iterable[VideoSource]) -> None:
        self._spec = spec
        self._tool = tool
        self._videos = list(videos)
        self._handed_out: set[str] = set()
        self._dropped: set[str] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="vr-media-prefetch", daemon=True)
        self.prepared: list[str] = []
        self.skipped: list[str] = []
        self.failed: dict[str, str] = {}

    def start(self) -> MediaPrefetch:
        if self._videos:
            self._thread.start()
        return self

    def handed_out(self, key: str) -> None:
        """A worker has this video now: it prepares its own media from here on."""
        with self._guard:
            self._handed_out.add(key)

    def drop(self, keys: Iterable[str]) -> None:
        """Videos that need no step-0 media after all (the plan starts them later, or not at all)."""
        with self._guard:
            dropped = set(keys) - self._handed_out
            self._handed_out |= dropped
            self._dropped |= dropped

    def wait(self) -> None:
        """Until every video not handed out has been tried."""
        if self._thread.is_alive():
            self._thread.join()

    def stop(self) -> None:
        """Finish the video in hand (its files land whole or not at all) and start no other."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> str:
        text = (
            f"media prefetch: {len(self.prepared)} of {len(self._videos) - len(self._dropped)} video(s) prepared"
            " ahead of their worker"
            f", {len(self.skipped)} taken first"
        )
        if self.failed:
            text += f", {len(self.failed)} left to the step after an error"
        return text

    def _taken(self, key: str) -> bool:
        with self._guard:
            return key in self._handed_out

    def _work(self) -> None:
        _lower_own_priority()
        for video in self._videos:
            if self._stop.is_set():
                return
            if self._taken(video.key):
                continue
            self._prepare(video)

    def _prepare(self, video: VideoSource) -> None:
        cache = media_cache_dir(self._spec, video.key)
        with media_lock(cache, wait=False) as mine:
            if not mine or self._taken(video.key):
                self.skipped.append(video.key)  # its worker got there first
                return
            try:
                src = Path(video.path)
                probe = self._tool.probe(src)
                if prepared_copy_path(self._spec, self._tool, probe, cache).exists():
                    # made by an earlier run; its frames may be gone on purpose (step 1a drops them)
                    self.skipped.append(video.key)
                    return
                step0_media(self._spec, self._tool, src, probe, cache, locked=True)
                self.prepared.append(video.key)
            except Exception as e:  # the step redoes it and reports the cause with the run
                self.failed[video.key] = f"{type(e).__name__}: {e}"


def _lower_own_priority() -> None:
    """Nice this thread only (Linux keeps a nice value per thread); the ffmpeg it starts inherits it."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)
    except (AttributeError, OSError):  # no per-thread priority here: run at the normal one
        pass
