"""Start-up of the processes a `vr-annotate run` begins with: imports without the garbage collector.

The CLI, Dagster's daemon and the run launcher's forkserver each import Dagster (and the SDKs, the code
location) side by side on the cores the first videos need. Those imports allocate millions of objects and
leave no garbage, yet the collections their allocations trigger were a fifth of the import CPU (~0.3 to
0.5 CPU-s a process, measured on the 2-core box). Afterwards everything loaded is frozen out of the
collector's sight, so later collections do not walk it either.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The block without cyclic garbage collection; then what it loaded frozen, and the collector back."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
