"""A throwaway PostgreSQL server in a temp folder, for the tests and the benchmark.

Debian's `postgresql` binaries (`initdb`, `pg_ctl`), a cluster in a folder of its own, a free port on
127.0.0.1 (trust authentication: nothing leaves the machine) and the unix socket in the same folder.
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user
(`runuser -u postgres --`), which then owns the folder.

    python -m vr_assets.execution.pg_server start DIR   # prints the URL; the server keeps running
    python -m vr_assets.execution.pg_server stop DIR    # stops it and removes DIR
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "vr"
SUPERUSER = "postgres"

# A test server: losing it on a power cut costs nothing, syncing each commit costs the whole suite.
_FAST = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
         "-c listen_addresses=127.0.0.1")


class PgServerError(RuntimeError):
    pass


def pg_bin(name: str) -> str:
    """`initdb`/`pg_ctl` from PATH, else the newest /usr/lib/postgresql/<v>/bin (Debian keeps them off PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if not versions:
        raise PgServerError(f"{name} not found: install Debian's postgresql (scripts/install_system_deps.sh --test)")
    return versions[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PgServer:
    """One cluster under `root` (data/, the socket, server.log); `url` names its database `vr`."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DB_NAME}"

    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str], what: str) -> None:
        proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PgServerError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{tail}")

    def start(self) -> PgServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            ids = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, ids.pw_uid, ids.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run([pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                       "--no-sync", "--no-instructions"], "initdb")
        opts = f"-p {self.port} -k {self.root} {_FAST}"
        self._run([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                   "-o", opts, "start"], "pg_ctl start")
        self._create_db()
        return self

    def _create_db(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DB_NAME}")
        finally:
            conn.close()

    def stop(self, remove: bool = True) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop")
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def start_temp_server(parent: str | None = None) -> PgServer:
    """A new server in a new folder. The folder is made under /tmp by default: the server's user must
    be able to reach it, which pytest's per-user 0700 temp folders do not allow."""
    root = Path(tempfile.mkdtemp(prefix="vr-pg-", dir=parent))
    os.chmod(root, 0o755)
    return PgServer(root, free_port()).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vr_assets.execution.pg_server", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("dir", help="the server's folder (created by start, removed by stop)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = p.parse_args(argv)
    root = Path(args.dir).resolve()
    if args.action == "start":
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        server = PgServer(root, args.port or free_port()).start()
        (root / "url").write_text(server.url + "\n")
        print(server.url)
        return 0
    url = (root / "url").read_text().strip() if (root / "url").exists() else ""
    port = int(url.rsplit(":", 1)[1].split("/")[0]) if url else 0
    PgServer(root, port).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
