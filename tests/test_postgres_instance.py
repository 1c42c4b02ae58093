"""The instance on a real Postgres server: `vr-annotate run`, its resume and the dataset sensor, unchanged."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, build_sensor_context

from tests.timing import max_overlap
from vr_assets.execution.instance import MANAGED_MARK, ensure_dagster_home, postgres_url_of, untuned_reasons
from vr_assets.graph import PER_VIDEO_ASSETS, build_definitions
from vr_assets.shared_state import PgCoordinator, coordinator

MCQ_ONLY = {"workflow": {"qa_types": ["mcq"]}}
REPO = Path(__file__).resolve().parent.parent


def test_run_resume_and_the_sensor_on_a_postgres_instance(
    make_pipeline: Any, synthetic_videos: dict[str, Path], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VR_DAGSTER_POSTGRES_URL", pg_url)
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "cam1/a.mp4")
    env.add_video(synthetic_videos["clip8"], "cam2/b.mp4")
    spec = env.spec(**MCQ_ONLY)
    first = env.run(spec, build_dataset=False, parallel=None)
    assert first.failed == {} and sorted(first.succeeded) == ["cam1__a.mp4", "cam2__b.mp4"], env.log
    home = ensure_dagster_home(spec)
    cfg = yaml.safe_load((home / "dagster.yaml").read_text())
    for kind in ("run", "event_log", "schedule"):
        assert cfg[f"{kind}_storage"]["config"]["postgres_url"].startswith("postgresql+psycopg2://"), kind
    assert untuned_reasons(home) == []
    assert not (home / "history").exists()  # no SQLite beside it: the runs are in Postgres
    instance = DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "PooledPostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PooledPostgresEventLogStorage"
    for asset in PER_VIDEO_ASSETS:
        assert instance.get_materialized_partitions(AssetKey(asset)) == {"cam1__a.mp4", "cam2__b.mp4"}, asset
    paid = env.calls()
    assert paid > 0

    # resume: everything is materialized, so the second run makes no model call at all
    again = env.run(spec, build_dataset=False, parallel=None)
    assert again.failed == {} and again.skipped_up_to_date == 2 and env.calls() == paid

    # the dataset sensor's tick reads the Postgres instance like the SQLite one
    sensor = build_definitions(spec).resolve_sensor_def("dataset_refresh")
    tick = sensor.evaluate_tick(build_sensor_context(instance=instance))
    assert len(tick.run_requests) == 1 and tick.cursor
    again_tick = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor))
    assert again_tick.run_requests == [] and "no video finished" in (again_tick.skip_message or "")


def test_the_home_stays_on_postgres_and_the_coordinator_follows_the_instance(
    make_pipeline: Any, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_pipeline("gemini")
    spec = env.spec()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "sqlite"))
    ensure_dagster_home(spec)
    assert coordinator().kind == "files"

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "pg"))
    monkeypatch.setenv("VR_DAGSTER_POSTGRES_URL", pg_url)
    home = ensure_dagster_home(spec)
    assert (home / "dagster.yaml").read_text().startswith(MANAGED_MARK)
    monkeypatch.delenv("VR_DAGSTER_POSTGRES_URL")
    ensure_dagster_home(env.spec(workflow={"max_workers": 3}))  # rewritten for the spec, still on Postgres
    assert postgres_url_of(home) == pg_url.replace("postgresql://", "postgresql+psycopg2://")
    coord = coordinator()  # found from the home's dagster.yaml alone, as a run process finds it
    assert isinstance(coord, PgCoordinator) and coord.url == pg_url



def test_two_hosts_on_one_postgres_annotate_every_video_once_and_share_the_limits(
    make_pipeline: Any, synthetic_videos: dict[str, Path], pg_url: str, tmp_path: Path
) -> None:
    """Two `vr-annotate run` started together: own Dagster home, slot folder and scratch each; one
    database, one results folder, the same videos. Each video runs once, each call is paid once, and
    the two share each role's four slots."""
    env = make_pipeline("gemini", latency_media_s=0.2, latency_text_s=0.1)
    for name, rel in (("short_mp4", "cam1/a.mp4"), ("clip8", "cam2/b.mp4"), ("mkv_upper", "cam3/c.mkv")):
        env.add_video(synthetic_videos[name], rel)
    raw = env.raw_spec(workflow={"qa_types": ["mcq"], "max_workers": 2})
    for role in ("vlm", "llm"):
        raw[role]["gemini"]["model"] = f"gemini-test-{role}"
        raw[role]["limits"] = {"max_concurrency": 4}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    procs, scratches = [], []
    for host in ("hostA", "hostB"):
        # short: the forkserver's unix socket lives in it
        scratch = Path(tempfile.mkdtemp(prefix=f"vr-{host}-"))
        scratches.append(scratch)
        child = {k: v for k, v in os.environ.items() if k not in ("VR_CONFIG",)}
        child.update(PYTHONPATH=str(REPO), DAGSTER_HOME=str(tmp_path / host / "home"), TMPDIR=str(scratch),
                     VR_HOST_SLOTS_DIR=str(tmp_path / host / "slots"), VR_DAGSTER_POSTGRES_URL=pg_url)
        procs.append(subprocess.Popen([sys.executable, "-m", "vr_assets.cli", "run", "--config", str(spec_path)],
                                      env=child, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for d in scratches:
            shutil.rmtree(d, ignore_errors=True)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]

    from dagster import DagsterRunStatus, RunsFilter

    from vr_assets.graph import ANNOTATE_JOB

    with DagsterInstance.from_ref(_pg_ref(tmp_path / "hostA" / "home")) as instance:
        runs = instance.get_runs(RunsFilter(job_name=ANNOTATE_JOB))
        assert sorted(r.tags["dagster/partition"] for r in runs) == ["cam1__a.mp4", "cam2__b.mp4", "cam3__c.mkv"]
        assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}
        for asset in PER_VIDEO_ASSETS:
            assert len(instance.get_materialized_partitions(AssetKey(asset))) == 3, asset
    model_calls = [r for r in env.fake.log if r.route == "generateContent"]
    bodies = Counter(json.dumps(r.json, sort_keys=True) for r in model_calls)
    assert bodies and max(bodies.values()) == 1, "a model call was paid for twice"
    for role in ("vlm", "llm"):
        spans = [(r.started_at, r.started_at + r.duration_s) for r in model_calls if r.model == f"gemini-test-{role}"]
        assert spans and max_overlap(spans) <= 4, (role, max_overlap(spans))
    assert (env.results / "step_4_output").exists()


