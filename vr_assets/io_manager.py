"""Dagster's side of the results folder: each per-video asset output is stored by `vr_assets.store`."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableIOManager, InputContext, OutputContext
from pydantic import BaseModel

from vr_assets.store import JsonStore


class PartitionedJsonIOManager(ConfigurableIOManager):
    """Stores each per-video asset output as `<results_dir>/assets/<asset>/<video>.json`."""

    results_dir: str

    def _store(self) -> JsonStore:
        return JsonStore(self.results_dir)

    def handle_output(self, context: OutputContext, obj: BaseModel | None) -> None:
        if obj is None:
            return
        asset = context.asset_key.path[-1]
        path = self._store().write(asset, context.partition_key, obj)
        context.add_output_metadata({"path": str(path)})

    def load_input(self, context: InputContext) -> Any:
        asset = context.asset_key.path[-1]
        return self._store().read(asset, context.partition_key)
