"""Start-up turns: new workers prepare their first videos a few at a time, up to their first request."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from vr_assets import turns
from vr_assets.providers.limits import HostSlots, RateLimiter
from vr_assets.runner import startup_turns

REPO = str(Path(__file__).resolve().parent.parent)


def other_process_takes(directory: Path, timeout_s: float) -> bool:
    code = f"from vr_assets import turns; print(turns.take({str(directory)!r}, 1, {timeout_s}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"


@pytest.fixture(autouse=True)
def _no_turn_left_over() -> Any:
    yield
    turns.end()


def test_acquire_gives_up_after_its_timeout_and_succeeds_once_free(tmp_path: Path) -> None:
    slots = HostSlots(str(tmp_path), "t", 1)
    held = slots.acquire()
    t0 = time.monotonic()
    assert slots.acquire(timeout_s=0.3) is None
    assert 0.25 <= time.monotonic() - t0 < 5
    os.close(held)  # type: ignore[arg-type]
    fd = slots.acquire(timeout_s=0.3)
    assert fd is not None
    os.close(fd)


def test_a_waiter_queued_behind_another_waiter_also_times_out(tmp_path: Path) -> None:
    slots = HostSlots(str(tmp_path), "q", 1)
    held = slots.acquire()
    queue = os.open(slots.queue_path, os.O_CREAT | os.O_RDWR)  # another waiter in the queue
    import fcntl

    fcntl.flock(queue, fcntl.LOCK_EX)
    try:
        assert slots.acquire(timeout_s=0.2) is None
    finally:
        os.close(queue)
        os.close(held)  # type: ignore[arg-type]


def test_a_held_turn_keeps_another_worker_waiting_until_it_ends(tmp_path: Path) -> None:
    assert turns.take(str(tmp_path), 1, 5.0) and turns.holding()
    assert turns.take(str(tmp_path), 1, 5.0)  # taking again in the same worker: the turn it has
    assert not other_process_takes(tmp_path, 0.3)  # waited, gave up, went on without one
    turns.end()
    assert not turns.holding()
    assert other_process_takes(tmp_path, 5.0)
    turns.end()  # ending without a turn is a no-op


def test_the_first_request_ends_the_turn(tmp_path: Path) -> None:
    assert turns.take(str(tmp_path), 1, 5.0)
    limiter = RateLimiter("test/model", max_concurrency=2)
    with limiter.slot():
        assert not turns.holding()
        assert other_process_takes(tmp_path, 5.0)


def test_turns_default_to_one_per_usable_core(make_pipeline: Any) -> None:
    env = make_pipeline("gemini")
    assert startup_turns(env.spec()) == len(os.sched_getaffinity(0))
    assert startup_turns(env.spec(workflow={"startup_turns": 0})) == 0
    assert startup_turns(env.spec(workflow={"startup_turns": 3})) == 3


def test_a_second_worker_starts_its_video_only_once_the_first_sent_its_request(
    make_pipeline: Any, synthetic_videos: dict[str, Path]
) -> None:
    """One turn, two workers: whichever worker waits starts its run after the other's first request.

    Without turns both runs start together, before either sends a request (step 0 needs its media
    first), so the later run start would come before the first request.
    """
    env = make_pipeline("gemini")
    for i in range(2):
        env.add_video(synthetic_videos["clip8"], f"cam{i}/clip.mp4")
    spec = env.spec(workflow={"qa_types": ["mcq"], "max_workers": 2, "startup_turns": 1},
                    media={"fps": 2.0, "max_side": 96, "prefetch": False})
    summary = env.run(spec, parallel=2, build_dataset=False)
    assert summary.failed == {} and len(summary.succeeded) == 2
    starts = sorted(r.start_time for r in DagsterInstance.get().get_run_records() if r.start_time is not None)
    assert len(starts) == 2
    first_request = min(r.started_at for r in env.model_requests())
    # the turn ends just before the request goes out; the waiting worker then still starts up
    assert starts[1] >= first_request - 0.05, (starts, first_request)
