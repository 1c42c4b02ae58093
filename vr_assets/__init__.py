"""vr-assets: videos in, Chain-of-Thought video QA out, as a Dagster asset graph."""

__version__ = "0.1.0"
