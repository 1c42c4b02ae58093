"""The CLI's worker processes: what they hold ready before their first video."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance

from vr_assets import runner
from vr_assets.graph import PER_VIDEO_ASSETS
from vr_assets.execution.instance import ensure_dagster_home
from vr_assets.partitions import videos_partitions
from vr_assets.sensors import sync_partitions

# Third-party packages a worker must find already imported by the forkserver's preload: each
# worker importing them itself cost ~0.3 CPU-s, sixteen times over, right when the CPU is busiest.
PRELOADED = {"dagster", "dagster_shared", "alembic", "sqlalchemy", "google", "openai", "httpcore2", "httpx2", "h11",
             "anyio", "truststore", "upath", "dotenv", "pydantic", "yaml"}

WORKER = """
import json, os, sys
import vr_assets.execution.preload
from vr_assets import runner
before = set(sys.modules)
runner._pool_worker_init(sys.argv[1], dict(os.environ))
import gc
frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
key, ok, why = runner._worker_run(sys.argv[2], json.loads(sys.argv[3]))
new = sorted(set(sys.modules) - before)
print(json.dumps({"ok": ok, "why": why, "new": new, "frozen": frozen, "tracked": tracked}))
"""


def test_a_worker_imports_nothing_third_party_for_its_first_video(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["clip8"], "cam/a.mp4")
    spec = env.spec()
    ensure_dagster_home(spec)
    new, _ = sync_partitions(spec, set())
    DagsterInstance.get().add_dynamic_partitions(videos_partitions.name, new)
    (key,) = new
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, spec.model_dump_json(), key, json.dumps(list(PER_VIDEO_ASSETS))],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ok"], got["why"]
    late = [m for m in got["new"] if m.split(".")[0] in PRELOADED]
    assert late == [], f"imported by the worker, not the preload: {late}"
    # the preloaded heap and the worker's instance and job are out of the collector's sight
    assert got["frozen"] > 10 * got["tracked"], got
    assert env.calls() > 0  # the video really ran: its model calls reached the fake


def test_the_forkserver_preloads_only_the_sdks_of_the_specs_backends(make_pipeline: Any) -> None:
    """google-genai and openai each cost most of a CPU-second to import, in the start-up's critical path."""
    probe = "import json, sys, vr_assets.execution.preload; print(json.dumps([m for m in SDKS if m in sys.modules]))"
    probe = probe.replace("SDKS", repr(("google.genai", "openai")))
    cases = (("gemini", ["google.genai"]), ("openai", ["openai"]), (None, ["google.genai", "openai"]))
    for backends, expected in cases:
        env = {k: v for k, v in os.environ.items() if k != runner.PRELOAD_BACKENDS}
        if backends is not None:
            env[runner.PRELOAD_BACKENDS] = backends
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == expected, backends


def test_prestart_names_the_backends_for_the_forkserver_only(
    make_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multiprocessing import forkserver

    seen: list[str | None] = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: seen.append(os.environ.get(runner.PRELOAD_BACKENDS)))
    monkeypatch.delenv(runner.PRELOAD_BACKENDS, raising=False)
    env = make_pipeline("gemini")
    runner.prestart_workers(env.spec(llm={"backend": "openai"}))
    assert seen == ["gemini,openai"]
    runner.prestart_workers(env.spec())
    assert seen[-1] == "gemini"
    assert runner.PRELOAD_BACKENDS not in os.environ  # the CLI's own environment (and its workers') is untouched


CLI_RUN = """
import json, sys
from vr_assets.cli import run_pipeline
from vr_assets.config import Spec
summary = run_pipeline(Spec.model_validate_json(sys.argv[1]), parallel=2, progress=lambda _m: None)
print(json.dumps({"ok": summary.succeeded, "failed": summary.failed, "items": summary.dataset_items,
                  "dagster": sorted(m for m in sys.modules if m.split(".")[0] == "dagster")[:5]}))
"""


def test_the_cli_process_never_loads_dagster_with_several_workers(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    """The plan, the videos and the dataset all run in the workers, whose forkserver has Dagster loaded once."""
    env = make_pipeline("gemini")
    for i in range(2):
        env.add_video(synthetic_videos["clip8"], f"cam{i}/a.mp4")
    spec = env.spec(workflow={"qa_types": ["mcq"]})
    proc = subprocess.run(
        [sys.executable, "-c", CLI_RUN, spec.model_dump_json()], capture_output=True, text=True,
        env=dict(os.environ), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["failed"] == {} and sorted(got["ok"]) == ["cam0__a.mp4", "cam1__a.mp4"]
    assert got["items"] and got["items"] > 0  # the dataset was written (in a worker)
    assert got["dagster"] == []
    # and the work reached Dagster: both partitions are known and materialized
    instance = DagsterInstance.get()
    assert sorted(instance.get_dynamic_partitions(videos_partitions.name)) == ["cam0__a.mp4", "cam1__a.mp4"]
    assert instance.get_materialized_partitions(AssetKey("task_exports")) == {"cam0__a.mp4", "cam1__a.mp4"}


OPEN = """
import sys, time
from dagster import AssetKey, DagsterInstance
from vr_assets import runner
print("ready", flush=True)
runner._open_instance(DagsterInstance)
print(time.time())
"""


def test_workers_open_a_new_home_one_at_a_time(
    make_pipeline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first worker to open a new home creates its databases; another must not do it at the same time."""
    spec = make_pipeline("gemini").spec()
    home = tmp_path / "new_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    ensure_dagster_home(spec)  # what the CLI does: dagster.yaml only, no databases yet
    assert not (home / "history" / "runs.db").exists()
    with open(home / ".vr-open.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # as if another worker were creating the databases
        proc = subprocess.Popen([sys.executable, "-c", OPEN], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"  # Dagster imported
        time.sleep(2.0)  # opening an existing home takes ~0.1 s, a new one ~1.5 s
        assert proc.poll() is None  # still waiting for the lock
        assert not (home / "history" / "runs.db").exists()
        released = time.time()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert float(out.strip().splitlines()[-1]) >= released
    assert (home / "history" / "runs.db").exists()  # it then made the home's databases itself
