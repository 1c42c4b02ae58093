"""Imported once by the run launcher's forkserver, so each run host forks with everything its runs touch loaded.

Without it every run paid 3–6 CPU-seconds of imports (google-genai, openai, Dagster's storage
and daemon modules, alembic's migration scripts, the code location) before its first step — on a
2-core machine with 16 runs in flight that was more CPU than the bookkeeping of 40 videos.
The code location (`vr_assets.definitions`, the spec of $VR_CONFIG) is loaded here too, so a
run's `recon_job_from_origin` finds it imported and its repository already built.
"""

import importlib
import logging
import sys

from vr_assets.execution.startup import collector_paused

# Everything loaded here is frozen out of the collector's sight at the end of the block (a worker's first
# full collection otherwise walks the whole preloaded heap, ~0.3 CPU-s, and again at each later one, and
# touching every object's header copies the forkserver's shared pages into each worker); the imports
# themselves run without it (~0.5 CPU-s less).
with collector_paused():
    # Modules Dagster and the HTTP stack import on first use, i.e. in every worker's first run
    # (found by diffing sys.modules around a worker's first video).
    import av  # noqa: F401  (media.probe reads videos in-process)
    import dagster._core.definitions.external_asset  # noqa: F401
    import dagster._core.definitions.repository_definition.repository_data_builder  # noqa: F401
    import dagster._core.execution.backfill  # noqa: F401  (loaded lazily by run creation)
    import dagster._core.execution.execute_in_process  # noqa: F401
    import dagster._core.execution.plan.active  # noqa: F401
    import dagster._core.executor.in_process  # noqa: F401
    import dagster._core.instance.factory  # noqa: F401
    import dagster._core.instance.runs.run_domain  # noqa: F401
    import dagster._core.secrets.env_file  # noqa: F401
    import dagster._core.secrets.loader  # noqa: F401
    import dagster._core.storage.legacy_storage  # noqa: F401
    import dagster._core.storage.noop_compute_log_manager  # noqa: F401
    import dagster._core.storage.root  # noqa: F401
    import dagster._core.storage.runs  # noqa: F401
    import dagster._core.storage.sqlite_storage  # noqa: F401
    import dagster._core.system_config.composite_descent  # noqa: F401
    import dagster._core.types.primitive_mapping  # noqa: F401
    import dagster._core.types.transform_typing  # noqa: F401
    import dagster._core.utility_ops  # noqa: F401
    import dagster._core.workspace.autodiscovery  # noqa: F401  (recon_job_from_origin loads the location)
    import dagster._daemon  # noqa: F401  (loaded lazily by DagsterInstance)
    import dagster._grpc.impl  # noqa: F401  (core_execute_run)
    import dagster._utils.hosted_user_process  # noqa: F401
    import dagster._utils.temp_file  # noqa: F401
    import dagster._utils.test.definitions  # noqa: F401
    import h11  # noqa: F401
    import httpcore2  # noqa: F401
    import pydantic._internal._dataclasses  # noqa: F401
    import truststore  # noqa: F401
    import upath.implementations.local  # noqa: F401  (the instance's state storage, loaded lazily)

    import vr_assets.graph  # noqa: F401
    from vr_assets import media
    from vr_assets.execution import storage as instance_storage

    instance_storage.preload_migrations()

    # The default ffmpeg, found once here instead of once per worker (the lookup runs `ffmpeg -version`).
    media.find_ffmpeg()

    # The code location, built once: the forkserver must come up even when it cannot be built (a
    # bad spec); each run then reports the error itself when it loads the location.
    _backends = ["gemini", "openai"]
    try:
        import vr_assets.definitions as _location

        _location.defs.get_repository_def().get_all_jobs()
        _backends = sorted({_location.spec.vlm.backend, _location.spec.llm.backend})
    except Exception as _e:  # noqa: BLE001
        logging.getLogger(__name__).warning("vr-assets: the code location did not preload: %s", _e)

    # Only the SDKs the spec's backends use: google-genai and openai cost ~0.9 and ~0.7 CPU-s to
    # import. A backend not preloaded still works; its runs import it themselves.
    _BACKENDS = {"gemini": ["google.auth.aio.credentials", "vr_assets.providers.gemini"],
                 "openai": ["vr_assets.providers.openai_compat"]}
    for _backend in _backends:
        for _module in _BACKENDS.get(_backend, []):
            importlib.import_module(_module)
    if "vr_assets.providers.gemini" in sys.modules:
        sys.modules["vr_assets.providers.gemini"].tls_context()  # read the CA files once, not once per worker
