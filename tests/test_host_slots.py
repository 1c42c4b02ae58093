"""Host-wide provider slots: the concurrency limit that holds across the CLI's worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from vr_assets.providers.limits import HostSlots


def test_slots_bound_holders_across_threads_and_free_on_release(tmp_path: Path) -> None:
    slots = HostSlots(str(tmp_path), "gemini/m", 2)
    a, b = slots.acquire(), slots.acquire()
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire()), daemon=True)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and got == [], "a third holder must wait while two slots are held"
    os.close(a)
    waiter.join(10)
    assert not waiter.is_alive() and len(got) == 1
    os.close(b)
    os.close(got[0])


def test_a_dead_process_gives_its_slot_back(tmp_path: Path) -> None:
    code = (
        "import os, sys; from vr_assets.providers.limits import HostSlots; "
        f"HostSlots({str(tmp_path)!r}, 'x', 1).acquire(); os._exit(0)"
    )
    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, timeout=60, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fd = HostSlots(str(tmp_path), "x", 1).acquire()  # would block forever if the dead holder kept it
    os.close(fd)


def test_other_processes_see_held_slots(tmp_path: Path) -> None:
    held = HostSlots(str(tmp_path), "y", 1).acquire()
    code = (
        "import fcntl, os, glob, sys\n"
        f"p = glob.glob(os.path.join({str(tmp_path)!r}, 'y.*.slot'))[0]\n"
        "fd = os.open(p, os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
        "except BlockingIOError:\n    print('busy')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True).stdout.strip()
    assert out == "busy"
    os.close(held)


def test_many_waiters_queue_and_all_get_through_within_the_bound(tmp_path: Path) -> None:
    """Waiters beyond the slots queue on one lock (only its holder polls); the bound holds throughout."""
    slots = HostSlots(str(tmp_path), "q", 2)
    lock = threading.Lock()
    holding, peak, done = 0, 0, 0

    def work() -> None:
        nonlocal holding, peak, done
        fd = slots.acquire()
        with lock:
            holding += 1
            peak = max(peak, holding)
        threading.Event().wait(0.01)
        with lock:
            holding -= 1
            done += 1
        os.close(fd)

    held = [slots.acquire(), slots.acquire()]
    threads = [threading.Thread(target=work, daemon=True) for _ in range(12)]
    for t in threads:
        t.start()
    threading.Event().wait(0.2)
    # all twelve are waiting, and one of them holds the queue lock
    code = (
        "import fcntl, os\n"
        f"fd = os.open({slots.queue_path!r}, os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
        "except BlockingIOError:\n    print('busy')\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True).stdout.strip() \
        == "busy"
    assert done == 0
    for fd in held:
        os.close(fd)
    for t in threads:
        t.join(30)
    assert done == 12 and 1 <= peak <= 2
