"""Step 0 for the videos next in line, done with what earlier videos leave idle: media, then questions.

A video's first step cannot call the model before its downscaled copy (and a long video's frames) exist.
Made inside the run, that ffmpeg work lands all at once on the first wave of workers, when the CPU is
busiest and the provider still empty. The runner instead hands videos out one at a time and these
threads prepare the ones not handed out yet, at a lower CPU priority, so a worker finds them ready.

With `workflow.ask_ahead`, the questions about the whole video (`vr_assets.whole_video`: step 0's
screening, then step 1a's captions if it proceeds) go out too as soon as a video's media exists: the
provider starts working seconds before the first worker has loaded Dagster. The answers land in the
call cache marked as asked ahead, so the run's `filter_result` and `captions` find them and record
them as their own calls, cost included, once (`CachedModel.generate_many(ahead=True)`).

It only ever saves time: each video's media and questions happen under the video's media lock, so a
worker that takes a video mid-way waits for it instead of paying twice, and anything that fails here is
left for the step, which does the work again and reports the error with the run.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from vr_assets.config import Spec
from vr_assets.media import MediaTool
from vr_assets.media_cache import media_cache_dir, media_lock, prepared_copy_path, step0_media
from vr_assets.records import VideoProbe, VideoSource
from vr_assets.storage import results_url
from vr_assets.store import JsonStore

if TYPE_CHECKING:
    from vr_assets.call_cache import CachedModel
    from vr_assets.prompts import PromptPack

# Threads making media when questions are asked ahead: the provider waits on the first videos' ffmpeg.
MEDIA_THREADS = 2

# Below the workers (nice 0): the prefetch uses the CPU they leave idle while waiting on the model.
NICENESS = 10


class MediaPrefetch:
    """Background threads (one, or `MEDIA_THREADS` when it asks ahead) taking the videos in the order given (the
    hand-out order, or smallest file first when it asks ahead), skipping those already handed out."""

    def __init__(
        self, spec: Spec, tool: MediaTool, videos: Iterable[VideoSource], ahead: AskAhead | None = None
    ) -> None:
        self._spec = spec
        self._ahead = ahead
        self._tool = tool
        self._videos = list(videos)
        self._handed_out: set[str] = set()
        self._dropped: set[str] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._next = 0  # index in `_videos` of the next video a thread takes
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"vr-media-prefetch-{i}", daemon=True)
                         for i in range(MEDIA_THREADS if ahead is not None else 1)]
        self.prepared: list[str] = []
        self.skipped: list[str] = []
        self.failed: dict[str, str] = {}

    def start(self) -> MediaPrefetch:
        if self._videos:
            if self._ahead is not None:
                self._ahead.start()  # from this thread: its threads keep the normal priority
            for t in self._threads:
                t.start()
        return self

    def wait_for_teacher(self, timeout_s: float = 5.0) -> None:
        """Until the questions asked ahead have their SDK client. The first model call waits for that import
        (~0.6 CPU-s); one process importing Dagster meanwhile on the same GIL and cores delayed it ~1 s."""
        if self._ahead is not None and self._videos:
            self._ahead.wait_built(timeout_s)

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
        """Until every video not handed out has been tried (its questions too)."""
        for t in self._threads:
            if t.is_alive():
                t.join()
        if self._ahead is not None:
            self._ahead.wait()

    def stop(self, *, answers: bool = True) -> None:
        """Finish the video in hand (its files land whole or not at all) and start no other; with `answers`,
        wait for the questions in flight too (off when the run is being abandoned: they are lost, not paid twice)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join()
        if self._ahead is not None:
            self._ahead.stop(wait=answers)

    def summary(self) -> str:
        text = (
            f"media prefetch: {len(self.prepared)} of {len(self._videos) - len(self._dropped)} video(s) prepared"
            " ahead of their worker"
            f", {len(self.skipped)} taken first"
        )
        if self.failed:
            text += f", {len(self.failed)} left to the step after an error"
        if self._ahead is not None:
            text += "; " + self._ahead.summary()
        return text

    def _taken(self, key: str) -> bool:
        with self._guard:
            return key in self._handed_out

    def _work(self, index: int) -> None:
        # With questions to ask ahead, the first videos' media is what the empty provider waits for: made at
        # the normal priority (the daemon's and the forkserver's imports are all else the CPU has then),
        # the rest below the workers.
        urgent = self._ahead.slots if self._ahead is not None else 0
        lowered = False
        if index:
            self.wait_for_teacher()  # the SDK's import first: the first question waits on it
        while not self._stop.is_set():
            with self._guard:
                n = self._next
                self._next += 1
            if n >= len(self._videos):
                return
            if n >= urgent and not lowered:
                _lower_own_priority()
                lowered = True
            video = self._videos[n]
            if not self._taken(video.key):
                self._prepare(video)

    def _prepare(self, video: VideoSource) -> None:
        from vr_assets.whole_video import probe_stop_reason

        cache = media_cache_dir(self._spec, video.key)
        with ExitStack() as held:
            if not held.enter_context(media_lock(cache, wait=False)) or self._taken(video.key):
                self.skipped.append(video.key)  # its worker got there first
                return
            try:
                src = Path(video.path)
                probe = self._tool.probe(src)
                if probe_stop_reason(self._spec, probe) is not None:
                    self.skipped.append(video.key)  # step 0 stops it on its probe: no media, no question
                    return
                if prepared_copy_path(self._spec, self._tool, probe, cache).exists():
                    # made by an earlier run; its frames may be gone on purpose (step 1a drops them)
                    self.skipped.append(video.key)
                    return
                kind, paths = step0_media(self._spec, self._tool, src, probe, cache, locked=True)
                self.prepared.append(video.key)
            except Exception as e:  # the step redoes it and reports the cause with the run
                self.failed[video.key] = f"{type(e).__name__}: {e}"
                return
            if self._ahead is not None and not self._stop.is_set():
                # the lock goes with the questions: a worker taking the video waits for their answers
                self._ahead.submit(video, probe, kind, paths, held.pop_all())