def _pg_ref(home: Path) -> Any:
    from dagster._core.instance.ref import InstanceRef

    return InstanceRef.from_dir(str(home))


RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId status jobName } } } }"


def test_vr_annotate_ui_on_postgres_shows_the_runs_and_its_sensor_builds_the_dataset(
    make_pipeline: Any, synthetic_videos: dict[str, Path], pg_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dagster import DagsterRunStatus, RunsFilter

    from tests.fixtures_ui import _free_port, _stop, _wait_until_ready

    monkeypatch.setenv("VR_DAGSTER_POSTGRES_URL", pg_url)
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "cam/a.mp4")
    assert not env.run(env.spec(**MCQ_ONLY), build_dataset=False).failed
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(env.raw_spec(**MCQ_ONLY)))
    port = _free_port()
    log_path = tmp_path / "ui.log"
    child = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vr_assets.cli", "ui", "--config", str(spec_path),
                                 "--port", str(port)], cwd=REPO, env=child, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_ready(proc, base_url, log_path)
        req = urllib.request.Request(base_url + "/graphql", data=json.dumps({"query": RUNS_QUERY}).encode(),
                                     headers={"Content-Type": "application/json"})
        shown = json.loads(urllib.request.urlopen(req, timeout=30).read())["data"]["runsOrError"]["results"]
        assert ("annotate_videos", "SUCCESS") in [(r["jobName"], r["status"]) for r in shown], shown
        # the UI's daemon ticks the dataset sensor on the Postgres instance: the dataset gets built
        instance = DagsterInstance.get()
        deadline = time.monotonic() + 180
        built = []
        while time.monotonic() < deadline and not built:
            built = [r for r in instance.get_runs(RunsFilter(job_name="build_dataset"))
                     if r.status == DagsterRunStatus.SUCCESS]
            time.sleep(1)
        assert built, log_path.read_text()[-3000:]
    finally:
        # ^C, as a user stops it: vr-annotate ui then stops `dagster dev` (its own process group), which
        # ending vr-annotate's group alone would leave running
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        _stop(proc)
    assert (env.results / "step_4_output").exists()


def _report_modules(path: str) -> None:
    path_obj = Path(path)
    path_obj.write_text(json.dumps([m for m in ("dagster_postgres", "psycopg2") if m in sys.modules]))


def test_the_shared_launchers_runs_start_with_the_postgres_storage_imported(tmp_path: Path) -> None:
    """A run opens its Postgres storage first thing: the forkserver has imported it, not each run (~1-2 s)."""
    from vr_assets.execution.shared_launcher import SharedWarmRunLauncher

    launcher = SharedWarmRunLauncher()
    proc = launcher._context().Process(target=_report_modules, args=(str(tmp_path / "mods.json"),))  # noqa: SLF001
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    assert json.loads((tmp_path / "mods.json").read_text()) == ["dagster_postgres", "psycopg2"]
