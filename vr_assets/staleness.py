"""Which partition-assets are stale: the same answer the UI shows ("Materialize stale").

Dagster computes staleness from code versions (ours hash the prompts, model and settings
each asset uses) and upstream data versions; this module asks it per video partition.
Dagster exposes the resolver only through internal modules, so they are imported here alone.
"""

from __future__ import annotations

from dagster import AssetKey, DagsterInstance, Definitions
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime


class StalenessView:
    """Resolves stale status for many (asset, partition) pairs with one cache."""

    def __init__(self, instance: DagsterInstance, defs: Definitions) -> None:
        graph = defs.resolve_asset_graph()
        view = AssetGraphView(
            temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
            instance=instance,
            asset_graph=graph,
        )
        self._resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
        self._graph = graph

    def is_stale(self, asset: str, partition: str) -> bool:
        return self._resolver.get_status(AssetKey(asset), partition) == StaleStatus.STALE

    def stale_assets(self, assets: tuple[str, ...] | list[str], partition: str) -> set[str]:
        """Assets Dagster itself calls stale (new code version, or an input with a new data version)."""
        return {a for a in assets if self.is_stale(a, partition)}

    def with_downstream(self, assets: set[str], within: tuple[str, ...] | list[str]) -> set[str]:
        """Dagster marks a child stale only once its parent re-materializes; a re-run must
        include the children at once, or it would take one run per level."""
        out = set(assets)
        frontier = list(assets)
        while frontier:
            for child in self._graph.get(AssetKey(frontier.pop())).child_keys:
                name = child.to_user_string()
                if name in within and name not in out:
                    out.add(name)
                    frontier.append(name)
        return out

    def causes(self, asset: str, partition: str) -> list[str]:
        """Why an asset is stale, in Dagster's words (for logs and tests)."""
        return [
            f"{c.key.asset_key.to_user_string()}: {c.reason}"
            for c in self._resolver.get_stale_causes(AssetKey(asset), partition)
        ]
