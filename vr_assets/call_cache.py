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
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vr_assets.providers import ModelAnswer, ModelCall, ProviderError, TeacherModel
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


class CachedModel:
    """Wraps a TeacherModel; same generate/generate_many/release surface."""

    def __init__(self, model: TeacherModel, cache_dir: Path, settings_fingerprint: str) -> None:
        self.model = model
        self.cache_dir = cache_dir
        self.settings_fingerprint = settings_fingerprint

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
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _lookup(self, call: ModelCall, key: str) -> ModelAnswer | None:
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
        usage = saved.usage.model_copy(
            update={"cached": True, "cost_usd": 0.0, "latency_s": 0.0, "retries": 0, "step": call.step,
                    "prompt_key": call.prompt_key, "uploaded_bytes": 0, "inline_bytes": 0}
        )
        return ModelAnswer(text=saved.text, parsed=parsed, usage=usage, finish_reason=saved.finish_reason)

    def _store(self, key: str, answer: ModelAnswer) -> None:
        to_save = answer.model_copy(update={"parsed": None})
        atomic_write_text(self._path(key), to_save.model_dump_json())

    def generate(self, call: ModelCall) -> ModelAnswer:
        result = self.generate_many([call])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def generate_many(self, calls: list[ModelCall]) -> list[ModelAnswer | ProviderError]:
        keys = [self.key_for(c) for c in calls]
        out: list[ModelAnswer | ProviderError | None] = [self._lookup(c, k) for c, k in zip(calls, keys, strict=True)]
        todo = [i for i, a in enumerate(out) if a is None]
        if todo:
            fresh = self.model.generate_many([calls[i] for i in todo])
            for i, ans in zip(todo, fresh, strict=True):
                if isinstance(ans, ModelAnswer):
                    self._store(keys[i], ans)
                out[i] = ans
        return [a for a in out if a is not None]

    def release(self, video_key: str) -> None:
        self.model.release(video_key)


def cache_dir_for(results_dir: str) -> Path:
    return Path(os.environ.get("VR_CALL_CACHE_DIR") or Path(results_dir) / "cache" / "calls")
