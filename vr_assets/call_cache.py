"""A persistent answer cache in front of every teacher model: never pay twice for one call.

The key is the full content of a call (provider, model, generation settings, prompt text,
schema, and the sha256 of every media file sent), so an edited prompt or a new model misses
and is paid for, while a retried partition, a re-run after a crash or a re-materialization
with unchanged inputs is answered from disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from vr_assets.config import Spec
from vr_assets.providers import (
    ModelAnswer,
    ModelCall,
    ProviderError,
    TeacherModel,
    UsageLedger,
    get_model,
    provider_fatal_file,
)
from vr_assets.providers.base import KeyedLocks
from vr_assets.providers.batch import BatchBook, BatchEntry, WaitingForBatch, batch_book_for
from vr_assets.shared_state import coordinator
from vr_assets.storage import reporting_disk_full
from vr_assets.store import atomic_write_text

_sha_memo: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """Content hash, memoized by (path, size, mtime) so big videos are hashed once per process."""
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    with _sha_lock:
        if memo_key in _sha_memo:
            return _sha_memo[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _sha_lock:
        _sha_memo[memo_key] = digest
    return digest


# Calls this process is making: two threads never pay for the same call (the prefetch's threads asking
# ahead for two copies of one video). The coordinator's lock does the same across processes, and across
# hosts when the instance is on Postgres (`vr_assets.shared_state`).
_in_flight = KeyedLocks()


class CachedModel:
    """Wraps a TeacherModel; same generate/generate_many/release surface."""

    def __init__(
        self, model: TeacherModel, cache_dir: Path, settings_fingerprint: str, *,
        tier_of: Callable[[str], str] | None = None, batch_book: BatchBook | None = None,
    ) -> None:
        """`tier_of`: a step id's price tier (workflow.tier); `batch_book`: where batch-tier calls wait."""
        self.model = model
        self.cache_dir = cache_dir
        self.settings_fingerprint = settings_fingerprint
        self.tier_of = tier_of
        self.batch_book = batch_book

    @property
    def provider(self) -> str:
        return self.model.provider

    @property
    def model_name(self) -> str:
        return self.model.model_name

    def key_for(self, call: ModelCall) -> str:
        schema: Any = call.schema_model.model_json_schema() if call.schema_model else None
        media = [file_sha256(Path(p)) for p in call.media.paths] if call.media else []
        payload = {
            "provider": self.model.provider,
            "model": self.model.model_name,
            "settings": self.settings_fingerprint,
            "system": call.system,
            "prompt": call.prompt,
            "schema": schema,
            "media_kind": call.media.kind if call.media else None,
            "media": media,
        }
        if call.media is not None and call.media.sampling:  # absent otherwise: older keys stay valid
            payload["sampling"] = call.media.sampling
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _lookup(self, call: ModelCall, key: str, *, claim: bool = True) -> ModelAnswer | None:
        p = self._path(key)
        if not p.exists():
            return None
        try:
            saved = ModelAnswer.model_validate_json(p.read_text())
        except ValueError:
            return None  # unreadable cache entry: pay again rather than fail
        parsed: BaseModel | None = None
        if call.schema_model is not None:
            try:
                parsed = call.schema_model.model_validate_json(saved.text)
            except ValueError:
                return None
        if claim and self._claim(key):  # asked ahead for this call: it is this caller's to account for
            usage = saved.usage.model_copy(update={"step": call.step, "prompt_key": call.prompt_key})
        else:
            usage = saved.usage.model_copy(
                update={"cached": True, "cost_usd": 0.0, "latency_s": 0.0, "retries": 0, "step": call.step,
                        "prompt_key": call.prompt_key, "uploaded_bytes": 0, "inline_bytes": 0}
            )
        return ModelAnswer(text=saved.text, parsed=parsed, usage=usage, finish_reason=saved.finish_reason)

    def _store(self, key: str, answer: ModelAnswer, *, ahead: bool = False) -> None:
        to_save = answer.model_copy(update={"parsed": None})
        if ahead:  # marked first: a lookup never finds the answer without its mark
            with reporting_disk_full(self._ahead_path(key)):
                self._ahead_path(key).parent.mkdir(parents=True, exist_ok=True)
                self._ahead_path(key).touch()
        # disk full: DiskFullError naming the entry, nothing half-written; this answer is paid again next time
        atomic_write_text(self._path(key), to_save.model_dump_json())
        if not ahead:  # a mark left by a process that died before storing its answer
            self._ahead_path(key).unlink(missing_ok=True)

    def _ahead_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.ahead"

    def _claim(self, key: str) -> bool:
        """True for the first lookup of an answer asked ahead (only one unlink of its mark succeeds)."""
        try:
            self._ahead_path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def generate(self, call: ModelCall) -> ModelAnswer:
        result = self.generate_many([call])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def generate_many(self, calls: list[ModelCall], *, ahead: bool = False) -> list[ModelAnswer | ProviderError]:
        """Answers in call order. `ahead`: asked before the step that needs them (vr-annotate's prefetch);
        the step's own lookup then reports each fresh answer as its call, with its cost, once."""
        if self.tier_of is not None:
            calls = [c if c.tier != "standard" else c.model_copy(update={"tier": self.tier_of(c.step)})
                     for c in calls]
        keys = [self.key_for(c) for c in calls]
        out: list[ModelAnswer | ProviderError | None] = [
            self._lookup(c, k, claim=not ahead) for c, k in zip(calls, keys, strict=True)
        ]
        for i, c in enumerate(calls):
            if out[i] is None and c.tier == "batch":  # never sent from here: the batch sensor sends it
                out[i] = self._to_batch(c, keys[i])
        todo = [i for i, a in enumerate(out) if a is None]
        if todo:
            held = {keys[i]: self._path(keys[i]).with_suffix(".lock") for i in todo}
            with _in_flight.hold_all(held), coordinator().lock_all([(f"call:{k}", p) for k, p in held.items()]):
                for i in todo:  # another thread or process may have answered it while this one waited
                    out[i] = self._lookup(calls[i], keys[i], claim=not ahead)
                todo = [i for i in todo if out[i] is None]
                fresh = self.model.generate_many([calls[i] for i in todo]) if todo else []
                for i, ans in zip(todo, fresh, strict=True):
                    if isinstance(ans, ModelAnswer):
                        self._store(keys[i], ans, ahead=ahead)
                    out[i] = ans
        return [a for a in out if a is not None]

    def _to_batch(self, call: ModelCall, key: str) -> ProviderError:
        """A batch-tier call without an answer: its error if every batch failed it, else it waits (queued once)."""
        where = f"{self.model.provider}/{self.model.model_name} video {call.video_key!r} step {call.step}"
        if self.batch_book is None:
            return ProviderError(f"{where}: batch tier without a batch outbox", kind="config",
                                 video_key=call.video_key, step=call.step)
        failed = self.batch_book.take_failure(key)
        if failed is not None:
            return ProviderError(f"{where} ({call.prompt_key}) failed in batch: {failed}", kind="batch",
                                 provider=self.model.provider, model=self.model.model_name,
                                 video_key=call.video_key, step=call.step)
        role = getattr(self.model, "role", "llm")
        self.batch_book.queue(BatchEntry.of(call, key, role))
        entry = self.batch_book.entry(key)
        state = f"{entry.state} {entry.batch_id}".strip() if entry is not None else "queued"
        return WaitingForBatch(f"{where} ({call.prompt_key}) waits for a batch ({state})", kind="batch",
                               provider=self.model.provider, model=self.model.model_name,
                               video_key=call.video_key, step=call.step)

    @property
    def clips_in_place(self) -> bool:
        return self.model.clips_in_place

    def release(self, video_key: str) -> None:
        self.model.release(video_key)

    def discard(self, video_key: str) -> None:
        self.model.discard(video_key)


