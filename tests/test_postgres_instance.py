"""The instance on a real Postgres server: `vr-annotate run`, its resume and the dataset sensor, unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, build_sensor_context

from vr_assets.execution.instance import MANAGED_MARK, ensure_dagster_home, postgres_url_of, untuned_reasons
from vr_assets.graph import PER_VIDEO_ASSETS, build_definitions
from vr_assets.shared_state import PgCoordinator, coordinator

MCQ_ONLY = {"workflow": {"qa_types": ["mcq"]}}


def test_run_resume_and_the_sensor_on_a_postgres_instance(
    make_pipeline: Any, synthetic_videos: dict[str, Path], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VR_DAGSTER_POSTGRES_URL", pg_url)
    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["short_mp4"], "cam1/a.mp4")
    env.add_video(synthetic_videos["clip8"], "cam2/b.mp4")
    spec = env.spec(**MCQ_ONLY)
    first = env.run(spec, build_dataset=False, parallel=None)
    assert first.failed == {} and sorted(first.succeeded) == ["cam1__a.mp4", "cam2__b.mp4"], env.log
    home = ensure_dagster_home(spec)
    cfg = yaml.safe_load((home / "dagster.yaml").read_text())
    assert cfg["storage"]["postgres"]["postgres_url"].startswith("postgresql+psycopg2://")
    assert untuned_reasons(home) == []
    assert not (home / "history").exists()  # no SQLite beside it: the runs are in Postgres
    instance = DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    for asset in PER_VIDEO_ASSETS:
        assert instance.get_materialized_partitions(AssetKey(asset)) == {"cam1__a.mp4", "cam2__b.mp4"}, asset
    paid = env.calls()
    assert paid > 0

    # resume: everything is materialized, so the second run makes no model call at all
    again = env.run(spec, build_dataset=False, parallel=None)
    assert again.failed == {} and again.skipped_up_to_date == 2 and env.calls() == paid

    # the dataset sensor's tick reads the Postgres instance like the SQLite one
    sensor = build_definitions(spec).resolve_sensor_def("dataset_refresh")
    tick = sensor.evaluate_tick(build_sensor_context(instance=instance))
    assert len(tick.run_requests) == 1 and tick.cursor
    again_tick = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor))
    assert again_tick.run_requests == [] and "no video finished" in (again_tick.skip_message or "")


def test_the_home_stays_on_postgres_and_the_coordinator_follows_the_instance(
    make_pipeline: Any, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = make_pipeline("gemini")
    spec = env.spec()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "sqlite"))
    ensure_dagster_home(spec)
    assert coordinator().kind == "files"

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "pg"))
    monkeypatch.setenv("VR_DAGSTER_POSTGRES_URL", pg_url)
    home = ensure_dagster_home(spec)
    assert (home / "dagster.yaml").read_text().startswith(MANAGED_MARK)
    monkeypatch.delenv("VR_DAGSTER_POSTGRES_URL")
    ensure_dagster_home(env.spec(workflow={"max_workers": 3}))  # rewritten for the spec, still on Postgres
    assert postgres_url_of(home) == pg_url.replace("postgresql://", "postgresql+psycopg2://")
    coord = coordinator()  # found from the home's dagster.yaml alone, as a run process finds it
    assert isinstance(coord, PgCoordinator) and coord.url == pg_url
