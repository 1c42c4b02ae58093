"""The warm run launcher for an instance several hosts share (Postgres): each run launched once.

Every host's `vr-annotate run` starts a daemon, and every daemon dequeues from the one queue in the
shared database. Dagster's dequeue reads a run's status, then marks it starting: two daemons can
both read QUEUED and both launch it. Here a run is launched only by the daemon that first adds its
claim row (`vr_assets.shared_state`); the other one's launch does nothing.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from dagster._core.launcher import LaunchRunContext
from dagster._serdes import ConfigurableClassData

from vr_assets.execution.forkserver import DEFAULT_PRELOAD, POSTGRES_PRELOAD
from vr_assets.execution.launcher import WarmRunLauncher
from vr_assets.shared_state import coordinator

log = logging.getLogger(__name__)


class SharedWarmRunLauncher(WarmRunLauncher):
    """`WarmRunLauncher` plus a claim per run in the coordinator's records, its forkserver preloading
    the Postgres storage too."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, preload: Sequence[str] | None = None,
                 runs_per_process: int | None = None, spread_over: int | None = None) -> None:
        super().__init__(inst_data, [*(preload or DEFAULT_PRELOAD), *POSTGRES_PRELOAD], runs_per_process, spread_over)

    def launch_run(self, context: LaunchRunContext) -> None:
        run_id = context.dagster_run.run_id
        claims = coordinator().records("launched-runs", self._claims_dir())
        if not claims.add(run_id, f"{socket.gethostname()} {time.time():.3f}"):
            log.info("run %s was launched by another daemon", run_id)
            return
        super().launch_run(context)

    def _claims_dir(self) -> Path:
        """Where the file coordinator would keep the claims (an instance not on Postgres: one host)."""
        return Path(self._instance.root_directory) / "launched-runs"
