"""The `videos` partitions: one per video; `vr_assets.registry` maps a key back to its file."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

videos_partitions = DynamicPartitionsDefinition(name="videos")
