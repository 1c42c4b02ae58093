"""One road for every run: the tuned instance, the queue, the warm run launcher, monitoring and retries."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter, build_sensor_context

from tests.timing import max_overlap, wait_for
from vr_assets.execution.daemon import OWNER_ENV
from vr_assets.execution.dataset_gate import (
    BUILDING,
    GATE_TAG,
    HOLDER_TAG,
    GateAbandoned,
    _holder_gone,
    cancel_abandoned,
    cancel_held,
    closed_gate_tags,
    gate_is_open,
    open_gate,
    wait_for_gate,
)
from vr_assets.execution.instance import MANAGED_MARK, ensure_dagster_home, untuned_reasons
from vr_assets.execution.launcher import PID_TAG, WarmRunLauncher
from vr_assets.execution.processes import is_gone, proc_start
from vr_assets.execution.services import run_daemon, services_env, write_effective_spec, write_workspace
from vr_assets.execution.submit import RunSubmitter, _remote_origin, failure_text
from vr_assets.graph import ANNOTATE_JOB, PER_VIDEO_ASSETS, build_definitions
from vr_assets.partitions import videos_partitions
from vr_assets.sensors import sync_partitions

MCQ_ONLY = {"workflow": {"qa_types": ["mcq"]}}
# where Dagster's EventLogConsumerDaemon (run retries) keeps its run-failure cursor
RETRY_CURSOR = f"EVENT_LOG_CONSUMER_CURSOR-{DagsterEventType.RUN_FAILURE.value}"



def test_the_home_is_tuned_from_the_spec_and_a_users_file_is_left_alone(
    make_pipeline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_pipeline("gemini")
    home = tmp_path / "tuned"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    ensure_dagster_home(env.spec(workflow={"max_workers": 3}))
    assert untuned_reasons(home) == []
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_launcher, WarmRunLauncher)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 3
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
    ensure_dagster_home(env.spec(workflow={"max_workers": 5}))  # the spec changed: our file follows it
    assert yaml.safe_load((home / "dagster.yaml").read_text())["concurrency"]["runs"]["max_concurrent_runs"] == 5

    own = tmp_path / "own"
    own.mkdir()
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(own))
    ensure_dagster_home(env.spec())
    assert (own / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    why = untuned_reasons(own)
    assert any("run_launcher" in w for w in why) and any("no run limit" in w for w in why)
    assert not (own / "dagster.yaml").read_text().startswith(MANAGED_MARK)


def test_every_video_run_is_queued_forked_warm_in_process_and_bounded(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    """`vr-annotate run` executes nothing itself: the daemon launches its runs, at most max_workers at once."""
    env = make_pipeline("gemini", latency_media_s=0.3, latency_text_s=0.1)
    for i in range(5):
        env.add_video(synthetic_videos["short_mp4"], f"cam{i}/clip.mp4")
    summary = env.run(env.spec(workflow={"qa_types": ["mcq"], "max_workers": 2}), parallel=None)
    assert summary.failed == {} and len(summary.succeeded) == 5
    assert summary.dataset_items and summary.dataset_items > 0

    instance = DagsterInstance.get()
    runs = instance.get_run_records(RunsFilter(job_name=ANNOTATE_JOB))
    assert len(runs) == 5
    spans = []
    for rec in runs:
        run = rec.dagster_run
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.remote_job_origin is not None and run.remote_job_origin.location_name == "vr_assets"
        pid = int(run.tags[PID_TAG])
        messages = [e.message for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT)]
        assert any(f"pid: {pid}, forked warm" in m for m in messages), messages
        # the steps ran in the run's own process (in-process executor), not a process per step
        assert any(m.startswith(f"Executing steps in process (pid: {pid})") for m in messages), messages
        spans.append((rec.start_time, rec.end_time))
    assert max_overlap(spans) == 2  # never more than workflow.max_workers, and the queue used both
    # the dataset run was queued before the last video ended, its gate closed; it read nothing before they all had
    (dataset_run,) = instance.get_run_records(RunsFilter(job_name="build_dataset"))
    assert dataset_run.dagster_run.tags[GATE_TAG] == "closed" and gate_is_open(instance, dataset_run.dagster_run.run_id)
    assert dataset_run.create_timestamp.timestamp() < max(e for _, e in spans)
    (building,) = [e for e in instance.all_logs(dataset_run.dagster_run.run_id) if e.user_message.startswith(BUILDING)]
    assert building.timestamp >= max(e for _, e in spans)
    (mat,) = instance.fetch_materializations(AssetKey("dataset"), limit=1).records
    assert mat.asset_materialization is not None
    assert mat.asset_materialization.metadata["videos_exported"].value == 5


RUN_IN_WORKER = """
import gc, json, sys
import vr_assets.execution.preload
from dagster import DagsterInstance
from dagster._serdes import deserialize_value
from vr_assets.execution.run_host import execute_run
before = set(sys.modules)
frozen = gc.get_freeze_count()
with DagsterInstance.from_ref(deserialize_value(sys.argv[2])) as instance:
    execute_run(sys.argv[1], instance, "run by hand")
