"""A whole-pipeline sandbox: videos, a fake teacher server, a temp Dagster home, a spec."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vr_assets.cli import RunSummary, run_pipeline
from vr_assets.config import Spec, parse_spec
from vr_assets.fakes import FakeGemini, FakeOpenAI, Teacher
from vr_assets.providers import reset_registry

MODEL_ROUTES = ("generateContent", "chat.completions")


@dataclass
class PipelineEnv:
    root: Path
    videos: Path
    results: Path
    backend: str
    fake: FakeGemini | FakeOpenAI
    teacher: Teacher
    base: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def raw_spec(self, **sections: Any) -> dict[str, Any]:
        key = "pipeline-test-key-0123456789"
        if self.backend == "gemini":
            endpoint = {"backend": "gemini", "gemini": {"base_url": self.fake.base_url, "api_key": key,
                                                        "model": "gemini-test"}}
        else:
            endpoint = {"backend": "openai", "openai": {"base_url": self.fake.base_url, "api_key": key,
                                                        "model_name": "test-vl"}}
        fast_retry = {"initial_delay_s": 0.01, "max_delay_s": 0.05}
        raw: dict[str, Any] = {
            "vlm": copy.deepcopy({**endpoint, "retry": fast_retry}),
            "llm": copy.deepcopy({**endpoint, "retry": fast_retry}),
            "data": {"video_root": str(self.videos)},
            "results_dir": str(self.results),
            "workflow": {"max_workers": 4},
            # pass sources through untouched (their sound too) so the teacher's verdicts match the files' bytes
            "media": {"fps": None, "audio": "keep"},
            "license": "test-license",
            "description_extra": "pipeline test",
        }
        _merge(raw, copy.deepcopy(self.base))
        _merge(raw, copy.deepcopy(sections))
        return raw

    def spec(self, **sections: Any) -> Spec:
        return parse_spec(self.raw_spec(**sections), "test", self.root)

    def run(self, spec: Spec | None = None, **kwargs: Any) -> RunSummary:
        kwargs.setdefault("parallel", 1)
        return run_pipeline(spec or self.spec(), progress=self.log.append, **kwargs)

    def add_video(self, src: Path, rel: str) -> Path:
        dst = self.videos / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        return dst

    def model_requests(self) -> list[Any]:
        return [r for r in self.fake.log if r.route in MODEL_ROUTES]

    def calls(self) -> int:
        return len(self.model_requests())


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


@pytest.fixture
def make_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`make_pipeline("gemini"|"openai", teacher=...)` -> PipelineEnv with its own fake and Dagster home."""
    started: list[FakeGemini | FakeOpenAI] = []

    def make(backend: str = "gemini", teacher: Teacher | None = None, **fake_kwargs: Any) -> PipelineEnv:
        teacher = teacher or Teacher()
        cls = FakeGemini if backend == "gemini" else FakeOpenAI
        fake = cls(teacher=teacher, **fake_kwargs).start()
        started.append(fake)
        root = tmp_path / f"env{len(started)}"
        (root / "videos").mkdir(parents=True)
        monkeypatch.setenv("DAGSTER_HOME", str(root / "dagster_home"))
        monkeypatch.setenv("VR_HOST_SLOTS_DIR", str(root / "slots"))
        return PipelineEnv(root=root, videos=root / "videos", results=root / "results", backend=backend,
                           fake=fake, teacher=teacher)

    reset_registry()
    yield make
    reset_registry()
    for f in started:
        f.stop()
