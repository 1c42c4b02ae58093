"""Issue #3 through the real Dagster graph: faults, a fatal error, secrets, budget, uploads and the call cache.

Every test drives `vr_assets.cli.run_pipeline` (in-process Dagster runs, forkserver workers where stated) with the
real google-genai / openai SDKs against the local fakes, on tiny ffmpeg-made clips with distinct bytes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
from dagster._serdes import serialize_value

from vr_assets.assets.export import USAGE_ASSETS
from vr_assets.fakes import ALL_FAULTS, FakeGemini, FakeOpenAI, FaultPlan, sha256_file
from vr_assets.fakes.server import Exchange, http_error
from vr_assets.graph import PER_VIDEO_ASSETS
from vr_assets.providers import UsageLedger
from vr_assets.store import JsonStore

MCQ_ONLY = {"qa_types": ["mcq"]}  # one QA call per video: the point of these tests is not QA coverage
N_VIDEOS = 10
# 2.5 s, 160x120, 10 fps, no audio: one chunk each; every source differs, so every clip has its own sha256
_SOURCES = (
    "testsrc2=size=160x120:rate=10",
    "mandelbrot=size=160x120:rate=10",
    "smptebars=size=160x120:rate=10",
    "rgbtestsrc=size=160x120:rate=10",
    "cellauto=size=160x120:rate=10:rule=30:seed=7",
    "life=size=160x120:rate=10:seed=11:mold=10",
    "color=c=0x3366aa:size=160x120:rate=10",
    "testsrc2=size=160x120:rate=10,hue=h=120",
    "mandelbrot=size=160x120:rate=10,negate",
    "smptehdbars=size=160x120:rate=10",
)


def _ffmpeg(*args: str | Path) -> None:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr[-800:]}")


def _encode(source: str, seconds: float, out: Path) -> Path:
    enc = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-an"]
    _ffmpeg("-f", "lavfi", "-i", source, "-t", str(seconds), *enc, out)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Ten short clips with distinct content (and bytes)."""
    root = tmp_path_factory.mktemp("fault_clips")
    out = [_encode(src, 2.5, root / f"clip{i:02d}.mp4") for i, src in enumerate(_SOURCES)]
    shas = {sha256_file(p) for p in out}
    assert len(shas) == N_VIDEOS, "every clip must have its own sha256"
    return out