print(json.dumps({"new": sorted(set(sys.modules) - before), "frozen": frozen, "tracked": len(gc.get_objects())}))
"""

# Third-party packages a run must find already imported by the forkserver's preload: each run
# importing them itself cost ~0.3 CPU-s, sixteen times over, right when the CPU is busiest.
PRELOADED = {"dagster", "dagster_shared", "alembic", "sqlalchemy", "google", "openai", "httpcore2", "httpx2", "h11",
             "anyio", "truststore", "upath", "dotenv", "pydantic", "yaml"}


def test_a_run_process_imports_nothing_third_party_for_its_video(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["clip8"], "cam/a.mp4")
    spec = env.spec(**MCQ_ONLY)
    home = ensure_dagster_home(spec)
    child_env = services_env(home, write_effective_spec(spec, home), spec)
    new, _ = sync_partitions(spec, set())
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(videos_partitions.name, new)
    os.environ["VR_CONFIG"] = child_env["VR_CONFIG"]  # this process plans from the same location
    try:
        run_id = RunSubmitter(instance, ANNOTATE_JOB).create(new[0], PER_VIDEO_ASSETS)
    finally:
        os.environ.pop("VR_CONFIG")
    from dagster._serdes import serialize_value

    proc = subprocess.run(
        [sys.executable, "-c", RUN_IN_WORKER, run_id, serialize_value(instance.get_ref())],
        capture_output=True, text=True, env=child_env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.SUCCESS
    late = [m for m in got["new"] if m.split(".")[0] in PRELOADED]
    assert late == [], f"imported by the run, not the preload: {late}"
    assert got["frozen"] > 5 * got["tracked"], got  # the preloaded heap is out of the collector's sight
    assert env.calls() > 0  # the video really ran: its model calls reached the fake


def test_the_preload_imports_only_the_sdks_of_the_specs_backends(make_pipeline: Any, tmp_path: Path) -> None:
    """google-genai and openai each cost most of a CPU-second to import, in every run's start."""
    env = make_pipeline("gemini")
    probe = "import json, sys, vr_assets.execution.preload; print(json.dumps([m for m in SDKS if m in sys.modules]))"
    probe = probe.replace("SDKS", repr(("google.genai", "openai")))
    cases = (("gemini", "gemini", ["google.genai"]), ("openai", "openai", ["openai"]),
             ("gemini", "openai", ["google.genai", "openai"]))
    for vlm, llm, expected in cases:
        spec_path = tmp_path / f"{vlm}-{llm}.yaml"
        raw = env.raw_spec(vlm={"backend": vlm}, llm={"backend": llm})
        spec_path.write_text(yaml.safe_dump(raw))
        child = {**os.environ, "VR_CONFIG": str(spec_path)}
        out = subprocess.run([sys.executable, "-c", probe], env=child, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1]) == expected, (vlm, llm)