class AskAhead:
    """Threads asking the whole-video questions of prepared videos, each holding that video's media lock.

    As many threads as provider slots; the provider limit holds anyway (host-wide slots).
    """

    def __init__(self, spec: Spec, threads: int) -> None:
        self._spec = spec
        self._queue: queue.Queue[tuple[VideoSource, VideoProbe, str, list[Path], ExitStack] | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name=f"vr-ask-ahead-{i}", daemon=True) for i in range(threads)
        ]
        self._model: CachedModel | None = None
        self._pack: PromptPack | None = None
        self._model_guard = threading.Lock()
        self._built = threading.Event()  # the teacher is built (or failed to be)
        self._guard = threading.Lock()
        self._stopping = False
        self.asked: list[str] = []
        self.calls = 0
        self.left: dict[str, str] = {}  # video -> why its questions were left to its step

    @property
    def slots(self) -> int:
        """Questions in flight at most: one per thread."""
        return len(self._threads)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def wait_built(self, timeout_s: float) -> None:
        """Until the teacher is built (at most `timeout_s`): see `MediaPrefetch.wait_for_teacher`."""
        self._built.wait(timeout_s)

    def submit(self, video: VideoSource, probe: VideoProbe, kind: str, paths: list[Path], held: ExitStack) -> None:
        with self._guard:
            if self._stopping:
                held.close()
                return
            self._queue.put((video, probe, kind, paths, held))

    def wait(self) -> None:
        """Until every video submitted so far has had its questions asked."""
        self._queue.join()

    def stop(self, *, wait: bool = True) -> None:
        """Finish the questions in flight (unless not `wait`); videos still queued are left to their steps."""
        with self._guard:
            self._stopping = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[4].close()
            self._queue.task_done()
        for _ in self._threads:
            self._queue.put(None)
        if not wait:
            return  # daemon threads: an answer still in flight is not stored
        for t in self._threads:
            if t.ident is not None:  # started (a prefetch without videos starts none)
                t.join()
        if self._model is not None:
            self._model.model.close()

    def summary(self) -> str:
        text = f"asked ahead for {len(self.asked)} video(s) ({self.calls} calls)"
        if self.left:
            text += f", {len(self.left)} left to their step"
        return text

    def _teacher(self) -> tuple[CachedModel, PromptPack]:
        with self._model_guard:  # the first thread imports the SDK and builds the client; the rest wait
            if self._model is None or self._pack is None:
                from vr_assets.call_cache import spec_teacher
                from vr_assets.prompts import load_pack

                self._pack = load_pack(self._spec.prompt_pack, self._spec.prompts_module)
                self._model = spec_teacher(self._spec, "vlm")
            return self._model, self._pack

    def _work(self) -> None:
        # the SDK's import and the client now, while the first video's media is being made, not after it;
        # an error here meets each video's questions again, which leave them to the step
        with suppress(Exception):
            self._teacher()
        self._built.set()  # built or not: nobody waits for it any longer
        while (item := self._queue.get()) is not None:
            video, probe, kind, paths, held = item
            try:
                with held:  # the video's media lock, released once its questions are answered
                    self._ask(video, probe, kind, paths)
            except Exception as e:  # the step asks again and reports the cause with the run
                self.left[video.key] = f"{type(e).__name__}: {e}"
            finally:
                self._queue.task_done()

    def _ask(self, video: VideoSource, probe: VideoProbe, kind: str, paths: list[Path]) -> None:
        from vr_assets.providers import ModelAnswer, ModelCall
        from vr_assets.whole_video import (
            asks_relevance,
            caption_calls,
            known_mode,
            one_request_per_step,
            probe_stop_reason,
            screen,
            whole_video_ref,
        )

        spec = self._spec
        if probe_stop_reason(spec, probe) is not None:
            return  # step 0 stops it without a question
        if JsonStore(results_url(spec)).exists("filter_result", video.key):
            return  # only videos whose step 0 is sure to run (a missing record is always re-made)
        mode, _ = known_mode(spec, video.mode)
        model, pack = self._teacher()
        ref = whole_video_ref(spec, probe, kind, paths, video.key)

        def run(calls: list[ModelCall], step: str) -> list[ModelAnswer]:
            answers = model.generate_many(calls, ahead=True)
            for a in answers:
                if not isinstance(a, ModelAnswer):
                    raise a
            with self._guard:
                self.calls += sum(not a.usage.cached for a in answers)  # type: ignore[union-attr]
            return answers  # type: ignore[return-value]

        try:
            screened = screen(pack, run, video.key, ref, ask_relevance=asks_relevance(spec), mode=mode,
                              one_request=one_request_per_step(spec, pack))
            if screened.is_valid is not False:  # step 0 lets it through: step 1a asks these next
                run(caption_calls(pack, screened.label or mode or "normal", video.key, ref,
                                  one_request=one_request_per_step(spec, pack)), "1a")
        finally:
            model.release(video.key)  # no payload kept here; an upload stays registered for the worker
        self.asked.append(video.key)


def _lower_own_priority() -> None:
    """Nice this thread only (Linux keeps a nice value per thread); the ffmpeg it starts inherits it."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)
    except (AttributeError, OSError):  # no per-thread priority here: run at the normal one
        pass
