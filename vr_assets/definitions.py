"""The code location Dagster loads: the spec comes from $VR_CONFIG (default ./spec.yaml)."""

from vr_assets.graph import build_definitions

defs = build_definitions()