def test_the_dataset_refreshes_once_a_batch_has_finished(make_pipeline: Any, synthetic_videos: dict[str, Path]) -> None:
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "cam/a.mp4")
    spec = env.spec(**MCQ_ONLY)
    assert not env.run(spec, build_dataset=False).failed
    sensor = build_definitions(spec).resolve_sensor_def("dataset_refresh")
    assert sensor.job_name == "build_dataset"
    instance = DagsterInstance.get()
    first = sensor.evaluate_tick(build_sensor_context(instance=instance))
    assert len(first.run_requests) == 1 and first.cursor
    assert first.run_requests[0].run_key == f"dataset-after:{first.cursor}"
    again = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor))
    assert again.run_requests == [] and "no video finished" in (again.skip_message or "")
    # a video run still queued: the dataset waits for the whole batch
    os.environ["VR_CONFIG"] = str(write_effective_spec(spec, Path(os.environ["DAGSTER_HOME"])))
    try:
        RunSubmitter(instance, ANNOTATE_JOB).submit("cam__a.mp4", ["task_exports"])
    finally:
        os.environ.pop("VR_CONFIG")
    waiting = sensor.evaluate_tick(build_sensor_context(instance=instance))
    assert waiting.run_requests == [] and "queued or in progress" in (waiting.skip_message or "")



