"""The pooled SQLite storages: same files and schema as Dagster's own, readable by the stock classes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster import (
    AssetCheckResult,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    DynamicPartitionsDefinition,
    asset,
    asset_check,
    define_asset_job,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
from dagster._core.storage.sql import check_alembic_revision, get_alembic_config
from sqlalchemy import create_engine, text

from vr_assets.execution import storage as instance_storage
from vr_assets.execution.instance import instance_yaml
from vr_assets.execution.storage import (
    FastOpenSqliteScheduleStorage,
    PooledSqliteEventLogStorage,
    PooledSqliteRunStorage,
)

parts = DynamicPartitionsDefinition(name="clips")


@asset(partitions_def=parts)
def first(context) -> int:  # type: ignore[no-untyped-def]
    return len(context.partition_key)


@asset(partitions_def=parts)
def second(first: int) -> int:
    return first * 2


@asset_check(asset=second)
def second_is_even(context) -> AssetCheckResult:  # type: ignore[no-untyped-def]
    return AssetCheckResult(passed=True, metadata={"run": context.run.run_id})


JOB = Definitions(
    assets=[first, second], asset_checks=[second_is_even], jobs=[define_asset_job("both", [first, second])]
).resolve_job_def("both")


def pooled_instance(home: Path) -> DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(str(home)))
    return DagsterInstance.from_config(str(home))


def stock_instance(home: Path) -> DagsterInstance:
    """The same home opened with Dagster's default SQLite storages (no dagster.yaml storage blocks)."""
    other = home.parent / (home.name + "-stock-config")
    other.mkdir(exist_ok=True)
    (other / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        f"run_storage:\n  module: dagster._core.storage.runs\n  class: SqliteRunStorage\n"
        f"  config:\n    base_dir: {home}/history\n"
        f"event_log_storage:\n  module: dagster._core.storage.event_log\n  class: SqliteEventLogStorage\n"
        f"  config:\n    base_dir: {home}/history/runs\n"
    )
    return DagsterInstance.from_config(str(other))


def test_instance_uses_the_pooled_classes(tmp_path: Path) -> None:
    inst = pooled_instance(tmp_path / "home")
    assert isinstance(inst.event_log_storage, PooledSqliteEventLogStorage)
    assert isinstance(inst.run_storage, PooledSqliteRunStorage)
    assert isinstance(inst.schedule_storage, FastOpenSqliteScheduleStorage)
    assert isinstance(inst.compute_log_manager, NoOpComputeLogManager)  # no tail/watchdog processes per run
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dagster.yaml").write_text(instance_yaml(str(tmp_path / "other"), capture_stdio=True))
    assert isinstance(DagsterInstance.from_config(str(tmp_path / "other")).compute_log_manager, LocalComputeLogManager)


def test_runs_written_pooled_read_back_by_stock_storages(tmp_path: Path) -> None:
    home = tmp_path / "home"
    inst = pooled_instance(home)
    inst.add_dynamic_partitions("clips", ["a", "bb", "ccc"])
    for key in ("a", "bb", "ccc"):
        assert JOB.execute_in_process(partition_key=key, instance=inst).success
    inst.dispose()

    stock = stock_instance(home)
    assert type(stock.event_log_storage) is SqliteEventLogStorage
    assert stock.get_runs_count() == 3
    assert stock.get_materialized_partitions(AssetKey("second")) == {"a", "bb", "ccc"}
    runs = stock.get_runs()
    for run in runs:
        types = [e.dagster_event.event_type_value for e in stock.all_logs(run.run_id) if e.dagster_event]
        assert types[-1] == "PIPELINE_SUCCESS"
        assert types.count("ASSET_MATERIALIZATION") == 2
        assert types.count("ASSET_MATERIALIZATION_PLANNED") == 2  # written as one batch
        assert types.count("ASSET_CHECK_EVALUATION_PLANNED") == 1
    # the cross-run index got what the batch carried: check executions per run, planned then evaluated
    check_key = second_is_even.check_key
    history = stock.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
    assert sorted(r.run_id for r in history) == sorted(r.run_id for r in runs)
    assert {r.status.value for r in history} == {"SUCCEEDED"}
    assert stock.get_latest_planned_materialization_info(AssetKey("second"), "bb") is not None
    # and the other way round: a run written by the stock classes is visible to the pooled ones
    stock.add_dynamic_partitions("clips", ["dddd"])
    assert JOB.execute_in_process(partition_key="dddd", instance=stock).success
    stock.dispose()
    again = pooled_instance(home)
    assert again.get_materialized_partitions(AssetKey("first")) == {"a", "bb", "ccc", "dddd"}


