"""What every process working on one results folder must agree on, on one host or on many.

Three things: a call key's single flight (one paid call per key, even when two processes ask at
the same moment), a provider's request slots (never more than `max_concurrency` in flight), and
the small records of the Gemini upload registry. A `Coordinator` keeps them:

- `FileCoordinator` (the default, one host): flock files, as the project always did. A lock file
  beside the answer it guards, slot files under `VR_HOST_SLOTS_DIR`, one JSON file per record.
- `PgCoordinator`, when the Dagster instance is on Postgres (`VR_DAGSTER_POSTGRES_URL`, or the
  home's `dagster.yaml` names a Postgres storage): the same database every host already shares.
  Locks and slots are session advisory locks (`pg_advisory_lock`, `pg_try_advisory_lock`) keyed by
  a hash, so the server frees them when a holder's connection dies, like the kernel frees an
  flock; records are rows of our own table beside Dagster's.

The answers themselves stay files in the (shared) results folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from vr_assets.execution.instance import POSTGRES_URL_ENV, postgres_url_of
from vr_assets.store import atomic_write_text

Release = Callable[[], None]
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- interface


class Slots(ABC):
    """`n` request slots shared by every process that sees the same coordinator."""

    @abstractmethod
    def acquire(self, timeout_s: float | None = None) -> Release | None:
        """Blocks until a slot is free and returns what gives it back; None once `timeout_s` passed."""


class Records(ABC):
    """A namespace of small text records with one lock over the whole namespace (read-modify-write)."""

    @abstractmethod
    def locked(self) -> Any: ...

    @abstractmethod
    def get(self, key: str) -> str | None: ...

    @abstractmethod
    def put(self, key: str, value: str) -> None: ...

    @abstractmethod
    def add(self, key: str, value: str) -> bool:
        """Store `value` unless `key` has one (no lock needed): True for the one caller that stored it."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def names(self) -> list[str]: ...


class Coordinator(ABC):
    kind: str

    @contextmanager
    def lock(self, key: str, path: Path) -> Iterator[None]:
        """`key` held by this caller alone, across processes (and hosts on Postgres). `path`: the lock
        file of the file coordinator, beside what it guards."""
        with self.lock_all([(key, path)]):
            yield

    @abstractmethod
    def lock_all(self, items: Sequence[tuple[str, Path]]) -> Any:
        """Every key held at once, taken in one order every holder uses (no deadlock)."""

    @abstractmethod
    def slots(self, name: str, n: int) -> Slots | None:
        """The shared slots of one endpoint; None when nothing beyond this process is to be bounded."""

    @abstractmethod
    def records(self, namespace: str, root: Path) -> Records:
        """A record namespace; `root` is the file coordinator's folder for it."""


# ---------------------------------------------------------------- files (one host)


@contextmanager
def key_file_lock(path: Path) -> Iterator[None]:
    """One holder per key across processes: an flock on a file, removed by its holder. A waiter that
    wakes on a removed file takes the new one, so the folder keeps no lock files and two holders
    never overlap."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


class _FileSlots(Slots):
    def __init__(self, host: Any) -> None:
        self.host = host

    def acquire(self, timeout_s: float | None = None) -> Release | None:
        fd = self.host.acquire(timeout_s)
        return None if fd is None else (lambda: os.close(fd))


class _FileRecords(Records):
    """One `<key>.json` file per record under `root`; changes hold the folder's `.lock`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self, key: str) -> str | None:
        try:
            return self._path(key).read_text()
        except FileNotFoundError:
            return None

    def put(self, key: str, value: str) -> None:
        atomic_write_text(self._path(key), value)

    def add(self, key: str, value: str) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self._path(key), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def names(self) -> list[str]:
        return [p.stem for p in sorted(self.root.glob("*.json"))] if self.root.is_dir() else []


class FileCoordinator(Coordinator):
    kind = "files"

    @contextmanager
    def lock_all(self, items: Sequence[tuple[str, Path]]) -> Iterator[None]:
        with ExitStack() as held:
            for _, path in sorted(items, key=lambda kv: kv[0]):
                held.enter_context(key_file_lock(path))
            yield

    def slots(self, name: str, n: int) -> Slots | None:
        from vr_assets.providers.limits import file_host_slots

        host = file_host_slots(name, n)
        return None if host is None else _FileSlots(host)

    def records(self, namespace: str, root: Path) -> Records:
        return _FileRecords(root)


