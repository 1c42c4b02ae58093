"""10 000 video partitions (issue #19 item 6): planning, the sensor's tick and the asset page, on SQLite and Postgres.

Materializing 10 000 videos through the pipeline would take hours on two cores, so the instance is SEEDED:
one real `vr-annotate run` on one 2 s clip (0-latency fake Gemini) gives the seven per-video records; then N
hardlinks of that clip are registered (`VideoRegistry.sync(discover(spec))`), added as `videos` partitions,
given those records re-keyed (validated by the pydantic models, written through `JsonStore`), and N × 7
runless `ASSET_MATERIALIZATION` events are stored in the instance, 1 000 per `store_event_batch` (the events
`instance.report_runless_asset_event` writes, without a commit each). The seeding time is reported.

Measured on the seeded instance, in this order:
(a) `vr-annotate run --config spec --no-dataset` with nothing to do: wall of the whole command (it starts a
    dagster-daemon for its duration, syncs the registry, reads every record it plans over, and exits);
(c) the webserver's `/assets/qa` and `/assets/qa?view=partitions` in headless Chromium: from `goto` until
    the partition count (overview) / a partition key of the list (partitions view) is visible; screenshots;
(b) the `new_videos` sensor's tick after one new file: evaluated in-process on `build_definitions(spec)`, and
    through `dagster sensor preview` (a fresh process: code-location load included).

Nothing is asserted. `python bench/partitions.py [--partitions 10000] [--backends sqlite postgres]`
prints a table and writes bench/out/partitions.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from workload import _encode, link_or_copy  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
TEMPLATE = "zzseedclipzz"  # the template video's name: unique, so re-keying by substring is exact
EVENT_BATCH = 1000
FLOORS = {"planning_s": 10.0, "sensor_tick_s": 5.0, "asset_page_s": 5.0}


def log(msg: str) -> None:
    print(f"[partitions {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Backend(BaseModel):
    backend: str
    partitions: int
    seed: dict[str, float] = {}
    planning_s: float | None = None
    planning_exit: int | None = None
    planning_lines: list[str] = []
    sensor_tick_s: float | None = None
    sensor_result: str = ""
    sensor_preview_s: float | None = None
    sensor_preview_result: str = ""
    webserver_ready_s: float | None = None
    asset_page_s: float | None = None
    asset_page_partitions_s: float | None = None
    page_notes: list[str] = []
    screenshots: list[str] = []
    errors: list[str] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, spec_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GEMINI_", "OPENAI_", "VR_"))}
    env.update(DAGSTER_HOME=str(home), VR_CONFIG=str(spec_path), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def write_spec(path: Path, base_url: str, videos: Path, results: Path) -> None:
    model = {"backend": "gemini", "gemini": {"base_url": base_url, "api_key": "bench-key"}}
    path.write_text(yaml.safe_dump({
        "vlm": model, "llm": json.loads(json.dumps(model)),
        "workflow": {"max_workers": 4, "mode": "normal"},
        "data": {"video_root": str(videos)}, "results_dir": str(results),
    }, sort_keys=False))


# ---------------------------------------------------------------- the template: one real run


def template_records(work: Path, clip: Path) -> dict[str, dict[str, Any]]:
    """The seven per-video records of one real `vr-annotate run` on `clip` (0-latency fake), as JSON dicts."""
    from vr_assets.fakes import FakeGemini, Teacher
    from vr_assets.graph import PER_VIDEO_ASSETS

    done = work / "records.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(work / "run", ignore_errors=True)
    (work / "run" / "videos").mkdir(parents=True)
    link_or_copy(clip, work / "run" / "videos" / f"{TEMPLATE}.mp4")
    fake = FakeGemini(teacher=Teacher(default_relevant=True, default_label="normal")).start()
    try:
        spec = work / "run" / "spec.yaml"
        write_spec(spec, fake.base_url, work / "run" / "videos", work / "run" / "results")
        t0 = time.perf_counter()
        got = subprocess.run([sys.executable, "-m", "vr_assets.cli", "run", "--config", str(spec), "--no-dataset"],
                             cwd=REPO, env=_env(work / "run" / "dagster_home", spec), capture_output=True,
                             text=True, timeout=900)
        log(f"template run: exit {got.returncode} in {time.perf_counter() - t0:.1f}s")
    finally:
        fake.stop()
    if got.returncode != 0:
        raise SystemExit(f"the template run failed:\n{got.stdout[-2000:]}\n{got.stderr[-2000:]}")
    from vr_assets.registry import VideoRegistry

    (key,) = VideoRegistry(work / "run" / "results").load()
    out = {a: json.loads((work / "run" / "results" / "assets" / a / f"{key}.json").read_text())
           for a in PER_VIDEO_ASSETS}
    out["_key"] = {"key": key}
    done.write_text(json.dumps(out))
    return out


# ---------------------------------------------------------------- instances


def postgres_available() -> str | None:
    """Why no Postgres server can be started here (None: it can)."""
    if not sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return "no /usr/lib/postgresql/*/bin/initdb"
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        return "dagster-postgres is not installed"
    return None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway Postgres (initdb + pg_ctl in a temp dir, as the `postgres` user when root); its URL."""
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
    tmp = Path(tempfile.mkdtemp(prefix="vr-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = tmp / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "pg.log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"  # SQLAlchemy 2.1 defaults to psycopg 3
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def write_home(home: Path, spec: Any, pg_url: str | None) -> None:
    """SQLite: the tuned home `vr-annotate run` writes. Postgres: its execution block plus a `storage: postgres:`."""
    from vr_assets.execution.instance import ensure_dagster_home, execution_yaml

    os.environ["DAGSTER_HOME"] = str(home)
    if pg_url is None:
        ensure_dagster_home(spec)
        return
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(  # no managed mark: vr-annotate leaves the file alone
        "telemetry:\n  enabled: false\nnux:\n  enabled: false\n" + execution_yaml(spec.workflow.max_workers)
        + "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n  class: NoOpComputeLogManager\n"
        + f"storage:\n  postgres:\n    postgres_url: {json.dumps(pg_url)}\n"
    )


def store_batch(storage: Any, events: list[Any]) -> None:
    """Materializations of one asset in bulk: Dagster's Postgres `store_event_batch` as it is; on SQLite the same
    statements (one multi-row insert, the partition tags, the asset row from the last event) against the run
    shard and the index shard that SQLite's `store_event` writes one event at a time (30 ms each here)."""
    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    if not isinstance(storage, SqliteEventLogStorage):
        storage.store_event_batch(events)
        return
    stmt = storage.prepare_insert_event_batch(events)
    with storage.run_connection(events[0].run_id) as conn:
        conn.execute(stmt)
    with storage.index_transaction() as conn:
        ids = [int(row[0]) for row in conn.execute(stmt.returning(SqlEventLogStorageTable.c.id)).fetchall()]
        storage._store_asset_event_tags(conn, events, ids)  # noqa: SLF001
        storage._store_asset_event(conn, events[-1], ids[-1])  # noqa: SLF001


def seed(work: Path, spec_path: Path, n: int, clip: Path, records: dict[str, dict[str, Any]]) -> dict[str, float]:
    """N hardlinks registered, partitioned, given records and materialization events; seconds per phase."""
    from dagster import AssetKey, AssetMaterialization, DagsterEvent, DagsterEventType, DagsterInstance
    from dagster._core.events import StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    from vr_assets.config import load_spec
    from vr_assets.discovery import discover
    from vr_assets.partitions import videos_partitions
    from vr_assets.registry import VideoRegistry
    from vr_assets.store import ASSET_RECORDS, JsonStore

    spec = load_spec(spec_path)
    took: dict[str, float] = {}
    t = time.perf_counter()
    videos_dir = Path(spec.data.video_root)
    videos_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link_or_copy(clip, videos_dir / f"v_{i:05d}.mp4")
    took["files_s"] = time.perf_counter() - t
    t = time.perf_counter()
    videos, _ = VideoRegistry(spec.results_dir).sync(discover(spec))
    took["registry_s"] = time.perf_counter() - t
    template_key = records["_key"]["key"]
    records = {a: r for a, r in records.items() if a != "_key"}
    template_video = records["filter_result"]["video"]
    store = JsonStore(spec.results_dir)
    texts = {a: json.dumps(raw) for a, raw in records.items()}
    t = time.perf_counter()
    for asset in records:
        (store.root / asset).mkdir(parents=True, exist_ok=True)
    for key, v in videos.items():
        swaps = [(template_video["path"], v.path), (template_video["rel_path"], v.rel_path), (template_key, key)]
        for asset, text in texts.items():
            for old, new in swaps:
                text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
            # validated by the record's model; written plainly (no fsync per file: 70 000 of them)
            Path(store.path(asset, key)).write_text(ASSET_RECORDS[asset].model_validate_json(text).model_dump_json())
    took["records_s"] = time.perf_counter() - t
    with DagsterInstance.get() as instance:
        t = time.perf_counter()
        instance.add_dynamic_partitions(videos_partitions.name, sorted(videos))
        took["partitions_s"] = time.perf_counter() - t
        t = time.perf_counter()
        events = 0
        for asset in records:  # one asset per batch: a batch updates the asset's row from its last event
            keys = sorted(videos)
            for i in range(0, len(keys), EVENT_BATCH):
                batch = []
                for key in keys[i : i + EVENT_BATCH]:
                    mat = AssetMaterialization(asset_key=AssetKey(asset), partition=key,
                                               metadata={"path": str(store.path(asset, key))})
                    ev = DagsterEvent(event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                                      event_specific_data=StepMaterializationData(mat), job_name=RUNLESS_JOB_NAME)
                    batch.append(EventLogEntry(user_message="", level=20, job_name=RUNLESS_JOB_NAME,
                                               run_id=RUNLESS_RUN_ID, error_info=None, timestamp=time.time(),
                                               step_key=None, dagster_event=ev))
                store_batch(instance.event_log_storage, batch)
                events += len(batch)
        took["events_s"] = time.perf_counter() - t
        took["events"] = events
        took["qa_partitions_materialized"] = len(instance.get_materialized_partitions(AssetKey("qa")))
    took["total_s"] = sum(v for k, v in took.items() if k.endswith("_s"))
    return {k: round(v, 2) for k, v in took.items()}


# ---------------------------------------------------------------- measurements


def measure_planning(home: Path, spec_path: Path, res: Backend) -> None:
    """The command's wall, and when each of its console lines came (where the time goes)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vr_assets.cli", "run", "--config", str(spec_path), "--no-dataset"],
                            cwd=REPO, env=_env(home, spec_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() and "warn" not in line.lower():
            lines.append(f"{time.perf_counter() - t:6.1f}s {line.rstrip()[:160]}")
    res.planning_exit = proc.wait()
    res.planning_s = round(time.perf_counter() - t, 2)
    res.planning_lines = lines
    if not any("0 to run" in line for line in lines):
        res.errors.append("planning found work to do or failed: " + " | ".join(lines[-5:]))


def measure_sensor(home: Path, spec_path: Path, clip: Path, res: Backend) -> None:
    """One new file, one tick in-process; another new file, one `dagster sensor preview`."""
    from dagster import DagsterInstance, SensorEvaluationContext

    from vr_assets.config import load_spec
    from vr_assets.graph import build_definitions

    spec = load_spec(spec_path)
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def("new_videos")
    link_or_copy(clip, Path(spec.data.video_root) / "new_a.mp4")
    with DagsterInstance.get() as instance:
        repo = defs.get_repository_def()
        t = time.perf_counter()
        # the context the code server builds for the daemon's tick (`dagster._grpc.impl`): its instance
        # ref gives the run requests a partitions loader that counts the partitions the tick adds
        with SensorEvaluationContext(instance.get_ref(), last_tick_completion_time=None, last_run_key=None,
                                     cursor=None, log_key=None, repository_name=repo.name, repository_def=repo,
                                     sensor_name=sensor.name) as ctx:
            out = sensor.evaluate_tick(ctx)
        res.sensor_tick_s = round(time.perf_counter() - t, 3)
        res.sensor_result = (f"{len(out.run_requests or [])} run request(s), "
                             f"{sum(len(r.partition_keys) for r in out.dynamic_partitions_requests or [])} "
                             f"new partition(s); skip: {out.skip_message}")
        for req in out.dynamic_partitions_requests or []:  # what the daemon does with the tick's result
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    link_or_copy(clip, Path(spec.data.video_root) / "new_b.mp4")
    dagster = str(Path(sys.executable).parent / "dagster")
    t = time.perf_counter()
    got = subprocess.run([dagster, "sensor", "preview", "new_videos", "-m", "vr_assets.definitions"],
                         cwd=REPO, env=_env(home, spec_path), capture_output=True, text=True, timeout=600)
    res.sensor_preview_s = round(time.perf_counter() - t, 2)
    res.sensor_preview_result = " ".join((got.stdout + got.stderr).split())[-300:]


def measure_page(home: Path, spec_path: Path, n: int, res: Backend, shots: Path) -> None:
    """dagster-webserver on the home; Chromium from `goto` until the page shows the partitions."""
    from playwright.sync_api import sync_playwright

    from vr_assets.execution.services import write_workspace

    workspace = write_workspace(home, working_directory=str(REPO))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    webserver = str(Path(sys.executable).parent / "dagster-webserver")
    logf = (home / "webserver.log").open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([webserver, "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)], cwd=REPO,
                            env=_env(home, spec_path), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        query = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"})
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(base + "/graphql", data=query.encode(),
                                             headers={"Content-Type": "application/json"})
                body = urllib.request.urlopen(req, timeout=10).read().decode()
                if '"LOADED"' in body:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            res.errors.append("the webserver did not load the code location in 300 s")
            return
        res.webserver_ready_s = round(time.perf_counter() - t0, 2)
        key_re = re.compile(r"^v_\d{5}\.mp4$")
        materialized = re.compile(rf"^Materialized \(({n:,}|{n})\)$")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(base + "/asset-groups", wait_until="load")  # warm the bundle: asset page time, not JS
                page.wait_for_timeout(1500)
                # overview: the latest materialization's partition tag; partitions view: the health
                # filter's count of materialized partitions (all N) and a key of the list
                for route, targets, field in (
                    ("/assets/qa", [page.get_by_text(key_re).first], "asset_page_s"),
                    ("/assets/qa?view=partitions", [page.get_by_text(materialized).first,
                                                    page.get_by_text(key_re).first],
                     "asset_page_partitions_s"),
                ):
                    t = time.perf_counter()
                    page.goto(base + route)
                    try:
                        for target in targets:
                            target.wait_for(state="visible", timeout=120_000)
                        setattr(res, field, round(time.perf_counter() - t, 2))
                    except Exception as e:  # noqa: BLE001 (a timeout is a figure too)
                        res.page_notes.append(f"{route}: {type(e).__name__} after 120 s")
                    shot = shots / f"partitions-{res.backend}-{n}-{re.sub(r'[^a-z]+', '-', route).strip('-')}.png"
                    page.screenshot(path=str(shot), full_page=False)
                    res.screenshots.append(str(shot.relative_to(REPO)) if shot.is_relative_to(REPO) else str(shot))
            finally:
                browser.close()
    finally:
        from vr_assets.execution.services import stop_group

        stop_group(proc)
        logf.close()


# ---------------------------------------------------------------- driver


def run_backend(name: str, n: int, out: Path, clip: Path, records: dict[str, dict[str, Any]],
                pg_url: str | None, skip_page: bool) -> Backend:
    from vr_assets.config import load_spec

    work = out / f"partitions-{name}-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec_path = work / "spec.yaml"
    write_spec(spec_path, "http://127.0.0.1:9", work / "videos", work / "results")  # no call is made
    home = work / "dagster_home"
    write_home(home, load_spec(spec_path), pg_url)
    res = Backend(backend=name, partitions=n)
    log(f"{name}: seeding {n} partitions")
    res.seed = seed(work, spec_path, n, clip, records)
    log(f"{name}: seeded in {res.seed['total_s']}s ({res.seed})")
    measure_planning(home, spec_path, res)
    log(f"{name}: planning {res.planning_s}s (exit {res.planning_exit})")
    if not skip_page:
        measure_page(home, spec_path, n, res, out)
        log(f"{name}: asset page {res.asset_page_s}s, partitions view {res.asset_page_partitions_s}s")
    measure_sensor(home, spec_path, clip, res)
    log(f"{name}: sensor tick {res.sensor_tick_s}s, preview {res.sensor_preview_s}s")
    return res


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform()}


def render(res: dict[str, Any]) -> str:
    rows = [
        ("seeding total (s)", "seed.total_s", None),
        ("  of which events (s)", "seed.events_s", None),
        ("  of which records (s)", "seed.records_s", None),
        ("(a) vr-annotate run, nothing to do (s)", "planning_s", "planning_s"),
        ("(b) new_videos tick, in-process (s)", "sensor_tick_s", "sensor_tick_s"),
        ("(b) dagster sensor preview (s, incl. load)", "sensor_preview_s", None),
        ("(c) /assets/qa overview, latest partition shown (s)", "asset_page_s", "asset_page_s"),
        ("(c) /assets/qa partitions view, Materialized (N) shown (s)", "asset_page_partitions_s", "asset_page_s"),
        ("webserver up, location loaded (s)", "webserver_ready_s", None),
    ]
    backends = res["backends"]
    lines = [f"| N = {res['partitions']} | floor | " + " | ".join(b["backend"] for b in backends) + " |",
             "|---|---|" + "---|" * len(backends)]
    for label, path, floor in rows:
        vals = []
        for b in backends:
            v: Any = b
            for part in path.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            vals.append("–" if v is None else f"{v:g}")
        lines.append(f"| {label} | {f'≤ {FLOORS[floor]:g}' if floor else ''} | " + " | ".join(vals) + " |")
    for b in backends:
        lines += [f"{b['backend']} `vr-annotate run` console, seconds since start:", *b["planning_lines"]]
    lines.append(f"\nmachine: {res['machine']} (load at start {res['load_at_start']})")
    for b in backends:
        for e in b["errors"] + b["page_notes"]:
            lines.append(f"{b['backend']}: {e}")
    for s in res.get("skipped", []):
        lines.append(f"skipped: {s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--partitions", type=int, default=10_000)
    p.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    p.add_argument("--skip-page", action="store_true", help="no webserver / Chromium")
    p.add_argument("--out", type=Path, default=BENCH / "out")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "partitions-template"
    cache.mkdir(parents=True, exist_ok=True)
    clip = cache / "clip_2s.mp4"
    if not clip.exists():
        _encode(clip, 2.0, hue=0)
    records = template_records(cache, clip)
    res: dict[str, Any] = {"partitions": args.partitions, "machine": machine(),
                           "load_at_start": [round(x, 2) for x in os.getloadavg()], "backends": [], "skipped": [],
                           "floors": FLOORS,
                           "how": "seeded: hardlinks of one 2 s clip, records of one real run re-keyed, "
                                  "runless materialization events stored 1000 per batch"}
    for name in args.backends:
        if name == "sqlite":
            res["backends"].append(run_backend(name, args.partitions, args.out, clip, records, None,
                                               args.skip_page).model_dump())
            continue
        why = postgres_available()
        if why:
            res["skipped"].append(f"postgres: {why}")
            continue
        with postgres_server() as url:
            res["backends"].append(run_backend(name, args.partitions, args.out, clip, records, url,
                                               args.skip_page).model_dump())
    res["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "partitions.json").write_text(json.dumps(res, indent=2))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
