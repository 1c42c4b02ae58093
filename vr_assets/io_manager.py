"""Dagster's side of the results folder: each per-video asset output is stored by `vr_assets.store`."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableIOManager, Failure, InputContext, OutputContext
from pydantic import BaseModel, Field

from vr_assets.storage import DiskFullError
from vr_assets.store import JsonStore


class PartitionedJsonIOManager(ConfigurableIOManager):
    """Stores each per-video asset output as `<storage root>/assets/<asset>/<video>.json`.

    The root is `storage_url` (a folder, `file://…`, `s3://bucket/prefix`; see `vr_assets.storage`), else
    `results_dir`: build it with `storage_url=spec.storage_url` so records land where the dataset reads them.
    """

    results_dir: str
    storage_url: str = Field("", description="where the records go; empty: results_dir")

    def _store(self) -> JsonStore:
        return JsonStore(self.storage_url or self.results_dir)

    def handle_output(self, context: OutputContext, obj: BaseModel | None) -> None:
        if obj is None:
            return
        asset = context.asset_key.path[-1]
        try:
            path = self._store().write(asset, context.partition_key, obj)
        except DiskFullError as e:  # one line naming the video; the previous record, if any, is untouched
            raise Failure(description=f"video {context.partition_key}: {asset}: {e}") from e
        context.add_output_metadata({"path": str(path)})

    def load_input(self, context: InputContext) -> Any:
        asset = context.asset_key.path[-1]
        return self._store().read(asset, context.partition_key)
