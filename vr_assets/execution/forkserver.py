"""The run launcher's forkserver, kept apart from Dagster's imports so it can start before them.

A process has one forkserver (`multiprocessing`'s own). `WarmRunLauncher` forks every run host from it;
`vr_assets.execution.daemon` starts it first thing, so its imports (~3 CPU-s: Dagster, the SDKs,
the code location) run beside the daemon's own instead of after them.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Sequence
from multiprocessing.context import BaseContext

log = logging.getLogger(__name__)

DEFAULT_PRELOAD = ("vr_assets.execution.preload",)
# The run's instance opens its Postgres storages (dagster_postgres): ~1-2 s of imports in every run
# process unless the forkserver has them already.
POSTGRES_PRELOAD = ("vr_assets.execution.pg_storage", "psycopg2")

_lock = threading.Lock()
_preloaded: tuple[str, ...] | None = None


def context(preload: Sequence[str]) -> BaseContext:
    """The forkserver context, its server importing `preload` (fixed by whoever asks first)."""
    global _preloaded
    with _lock:
        ctx = multiprocessing.get_context("forkserver")
        if _preloaded is None:
            ctx.set_forkserver_preload(list(preload))
            _preloaded = tuple(preload)
        elif tuple(preload) != _preloaded:
            log.warning("forkserver already started with %s; runs will import %s themselves", _preloaded, preload)
        return ctx


def start(preload: Sequence[str]) -> None:
    """Start the forkserver now (its imports take seconds) instead of at the first launch."""
    from multiprocessing import forkserver

    context(preload)
    forkserver.ensure_running()