# ---------------------------------------------------------------- Postgres (many hosts)


def _key64(key: str) -> int:
    """A bigint advisory-lock key (the one-argument lock space)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


def _key32(key: str) -> int:
    """An int4 key: slots lock (name, index) in the two-argument space, apart from `_key64`'s."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big", signed=True)


def libpq_url(url: str) -> str:
    """The URL psycopg2 takes (no SQLAlchemy driver suffix)."""
    scheme, sep, rest = url.partition("://")
    return ("postgresql" if scheme.startswith("postgres") else scheme) + sep + rest


_TABLE = "vr_shared_records"


class _PgSlots(Slots):
    """Slot i of `name` is the advisory lock (hash(name), i). One connection per process holds this
    process's slots and only ever tries them (never blocks), so its threads share it."""

    def __init__(self, coord: PgCoordinator, name: str, n: int, poll_s: float = 0.005) -> None:
        self.coord = coord
        self.k1 = _key32(f"slots:{name}")
        self.n = max(1, n)
        self.poll_s = poll_s

    def _try(self) -> Release | None:
        c = self.coord
        with c._slot_mu:
            conn = c._slot_conn()
            start = random.randrange(self.n)
            for j in range(self.n):
                i = (start + j) % self.n
                if (self.k1, i) in c._held_slots:
                    continue
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (self.k1, i))
                    got = cur.fetchone()[0]
                if got:
                    c._held_slots.add((self.k1, i))
                    gen = c._slot_gen
                    return lambda: self._release(i, gen)
        return None

    def _release(self, i: int, gen: int) -> None:
        import psycopg2

        c = self.coord
        with c._slot_mu:
            if gen != c._slot_gen:  # the session that held it is gone, and the slot with it
                return
            c._held_slots.discard((self.k1, i))
            try:
                with c._slot_conn().cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (self.k1, i))
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                c._drop_slot_session()

    def _try_or_reconnect(self) -> Release | None:
        """A dropped session (a server restart) held nothing any more: start a new one and try again."""
        import psycopg2

        try:
            return self._try()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            log.warning("slots %s: Postgres session lost (%s); reconnecting", self.k1, str(e).strip())
            with self.coord._slot_mu:
                self.coord._drop_slot_session()
            return None

    def acquire(self, timeout_s: float | None = None) -> Release | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = self.poll_s
        while (release := self._try_or_reconnect()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 1.5, 0.05)
        return release


class _PgRecords(Records):
    def __init__(self, coord: PgCoordinator, namespace: str) -> None:
        self.coord = coord
        self.ns = namespace

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.coord.lock_all([(f"records:{self.ns}", Path())]):
            yield

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        self.coord.ensure_table()
        with self.coord._connection() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def add(self, key: str, value: str) -> bool:
        return bool(self._query(f"INSERT INTO {_TABLE} (ns, key, value) VALUES (%s, %s, %s) "
                                "ON CONFLICT (ns, key) DO NOTHING RETURNING key", (self.ns, key, value)))

    def get(self, key: str) -> str | None:
        rows = self._query(f"SELECT value FROM {_TABLE} WHERE ns = %s AND key = %s", (self.ns, key))
        return rows[0][0] if rows else None

    def put(self, key: str, value: str) -> None:
        self._query(f"INSERT INTO {_TABLE} (ns, key, value) VALUES (%s, %s, %s) ON CONFLICT (ns, key) "
                    "DO UPDATE SET value = EXCLUDED.value, updated_at = now()", (self.ns, key, value))

    def delete(self, key: str) -> None:
        self._query(f"DELETE FROM {_TABLE} WHERE ns = %s AND key = %s", (self.ns, key))

    def names(self) -> list[str]:
        return [r[0] for r in self._query(f"SELECT key FROM {_TABLE} WHERE ns = %s ORDER BY key", (self.ns,))]


