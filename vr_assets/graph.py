"""How the one Definitions object is built: assets by step, checks, the sensor, resources, jobs.

`vr_assets.definitions` exposes it to Dagster; the CLI builds its own from a spec with overrides.
"""

from __future__ import annotations

import logging

from dagster import AssetChecksDefinition, AssetSelection, Definitions, define_asset_job, in_process_executor

from vr_assets.assets import captioning, description, export, filtering, highlight, qa
from vr_assets.assets.common import OFFLINE_NOTE, Pipeline
from vr_assets.batch_sensor import build_batch_sensor
from vr_assets.config import Spec, load_spec
from vr_assets.io_manager import PartitionedJsonIOManager
from vr_assets.prompts import load_pack
from vr_assets.resources import MediaResource, TeacherResource
from vr_assets.sensors import build_dataset_sensor, build_sensor
from vr_assets.store import PER_VIDEO_ASSETS as PER_VIDEO_ASSETS

ANNOTATE_JOB = "annotate_videos"
DATASET_JOB = "build_dataset"

log = logging.getLogger(__name__)


def build_definitions(spec: Spec | None = None) -> Definitions:
    spec = spec or load_spec()
    pack = load_pack(spec.prompt_pack, spec.prompts_module)
    pipe = Pipeline(spec=spec, pack=pack, offline_teacher=spec.offline_teacher)
    if spec.offline_teacher:
        log.warning("vr-assets: %s", OFFLINE_NOTE)
    built = [
        filtering.build(pipe),
        *captioning.build(pipe),
        highlight.build(pipe),
        description.build(pipe),
        qa.build(pipe),
        *export.build(pipe),
    ]
    assets = [d for d in built if not isinstance(d, AssetChecksDefinition)]
    checks = [d for d in built if isinstance(d, AssetChecksDefinition)]
    annotate = define_asset_job(
        ANNOTATE_JOB,
        selection=AssetSelection.assets(*PER_VIDEO_ASSETS),
        description="Every per-video step for the selected video partitions.",
    )
    build_dataset = define_asset_job(DATASET_JOB, selection=AssetSelection.assets("dataset"))
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[annotate, build_dataset],
        sensors=[build_sensor(spec, annotate), build_dataset_sensor(build_dataset), build_batch_sensor(spec, annotate)],
        # a video's steps run one after another in its run's process (forked warm by the run launcher,
        # see vr_assets.execution): a process per step would cost a Python start per step
        executor=in_process_executor,
        resources={
            "vlm": TeacherResource.from_spec("vlm", spec.vlm, spec),
            "llm": TeacherResource.from_spec("llm", spec.llm, spec),
            "media": MediaResource.from_spec(spec),
            "io_manager": PartitionedJsonIOManager(results_dir=spec.results_dir, storage_url=spec.storage_url),
        },
    )

