"""Links into the dataset viewer, Dagster-free so the assets can put them in their metadata."""

from __future__ import annotations

from urllib.parse import quote


def video_page_url(base_url: str, key: str) -> str:
    """The viewer page of one video partition (`vr-annotate view` serves it)."""
    return f"{base_url.rstrip('/')}/video/{quote(key, safe='')}"
