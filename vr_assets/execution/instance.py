"""The Dagster home every road uses, and the tuned `dagster.yaml` it gets.

The file names the instance's run queue (Dagster's `QueuedRunCoordinator`: at most
`workflow.max_workers` runs at once, whichever road submitted them), the run launcher
(`vr_assets.execution.launcher.WarmRunLauncher`: each run forked from a warm process), run
monitoring and run retries (a run whose process died is marked failed and retried once; a video
that failed for its own reason is not), and the storages. `vr-annotate run` and `vr-annotate ui`
both write it; a file we wrote is rewritten when the spec's limits change, a file of the user's
is left alone and checked (`untuned_reasons`).

Storage: our SQLite files in the home, or, with `VR_DAGSTER_POSTGRES_URL` set, a Postgres database
(dagster-postgres's storages with a kept connection pool, `execution/pg_storage.py`), which several
hosts can share (`vr_assets.shared_state` then keeps the answer cache's locks and the provider slots
there too). A home written for Postgres stays on it when a later command runs without the variable.

Dagster-free: the CLI sets the home up before it loads Dagster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import yaml

from vr_assets.config import Spec

POSTGRES_URL_ENV = "VR_DAGSTER_POSTGRES_URL"

# The first line of every dagster.yaml we write: only such a file is ever rewritten.
MANAGED_MARK = "# written by vr-annotate (vr_assets.execution.instance); edit freely, then delete this line"


def ensure_dagster_home(spec: Spec) -> Path:
    """Use $DAGSTER_HOME, or a folder beside the results so runs are never lost in a temp instance.

    Writes the tuned `dagster.yaml` into a new home, and rewrites one we wrote before (the spec's
    `workflow.max_workers` may have changed); a user's own file is left as it is.
    """
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(Path(spec.results_dir) / "dagster_home")
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    cfg = Path(home) / "dagster.yaml"
    ours = cfg.exists() and cfg.read_text().startswith(MANAGED_MARK)
    pg = os.environ.get(POSTGRES_URL_ENV) or (postgres_url_of(home) if ours else None)
    text = instance_yaml(str(Path(home).resolve()), max_workers=spec.workflow.max_workers, postgres_url=pg)
    if not cfg.exists() or (cfg.read_text().startswith(MANAGED_MARK) and cfg.read_text() != text):
        tmp = cfg.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, cfg)
    return Path(home)


# Dagster's default compute-log manager mirrors each run's stdout/stderr through a `tail -F` per
# stream and a Python watchdog process: three processes per video run for files that stay empty
# here (our steps log through `context.log`, which the event log keeps). Off, the bookkeeping
# benchmark took ~12 % less CPU. `capture_stdio=True` writes Dagster's default block instead.
_NO_STDIO_CAPTURE = (
    "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n  class: NoOpComputeLogManager\n"
)


# (module, class) of the run launcher: the warm one, or its subclass that claims each run (several hosts)
LAUNCHERS = {False: ("vr_assets.execution.launcher", "WarmRunLauncher"),
             True: ("vr_assets.execution.shared_launcher", "SharedWarmRunLauncher")}


def execution_yaml(max_workers: int, shared: bool = False) -> str:
    """The run queue, launcher, monitoring and retries: how every run of every road executes. `shared`:
    several hosts' daemons dequeue from this instance (Postgres), so each run is launched by one only."""
    module, cls = LAUNCHERS[shared]
    return (
        "concurrency:\n"
        "  runs:\n"
        f"    max_concurrent_runs: {max_workers}\n"
        "run_coordinator:\n"
        "  module: dagster._core.run_coordinator\n"
        "  class: QueuedRunCoordinator\n"
        "  config:\n"
        "    dequeue_interval_seconds: 1\n"
        "    dequeue_use_threads: true\n"
        "    dequeue_num_workers: 4\n"
        "run_launcher:\n"
        f"  module: {module}\n"
        f"  class: {cls}\n"
        "run_monitoring:\n"
        "  enabled: true\n"
        "  poll_interval_seconds: 5\n"
        "  start_timeout_seconds: 180\n"
        "run_retries:\n"
        "  enabled: true\n"
        "  max_retries: 1\n"
        "  retry_on_asset_or_op_failure: false\n"
    )


