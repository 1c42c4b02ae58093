"""What a pipeline sent to the fake, and the lower bound on wall time that traffic implies.

Counts come from the fake's own request log, so ours and the reference are measured by the
same instrument, whatever each pipeline believes it sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

MODEL_ROUTES = ("generateContent", "streamGenerateContent")


class CallStats(BaseModel):
    requests: int = 0
    model_calls: int = 0
    media_calls: int = 0
    text_calls: int = 0
    failed_calls: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    request_bytes: int = 0
    inline_media_bytes: int = 0
    by_route: dict[str, int] = {}
    busy_s: float = 0.0
    peak_in_flight: int = 0
    files_left: int = 0  # uploads still on the service when the run ended (should be 0)
    first_start: float = 0.0
    last_end: float = 0.0

    def per_video(self, n: int) -> dict[str, float]:
        d = max(n, 1)
        return {
            "model_calls": round(self.model_calls / d, 2),
            "media_calls": round(self.media_calls / d, 2),
            "text_calls": round(self.text_calls / d, 2),
            "uploads": round(self.uploads / d, 2),
            "request_mb": round(self.request_bytes / d / 1e6, 3),
            "inline_media_mb": round(self.inline_media_bytes / d / 1e6, 3),
            "upload_mb": round(self.upload_bytes / d / 1e6, 3),
        }


def call_stats(fake: Any) -> CallStats:
    """Successful model calls split by kind (the fake sleeps by kind); failures carry no latency."""
    log = list(fake.log)
    s = CallStats(requests=len(log), by_route=dict(Counter(r.route for r in log)))
    for r in log:
        s.request_bytes += r.body_len
        if r.route in MODEL_ROUTES:
            if r.status != 200:
                s.failed_calls += 1
                continue
            s.model_calls += 1
            if r.media_sha256:
                s.media_calls += 1
            else:
                s.text_calls += 1
        elif r.route == "upload.start":
            s.uploads += 1
    spans = [(r.started_at, r.started_at + r.duration_s) for r in log if r.route in MODEL_ROUTES and r.status == 200]
    if spans:
        s.busy_s = round(sum(e - b for b, e in spans), 3)
        s.first_start, s.last_end = min(b for b, _ in spans), max(e for _, e in spans)
        edges = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
        now = 0
        for _, step in edges:
            now += step
            s.peak_in_flight = max(s.peak_in_flight, now)
    s.upload_bytes = sum(fake.upload_bytes_by_sha().values()) if hasattr(fake, "upload_bytes_by_sha") else 0
    s.inline_media_bytes = sum(fake.inline_bytes_by_sha().values())
    s.files_left = fake.live_files() if hasattr(fake, "live_files") else 0
    return s


def ramp(spans: list[tuple[float, float]], c: int) -> tuple[float, float | None]:
    """Seconds from the pipeline's launch to its first model call, and to the first moment with `c` calls in
    flight (None: never): how long the provider's slots wait while the pipeline starts."""
    if not spans:
        return 0.0, None
    edges = sorted([(b, 1) for b, _ in spans] + [(b + d, -1) for b, d in spans], key=lambda x: (x[0], x[1]))
    now = 0
    for t, step in edges:
        now += step
        if now >= c:
            return round(min(b for b, _ in spans), 2), round(t, 2)
    return round(min(b for b, _ in spans), 2), None


class Ideal(BaseModel):
    """max(longest dependent chain of one video, total provider time / concurrency)."""

    critical_path_s: float
    throughput_s: float
    ideal_s: float
    chain: str


def utilisation(stats: CallStats, c: int, wall_s: float) -> float:
    """Share of the C provider slots busy over the run's wall time (1.0: never a free slot)."""
    return round(stats.busy_s / (max(c, 1) * wall_s), 3) if wall_s > 0 else 0.0


def chain_latency(relevant: bool, label: str, lm: float, lt: float) -> float:
    """Dependent calls of one video under the reference's data contract.

    Off-domain: step 0 only. Normal: step 0 -> captions and chunk captions -> description -> QA.
    Anomaly adds the highlight pair: anomaly time (text) -> clip caption (media).
    """
    if not relevant:
        return lm
    if label == "anomaly":
        return 3 * lm + 3 * lt
    return 2 * lm + 2 * lt


def ideal(videos: Iterable[tuple[bool, str]], stats: CallStats, lm: float, lt: float, c: int) -> Ideal:
    crit = max((chain_latency(rel, label, lm, lt) for rel, label in videos), default=0.0)
    thr = (stats.media_calls * lm + stats.text_calls * lt) / max(c, 1)
    return Ideal(
        critical_path_s=round(crit, 3),
        throughput_s=round(thr, 3),
        ideal_s=round(max(crit, thr), 3),
        chain="anomaly: 3 media + 3 text; normal: 2 media + 2 text; filtered out: 1 media",
    )
