"""CPU seconds of a whole process tree, including subtrees its root never reaps.

RUSAGE_CHILDREN only sees children that were waited for, and the CPU of each one's own
waited-for children. A multiprocessing forkserver is not reaped by the pipeline process,
so the work of its pool (the Dagster runs, their ffmpeg) would be invisible. This samples
/proc for every descendant and adds the subtrees whose time never flowed back to the root.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class _Proc:
    pid: int
    ppid: int
    own: float = 0.0  # utime + stime
    reaped: float = 0.0  # cutime + cstime: children this process waited for
    last_seen: float = 0.0
    parent_reaped_then: float = 0.0  # the parent's `reaped` at this process's last sample


def _stat(pid: int) -> tuple[int, float, float, int] | None:
    """(ppid, own s, reaped-children s, start time) or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid=4, utime=14, stime=15, cutime=16, cstime=17, starttime=22
    ppid = int(rest[1])
    own = (int(rest[11]) + int(rest[12])) / _TICK
    reaped = (int(rest[13]) + int(rest[14])) / _TICK
    return ppid, own, reaped, int(rest[19])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


class TreeCpu:
    """Start after the root is spawned, call `total(root_rusage_s)` after it was waited for."""

    def __init__(self, root_pid: int, interval_s: float = 0.25) -> None:
        self.root = root_pid
        self.interval_s = interval_s
        self.procs: dict[tuple[int, int], _Proc] = {}
        self._by_pid: dict[int, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-cpu", daemon=True)

    def start(self) -> TreeCpu:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        now = time.monotonic()
        seen: dict[int, tuple[int, float, float, int]] = {}
        stack = [self.root]
        while stack:
            pid = stack.pop()
            st = _stat(pid)
            if st is None:
                continue
            seen[pid] = st
            stack += _children(pid)
        for pid, (ppid, own, reaped, start) in seen.items():
            key = (pid, start)
            p = self.procs.get(key)
            if p is None:
                p = self.procs[key] = _Proc(pid=pid, ppid=ppid)
            p.own, p.reaped, p.last_seen = own, reaped, now
            p.ppid = ppid
            parent = seen.get(ppid)
            p.parent_reaped_then = parent[2] if parent else 0.0
            self._by_pid[pid] = key

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def total(self, root_rusage_s: float) -> float:
        """Root (exact, from rusage) plus every descendant subtree whose CPU did not reach its parent."""
        self.stop()
        root = self._by_pid.get(self.root)
        root_key = root if root is not None else (self.root, -1)
        extra = 0.0
        for key, p in self.procs.items():
            if key == root_key:
                continue
            mine = p.own + p.reaped
            parent_key = self._by_pid.get(p.ppid)
            parent = self.procs.get(parent_key) if parent_key else None
            if parent is None:
                extra += mine
                continue
            # The root's final waited-for CPU is known exactly; other parents' only from their last sample.
            root_parent = parent_key == root_key
            parent_final = max(root_rusage_s - parent.own, parent.reaped) if root_parent else parent.reaped
            # Reaped by its parent when the parent's waited-for CPU grew by (about) this process's total.
            if parent_final - p.parent_reaped_then >= 0.8 * mine - 2 * self.interval_s:
                continue
            extra += mine
        return root_rusage_s + extra


class TreeMemory:
    """Peak memory of a process tree, sampled from /proc: PSS (pages shared by forked processes count
    once, split among them), the RSS sum (shared pages counted in every process), and processes alive."""

    def __init__(self, root_pid: int, interval_s: float = 0.5) -> None:
        self.root = root_pid
        self.interval_s = interval_s
        self.peak_pss_mb = 0.0
        self.peak_rss_mb = 0.0
        self.peak_procs = 0
        self.samples: list[tuple[float, int, float]] = []  # (time, processes, PSS MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)

    def start(self) -> TreeMemory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def tree(self) -> list[int]:
        seen, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            seen.append(pid)
            todo += _children(pid)
        return seen

    def sample(self) -> None:
        pss = rss = 0.0
        n = 0
        for pid in self.tree():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            n += 1
            for line in text.splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
        self.samples.append((time.time(), n, round(pss, 1)))
        self.peak_pss_mb = max(self.peak_pss_mb, pss)
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        self.peak_procs = max(self.peak_procs, n)