def cache_dir_for(results_dir: str) -> Path:
    return Path(os.environ.get("VR_CALL_CACHE_DIR") or Path(results_dir) / "cache" / "calls")


def settings_fingerprint(
    backend: str, model: str, temperature: float, max_output_tokens: int, media_resolution: str | None
) -> str:
    """What changes an answer besides prompt and media (never the key)."""
    fields = {
        "backend": backend, "model": model, "temperature": temperature,
        "max_output_tokens": max_output_tokens, "media_resolution": media_resolution,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def spec_teacher(spec: Spec, role: Literal["vlm", "llm"]) -> CachedModel:
    """The teacher a step gets from the spec's `TeacherResource` (same answers, same cache keys), built
    without Dagster: vr-annotate's prefetch asks the whole-video questions before the workers have loaded it."""
    ms = spec.vlm if role == "vlm" else spec.llm
    concurrency = ms.limits.max_concurrency or spec.workflow.max_workers
    ms = ms.model_copy(update={"limits": ms.limits.model_copy(update={"max_concurrency": concurrency})})
    if ms.backend == "gemini":
        g = ms.gemini
        resolution = g.media_resolution if role == "vlm" else None
        ms = ms.model_copy(update={"gemini": g.model_copy(update={"media_resolution": resolution})})
        fingerprint = settings_fingerprint("gemini", g.model, g.temperature, g.max_output_tokens, resolution)
    else:
        o = ms.openai
        fingerprint = settings_fingerprint("openai", o.model_name, o.temperature, o.max_tokens, None)
    model = get_model(
        ms, role=role, max_workers=concurrency, prices=spec.prices, media=spec.media,
        ledger=UsageLedger(Path(spec.results_dir) / "usage"), budget_usd=spec.budget_usd,
        upload_registry=upload_registry_for(spec.results_dir), fatal_file=provider_fatal_file(spec.results_dir),
    )
    return CachedModel(model, cache_dir_for(spec.results_dir), fingerprint, tier_of=spec.workflow.tier_of,
                       batch_book=batch_book_for(spec.results_dir))


def upload_registry_for(results_dir: str) -> Path:
    """Where Gemini uploads are recorded, beside the answers they were asked for."""
    return Path(results_dir) / "cache" / "uploads"