def test_a_run_killed_mid_video_is_marked_failed_and_retried_without_paying_twice(
    make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path
) -> None:
    """kill -9 of a run's process on the UI road: run monitoring fails it, run retries start it again."""
    env = make_pipeline("gemini", latency_media_s=1.5, latency_text_s=0.2)
    env.add_video(synthetic_videos["clip16"], "cam/a.mp4")
    spec = env.spec(workflow={"qa_types": ["mcq", "bcq"], "max_workers": 2})
    home = ensure_dagster_home(spec)
    yaml_text = (home / "dagster.yaml").read_text().replace("poll_interval_seconds: 5", "poll_interval_seconds: 1")
    (home / "dagster.yaml").write_text(yaml_text)
    child_env = services_env(home, write_effective_spec(spec, home), spec)
    workspace = write_workspace(home)
    new, _ = sync_partitions(spec, set())
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(videos_partitions.name, new)
    # the daemon of `vr-annotate ui` (`dagster dev`): with the code location, so it can retry runs
    with (tmp_path / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        # Dagster's retry daemon starts its cursor at the newest event of its first pass and ignores older
        # ones: a run that fails before that pass (a daemon starved of CPU for its first seconds) is never
        # retried. A user's daemon is up long before a run dies; here the run starts at once, so it waits.
        wait_for("the run-retry daemon's first pass",
                 lambda: instance.daemon_cursor_storage.get_cursor_values({RETRY_CURSOR}).get(RETRY_CURSOR), 60)
        os.environ["VR_CONFIG"] = child_env["VR_CONFIG"]
        try:
            run_id = RunSubmitter(instance, ANNOTATE_JOB).submit(new[0], PER_VIDEO_ASSETS)
        finally:
            os.environ.pop("VR_CONFIG")
        # mid-video: step 1b's chunk captions are going out
        wait_for("the run's chunk captions", lambda: env.calls() >= 5, 120)
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == DagsterRunStatus.STARTED
        os.kill(int(run.tags[PID_TAG]), signal.SIGKILL)
        killed_at = time.monotonic()
        failed = wait_for("run monitoring to fail the run", lambda: (
            (r := instance.get_run_by_id(run_id)) is not None and r.status == DagsterRunStatus.FAILURE), 60)
        assert failed and time.monotonic() - killed_at < 60
        retries = RunsFilter(tags={"dagster/parent_run_id": run_id})
        retry = wait_for("the retry run", lambda: instance.get_runs(retries), 60)
        done = wait_for("the retry to finish", lambda: (
            (r := instance.get_run_by_id(retry[0].run_id)) is not None and r.is_finished and r), 180)
        assert done.status == DagsterRunStatus.SUCCESS, (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    assert instance.get_materialized_partitions(AssetKey("task_exports")) == {new[0]}
    bodies = Counter(json.dumps(r.json, sort_keys=True) for r in env.model_requests())
    paid_twice = sum(n - 1 for n in bodies.values() if n > 1)
    # only the calls in flight at the kill (at most the two roles' concurrency) were asked again
    assert paid_twice <= 4, paid_twice


def test_a_second_cli_run_beside_a_serving_daemon_submits_to_it(make_pipeline: Any) -> None:
    """The home's daemon lock: one vr-annotate daemon per home; a second run uses the first one's queue."""
    env = make_pipeline("gemini")
    spec = env.spec()
    home = ensure_dagster_home(spec)
    with open(os.devnull, "wb") as log, run_daemon(home, dict(os.environ), log) as first:
        assert first.proc is not None and first.proc.poll() is None
        with run_daemon(home, dict(os.environ), log) as second:
            assert second.proc is None and not second.ensure()


def test_a_daemon_whose_vr_annotate_was_killed_stops_and_a_run_waiting_on_it_starts_its_own(
    make_pipeline: Any, tmp_path: Path
) -> None:
    """kill -9 of the `vr-annotate run` that started the home's daemon: the daemon stops itself (it used to live
    on, with its forkserver, until someone killed it), and a second vr-annotate that submitted to it starts one."""
    env = make_pipeline("gemini")
    home = ensure_dagster_home(env.spec())
    log_path = tmp_path / "daemon.log"
    holder = (  # `vr-annotate run`'s part: the home's daemon for as long as it lives
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from vr_assets.execution.processes import proc_start\n"
        "from vr_assets.execution.services import run_daemon\n"
        "with open(sys.argv[2], 'ab') as log, run_daemon(Path(sys.argv[1]), dict(os.environ), log) as keeper:\n"
        "    print(f'{keeper.proc.pid}:{proc_start(keeper.proc.pid)}', flush=True)\n"
        "    time.sleep(600)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", holder, str(home), str(log_path)],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert first.stdout is not None
        its_daemon = first.stdout.readline().strip()
        assert its_daemon and not is_gone(its_daemon)
        started: list[float] = []
        with log_path.open("ab") as log, run_daemon(home, dict(os.environ), log) as second:
            assert second.proc is None  # the first one's daemon serves the home
            with second.taking_over(lambda: started.append(time.monotonic())):
                time.sleep(2.5)  # a few of the keeper's looks: nothing to take over while the first one lives
                assert not started and not is_gone(its_daemon)
                first.kill()
                first.wait()
                killed_at = time.monotonic()
                wait_for("the killed vr-annotate's daemon to stop itself", lambda: is_gone(its_daemon), 30)
                wait_for("the second vr-annotate to start a daemon", lambda: started, 30)
            assert started[0] - killed_at < 30
            assert second.proc is not None and second.proc.poll() is None
            ours = f"{second.proc.pid}:{proc_start(second.proc.pid)}"
        assert is_gone(ours)  # stopped with the block
    finally:
        if first.poll() is None:
            first.kill()
    text = log_path.read_text(errors="replace")
    assert text.count("is gone: stopping") == 1, text[-3000:]


def test_dagster_dev_by_hand_on_an_untuned_home_says_what_is_missing_in_one_line(
    make_pipeline: Any, tmp_path: Path
) -> None:
    env = make_pipeline("gemini")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(env.raw_spec()))
    plain = tmp_path / "plain_home"
    plain.mkdir()
    (plain / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    load = [sys.executable, "-c", "import vr_assets.definitions"]
    child = {**os.environ, "VR_CONFIG": str(spec_path), "DAGSTER_HOME": str(plain)}
    out = subprocess.run(load, env=child, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "not tuned" in line]
    assert len(lines) == 1 and "vr-annotate ui --config" in lines[0] and "run_launcher" in lines[0], out.stderr
    ensure_dagster_home(env.spec())  # the tuned home of make_pipeline: no such line
    child["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"]
    out = subprocess.run(load, env=child, capture_output=True, text=True, timeout=120)
    assert "not tuned" not in out.stderr


def _start_cli(
    env: Any, interrupt_grace_s: float = 30, max_workers: int = 1
) -> tuple[list[str], subprocess.Popen[str]]:
    """`vr-annotate run` in a process of its own (to be interrupted), `max_workers` videos at a time, no prefetch."""
    raw = env.raw_spec(workflow={"qa_types": ["mcq"], "max_workers": max_workers,
                                 "interrupt_grace_s": interrupt_grace_s}, media={"prefetch": False})
    spec_path = env.root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "vr_assets.cli", "run", "--config", str(spec_path)]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return cmd, proc


DATASET_RUNS = RunsFilter(job_name="build_dataset")


def _dataset_run_created() -> bool:
    """A dataset run exists in the home's instance (which the CLI under test may not have created yet); created,
    it may not be queued yet."""
    if not (Path(os.environ["DAGSTER_HOME"]) / "history").exists():
        return False
    with DagsterInstance.get() as inst:
        return bool(inst.get_runs(DATASET_RUNS))


def test_an_interrupted_run_cancels_the_queue_stops_in_flight_and_resumes_without_paying_twice(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini", latency_media_s=1.0, latency_text_s=0.3)
    for i, clip in enumerate(("short_mp4", "clip8", "clip16")):  # different bytes: no answer shared between them
        env.add_video(synthetic_videos[clip], f"cam{i}/clip.mp4")
    cmd, proc = _start_cli(env, interrupt_grace_s=2)
    wait_for("the first video's first call", lambda: env.calls() >= 1, 120)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: 2 queued video(s) canceled" in out, out[-3000:]
    assert "run again to resume" in out
    paid_before = env.calls()
    instance = DagsterInstance.get()
    canceled = instance.get_runs(RunsFilter(job_name=ANNOTATE_JOB, statuses=[DagsterRunStatus.CANCELED]))
    assert len(canceled) == 2

    again = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    assert instance.get_materialized_partitions(AssetKey("task_exports")) == {f"cam{i}__clip.mp4" for i in range(3)}
    bodies = Counter(json.dumps(r.json, sort_keys=True) for r in env.model_requests())
    assert sum(n - 1 for n in bodies.values() if n > 1) <= 2, "only calls in flight at the stop are asked again"
    assert env.calls() > paid_before


def test_an_interrupt_after_the_last_video_left_the_queue_cancels_the_waiting_dataset_run(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("gemini", latency_media_s=1.0, latency_text_s=0.3)
    env.add_video(synthetic_videos["short_mp4"], "cam0/clip.mp4")
    _, proc = _start_cli(env, interrupt_grace_s=0)
    wait_for("the dataset run made behind the video", _dataset_run_created, 120)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    instance = DagsterInstance.get()
    (run,) = instance.get_runs(DATASET_RUNS)
    assert run.tags[GATE_TAG] == "closed" and run.status == DagsterRunStatus.CANCELED  # not left waiting
    assert not instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED]))