def dagster_postgres_url(url: str) -> str:
    """The URL with psycopg2 named: SQLAlchemy 2.1 picks psycopg 3 for a bare `postgresql://`, which
    dagster-postgres does not work with (it depends on psycopg2)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        raise ValueError(f"{POSTGRES_URL_ENV} must be a postgresql:// URL, got {url.split('@')[-1]!r}")
    return "postgresql+psycopg2://" + rest


def postgres_url_of(home: str | os.PathLike[str]) -> str | None:
    """The Postgres database a home's `dagster.yaml` stores the instance in (None: not Postgres)."""
    try:
        data = yaml.safe_load((Path(home) / "dagster.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    pg = (data.get("storage") or {}).get("postgres")
    run_storage = data.get("run_storage") or {}
    if not isinstance(pg, dict) and "postgres" in str(run_storage.get("module", "")).lower() + str(
        run_storage.get("class", "")
    ).lower():
        pg = run_storage.get("config")
    if not isinstance(pg, dict):
        return None

    def value(v: object) -> str:
        return os.environ.get(v["env"], "") if isinstance(v, dict) and "env" in v else str(v or "")

    if pg.get("postgres_url"):
        return value(pg["postgres_url"]) or None
    db = pg.get("postgres_db") or {}
    user, password = quote(value(db.get("username"))), quote(value(db.get("password")))
    auth = f"{user}:{password}" if password else user
    port = value(db.get("port")) or "5432"
    return f"postgresql://{auth}@{value(db.get('hostname'))}:{port}/{value(db.get('db_name'))}"


def instance_yaml(
    home: str, *, max_workers: int = 4, capture_stdio: bool = False, postgres_url: str | None = None
) -> str:
    """The `dagster.yaml` for a new instance: the execution block, Dagster's file layout, and our SQLite
    storages, or our pooled Postgres storages on one database (`postgres_url`)."""
    head = (
        MANAGED_MARK + "\n"
        "telemetry:\n  enabled: false\n"
        "nux:\n  enabled: false\n"
        + execution_yaml(max_workers, shared=bool(postgres_url))
        + ("" if capture_stdio else _NO_STDIO_CAPTURE)
    )
    if postgres_url:
        url = json.dumps(dagster_postgres_url(postgres_url))
        return head + "".join(
            f"{kind}_storage:\n  module: vr_assets.execution.pg_storage\n  class: PooledPostgres{cls}Storage\n"
            f"  config:\n    postgres_url: {url}\n"
            for kind, cls in (("run", "Run"), ("event_log", "EventLog"), ("schedule", "Schedule"))
        )
    return (
        head
        + "run_storage:\n"
        "  module: vr_assets.execution.storage\n"
        "  class: PooledSqliteRunStorage\n"
        f"  config:\n    base_dir: {json.dumps(home + '/history')}\n"
        "event_log_storage:\n"
        "  module: vr_assets.execution.storage\n"
        "  class: PooledSqliteEventLogStorage\n"
        f"  config:\n    base_dir: {json.dumps(home + '/history/runs')}\n"
        "schedule_storage:\n"
        "  module: vr_assets.execution.storage\n"
        "  class: FastOpenSqliteScheduleStorage\n"
        f"  config:\n    base_dir: {json.dumps(home + '/schedules')}\n"
    )


def untuned_reasons(home: str | os.PathLike[str] | None) -> list[str]:
    """What a Dagster home lacks for this package's runs to be fast and bounded (empty: tuned)."""
    if not home:
        return ["DAGSTER_HOME is not set (Dagster uses a temporary instance: runs are lost on exit)"]
    cfg = Path(home) / "dagster.yaml"
    if not cfg.exists():
        return [f"{cfg} does not exist"]
    try:
        data = yaml.safe_load(cfg.read_text()) or {}
    except yaml.YAMLError as e:
        return [f"{cfg} is not valid YAML: {e}"]
    why = []
    launcher = (data.get("run_launcher") or {}).get("class", "DefaultRunLauncher")
    if launcher == "DefaultRunLauncher":  # a cluster's K8s/Docker launcher is a choice, not an omission
        why.append("run_launcher is Dagster's default (each run starts Python anew); ours is "
                   "vr_assets.execution.launcher.WarmRunLauncher")
    limits = [((data.get("concurrency") or {}).get("runs") or {}).get("max_concurrent_runs"),
              (data.get("run_queue") or {}).get("max_concurrent_runs"),
              ((data.get("run_coordinator") or {}).get("config") or {}).get("max_concurrent_runs")]
    if all(x is None for x in limits):
        why.append("no run limit is set (Dagster's default queue starts 10 runs at once, not workflow.max_workers)")
    if not (data.get("run_monitoring") or {}).get("enabled"):
        why.append("run_monitoring is off (a killed run stays STARTED forever)")
    return why
