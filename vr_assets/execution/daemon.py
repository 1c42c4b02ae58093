"""`dagster-daemon` as `vr-annotate run` starts it: the run launcher's forkserver first, then Dagster's daemon.

The first run cannot start before the forkserver has imported what runs need, and the daemon cannot
launch before it has imported Dagster. Started by `dagster-daemon`, the two came one after the other
(~5 s on two cores before the first video's run); started here, side by side. Everything after is
Dagster's own `dagster-daemon` command.

It lives as long as the `vr-annotate run` that started it (named in `VR_DAEMON_OWNER`): when that
process is gone without stopping it (killed with -9), the daemon stops itself with Dagster's own
shutdown (a SIGTERM to itself), which lets a launch in progress finish; its forkserver exits with it.
The runs in flight finish on their run hosts, whose pipe to the launcher has closed; the queued ones
wait for the next `vr-annotate run`. Signalling the whole process group instead killed the forkserver
under a launch in progress, and that run failed (or stayed STARTING).

    python -m vr_assets.execution.daemon run --empty-workspace
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from vr_assets.execution import forkserver
from vr_assets.execution.processes import is_gone
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


OWNER_ENV = "VR_DAEMON_OWNER"  # pid:process start of the vr-annotate run the daemon serves
OWNER_CHECK_S = 1.0
OWNER_GRACE_S = 60.0  # Dagster's shutdown joins each daemon thread for up to 30 s


def _watch_owner(owner: str) -> None:
    """Stop this daemon once the vr-annotate that started it is gone; its process group if it has not stopped
    after `OWNER_GRACE_S` (what the vr-annotate's own stop would have done)."""
    while not is_gone(owner):
        time.sleep(OWNER_CHECK_S)
    print(f"vr-annotate daemon: the vr-annotate run that started it ({owner}) is gone: stopping", file=sys.stderr,
          flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(OWNER_GRACE_S)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main() -> int:
    owner = os.environ.get(OWNER_ENV, "")
    if owner:
        threading.Thread(target=_watch_owner, args=(owner,), name="vr-daemon-owner", daemon=True).start()
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
