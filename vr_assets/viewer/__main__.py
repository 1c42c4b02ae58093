"""`python -m vr_assets.viewer --config spec.yaml [--port N]`: the viewer without the CLI's subcommand
(`vr-annotate view` calls `run_viewer` with the same arguments)."""

from __future__ import annotations

import argparse
import sys

from vr_assets.config import SpecError, load_spec


def run_viewer(config: str | None, port: int | None = None, host: str | None = None) -> int:
    """Load the spec and serve until ^C / SIGTERM; exit code 2 for a bad spec, like `vr-annotate run`."""
    try:
        spec = load_spec(config)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    from vr_assets.viewer.server import serve

    try:
        serve(spec, port, host)
    except OSError as e:  # the port is taken, or not ours to bind
        print(f"vr-annotate view: cannot listen on {host or spec.viewer.host}:{port or spec.viewer.port}: {e}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vr-annotate view", description="serve the dataset viewer")
    parser.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    parser.add_argument("--port", type=int, help="port (default viewer.port, 8765)")
    parser.add_argument("--host", help="interface (default viewer.host, 127.0.0.1)")
    args = parser.parse_args(argv)
    return run_viewer(args.config, args.port, args.host)


if __name__ == "__main__":
    raise SystemExit(main())