def test_run_shards_are_stamped_at_the_migration_head(tmp_path: Path) -> None:
    """`dagster instance migrate` relies on each run database's alembic stamp; shards start as a template copy."""
    home = tmp_path / "home"
    inst = pooled_instance(home)
    # built when the instance opens (by the CLI, before its workers race to build it)
    assert len(list((home / "history" / "runs").glob(".run-shard-template-*.sqlite"))) == 1
    inst.add_dynamic_partitions("clips", ["a", "bb"])
    results = [JOB.execute_in_process(partition_key=k, instance=inst) for k in ("a", "bb")]
    inst.dispose()
    runs_dir = home / "history" / "runs"
    # the template is not a shard: Dagster lists (and wipes) `*.db` only
    assert sorted(p.name for p in runs_dir.glob("*.db")) == sorted([f"{r.run_id}.db" for r in results] + ["index.db"])
    assert len(list(runs_dir.glob(".run-shard-template-*.sqlite"))) == 1
    for result in results:
        engine = create_engine(f"sqlite:///{runs_dir / f'{result.run_id}.db'}")
        with engine.connect() as conn:
            db_rev, head = check_alembic_revision(get_alembic_config(instance_storage.sqlite_event_log.__file__), conn)
            mode = conn.execute(text("PRAGMA journal_mode")).scalar()
            run_ids = {r for (r,) in conn.execute(text("SELECT DISTINCT run_id FROM event_logs"))}
        engine.dispose()
        assert db_rev == head and head is not None
        assert mode == "wal"
        assert run_ids == {result.run_id}  # a copy of an empty database, not of another run's


def test_partition_memory_forgets_deletions(tmp_path: Path) -> None:
    inst = pooled_instance(tmp_path / "home")
    store = inst.event_log_storage
    assert not store.has_dynamic_partition("clips", "x")
    inst.add_dynamic_partitions("clips", ["x"])
    assert store.has_dynamic_partition("clips", "x")
    inst.delete_dynamic_partition("clips", "x")
    assert not store.has_dynamic_partition("clips", "x")


def test_partition_memory_expires_for_deletions_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    inst = pooled_instance(home)
    inst.add_dynamic_partitions("clips", ["y"])
    assert inst.event_log_storage.has_dynamic_partition("clips", "y")
    other = pooled_instance(home)  # another process's instance
    other.delete_dynamic_partition("clips", "y")
    assert inst.event_log_storage.has_dynamic_partition("clips", "y")  # remembered for a while …
    monkeypatch.setattr(instance_storage, "_PARTITION_MEMORY_S", 0.0)
    assert not inst.event_log_storage.has_dynamic_partition("clips", "y")  # … then asked again


def test_a_live_runs_events_reach_its_database_file(tmp_path: Path) -> None:
    """The UI follows a running run by watching `<run_id>.db`; kept connections must not hold events in the WAL."""
    home = tmp_path / "home"
    inst = pooled_instance(home)
    inst.add_dynamic_partitions("clips", ["a"])
    result = JOB.execute_in_process(partition_key="a", instance=inst)
    shard = home / "history" / "runs" / f"{result.run_id}.db"
    # the instance (and its open connections) is still alive; read the main file only, ignoring any WAL
    in_file = _events_in_file(shard)
    assert in_file == len(inst.all_logs(result.run_id)) > 10
    # a write in the middle of a run (here: an engine event) reaches the file within the checkpoint interval
    inst.report_engine_event("still going", inst.get_run_by_id(result.run_id))
    deadline = time.monotonic() + 10
    while _events_in_file(shard) <= in_file and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _events_in_file(shard) == in_file + 1
    inst.dispose()


