"""Teacher clients (Gemini, OpenAI-compatible) behind one sync, thread-safe interface.

`get_model` hands out one shared teacher per (backend, model, endpoint, key) and accounting,
so every asset in a process shares the rate limiter, the upload and payload caches and the ledger.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Literal

from vr_assets.config import MediaSettings, ModelSpec, Pricing
from vr_assets.providers.base import (
    Accounting,
    BaseTeacher,
    BudgetExceeded,
    MediaRef,
    ModelAnswer,
    ModelCall,
    ProviderError,
    ProviderFatalError,
    TeacherModel,
    key_fingerprint,
    strip_think,
)
from vr_assets.providers.limits import RateLimiter, get_limiter
from vr_assets.providers.outage import is_fatal_provider_failure, provider_fatal_file
from vr_assets.providers.usage import UsageLedger

__all__ = [
    "BudgetExceeded",
    "MediaRef",
    "ModelAnswer",
    "ModelCall",
    "ProviderError",
    "ProviderFatalError",
    "RateLimiter",
    "TeacherModel",
    "UsageLedger",
    "get_model",
    "is_fatal_provider_failure",
    "provider_fatal_file",
    "reset_registry",
    "resolve_api_key",
    "strip_think",
]

_INSTANCES: dict[tuple[object, ...], BaseTeacher] = {}
_INSTANCES_LOCK = threading.Lock()


def resolve_api_key(spec: ModelSpec) -> str:
    """Spec value first, then the environment; a missing key is a clear error, never an anonymous call."""
    if spec.backend == "gemini":
        key = spec.gemini.api_key or os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY") or ""
        where = "gemini.api_key in the spec or env GOOGLE_API_KEY"
    else:
        key = spec.openai.api_key or os.environ.get("OPENAI_API_KEY") or ""
        base = spec.openai.base_url or os.environ.get("OPENAI_BASE_URL") or ""
        if not key and base and "api.openai.com" not in base:
            key = "EMPTY"  # self-hosted servers (vLLM, NIM on-prem) usually take any key
        where = "openai.api_key in the spec or env OPENAI_API_KEY"
    if not key:
        raise ProviderError(f"no API key for the {spec.backend} teacher {spec.model_name}: set {where}",
                            provider=spec.backend, model=spec.model_name, kind="config")
    return key


def _prices_key(prices: dict[str, Pricing] | None) -> str:
    if not prices:
        return ""
    raw = "|".join(f"{k}={v.model_dump_json()}" for k, v in sorted(prices.items()))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def get_model(
    spec: ModelSpec,
    *,
    role: Literal["vlm", "llm"] | str = "vlm",
    max_workers: int = 4,
    prices: dict[str, Pricing] | None = None,
    media: MediaSettings | None = None,
    ledger: UsageLedger | None = None,
    budget_usd: float | None = None,
    upload_registry: Path | None = None,
    fatal_file: Path | None = None,
) -> TeacherModel:
    """The process-wide teacher for `spec`; same arguments, same instance.

    `upload_registry`: a folder where Gemini uploads are recorded so later steps and other processes
    reuse them (None: each process uploads for itself and deletes on `release`). `fatal_file`: where a rejected
    key or missing model is recorded so later calls of any process fail without asking (None: not recorded)."""
    media = media or MediaSettings()
    api_key = resolve_api_key(spec)
    fp = key_fingerprint(api_key)
    if spec.backend == "gemini":
        base_url: str | None = spec.gemini.base_url
    else:
        base_url = spec.openai.base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = (
        spec.backend,
        spec.model_name,
        base_url,
        fp,
        role,
        spec.model_dump_json(exclude={"gemini": {"api_key"}, "openai": {"api_key"}}),
        max_workers,
        media.model_dump_json(),
        _prices_key(prices),
        str(ledger.path.resolve()) if ledger is not None else "",
        budget_usd,
        str(upload_registry or ""),
        str(fatal_file or ""),
    )
    with _INSTANCES_LOCK:
        hit = _INSTANCES.get(key)
        if hit is not None:
            return hit
        lim = spec.limits
        limiter = get_limiter(
            (spec.backend, spec.model_name, base_url or "default", fp),
            lim.max_concurrency or max_workers,
            lim.requests_per_minute,
            lim.tokens_per_minute,
        )
        accounting = Accounting(prices=dict(prices or {}), ledger=ledger, budget_usd=budget_usd,
                                fatal_file=fatal_file)
        teacher: BaseTeacher
        if spec.backend == "gemini":
            from vr_assets.providers import gemini

            # a call in flight needs its upload alive: never fewer than the calls this teacher runs at once
            max_live = max(media.max_live_uploads, lim.max_concurrency or max_workers)
            shared = gemini.shared_for(api_key, base_url, spec.gemini.api_version, fp, max_live, upload_registry)
            teacher = gemini.GeminiTeacher(spec, role=role, api_key=api_key, shared=shared, limiter=limiter,
                                           media=media, accounting=accounting)
        else:
            from vr_assets.providers import openai_compat

            shared_o = openai_compat.shared_for(api_key, base_url, fp)
            teacher = openai_compat.OpenAITeacher(spec, role=role, api_key=api_key, shared=shared_o,
                                                  limiter=limiter, media=media, accounting=accounting)
        _INSTANCES[key] = teacher
        return teacher


def reset_registry() -> None:
    """Forget every shared teacher, client and limiter (tests; a fresh start in a long-lived process).

    Uploads and context caches still alive are deleted first, best effort.
    """
    from vr_assets.providers import gemini, limits, openai_compat, outage

    with _INSTANCES_LOCK:
        _INSTANCES.clear()
    with gemini._SHARED_LOCK:
        shared = list(gemini._SHARED.values())
        gemini._SHARED.clear()
    for sh in shared:
        sh.close()
    with openai_compat._SHARED_LOCK:
        openai_compat._SHARED.clear()
    with limits._REGISTRY_LOCK:
        limits._REGISTRY.clear()
    outage.reset_breakers()
