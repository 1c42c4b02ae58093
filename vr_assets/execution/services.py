"""Dagster's own processes, started for a home: the daemon `vr-annotate run` needs, and `vr-annotate ui`.

Both roads use Dagster's processes as they are: the daemon dequeues runs and launches them through
the instance's run launcher; `dagster dev` is the webserver plus that daemon (with the sensors).
A flock in the home marks that a vr-annotate process serves it with a daemon, so a `vr-annotate run`
beside an open `vr-annotate ui` submits to the UI's daemon instead of starting a second one. The daemon
shares that lock with the process that started it (the lock ends when both have), stops itself when that
process is gone (killed), and a `vr-annotate run` whose runs wait in a queue no daemon serves any more
(the UI closed, the other run ended) starts one of its own (`DaemonKeeper`).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import yaml

from vr_assets.config import Spec, private_key_env
from vr_assets.execution.daemon import OWNER_ENV
from vr_assets.execution.processes import this_process

DAEMON_LOCK = ".vr-daemon.lock"


def _bin(name: str) -> str:
    """A console script of this environment (the venv's, not whatever is first on PATH)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def write_workspace(home: Path, working_directory: str | None = None) -> Path:
    """`<home>/workspace.yaml`: the one code location, loaded from the installed package."""
    path = home / "workspace.yaml"
    text = yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "vr_assets.definitions", "location_name": "vr_assets",
        "working_directory": working_directory or os.getcwd()}}]})
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def write_effective_spec(spec: Spec, home: Path) -> Path:
    """The spec with the command line's overrides applied, for the processes that load the location.

    Every path in it is absolute already (`Spec.resolved`); a key given in the file is not in it (the
    spec holds only the name of the private variable it was moved to, which the children inherit).
    """
    data = json.loads(spec.model_dump_json())
    for role in ("vlm", "llm"):
        for backend in ("gemini", "openai"):
            literal = data[role][backend].get("api_key")
            if literal:  # never on disk: the children read it from the private variable
                os.environ[private_key_env(role)] = literal
                data[role][backend]["api_key"] = ""
    path = home / "vr-annotate-spec.yaml"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


def services_env(home: Path, spec_path: Path, spec: Spec) -> dict[str, str]:
    """The environment of the daemon and the webserver (and so of every run they launch)."""
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(home), VR_CONFIG=str(spec_path))
    env.setdefault("VR_HOST_SLOTS_DIR", os.path.join(spec.results_dir, "cache", "slots"))
    return env


def _take_daemon_lock(home: Path) -> IO[str] | None:
    """The home's daemon lock, open and held (until the file is closed, here and in whatever inherited it), or
    None when another process holds it."""
    fh = open(home / DAEMON_LOCK, "a")  # noqa: SIM115 (held by the caller)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace_s`."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _start_daemon(lock: IO[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`vr-annotate run`'s daemon, sharing the home's lock, told which process it serves.

    Its workspace is empty: it only dequeues and launches the runs `vr-annotate run` submits (and
    monitors them), so it loads no code location and runs no sensor of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "vr_assets.execution.daemon", "run", "--empty-workspace", "--log-level", "warning"],
        env={**env, OWNER_ENV: this_process()}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(lock.fileno(),),
    )


TAKE_OVER_CHECK_S = 1.0


class DaemonKeeper:
    """The daemon serving a home for one `vr-annotate run`: its own, or another vr-annotate's.

    `ensure()` takes the home's daemon lock if nobody holds it and starts a daemon; while another process
    holds it, that process's daemon serves the queue. Called again while the runs are followed, it starts
    one the moment the other daemon is gone, so queued runs never wait for a daemon that will not come.
    """

    def __init__(self, home: Path, env: dict[str, str], log: IO[bytes]) -> None:
        self._home, self._env, self._log = home, env, log
        self._lock: IO[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def ensure(self) -> bool:
        """A daemon serves the home; True when this call started it."""
        if self.proc is not None:
            return False
        self._lock = _take_daemon_lock(self._home)
        if self._lock is None:
            return False
        self.proc = _start_daemon(self._lock, self._env, self._log)
        return True

    @contextmanager
    def taking_over(self, started: Callable[[], None]) -> Iterator[None]:
        """For the block: when another process's daemon served the home, start one the moment it is gone
        (`started` is called then)."""
        if self.proc is not None:
            yield
            return
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(TAKE_OVER_CHECK_S):
                if self.ensure():
                    started()
                    return

        thread = threading.Thread(target=watch, name="vr-daemon-keeper", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def close(self, grace_s: float = 20.0) -> None:
        """Stop this process's daemon (if it started one) and let go of the lock."""
        if self.proc is not None:
            stop_group(self.proc, grace_s)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextmanager
def run_daemon(home: Path, env: dict[str, str], log: IO[bytes]) -> Iterator[DaemonKeeper]:
    """The home's daemon for the block: started here unless a vr-annotate daemon serves it already
    (`keeper.proc` is then None, and `keeper.ensure()` takes over when that daemon is gone)."""
    keeper = DaemonKeeper(home, env, log)
    keeper.ensure()
    try:
        yield keeper
    finally:
        keeper.close()


def serve_ui(home: Path, env: dict[str, str], workspace: Path, host: str, port: int) -> int:
    """Become `dagster dev` (webserver + daemon with the sensors) on the tuned home.

    The process *is* `dagster dev` from here on (exec), so ^C and SIGTERM reach Dagster's own shutdown of
    its webserver, daemon and code server, and nothing is left running. The home's daemon lock stays held
    across the exec (its descriptor is inherited), so a `vr-annotate run` meanwhile submits to this daemon.
    """
    fh = _take_daemon_lock(home)  # held for the life of the exec'd process
    if fh is None:
        print(f"another vr-annotate process serves {home} with a daemon; stop it first", file=sys.stderr)
        return 2
    os.set_inheritable(fh.fileno(), True)
    cmd = [_bin("dagster"), "dev", "-w", str(workspace), "-h", host, "-p", str(port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