def _processes_serving(owner_pid: int) -> list[int]:
    """The processes started for the `vr-annotate run` of `owner_pid`: its daemon, forkserver and run hosts."""
    mark = f"{OWNER_ENV}={owner_pid}:".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            alive = entry.name.isdigit() and proc_start(int(entry.name)) is not None  # a zombie has ended
            if alive and mark in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_vr_annotate_killed_with_9_leaves_nothing_running_and_the_next_one_finishes_its_work(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    """kill -9 of `vr-annotate run` while its videos run: its daemon and forkserver stop themselves, the videos in
    flight finish on their run host (nothing paid is lost), the dataset run it had made never builds, and the next
    `vr-annotate run` builds the dataset without asking the teacher anything twice."""
    env = make_pipeline("gemini", latency_media_s=1.0, latency_text_s=0.3)
    for i, clip in enumerate(("short_mp4", "clip8")):
        env.add_video(synthetic_videos[clip], f"cam{i}/clip.mp4")
    cmd, proc = _start_cli(env, max_workers=2)
    wait_for("both videos started and the gated dataset run made", _dataset_run_created, 120)
    assert _processes_serving(proc.pid)
    proc.kill()
    proc.communicate()
    wait_for("every process of the killed vr-annotate to end", lambda: not _processes_serving(proc.pid), 120)
    instance = DagsterInstance.get()
    videos = instance.get_runs(RunsFilter(job_name=ANNOTATE_JOB))
    assert [r.status for r in videos] == [DagsterRunStatus.SUCCESS] * 2  # finished, not left STARTED
    (gated,) = instance.get_runs(DATASET_RUNS)
    assert gated.status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED)  # killed before or after queueing
    paid = env.calls()

    again = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:]
    assert re.search(r"^dataset: \d+ items in ", again.stdout, re.M), again.stdout
    # canceled by the next vr-annotate; or, when that one's daemon launched it first, failed on its abandoned gate
    old = instance.get_run_by_id(gated.run_id)
    assert old is not None and old.status in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE)
    if old.status == DagsterRunStatus.CANCELED:
        assert "1 dataset run(s) of a vr-annotate that is gone: canceled" in again.stdout, again.stdout
    else:
        assert "ended before its videos did" in failure_text(instance, gated.run_id)
    assert env.calls() == paid  # every answer was in by the kill's end: nothing asked again
    assert instance.get_materialized_partitions(AssetKey("task_exports")) == {"cam0__clip.mp4", "cam1__clip.mp4"}


