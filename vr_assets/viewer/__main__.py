"""`python -m vr_assets.viewer --config spec.yaml [--port N]`: the viewer without the CLI's subcommand."""

from __future__ import annotations

import argparse
import sys

from vr_assets.config import SpecError, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vr-annotate view", description="serve the dataset viewer")
    parser.add_argument("--config", help="spec YAML (default $VR_CONFIG or ./spec.yaml)")
    parser.add_argument("--port", type=int, help="port (default viewer.port, 8765)")
    parser.add_argument("--host", help="interface (default viewer.host, 127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.config)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    from vr_assets.viewer.server import serve

    serve(spec, args.port, args.host)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