@pytest.fixture(scope="module")
def busy_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two 7 s clips (two chunks each) big enough that even their chunks exceed a 0.01 MB inline limit."""
    root = tmp_path_factory.mktemp("busy_clips")
    return [_encode(src, 7, root / f"busy{i}.mp4") for i, src in enumerate(_SOURCES[:2])]


def add_clips(env: Any, clips: list[Path], n: int) -> list[str]:
    """Copies the first `n` clips in as v00.mp4, v01.mp4, ...; returns their partition keys in order."""
    keys = []
    for i, src in enumerate(clips[:n]):
        env.add_video(src, f"v{i:02d}.mp4")
        keys.append(f"v{i:02d}.mp4")
    return keys


def model_settings(backend: str, **settings: Any) -> dict[str, Any]:
    """A `vlm:` or `llm:` spec section that overrides settings of one backend (deep-merged by env.spec)."""
    return {backend: settings}


def dataset_files(results: Path) -> dict[str, dict[str, Any]]:
    """step_4_output/*.json without what legitimately differs between two runs (date, media_root)."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted((results / "step_4_output").glob("*.json")):
        if p.name == "dataset_report.json":  # the report, not a task file (its timings differ run to run)
            continue
        data = json.loads(p.read_text())
        data["metadata"].pop("date")
        data.pop("media_root")
        out[p.name] = data
    return out


def ledger(env: Any) -> UsageLedger:
    return UsageLedger(env.results / "usage")


def materialization_retries(instance: DagsterInstance, keys: list[str]) -> int:
    """Sum of the `retries` metadata of every materialization of the assets that call models."""
    total = 0
    for asset in USAGE_ASSETS:
        records = instance.fetch_materializations(AssetKey(asset), limit=1000).records
        assert sorted(r.partition_key for r in records) == sorted(keys), asset
        for r in records:
            mat = r.asset_materialization
            assert mat is not None
            total += int(mat.metadata["retries"].value)  # type: ignore[arg-type]
    return total


def stored_usage(results: Path, keys: list[str]) -> list[Any]:
    store = JsonStore(results)
    return [u for a in USAGE_ASSETS for k in keys for u in store.read(a, k).usage]


def reject_media(fake: FakeGemini | FakeOpenAI, sha: str, message: str) -> None:
    """Answer 400 to every request carrying media `sha`, echoing the caller's API key like some providers do.

    A hook on this fake instance only (fail_next is route-wide, this is per video).
    """
    original: Callable[[Exchange], None] = fake.prepare

    def prepare(ex: Exchange) -> None:
        original(ex)
        if sha in ex.record.media_sha256:
            auth = ex.headers.get("x-goog-api-key") or ex.headers.get("authorization", "").removeprefix("Bearer ")
            raise http_error(fake.error_reply(400, f"{message} (API key {auth})"))

    fake.prepare = prepare  # type: ignore[method-assign]


# ---------------------------------------------------------------- 1. faults change nothing


TIMEOUT_S = 2.0
FAULT_SEED = 151  # its first 70 draws (one per call of a clean run) hold every fault kind


@pytest.mark.parametrize(("backend", "parallel"), [("gemini", 2), ("openai", 1)])
def test_run_with_faults_equals_fault_free_run(
    make_pipeline: Any, clips: list[Path], backend: str, parallel: int, record_property: Any
) -> None:
    clean = make_pipeline(backend)
    keys = add_clips(clean, clips, N_VIDEOS)
    first = clean.run(clean.spec(workflow=MCQ_ONLY), parallel=2)
    assert first.failed == {} and sorted(first.succeeded) == keys
    assert all(r.fault is None and r.status == 200 for r in clean.model_requests())
    expected = dataset_files(clean.results)
    assert expected and all(d["items"] for d in expected.values())

    plan = FaultPlan(rate=0.2, seed=FAULT_SEED, kinds=ALL_FAULTS, slow_s=TIMEOUT_S + 0.5)
    faulty = make_pipeline(backend, faults=plan)
    add_clips(faulty, clips, N_VIDEOS)
    settings = model_settings(backend, timeout=TIMEOUT_S)
    retry = {"max_attempts": 10, "bad_output_attempts": 6}
    spec = faulty.spec(workflow=MCQ_ONLY, vlm={**settings, "retry": retry}, llm={**settings, "retry": retry})
    summary = faulty.run(spec, parallel=parallel)
    assert summary.failed == {}, summary.failed
    assert sorted(summary.succeeded) == keys

    instance = DagsterInstance.get()
    for asset in PER_VIDEO_ASSETS:
        assert instance.get_materialized_partitions(AssetKey(asset)) == set(keys), asset
    got = dataset_files(faulty.results)
    assert got == expected, "a run with transient faults must produce the same dataset as a clean run"
    for name, data in got.items():
        items = [json.dumps(i, sort_keys=True) for i in data["items"]]
        assert len(items) == len(set(items)), f"duplicate items in {name}"
        assert len(items) == len(expected[name]["items"])

    faults = Counter(r.fault for r in faulty.model_requests() if r.fault)
    usage = stored_usage(faulty.results, keys)
    entries = ledger(faulty).entries()
    retries = materialization_retries(instance, keys)
    assert set(faults) == set(ALL_FAULTS), "the seed is chosen so every transient fault kind is injected"
    assert retries >= sum(faults.values())
    assert retries == sum(u.retries for u in usage) == sum(e.usage.retries for e in entries)
    assert all(e.ok for e in entries) and len(entries) == len(usage) == clean.calls()
    # every request the fake saw is one call or one of its retries: nothing hidden, nothing lost
    assert faulty.calls() == len(entries) + retries
    print(f"\n[{backend}, parallel={parallel}] {N_VIDEOS} videos, {len(entries)} calls, {faulty.calls()} requests, "
          f"{retries} retries; faults injected: {dict(sorted(faults.items()))}")
    record_property(f"retries_{backend}", retries)
    record_property(f"faults_{backend}", dict(faults))


# ---------------------------------------------------------------- 2. a fatal error stays in its partition


def test_non_retryable_error_fails_only_its_partition(make_pipeline: Any, clips: list[Path]) -> None:
    env = make_pipeline("gemini")
    keys = add_clips(env, clips, 3)
    bad = keys[1]
    bad_sha = sha256_file(env.videos / bad)
    reject_media(env.fake, bad_sha, "Request contains an invalid argument: unsupported video stream")
    summary = env.run(env.spec(workflow=MCQ_ONLY))

    assert sorted(summary.succeeded) == [keys[0], keys[2]]
    assert list(summary.failed) == [bad]
    why = summary.failed[bad]
    for needle in (f"video {bad}", "step 0", "HTTP 400", "INVALID_ARGUMENT", "unsupported video stream"):
        assert needle in why, (needle, why)
    # not retried: one request carried the bad video
    assert sum(bad_sha in r.media_sha256 for r in env.model_requests()) == 1

    instance = DagsterInstance.get()
    runs = instance.get_runs(RunsFilter(tags={"dagster/partition": bad}))
    assert [r.status for r in runs] == [DagsterRunStatus.FAILURE]
    assert instance.get_materialized_partitions(AssetKey("task_exports")) == {keys[0], keys[2]}
    assert bad not in instance.get_materialized_partitions(AssetKey("filter_result"))
    assert summary.dataset_items and summary.dataset_items > 0
    mcq = json.loads((env.results / "step_4_output" / "mcq.json").read_text())
    assert {i["video_id"] for i in mcq["items"]} == {keys[0], keys[2]}
    print(f"\n{bad}: {why}")


# ---------------------------------------------------------------- 3. the key never lands anywhere


SECRET = "sk-VRSECRET-pipeline-5c0ffee7d1ce"


def test_api_key_is_never_stored_or_logged(
    make_pipeline: Any, clips: list[Path], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for role in ("VLM", "LLM"):  # the resources park a literal key here; put the env back afterwards
        monkeypatch.setenv(f"VR_ASSETS_{role}_API_KEY", "placeholder")
    caplog.set_level("DEBUG")
    env = make_pipeline("openai")
    keys = add_clips(env, clips, 2)
    reject_media(env.fake, sha256_file(env.videos / keys[0]), "Invalid video content")
    spec = env.spec(workflow=MCQ_ONLY, vlm=model_settings("openai", api_key=SECRET),
                    llm=model_settings("openai", api_key=SECRET))
    summary = env.run(spec)
    assert summary.succeeded == [keys[1]] and list(summary.failed) == [keys[0]]
    assert "Invalid video content" in summary.failed[keys[0]] and "***" in summary.failed[keys[0]]
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in env.model_requests())

    needle = SECRET.encode()
    home = Path(DagsterInstance.get().root_directory)
    assert home.is_relative_to(env.root) and env.results.is_relative_to(env.root)
    scanned = [p for p in env.root.rglob("*") if p.is_file()]  # results, Dagster home, host slots
    assert any(p.suffix == ".db" for p in scanned), "the scan must cover the event log databases"
    if isinstance(DagsterInstance.get().compute_log_manager, NoOpComputeLogManager):
        assert not any(p.suffix in (".out", ".err") for p in scanned)  # stdio capture off: no such files
    else:
        assert any(p.suffix in (".out", ".err") for p in scanned), "the scan must cover the compute logs"
    leaked = [str(p) for p in scanned if needle in p.read_bytes()]
    assert leaked == []

    # what the instance keeps compressed or structured: run config, tags, job and plan snapshots, events
    instance = DagsterInstance.get()
    runs = instance.get_runs()
    assert len(runs) == 3  # two partitions and the dataset
    for run in runs:
        blobs = [serialize_value(run)]
        if run.job_snapshot_id:
            blobs.append(serialize_value(instance.get_job_snapshot(run.job_snapshot_id)))
        if run.execution_plan_snapshot_id:
            blobs.append(serialize_value(instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)))
        blobs += [serialize_value(e) for e in instance.all_logs(run.run_id)]
        assert not any(SECRET in b for b in blobs), run.run_id

    out, err = capfd.readouterr()
    from vr_assets.execution.submit import failure_text

    reasons = [failure_text(instance, run.run_id) for run in runs if run.is_failure]
    assert any("Invalid video content" in r for r in reasons), f"the run's event log must hold the failure: {reasons}"
    for text in (out, err, caplog.text, "\n".join(env.log), json.dumps(summary.failed)):
        assert SECRET not in text
    print(f"\n{keys[0]}: {summary.failed[keys[0]]}")


# ---------------------------------------------------------------- 4. budget


PRICE = {"input_per_mtok": 200.0, "output_per_mtok": 200.0}  # USD per million tokens: ~1.06 USD per video
BUDGET = 1.5


def test_budget_stops_new_calls(make_pipeline: Any, clips: list[Path]) -> None:
    env = make_pipeline("gemini")
    keys = add_clips(env, clips, 3)
    # one call at a time, so the ledger has every finished call's cost before the next call checks the budget
    spec = env.spec(workflow={**MCQ_ONLY, "max_workers": 1}, prices={"gemini-test": PRICE}, budget_usd=BUDGET)
    summary = env.run(spec)

    # in the order the CLI ran them (biggest file first): the first is paid for, the last finds the budget spent
    ran = [m.group(1) for line in env.log if (m := re.match(r"\[\d+/\d+\] (\S+): ", line))]
    assert sorted(ran) == sorted(keys)
    assert ran[0] in summary.succeeded
    assert ran[-1] in summary.failed
    for key, why in summary.failed.items():
        assert f"video {key}" in why and "budget of $" in why and "is spent" in why, why
    entries = ledger(env).entries()
    spent = ledger(env).spent_usd()
    assert spent >= BUDGET
    running, crossed = 0.0, None
    for i, e in enumerate(entries):
        running += e.usage.cost_usd
        if running >= BUDGET:
            crossed = i
            break
    assert crossed == len(entries) - 1, "no call may be paid for once the budget is reached"
    reached_at = entries[crossed].ts
    late = [r for r in env.model_requests() if r.started_at > reached_at]
    assert late == [], f"{len(late)} provider requests started after the budget was reached"
    assert env.calls() == len(entries)
    print(f"\nbudget ${BUDGET:.2f}: spent ${spent:.4f} over {len(entries)} calls; "
          f"ok {summary.succeeded}, failed {sorted(summary.failed)}")



# ---------------------------------------------------------------- 5. one upload per video


def test_files_api_upload_once_per_video(make_pipeline: Any, busy_clips: list[Path]) -> None:
    """media.transport upload (the default): each video crosses the wire once, whatever the step."""
    env = make_pipeline("gemini")
    keys = []
    for i, src in enumerate(busy_clips):
        env.add_video(src, f"busy{i}.mp4")
        keys.append(f"busy{i}.mp4")
    summary = env.run(env.spec(workflow=MCQ_ONLY))
    assert summary.failed == {} and sorted(summary.succeeded) == keys
    fake: FakeGemini = env.fake  # type: ignore[assignment]

    assert fake.live_files() == 0, "every upload is deleted once its video no longer needs it"
    assert not list((env.results / "cache" / "uploads").rglob("*.json")), "and its registry entry with it"
    assert fake.inline_bytes_by_sha() == {}, "no media went inline"
    uploaded_bytes = fake.upload_bytes_by_sha()
    store = JsonStore(env.results)
    log = list(fake.log)
    rows = []
    for key in keys:
        src = env.videos / key
        size = src.stat().st_size
        sha = sha256_file(src)  # media.fps is null in these specs: the source itself is the prepared video
        (up,) = [f for f in fake.uploaded.values() if f.display_name == key]
        assert up.sha256 == sha and uploaded_bytes[sha] == up.size == size, f"{key}: one upload, its own bytes"
        uses = [r for r in log if r.route == "generateContent" and r.media_sha256]
        uses = [r for r in uses if r.media_sha256 == [sha]]
        whole = [r for r in uses if not r.media_sampling[0]]
        ranges = sorted((r.media_sampling[0]["start_s"], r.media_sampling[0]["end_s"]) for r in uses
                        if r.media_sampling[0])
        assert len(whole) == 4, [r.prompt_text[:60] for r in whole]  # filter, classify, global, dense
        chunks = store.read("chunk_captions", key).chunks
        hl = store.read("highlight", key).highlight_chunk
        expected = [(c.timestamp_start, c.timestamp_end) for c in chunks]
        expected += [(hl.timestamp_start, hl.timestamp_end)] if hl is not None else []
        # every chunk and the highlight clip: a range of it (offsets travel in ms)
        ms = sorted((round(a, 3), round(b, 3)) for a, b in expected)
        assert [(round(a, 3), round(b, 3)) for a, b in ranges] == ms
        (deleted_at,) = [i for i, r in enumerate(log) if r.route == "files.delete" and r.path.endswith(up.id)]
        assert max(log.index(r) for r in uses) < deleted_at  # deleted after its last use
        rows.append((key, len(uses), uploaded_bytes[sha], size))
    assert fake.counts["upload.start"] == fake.counts["files.delete"] == len(keys)
    print("\n| video | VLM calls | uploads | bytes uploaded | video size |")
    print("|---|---:|---:|---:|---:|")
    for key, calls, up_b, size in rows:
        print(f"| {key} | {calls} | 1 | {up_b} | {size} |")


def test_a_run_started_by_dagster_itself_uploads_once(make_pipeline: Any, busy_clips: list[Path]) -> None:
    """A run started by Dagster's own CLI (`dagster asset materialize`, the job's in-process executor) uploads a
    video once and every later step points at that upload. (Across processes, see the retry test below.)"""
    import sys

    import yaml

    from vr_assets.sensors import sync_partitions

    env = make_pipeline("gemini")
    env.add_video(busy_clips[0], "busy.mp4")
    raw = env.raw_spec(workflow={**MCQ_ONLY, "mode": "anomaly"})
    spec_file = env.root / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    (key,), _ = sync_partitions(env.spec(workflow={**MCQ_ONLY, "mode": "anomaly"}), set())
    home = env.root / "dagster_home"
    home.mkdir(exist_ok=True)
    DagsterInstance.get().add_dynamic_partitions("videos", [key])
    steps = "filter_result,captions,chunk_captions,highlight"
    dagster = Path(sys.executable).parent / "dagster"
    env_vars = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYTEST_")}
    got = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "vr_assets.definitions", "--select", steps, "--partition", key],
        env={**env_vars, "VR_CONFIG": str(spec_file), "DAGSTER_HOME": str(home)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    run = DagsterInstance.get().get_runs(limit=1)[0]
    assert run.status == DagsterRunStatus.SUCCESS
    fake: FakeGemini = env.fake  # type: ignore[assignment]
    assert fake.counts["upload.start"] == 1
    media = [r for r in env.model_requests() if r.media_sha256]
    assert len({tuple(r.media_sha256) for r in media}) == 1 and len(media) >= 5  # 0, 1a x2, chunks, the clip
    # the uploader polled until ACTIVE; the later steps of the same process knew the file was there
    assert fake.counts["files.get"] == fake.processing_polls + 1
    assert fake.live_files() == 0  # step 1c, the video's last model step, deleted it
    assert not list((env.results / "cache" / "uploads").rglob("*.json"))


def test_failed_video_keeps_its_upload_for_the_retry(make_pipeline: Any, busy_clips: list[Path]) -> None:
    """A video that fails after its upload keeps it (registered) so the retry sends no byte again."""
    env = make_pipeline("gemini")
    env.add_video(busy_clips[0], "busy.mp4")
    fake: FakeGemini = env.fake  # type: ignore[assignment]
    original: Callable[[Exchange], None] = fake.prepare
    broken = [True]

    def prepare(ex: Exchange) -> None:
        original(ex)
        if broken[0] and any("start_s" in m for m in ex.record.media_sampling):
            raise http_error(fake.error_reply(400, "Request contains an invalid argument: chunk rejected"))

    fake.prepare = prepare  # type: ignore[method-assign]
    spec = env.spec(workflow=MCQ_ONLY)
    first = env.run(spec)
    assert list(first.failed) == ["busy.mp4"] and "chunk rejected" in first.failed["busy.mp4"]
    assert fake.counts["upload.start"] == 1 and fake.live_files() == 1
    assert len(list((env.results / "cache" / "uploads").rglob("*.json"))) == 1

    broken[0] = False
    second = env.run(spec)
    assert second.succeeded == ["busy.mp4"]
    assert fake.counts["upload.start"] == 1  # the retry pointed at the same file
    assert fake.live_files() == 0
    assert not list((env.results / "cache" / "uploads").rglob("*.json"))


# ---------------------------------------------------------------- 6. the call cache


def test_lost_instance_is_rebuilt_from_the_call_cache(make_pipeline: Any, clips: list[Path]) -> None:
    env = make_pipeline("gemini")
    keys = add_clips(env, clips, 1)
    spec = env.spec(workflow=MCQ_ONLY)
    assert env.run(spec).failed == {}
    paid = env.calls()
    assert paid > 0
    store = JsonStore(env.results)
    qa_before = store.read("qa", keys[0])
    dataset_before = dataset_files(env.results)

    home = Path(DagsterInstance.get().root_directory)
    shutil.rmtree(home)  # the instance is lost; results and the call cache stay
    again = env.run(spec)
    assert again.failed == {} and sorted(again.succeeded) == keys
    assert env.calls() == paid, "answers must come from the call cache, never from the provider again"
    assert all(u.cached for u in stored_usage(env.results, keys))
    assert DagsterInstance.get().get_materialized_partitions(AssetKey("task_exports")) == set(keys)

    # a qa record lost and the asset's history wiped (SQLite storage cannot wipe a single partition): qa and
    # task_exports re-run, still without a provider call
    store.path("qa", keys[0]).unlink()
    DagsterInstance.get().wipe_assets([AssetKey("qa")])
    third = env.run(spec)
    assert sorted(third.succeeded) == keys and third.skipped_up_to_date == 0
    assert env.calls() == paid
    assert store.read("qa", keys[0]).items == qa_before.items
    assert DagsterInstance.get().get_materialized_partitions(AssetKey("qa")) == set(keys)
    assert dataset_files(env.results) == dataset_before
