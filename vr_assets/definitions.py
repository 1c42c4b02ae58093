"""The code location Dagster loads: the spec comes from $VR_CONFIG (default ./spec.yaml)."""

import contextlib
import logging
import os
from pathlib import Path

from vr_assets.config import DEFAULT_SPEC_ENV, DEFAULT_SPEC_PATH, load_spec
from vr_assets.execution.instance import untuned_reasons
from vr_assets.graph import build_definitions
from vr_assets.prompts import pack_dir


def sources_fingerprint() -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of the spec file and its prompt pack's files.

    Runs fork from a process that loaded this module earlier (`vr_assets.execution.launcher`); a run
    that finds the fingerprint changed (a prompt or the spec edited since) loads the location again.
    """
    paths = [Path(os.environ.get(DEFAULT_SPEC_ENV) or DEFAULT_SPEC_PATH)]
    with contextlib.suppress(Exception):  # a pack given as a module, or gone: the spec file alone
        paths += sorted(pack_dir(spec.prompt_pack).glob("*"))
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


spec = load_spec()
defs = build_definitions(spec)
fingerprint = sources_fingerprint()

_untuned = untuned_reasons(os.environ.get("DAGSTER_HOME"))
if _untuned:
    # one line: `dagster dev` by hand on a home vr-annotate did not prepare
    logging.getLogger("vr_assets").warning(
        "vr-assets: this Dagster home is not tuned for video runs (%s); start the UI with "
        "`vr-annotate ui --config <spec.yaml>` (it writes the tuned dagster.yaml and starts the webserver and daemon)",
        "; ".join(_untuned),
    )
