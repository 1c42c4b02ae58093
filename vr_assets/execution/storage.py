"""SQLite storages for the Dagster instance that keep their engines instead of rebuilding them per query.

Dagster's SQLite storages create a new SQLAlchemy engine (and a new connection, and re-check a
table) for every event they write. A video run writes ~100 events, so at thousands of videos
that, not the models, became the cost: profiling showed ~40 % of a run's CPU in engine set-up,
statement compilation (the compiled-statement cache lives on the engine, so it never hit) and
one dynamic-partition lookup per step input and output. These subclasses keep one engine per
database file, remember which video partitions exist, copy each new run database from an empty
template and write a run's planned events in one transaction; the files, schema and locations
are Dagster's own, so an instance written with them opens with the stock classes and vice versa.
`vr-annotate` configures them in the `dagster.yaml` it writes for a new `DAGSTER_HOME`.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, ClassVar

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.runs.sqlite import sqlite_run_storage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine, get_alembic_config
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._serdes import ConfigurableClassData
from dagster.version import __version__ as dagster_version
from sqlalchemy import event, text
from sqlalchemy import exc as db_exc
from sqlalchemy.engine import Connection, Engine

# Run shards are written while their run is live and rarely after; a handful stays open.
_MAX_OPEN_SHARDS = 6
# A partition another process deletes is seen as gone after this long.
_PARTITION_MEMORY_S = 30.0
# How stale the UI's live view of a running run may get.
_CHECKPOINT_EVERY_S = 0.5
# Dagster hands a run's planned events (one per asset and check) and a step's materializations
# to `store_event_batch` when this is set; its default 0 stores them one commit each.
_EVENT_BATCH_SIZE = "256"
RUN_ENDED = (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED)


def _engine(conn_string: str) -> Engine:
    timeout = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    engine = create_engine(conn_string, pool_size=2, max_overflow=8, connect_args=timeout)
    event.listen(engine, "connect", _wal_normal_sync)
    return engine


def _wal_normal_sync(dbapi_conn: Any, _record: Any) -> None:
    # In WAL mode NORMAL is crash-safe for the process (a power cut may lose the last commits);
    # FULL would fsync every one of a run's ~100 event commits.
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")


@functools.cache
def event_log_migrations() -> ScriptDirectory:
    return ScriptDirectory.from_config(get_alembic_config(sqlite_event_log.__file__))


@functools.cache
def head_revision(storage_module_file: str) -> str | None:
    """The alembic head of one of Dagster's SQLite storages, read once per process.

    Dagster's storages find it by executing every migration script each time an instance is made:
    ~0.25 CPU-s for the run and schedule storages of every worker process, all at start-up.
    """
    return ScriptDirectory.from_config(get_alembic_config(storage_module_file)).as_revision_number("head")


def preload_migrations() -> None:
    """For the forkserver: every worker forks with the heads already known."""
    event_log_migrations()
    for module in (sqlite_run_storage, sqlite_schedule_storage):
        head_revision(module.__file__)


def _ready_db(base_dir: str, name: str, storage_module_file: str, tables: set[str]) -> str | None:
    """`name`.db's connection string when it is stamped at the head and has `tables`; None sends the
    caller to Dagster's own `from_local`, which builds, stamps or migrates (and refuses an old schema)."""
    path = os.path.join(base_dir, f"{name}.db")
    if not os.path.isfile(path):
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
        try:
            found = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            stamped = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if not tables <= found or [r[0] for r in stamped] != [head_revision(storage_module_file)]:
        return None
    return create_db_conn_string(base_dir, name)