def _events_in_file(shard: Path) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{shard}?immutable=1", uri=True)
    try:
        return int(con.execute("select count(*) from event_logs").fetchone()[0])
    except sqlite3.DatabaseError:  # read while a checkpoint was writing the file: ask again
        return -1
    finally:
        con.close()


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    """Dagster retries a failed batch event by event, so a failed batch must leave nothing behind."""
    home = tmp_path / "home"
    inst = pooled_instance(home)
    inst.add_dynamic_partitions("clips", ["a"])
    run_id = JOB.execute_in_process(partition_key="a", instance=inst).run_id
    store = inst.event_log_storage
    kind = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    planned = [e for e in inst.all_logs(run_id) if e.dagster_event_type == kind]
    before = len(inst.all_logs(run_id))
    index_rows = _index_events(home)

    class Broken(EventLogEntry):
        pass

    broken = Broken(**{f: getattr(planned[0], f) for f in EventLogEntry._fields})  # type: ignore[attr-defined]
    with pytest.raises(Exception):  # noqa: B017 - whatever the serializer raises for an unknown type
        store.store_event_batch([planned[0], planned[1], broken])
    assert len(inst.all_logs(run_id)) == before
    assert _index_events(home) == index_rows
    store.store_event_batch(planned)  # a good batch lands in both databases
    assert len(inst.all_logs(run_id)) == before + len(planned)
    assert _index_events(home) == index_rows + len(planned)
    inst.dispose()


def _index_events(home: Path) -> int:
    import sqlite3

    con = sqlite3.connect(home / "history" / "runs" / "index.db")
    try:
        return int(con.execute("select count(*) from event_logs").fetchone()[0])
    finally:
        con.close()


def test_an_instance_at_the_head_opens_without_dagsters_migration_check(tmp_path: Path) -> None:
    """A second open (every worker process) skips the migration scan; anything else goes through Dagster's."""
    from dagster._core.storage.runs.sqlite import sqlite_run_storage
    from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage

    home = tmp_path / "home"
    inst = pooled_instance(home)  # first open: Dagster's own from_local builds and stamps both databases
    inst.add_dynamic_partitions("clips", ["a"])
    assert JOB.execute_in_process(partition_key="a", instance=inst).success
    inst.dispose()
    ready = instance_storage._ready_db
    runs_dir, schedules_dir = str(home / "history"), str(home / "schedules")
    assert ready(runs_dir, "runs", sqlite_run_storage.__file__, {"runs", "instance_info"})
    assert ready(schedules_dir, "schedules", sqlite_schedule_storage.__file__, {"jobs", "job_ticks"})

    again = pooled_instance(home)  # the fast path: same files, fully usable
    assert again.get_runs_count() == 1
    assert JOB.execute_in_process(partition_key="a", instance=again).success
    assert again.get_runs_count() == 2
    assert again.schedule_storage is not None and again.schedule_storage.all_instigator_state() == []
    again.dispose()

    # a database stamped at another revision is left to Dagster (which migrates or refuses it)
    engine = create_engine(f"sqlite:///{home / 'history' / 'runs.db'}")
    with engine.begin() as conn:
        head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    engine.dispose()
    assert ready(runs_dir, "runs", sqlite_run_storage.__file__, {"runs", "instance_info"}) is None
    assert head == instance_storage.head_revision(sqlite_run_storage.__file__)
    # missing files and missing tables are left to Dagster too
    assert ready(str(tmp_path / "nowhere"), "runs", sqlite_run_storage.__file__, {"runs"}) is None
    assert ready(schedules_dir, "schedules", sqlite_schedule_storage.__file__, {"jobs", "not_a_table"}) is None


def test_processes_opening_a_new_home_at_once_all_get_its_storage(tmp_path: Path) -> None:
    """`vr-annotate run` and its daemon open a new home at the same moment: the storages' init lock lets one
    build the databases while the others wait, instead of two creating Dagster's tables and both failing."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(str(home)))
    opener = (
        "import sys, time\n"
        "from dagster import DagsterInstance\n"
        "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
        "with DagsterInstance.get() as i:\n"
        "    print(len(i.get_runs()), i.get_dynamic_partitions('x'))\n"
    )
    at = str(time.time() + 3.0)  # after every interpreter has imported Dagster
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", opener, at], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-800:] for _, err in outs]
    assert all(out.strip() == "0 []" for out, _ in outs)
    assert (home / "history" / "runs.db").exists() and (home / "schedules" / "schedules.db").exists()
