"""`dagster-daemon` as `vr-annotate run` starts it: the run launcher's forkserver first, then Dagster's daemon.

The first run cannot start before the forkserver has imported what runs need, and the daemon cannot
launch before it has imported Dagster. Started by `dagster-daemon`, the two came one after the other
(~5 s on two cores before the first video's run); started here, side by side. Everything after is
Dagster's own `dagster-daemon` command.

    python -m vr_assets.execution.daemon run --empty-workspace
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from pathlib import Path

from vr_assets.execution import forkserver
from vr_assets.execution.startup import collector_paused


def _preload_for_home() -> tuple[str, ...] | None:
    """The preload of the home's warm run launcher, or None when `dagster.yaml` names another launcher."""
    home = os.environ.get("DAGSTER_HOME")
    try:
        text = (Path(home) / "dagster.yaml").read_text() if home else ""
    except OSError:
        return None
    if "SharedWarmRunLauncher" in text:
        return (*forkserver.DEFAULT_PRELOAD, *forkserver.POSTGRES_PRELOAD)
    if "WarmRunLauncher" in text and "preload:" not in text:
        return forkserver.DEFAULT_PRELOAD
    return None


def main() -> int:
    preload = _preload_for_home()
    if preload is not None:
        forkserver.start(preload)
    with collector_paused():
        from dagster._daemon.cli import main as dagster_daemon

        if preload is not None:  # what opening the tuned home's instance imports: its launcher and storage
            importlib.import_module("vr_assets.execution.launcher")
            postgres = set(forkserver.POSTGRES_PRELOAD) <= set(preload)
            importlib.import_module("vr_assets.execution.pg_storage" if postgres else "vr_assets.execution.storage")

    sys.argv[0] = "dagster-daemon"
    try:
        return dagster_daemon()
    finally:
        # the interpreter's last garbage collection would walk every object Dagster loaded (~1 s on the way
        # out, which `vr-annotate run` waits for); nothing needs collecting then
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
