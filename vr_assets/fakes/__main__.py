"""Run one fake in its own process (demo, benchmark): prints ``READY <base_url>`` then serves.

A separate process keeps the server's JSON/base64 work off the client's GIL.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from vr_assets.fakes.gemini import FakeGemini
from vr_assets.fakes.openai import FakeOpenAI
from vr_assets.fakes.server import ALL_FAULTS, FakeServer, FaultPlan
from vr_assets.fakes.teacher import Teacher


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vr_assets.fakes", description=__doc__)
    p.add_argument("provider", choices=("gemini", "openai"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--latency-media", type=float, default=0.0, help="seconds per request carrying video/images")
    p.add_argument("--latency-text", type=float, default=0.0, help="seconds per text-only request")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument(
        "--fault-kinds", default=",".join(ALL_FAULTS), help="comma-separated subset of " + ",".join(ALL_FAULTS)
    )
    p.add_argument("--slow-s", type=float, default=5.0, help="delay of the 'timeout' fault")
    p.add_argument("--think", action="store_true", help="prepend <think>...</think> to every answer")
    p.add_argument("--items-per-call", type=int, default=2)
    p.add_argument("--processing-polls", type=int, default=2, help="Gemini: GETs a video stays PROCESSING")
    p.add_argument("--default-label", choices=("anomaly", "normal"), default="normal")
    p.add_argument("--anomaly-share", type=float, default=0.0, help="share of unlisted videos judged anomalous")
    p.add_argument(
        "--anomaly", action="append", default=[], metavar="PATH", help="file whose exact bytes are anomalous"
    )
    p.add_argument("--irrelevant", action="append", default=[], metavar="PATH", help="file judged out of domain")
    return p


def build(args: argparse.Namespace) -> FakeServer:
    teacher = Teacher(
        think=args.think,
        items_per_call=args.items_per_call,
        default_label=args.default_label,
        anomaly_share=args.anomaly_share,
    )
    for path in args.anomaly:
        teacher.set_verdict_for_file(path, relevant=path not in args.irrelevant, label="anomaly")
    for path in args.irrelevant:
        if path not in args.anomaly:
            teacher.set_verdict_for_file(path, relevant=False, label=args.default_label)
    kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
    faults = FaultPlan(rate=args.fault_rate, seed=args.fault_seed, kinds=kinds, slow_s=args.slow_s)
    common = {
        "teacher": teacher,
        "latency_media_s": args.latency_media,
        "latency_text_s": args.latency_text,
        "faults": faults if args.fault_rate > 0 else None,
        "host": args.host,
        "port": args.port,
    }
    if args.provider == "gemini":
        return FakeGemini(processing_polls=args.processing_polls, **common)  # type: ignore[arg-type]
    return FakeOpenAI(**common)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = build(args).start()
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"READY {server.base_url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
