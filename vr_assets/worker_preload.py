"""Imported once by the forkserver, so each video worker forks with everything a run touches loaded.

Without it every worker paid 3–6 CPU-seconds of imports (google-genai, openai, Dagster's storage
and daemon modules, alembic's migration scripts) before its first video — on a 2-core machine
with 16 workers that was more CPU than the bookkeeping of 40 videos.
"""

import dagster._core.execution.backfill  # noqa: F401  (loaded lazily by run creation)
import dagster._core.storage.runs  # noqa: F401
import dagster._daemon  # noqa: F401  (loaded lazily by DagsterInstance)

import vr_assets.graph  # noqa: F401
import vr_assets.providers.gemini  # noqa: F401
import vr_assets.providers.openai_compat  # noqa: F401
import vr_assets.runner  # noqa: F401
from vr_assets import instance_storage

instance_storage.event_log_migrations()
