"""The Dagster home a `vr-annotate` run keeps its runs in, and the `dagster.yaml` a new one gets.

Dagster-free: the CLI sets the home up before any worker has loaded Dagster. The storages named
here are `vr_assets.instance_storage`'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vr_assets.config import Spec


def ensure_dagster_home(spec: Spec) -> Path:
    """Use $DAGSTER_HOME, or a folder beside the results so runs are never lost in a temp instance."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(Path(spec.results_dir) / "dagster_home")
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    cfg = Path(home) / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text(instance_yaml(str(Path(home).resolve())))
    return Path(home)


# Dagster's default compute-log manager mirrors each run's stdout/stderr through a `tail -F` per
# stream and a Python watchdog process: three processes per video run for files that stay empty
# here (our steps log through `context.log`, which the event log keeps). Off, the bookkeeping
# benchmark took ~12 % less CPU. `capture_stdio=True` writes Dagster's default block instead.
_NO_STDIO_CAPTURE = (
    "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n  class: NoOpComputeLogManager\n"
)


def instance_yaml(home: str, *, capture_stdio: bool = False) -> str:
    """The `dagster.yaml` for a new instance: Dagster's default file layout, our pooled storages."""
    return (
        "telemetry:\n  enabled: false\n"
        "nux:\n  enabled: false\n"
        + ("" if capture_stdio else _NO_STDIO_CAPTURE)
        + "run_storage:\n"
        "  module: vr_assets.instance_storage\n"
        "  class: PooledSqliteRunStorage\n"
        f"  config:\n    base_dir: {json.dumps(home + '/history')}\n"
        "event_log_storage:\n"
        "  module: vr_assets.instance_storage\n"
        "  class: PooledSqliteEventLogStorage\n"
        f"  config:\n    base_dir: {json.dumps(home + '/history/runs')}\n"
        "schedule_storage:\n"
        "  module: vr_assets.instance_storage\n"
        "  class: FastOpenSqliteScheduleStorage\n"
        f"  config:\n    base_dir: {json.dumps(home + '/schedules')}\n"
    )