def test_the_dataset_gate_opens_on_the_clis_word_and_fails_when_its_cli_is_gone(tmp_path: Path) -> None:
    """A gated dataset run builds once its vr-annotate opens the gate; if that process is gone, it says so."""
    from dagster._core.test_utils import create_run_for_test

    class Log:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, msg: str) -> None:
            self.lines.append(msg)

    queue = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}
    with DagsterInstance.local_temp(str(tmp_path), overrides=queue) as instance:
        plain = create_run_for_test(instance, job_name="build_dataset")
        assert wait_for_gate(instance, plain.run_id, Log()) == 0.0  # the UI's, the sensor's: at once

        gated = create_run_for_test(instance, job_name="build_dataset", tags=closed_gate_tags())
        threading.Timer(0.4, open_gate, args=(instance, gated.run_id)).start()
        log = Log()
        waited = wait_for_gate(instance, gated.run_id, log)
        assert 0.35 <= waited < 5 and log.lines[-1].startswith(BUILDING), log.lines
        # the launcher rewrites the run's tags (read-modify-write) while the CLI opens the gate: a stale copy of
        # the tags written back after the opening leaves the gate open
        instance.add_run_tags(gated.run_id, {GATE_TAG: "closed", PID_TAG: "1"})
        assert gate_is_open(instance, gated.run_id) and wait_for_gate(instance, gated.run_id, Log()) < 1

        gone = subprocess.Popen(["true"])
        gone.wait()
        tags = closed_gate_tags()
        host = tags[HOLDER_TAG].split(":")[0]
        orphan = create_run_for_test(instance, job_name="build_dataset",
                                     tags={**tags, HOLDER_TAG: f"{host}:{gone.pid}:12345"})
        t0 = time.monotonic()
        with pytest.raises(GateAbandoned, match=rf"{host}:{gone.pid}:12345.*ended before its videos did"):
            wait_for_gate(instance, orphan.run_id, Log())
        assert time.monotonic() - t0 < 5
        # still queued when the next vr-annotate starts: canceled there, not launched to fail; a live one stays
        origin = _remote_origin("build_dataset")
        queued = {name: create_run_for_test(instance, job_name="build_dataset", status=DagsterRunStatus.QUEUED,
                                            tags=t, remote_job_origin=origin).run_id
                  for name, t in (("orphan", orphan.tags), ("live", closed_gate_tags()))}
        # killed between creating the run and queueing it: NOT_STARTED, which Dagster's cancel would leave alone
        queued["never queued"] = create_run_for_test(instance, job_name="build_dataset", tags=orphan.tags).run_id
        abandoned = {queued["orphan"], queued["never queued"], orphan.run_id}  # the one waited on above, too
        assert set(cancel_abandoned(instance, "build_dataset")) == abandoned
        status = {name: instance.get_run_by_id(rid).status for name, rid in queued.items()}  # type: ignore[union-attr]
        assert status == {"orphan": DagsterRunStatus.CANCELED, "live": DagsterRunStatus.QUEUED,
                          "never queued": DagsterRunStatus.CANCELED}
        # this process stopping: the gated runs it holds and has not opened are canceled, the opened one is left
        cancel_held(instance, "build_dataset")
        assert instance.get_run_by_id(queued["live"]).status == DagsterRunStatus.CANCELED  # type: ignore[union-attr]
        assert instance.get_run_by_id(gated.run_id).status == DagsterRunStatus.NOT_STARTED  # type: ignore[union-attr]
    # where /proc gave no start time, whether the pid is alive; a gate held on another host is not judged here
    assert _holder_gone(f"{host}:{gone.pid}:") and not _holder_gone(f"{host}:{os.getpid()}:")
    assert not _holder_gone(f"elsewhere.{host}:{gone.pid}:12345")


