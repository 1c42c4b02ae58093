"""Serve a GGUF model over llama.cpp's OpenAI-compatible HTTP server, through the `xllamacpp` wheel.

Run by `bench/quality.py` in its own process, with the unpacked wheel on PYTHONPATH (it is not a
dependency of vr-assets). Prints ``READY http://host:port`` once the model is loaded, then serves
until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=8192, help="context of each parallel slot")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--alias", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    args = p.parse_args(argv)

    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = args.model
    params.model_alias = args.alias
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx * args.parallel
    params.n_predict = -1
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.warmup = False
    server = xlc.Server(params)

    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"READY http://{server.listening_address}".replace("http://http://", "http://"), flush=True)
    while not done.wait(0.5):
        pass
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
