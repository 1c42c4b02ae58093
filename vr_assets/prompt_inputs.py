"""How earlier steps' outputs are written into later steps' prompt placeholders."""

from __future__ import annotations

from vr_assets.records import Captions, ChunkCaption, Highlight


def fmt_seconds(value: float) -> str:
    return f"{value:.1f}"


def chunk_captions_str(chunks: list[ChunkCaption]) -> str:
    return "\n---\n".join(
        f"Chunk {c.chunk_index} ({fmt_seconds(c.timestamp_start)}-{fmt_seconds(c.timestamp_end)}s): {c.caption.strip()}"
        for c in chunks
    )


def dense_section(dense_caption: str) -> str:
    return f"[Dense Caption]\n{dense_caption.strip()}" if dense_caption.strip() else ""


def highlight_section(h: Highlight | None) -> str:
    if h is None or h.highlight_chunk is None:
        return ""
    c = h.highlight_chunk
    return (
        f"[Anomaly Highlight: {fmt_seconds(c.timestamp_start)}-{fmt_seconds(c.timestamp_end)}s, "
        f"anomaly at {fmt_seconds(c.anomaly_timestamp_sec)}s]\n{c.caption.strip()}"
    )


def caption_values(captions: Captions) -> dict[str, str]:
    return {
        "video_length": fmt_seconds(captions.probe.duration_sec),
        "global_caption": captions.global_caption.strip(),
        "dense_caption": captions.dense_caption.strip(),
    }