def test_a_rejected_key_stops_the_run_once_instead_of_failing_every_video(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    env = make_pipeline("openai", api_key="the-right-key")  # the spec sends another one: 401
    for i, clip in enumerate(("short_mp4", "clip8", "clip16")):
        env.add_video(synthetic_videos[clip], f"cam{i}/clip.mp4")
    summary = env.run(env.spec(workflow={"qa_types": ["mcq"], "max_workers": 1}), parallel=None)
    assert len(summary.failed) >= 3 and not summary.succeeded  # three videos, and the dataset of nothing
    stops = [m for m in env.log if m.startswith("stopping:")]
    assert len(stops) == 1 and "rejected the API key (401)" in stops[0], env.log
    # the daemon may already have started the next video when the first one's failure is read: it fails fast
    assert re.search(r"\b[12] queued video\(s\) canceled", stops[0]), stops[0]
    # one line, not one per video
    assert sum(m.startswith("[") and "FAILED" in m for m in env.log) == 1, "\n".join(env.log)
    assert env.calls() <= 2  # the first video's first call (and at most one retry), nothing after it


def test_the_daemon_entry_starts_the_forkserver_of_the_homes_warm_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vr-annotate run`'s daemon starts the run launcher's forkserver before it imports Dagster, with the preload
    the home's launcher would use; a home with another launcher (or its own preload list) starts none."""
    from vr_assets.execution import daemon, forkserver
    from vr_assets.execution.instance import execution_yaml, instance_yaml

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    (tmp_path / "dagster.yaml").write_text(instance_yaml(str(tmp_path), max_workers=2))
    assert daemon._preload_for_home() == forkserver.DEFAULT_PRELOAD
    (tmp_path / "dagster.yaml").write_text(execution_yaml(2, shared=True))  # several hosts on Postgres
    assert daemon._preload_for_home() == (*forkserver.DEFAULT_PRELOAD, *forkserver.POSTGRES_PRELOAD)
    (tmp_path / "dagster.yaml").write_text("run_launcher:\n  module: dagster\n  class: DefaultRunLauncher\n")
    assert daemon._preload_for_home() is None


def test_a_run_reaches_its_host_with_its_process_already_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's run start rewrites the run's stored body from its own read of it: a pid tag written after the
    run was sent could be lost under that write, and run monitoring then failed a healthy run as "no run process
    recorded yet" (it happened to one video of a bench run). The launcher records the host before it sends."""
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.test_utils import create_run_for_test

    from vr_assets.execution import launcher as launcher_module

    seen_at_send: dict[str, dict[str, str]] = {}

    class Pipe:
        def __init__(self, instance: Any) -> None:
            self.instance = instance

        def send(self, message: tuple[str, str | None]) -> None:
            kind, run_id = message
            if kind == "run" and run_id is not None:
                seen_at_send[run_id] = dict(self.instance.get_run_by_id(run_id).tags)

        def poll(self) -> bool:
            return False

    class Proc:
        pid = os.getpid()

    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        launcher = WarmRunLauncher(runs_per_process=2, spread_over=1)
        launcher.register_instance(instance)
        monkeypatch.setattr(launcher, "_start_host", lambda: launcher._hosts.append(
            host := launcher_module._Host(Proc(), Pipe(instance))) or host)  # type: ignore[arg-type]
        runs = [create_run_for_test(instance, job_name="annotate_videos") for _ in range(3)]
        for run in runs:
            launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        assert set(seen_at_send) == {r.run_id for r in runs}
        start = proc_start(os.getpid())
        for run_id, tags in seen_at_send.items():
            assert tags[PID_TAG] == str(os.getpid()) and tags[launcher_module.START_TAG] == start, tags
            assert launcher.check_run_worker_health(instance.get_run_by_id(run_id)).status.value == "RUNNING"


def test_runs_share_a_run_host_and_a_canceled_run_stops_alone(
    make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path
) -> None:
    """Several runs on the threads of one host process; terminating one leaves its sibling running."""
    env = make_pipeline("gemini", latency_media_s=1.0, latency_text_s=0.3)
    for i, clip in enumerate(("short_mp4", "clip8", "clip16")):
        env.add_video(synthetic_videos[clip], f"cam{i}/clip.mp4")
    spec = env.spec(workflow={"qa_types": ["mcq"], "max_workers": 3}, media={"prefetch": False})
    home = ensure_dagster_home(spec)
    launcher = "  class: WarmRunLauncher\n"
    yaml_text = (home / "dagster.yaml").read_text()
    assert launcher in yaml_text
    # one host open at a time, two runs each: the three runs land on two hosts, two on the first
    (home / "dagster.yaml").write_text(
        yaml_text.replace(launcher, launcher + "  config:\n    runs_per_process: 2\n    spread_over: 1\n"))
    child_env = services_env(home, write_effective_spec(spec, home), spec)
    new, _ = sync_partitions(spec, set())
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(videos_partitions.name, new)
    os.environ["VR_CONFIG"] = child_env["VR_CONFIG"]
    try:
        submitter = RunSubmitter(instance, ANNOTATE_JOB)
        run_ids = [submitter.submit(key, PER_VIDEO_ASSETS) for key in new]
    finally:
        os.environ.pop("VR_CONFIG")
    with (tmp_path / "daemon.log").open("wb") as log, run_daemon(home, child_env, log) as daemon:
        assert daemon.proc is not None

        def started() -> dict[str, int] | None:
            runs = [instance.get_run_by_id(r) for r in run_ids]
            if all(r is not None and r.status == DagsterRunStatus.STARTED and PID_TAG in r.tags for r in runs):
                return {r.run_id: int(r.tags[PID_TAG]) for r in runs if r is not None}
            return None

        pids = wait_for("all three runs started", started, 120)
        by_pid = Counter(pids.values())
        assert sorted(by_pid.values()) == [1, 2], pids
        shared_pid = next(p for p, n in by_pid.items() if n == 2)
        victim, sibling = [r for r, p in pids.items() if p == shared_pid]
        assert instance.run_launcher.terminate(victim)
        finished = wait_for("every run to finish", lambda: (
            all((r := instance.get_run_by_id(i)) is not None and r.is_finished for i in run_ids)), 180)
        assert finished
        status = {i: instance.get_run_by_id(i).status for i in run_ids}  # type: ignore[union-attr]
        assert status.pop(victim) == DagsterRunStatus.CANCELED, (tmp_path / "daemon.log").read_text()[-3000:]
        assert set(status.values()) == {DagsterRunStatus.SUCCESS}, status
        # the first host took its two runs, finished them and exited; the runs stay Dagster's own
        assert wait_for("the full host to exit", lambda: not Path(f"/proc/{shared_pid}").exists(), 30)
        messages = [e.message for e in instance.all_logs(sibling, of_type=DagsterEventType.ENGINE_EVENT)]
        assert any(f"pid: {shared_pid}, forked warm; run " in m for m in messages), messages
    assert instance.get_materialized_partitions(AssetKey("task_exports")) == {
        k for k, r in zip(new, run_ids, strict=True) if r != victim}


def test_the_launchers_dagster_builds_for_one_instance_share_its_run_hosts(tmp_path: Path) -> None:
    """Dagster builds an instance's run launcher lazily and without a lock, so the daemon's dequeue threads can
    each build one at start: they must place runs on the same hosts (and another instance on its own)."""
    launcher = {"module": "vr_assets.execution.launcher", "class": "WarmRunLauncher"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "a"), overrides={"run_launcher": launcher}) as one, \
            DagsterInstance.local_temp(str(tmp_path / "b"), overrides={"run_launcher": launcher}) as other:
        built = []
        for instance in (one, one, other):
            got = instance.get_ref().run_launcher
            got.register_instance(instance)
            built.append(got)
        first, second, third = built
        assert first is not second and isinstance(first, WarmRunLauncher)
        assert first._hosts is second._hosts and first._lock is second._lock  # noqa: SLF001
        assert third._hosts is not first._hosts  # noqa: SLF001
