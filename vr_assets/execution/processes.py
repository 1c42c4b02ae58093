"""Which process a pid names: a pid with its start time, so a reused pid is not mistaken for the one we meant.

Kept free of Dagster's imports: the daemon's watcher asks it while the daemon is still importing Dagster.
"""

from __future__ import annotations

import os


def proc_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time since boot), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie is a finished process
        return None
    return fields[19].decode()


def this_process() -> str:
    """`pid:start` of the calling process (start empty without /proc)."""
    pid = os.getpid()
    return f"{pid}:{proc_start(pid) or ''}"


def is_gone(process: str) -> bool:
    """`pid:start` (as `this_process` writes it) no longer names a live process; False when it is not one."""
    pid, _, start = process.partition(":")
    if not pid.isdigit():
        return False
    if start:
        return proc_start(int(pid)) != start
    try:  # no /proc where it was written: whether the pid is alive at all
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False
