"""Why a video failed: the latest failed Dagster run of its partition, from the instance's run history.

A failed step writes no record (nothing half-written), so the results folder only shows where a
video stopped; the cause is in Dagster's event log. Read at most every `every_s` seconds, and only
the failed runs (few, next to the videos), so the index stays quick.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

PARTITION_TAG = "dagster/partition"


class DagsterFailures:
    """Callable: `{partition: (unix time of the failure, cause)}` for partitions whose latest failed run it saw."""

    def __init__(self, home: str | Path, every_s: float = 10.0, limit: int = 5000) -> None:
        self.home = Path(home)
        self.every_s = every_s
        self.limit = limit
        self._lock = threading.Lock()
        self._at = -1e18
        self._got: dict[str, tuple[float, str]] = {}
        self._instance: object | None = None

    def __call__(self) -> dict[str, tuple[float, str]]:
        with self._lock:
            if time.monotonic() - self._at < self.every_s:
                return self._got
            self._at = time.monotonic()
            if not (self.home / "dagster.yaml").is_file():
                return self._got
            self._got = self._read()
            return self._got

    def _read(self) -> dict[str, tuple[float, str]]:
        from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

        if self._instance is None:
            self._instance = DagsterInstance.from_config(str(self.home))
        instance = self._instance
        records = instance.get_run_records(  # type: ignore[attr-defined]
            filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]), limit=self.limit
        )
        out: dict[str, tuple[float, str]] = {}
        for rec in records:  # newest first
            key = rec.dagster_run.tags.get(PARTITION_TAG)
            if not key or key in out:
                continue
            when = (rec.end_time or rec.update_timestamp.timestamp())
            out[key] = (float(when), _cause(instance, rec.dagster_run.run_id))
        return out


def _cause(instance: object, run_id: str) -> str:
    from dagster import DagsterEventType

    for ev in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):  # type: ignore[attr-defined]
        data = ev.dagster_event.event_specific_data if ev.dagster_event else None
        ufd = getattr(data, "user_failure_data", None)
        if ufd is not None and ufd.description:
            return f"{ev.step_key}: {ufd.description}"
        err = getattr(data, "error", None)
        if err is not None:
            while getattr(err, "cause", None) is not None:
                err = err.cause
            return f"{ev.step_key}: {err.message.strip()}"
    return "run failed (no step failure recorded)"