@contextmanager
def _init_lock(base_dir: str) -> Iterator[None]:
    """One process at a time builds a storage's databases: the daemon and `vr-annotate run` open a new home
    at the same moment, and two processes creating Dagster's tables at once both fail."""
    os.makedirs(base_dir, exist_ok=True)
    with open(os.path.join(base_dir, ".init.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's per-run-sharded SQLite event log with cached engines and partition lookups."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables: set[str] = set()
        self._partitions_seen: dict[tuple[str, str], float] = {}
        self._checkpointed: dict[str, float] = {}
        self._pending: set[str] = set()
        self._timer: threading.Timer | None = None
        self._held = threading.local()
        with _init_lock(base_dir):
            super().__init__(base_dir, inst_data)
            # Built here, once, by whoever opens the instance first (the CLI or the daemon, before runs
            # start): built by each run instead, sixteen runs raced to build it at once.
            template = self._template_path()
            if not os.path.exists(template):
                self._build_template(template)
        self._db_lock = threading.RLock()  # type: ignore[assignment]  # a batch holds two shards at once
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", _EVENT_BATCH_SIZE)

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    def _shard_engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is None:
            engine = _engine(self.conn_string_for_shard(shard))
            self._engines[shard] = engine
            while len(self._engines) > _MAX_OPEN_SHARDS:
                gone, old = self._engines.popitem(last=False)
                old.dispose()  # closing its last connection checkpoints it
                self._pending.discard(gone)
                self._checkpointed.pop(gone, None)
        else:
            self._engines.move_to_end(shard)
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        held = getattr(self._held, "conns", {}).get(shard)
        if held is not None:  # inside store_event_batch: part of its transaction
            yield held
            return
        with self._db_lock:
            new = shard not in self._initialized_dbs
            if new and shard != INDEX_SHARD_NAME:
                self._copy_template(shard)
            engine = self._shard_engine(shard)
            if new:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                changes = getattr(raw, "total_changes", 0)
                with conn.begin():
                    yield conn
                if shard != INDEX_SHARD_NAME and getattr(raw, "total_changes", 0) != changes:
                    self._wrote(shard, conn)

    # The UI follows a live run by watching `<run_id>.db` itself. Dagster's class closes every
    # connection, and the last close moves the WAL into that file; kept connections must make that
    # move explicitly, or the live page stalls. Doing it after every write cost ~15 % of the
    # bookkeeping, so it happens at most every _CHECKPOINT_EVERY_S per run database (a timer
    # catches the last writes of a burst) and at once when the run ends.

    def _wrote(self, shard: str, conn: Connection) -> None:
        if time.monotonic() - self._checkpointed.get(shard, 0.0) >= _CHECKPOINT_EVERY_S:
            self._checkpoint(shard, conn)
            return
        self._pending.add(shard)
        if self._timer is None:
            self._timer = threading.Timer(_CHECKPOINT_EVERY_S, self.flush_run_logs)
            self._timer.daemon = True
            self._timer.start()

    def flush_run_logs(self) -> None:
        """Move every run database's pending WAL pages into its file (what the UI's watch sees)."""
        with self._db_lock:
            self._timer = None
            for shard in sorted(self._pending):
                engine = self._engines.get(shard)
                if engine is None:  # evicted: disposing it checkpointed it
                    self._pending.discard(shard)
                    continue
                with engine.connect() as conn:
                    self._checkpoint(shard, conn)

    def _checkpoint(self, shard: str, conn: Connection) -> None:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        self._checkpointed[shard] = time.monotonic()
        self._pending.discard(shard)

    def store_event(self, event: EventLogEntry) -> None:
        super().store_event(event)
        if event.dagster_event_type in RUN_ENDED:
            self.flush_run_logs()

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """One run's events in one transaction per database instead of a commit per event and table.

        Dagster's own `store_event` does the writing, so every table it fills is filled the same
        way; its connections are the two held here. A failure rolls both back and Dagster then
        stores the events one by one.
        """
        runs = {e.run_id for e in events}
        if len(events) < 2 or len(runs) != 1:
            super().store_event_batch(events)  # one store_event each
            return
        with ExitStack() as stack:
            conns = {shard: stack.enter_context(self._connect(shard)) for shard in (runs.pop(), INDEX_SHARD_NAME)}
            self._held.conns = conns
            try:
                for e in events:
                    super().store_event(e)
            finally:
                self._held.conns = {}
        if any(e.dagster_event_type in RUN_ENDED for e in events):
            self.flush_run_logs()

    # Each run gets its own database. Building its schema (a dozen tables and indexes, an alembic
    # stamp) cost more than all of the run's event inserts together, so an empty, stamped database
    # is built once per Dagster version and each new run shard is a copy of it. The template is
    # not named `*.db`, which keeps it out of Dagster's shard listings.

    def _template_path(self) -> str:
        return os.path.join(self._base_dir, f".run-shard-template-{dagster_version}.sqlite")

    def _copy_template(self, shard: str) -> None:
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return
        template = self._template_path()
        if not os.path.exists(template) and not self._build_template(template):
            return  # _initdb builds the schema in place
        part = f"{path}.{os.getpid()}-{threading.get_ident()}.part"
        try:
            shutil.copyfile(template, part)
            os.link(part, path)  # never replaces a shard another process made meanwhile
        except FileExistsError:
            pass
        finally:
            if os.path.exists(part):
                os.unlink(part)

    def _build_template(self, template: str) -> bool:
        part = f"{template}.{os.getpid()}-{threading.get_ident()}.part"
        engine = create_engine(f"sqlite:///{part}")
        try:
            self._initdb(engine)
        finally:
            engine.dispose()  # the last close folds the WAL into the file
        if os.path.exists(part + "-wal"):  # not self-contained: leave it
            for leftover in (part, part + "-wal", part + "-shm"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            return False
        os.replace(part, template)
        return True

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """A new run shard: Dagster's schema stamped at head, without re-reading the migration scripts per run."""
        if for_index_shard:
            super()._initdb(engine, for_index_shard=True)
            return
        try:
            with engine.connect() as conn, conn.begin():
                ctx = MigrationContext.configure(conn)
                if ctx.get_current_revision() is not None:
                    return
                SqlEventLogStorageMetadata.create_all(conn)
                conn.execute(text("PRAGMA journal_mode=WAL;"))
                ctx.stamp(event_log_migrations(), "head")
        except db_exc.DatabaseError:
            # another process initialising the same shard: Dagster's own path retries that race
            super()._initdb(engine)

    def has_table(self, table_name: str) -> bool:
        # Tables are only ever added (by migrations), so a yes is final.
        if table_name in self._tables:
            return True
        found = super().has_table(table_name)
        if found:
            self._tables.add(table_name)
        return found

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        key = (partitions_def_name, partition_key)
        seen = self._partitions_seen.get(key)
        if seen is not None and time.monotonic() - seen < _PARTITION_MEMORY_S:
            return True
        found = super().has_dynamic_partition(partitions_def_name, partition_key)
        if found:
            self._partitions_seen[key] = time.monotonic()
        else:
            self._partitions_seen.pop(key, None)
        return found

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        self._partitions_seen.pop((partitions_def_name, partition_key), None)
        super().delete_dynamic_partition(partitions_def_name, partition_key)

    def dispose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush_run_logs()
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()
        super().dispose()


class _OpensAtHead:
    """`from_local` for a Dagster SQLite storage whose database may already be at the alembic head.

    Dagster's `from_config_value` calls its own class by name, hence the override here too.
    """

    _db_name: ClassVar[str]
    _storage_module: ClassVar[str]
    _tables: ClassVar[frozenset[str]]

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]) -> Any:
        return cls.from_local(inst_data=inst_data, **config_value)

    @classmethod
    def from_local(cls, base_dir: str, inst_data: ConfigurableClassData | None = None) -> Any:
        ready = _ready_db(base_dir, cls._db_name, cls._storage_module, set(cls._tables))
        if ready:
            return cls(ready, inst_data)  # type: ignore[call-arg]
        with _init_lock(base_dir):  # built by one process; the next one finds it ready
            ready = _ready_db(base_dir, cls._db_name, cls._storage_module, set(cls._tables))
            return cls(ready, inst_data) if ready else super().from_local(base_dir, inst_data)  # type: ignore[call-arg,misc]


class PooledSqliteRunStorage(_OpensAtHead, SqliteRunStorage):
    """Dagster's SQLite run storage with one engine kept for the process."""

    _db_name = "runs"
    _storage_module = sqlite_run_storage.__file__
    _tables = frozenset({"runs", "instance_info"})
    _pooled: Engine | None = None

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        if self._pooled is None:
            self._pooled = _engine(self._conn_string)
        with self._pooled.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        if self._pooled is not None:
            self._pooled.dispose()
            self._pooled = None
        super().dispose()


class FastOpenSqliteScheduleStorage(_OpensAtHead, SqliteScheduleStorage):
    """Dagster's SQLite schedule storage; opening a database already at the head skips the migration scan."""

    _db_name = "schedules"
    _storage_module = sqlite_schedule_storage.__file__
    _tables = frozenset({"jobs", "job_ticks"})
