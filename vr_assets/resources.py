"""Dagster resources: the two teacher models and ffmpeg.

Secrets are `EnvVar`s so the UI shows the variable's name, never its value.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource, EnvVar

from vr_assets.call_cache import CachedModel, cache_dir_for, settings_fingerprint, upload_registry_for
from vr_assets.config import (
    GeminiSettings,
    ModelSpec,
    OpenAISettings,
    RateLimits,
    RetrySettings,
    Spec,
    private_key_env,
)
from vr_assets.media import MediaTool
from vr_assets.media_cache import media_settings
from vr_assets.providers import UsageLedger, get_model, provider_fatal_file
from vr_assets.providers.batch import batch_book_for

KEY_ENV = {"gemini": "GOOGLE_API_KEY", "openai": "OPENAI_API_KEY"}


class TeacherResource(ConfigurableResource):
    """A teacher endpoint: the VLM (steps 0-1b, 1c clip) or the LLM (1c time, 2, 3)."""

    role: str
    backend: str = "gemini"
    model: str
    api_key: str | None = None
    base_url: str | None = None
    api_version: str = "v1beta"
    temperature: float = 0.3
    max_output_tokens: int = 8192
    timeout: float = 120.0
    media_resolution: str | None = None
    max_concurrency: int = 4
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    retry_max_attempts: int = 6
    retry_initial_delay_s: float = 1.0
    retry_max_delay_s: float = 60.0
    bad_output_attempts: int = 2
    retry_outage_deadline_s: float = 600.0
    retry_breaker_failures: int = 5
    retry_probe_interval_s: float = 5.0
    retry_fatal_hold_s: float = 600.0
    context_cache: str = "auto"
    context_cache_ttl_s: float = 600.0
    flex_timeout_s: float = 900.0

    @classmethod
    def from_spec(cls, role: str, ms: ModelSpec, spec: Spec) -> TeacherResource:
        key_env = _key_env(role, ms)
        common = {
            "role": role,
            "backend": ms.backend,
            "api_key": EnvVar(key_env) if os.environ.get(key_env) else None,
            "max_concurrency": ms.limits.max_concurrency or spec.workflow.max_workers,
            "requests_per_minute": ms.limits.requests_per_minute,
            "tokens_per_minute": ms.limits.tokens_per_minute,
            "retry_max_attempts": ms.retry.max_attempts,
            "retry_initial_delay_s": ms.retry.initial_delay_s,
            "retry_max_delay_s": ms.retry.max_delay_s,
            "bad_output_attempts": ms.retry.bad_output_attempts,
            "retry_outage_deadline_s": ms.retry.outage_deadline_s,
            "retry_breaker_failures": ms.retry.breaker_failures,
            "retry_probe_interval_s": ms.retry.probe_interval_s,
            "retry_fatal_hold_s": ms.retry.fatal_hold_s,
            "context_cache": ms.context_cache,
            "context_cache_ttl_s": ms.context_cache_ttl_s,
            "flex_timeout_s": ms.flex_timeout_s,
        }
        if ms.backend == "gemini":
            g = ms.gemini
            return cls(
                model=g.model, base_url=g.base_url, api_version=g.api_version, temperature=g.temperature,
                max_output_tokens=g.max_output_tokens, timeout=g.timeout,
                media_resolution=g.media_resolution if role == "vlm" else None, **common,
            )
        o = ms.openai
        return cls(
            model=o.model_name, base_url=o.base_url or os.environ.get("OPENAI_BASE_URL"), temperature=o.temperature,
            max_output_tokens=o.max_tokens, timeout=o.timeout, **common,
        )

    def model_spec(self) -> ModelSpec:
        limits = RateLimits(
            max_concurrency=self.max_concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
        )
        retry = RetrySettings(
            max_attempts=self.retry_max_attempts, initial_delay_s=self.retry_initial_delay_s,
            max_delay_s=self.retry_max_delay_s, bad_output_attempts=self.bad_output_attempts,
            outage_deadline_s=self.retry_outage_deadline_s, breaker_failures=self.retry_breaker_failures,
            probe_interval_s=self.retry_probe_interval_s, fatal_hold_s=self.retry_fatal_hold_s,
        )
        key = self.api_key or ""
        if self.backend == "gemini":
            gemini = GeminiSettings(
                api_key=key, model=self.model, media_resolution=self.media_resolution,  # type: ignore[arg-type]
                temperature=self.temperature, max_output_tokens=self.max_output_tokens, timeout=self.timeout,
                base_url=self.base_url, api_version=self.api_version,
            )
            return ModelSpec(backend="gemini", gemini=gemini, limits=limits, retry=retry,
                             context_cache=self.context_cache,  # type: ignore[arg-type]
                             context_cache_ttl_s=self.context_cache_ttl_s, flex_timeout_s=self.flex_timeout_s)
        openai = OpenAISettings(
            api_key=key, base_url=self.base_url, model_name=self.model, temperature=self.temperature,
            max_tokens=self.max_output_tokens, timeout=self.timeout,
        )
        return ModelSpec(backend="openai", openai=openai, limits=limits, retry=retry,
                         flex_timeout_s=self.flex_timeout_s)

    def settings_fingerprint(self) -> str:
        return settings_fingerprint(
            self.backend, self.model, self.temperature, self.max_output_tokens, self.media_resolution
        )

    def client(self, spec: Spec) -> CachedModel:
        model = get_model(
            self.model_spec(),
            role=self.role,
            max_workers=self.max_concurrency,
            prices=spec.prices,
            media=spec.media,
            ledger=UsageLedger(Path(spec.results_dir) / "usage"),
            budget_usd=spec.budget_usd,
            upload_registry=upload_registry_for(spec.results_dir),
            fatal_file=provider_fatal_file(spec.results_dir),
        )
        return CachedModel(model, cache_dir_for(spec.results_dir), self.settings_fingerprint(),
                           tier_of=spec.workflow.tier_of, batch_book=batch_book_for(spec.results_dir))


def _key_env(role: str, ms: ModelSpec) -> str:
    """A literal key in the spec is moved into a private env var so it never shows in the UI."""
    literal = ms.gemini.api_key if ms.backend == "gemini" else ms.openai.api_key
    name = private_key_env(role)
    if literal:
        os.environ[name] = literal
        return name
    if os.environ.get(name):  # moved there by the process that started this one (`execution.services`)
        return name
    return KEY_ENV[ms.backend]


class MediaResource(ConfigurableResource):
    """ffmpeg/ffprobe through ffmpeg-python; sizes chosen for what models actually look at."""

    ffmpeg: str = "auto"
    ffprobe: str = "auto"
    max_side: int | None = 640
    fps: float | None = 2.0
    threads: int = 1
    skip_nonref: bool = True
    audio: bool = False
    audio_kbps: int = 24

    @classmethod
    def from_spec(cls, spec: Spec) -> MediaResource:
        return cls(**media_settings(spec))

    def tool(self) -> MediaTool:
        return MediaTool(**self.model_dump())