class PgCoordinator(Coordinator):
    """Advisory locks and rows in the instance's Postgres database.

    Connections are this process's own: a process forked from one that had some (the warm run
    launcher forks every run) opens new ones and never touches, nor closes, the inherited sockets.
    """

    kind = "postgres"

    def __init__(self, url: str) -> None:
        self.url = libpq_url(url)
        self._mu = threading.Lock()
        self._slot_mu = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[Any] = []
        self._slot: Any = None
        self._held_slots: set[tuple[int, int]] = set()
        self._slot_gen = 0  # bumped with each new slot session: a release from an older one is void
        self._table_ready = False
        self._inherited: list[Any] = []

    def _after_fork(self) -> None:
        if self._pid != os.getpid():  # keep the parent's connections referenced: closing them ends its sessions
            self._inherited += [*self._idle, self._slot]
            self._idle, self._slot, self._held_slots = [], None, set()
            self._slot_gen += 1
            self._pid = os.getpid()

    def _connect(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(self.url, application_name="vr-assets")
        conn.autocommit = True
        return conn

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with self._mu:
            self._after_fork()
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = self._connect()
        ok = False
        try:
            yield conn
            ok = True
        finally:
            if ok and not conn.closed:
                with self._mu:
                    if len(self._idle) < 8:
                        self._idle.append(conn)
                        conn = None
            if conn is not None:
                conn.close()

    def _drop_slot_session(self) -> None:
        """Called with `_slot_mu` held: the session and every slot it held are gone."""
        if self._slot is not None and not self._slot.closed:
            self._slot.close()
        self._slot, self._held_slots = None, set()
        self._slot_gen += 1

    def _slot_conn(self) -> Any:
        """Called with `_slot_mu` held."""
        with self._mu:
            self._after_fork()
        if self._slot is None or self._slot.closed:
            self._slot = self._connect()
            self._held_slots = set()  # a new session holds nothing
            self._slot_gen += 1
        return self._slot

    @contextmanager
    def lock_all(self, items: Sequence[tuple[str, Path]]) -> Iterator[None]:
        keys = sorted({_key64(k) for k, _ in items})
        with self._connection() as conn:
            try:
                with conn.cursor() as cur:
                    for k in keys:
                        cur.execute("SELECT pg_advisory_lock(%s)", (k,))
                yield
            finally:
                if not conn.closed:
                    with conn.cursor() as cur:
                        cur.execute("SELECT pg_advisory_unlock_all()")

    def slots(self, name: str, n: int) -> Slots:
        return _PgSlots(self, name, n)

    def records(self, namespace: str, root: Path) -> Records:
        return _PgRecords(self, namespace)

    def ensure_table(self) -> None:
        """Our table beside Dagster's; the transaction lock keeps two first users from racing on it."""
        if self._table_ready:
            return
        with self._connection() as conn, conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_key64(f"create:{_TABLE}"),))
            cur.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (ns text NOT NULL, key text NOT NULL, "
                        "value text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (ns, key))")
            cur.execute("COMMIT")
        self._table_ready = True


# ---------------------------------------------------------------- which one


def postgres_url(home: str | os.PathLike[str] | None = None) -> str | None:
    """`VR_DAGSTER_POSTGRES_URL`, else the Postgres storage the Dagster home's `dagster.yaml` names."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return url
    home = home or os.environ.get("DAGSTER_HOME")
    return postgres_url_of(home) if home else None


_FILES = FileCoordinator()
_PG: dict[str, PgCoordinator] = {}
_CHOICE: dict[tuple[str, str, int], str | None] = {}
_CHOICE_LOCK = threading.Lock()


def coordinator() -> Coordinator:
    """The coordinator of this process's instance (re-read when DAGSTER_HOME or its dagster.yaml changes)."""
    env_url = os.environ.get(POSTGRES_URL_ENV)
    if env_url:
        url: str | None = env_url
    else:
        home = os.environ.get("DAGSTER_HOME", "")
        try:
            mtime = os.stat(os.path.join(home, "dagster.yaml")).st_mtime_ns if home else 0
        except OSError:
            mtime = 0
        choice = ("", home, mtime)
        with _CHOICE_LOCK:
            if choice not in _CHOICE:
                _CHOICE.clear()
                _CHOICE[choice] = postgres_url(home) if mtime else None
            url = _CHOICE[choice]
    if not url:
        return _FILES
    with _CHOICE_LOCK:
        coord = _PG.get(url)
        if coord is None:
            coord = _PG[url] = PgCoordinator(url)
        return coord
