"""State shared across processes that share only the Postgres URL: one paid call per key, N slots in all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg2

from tests.timing import max_overlap
from vr_assets.fakes import FakeGemini, Teacher
from vr_assets.providers.upload_registry import UploadEntry, UploadRegistry
from vr_assets.shared_state import PgCoordinator

REPO = Path(__file__).resolve().parent.parent

# One "host": its own slot and lock folders, the shared answers folder, the Postgres URL. At `start`
# it asks every shared question (the other host asks them too) and four of its own, eight at once.
HOST = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from vr_assets.call_cache import CachedModel
from vr_assets.config import GeminiSettings, ModelSpec, RateLimits, RetrySettings
from vr_assets.providers import ModelCall, get_model
from vr_assets.shared_state import coordinator

base_url, answers, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
start, slots = float(sys.argv[4]), int(sys.argv[5])
spec = ModelSpec(backend="gemini", limits=RateLimits(max_concurrency=slots),
                 gemini=GeminiSettings(api_key="vr-test-key-shared-0123", base_url=base_url, model="gemini-test"),
                 retry=RetrySettings(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05))
model = CachedModel(get_model(spec, role="llm", max_workers=8), answers, "fp")
prompts = [f"shared question {i}" for i in range(6)] + [f"{name} question {i}" for i in range(4)]
time.sleep(max(0.0, start - time.time()))
def ask(p):
    return model.generate(ModelCall(step="1a", prompt_key="caption", video_key="v", prompt=p))
with ThreadPoolExecutor(8) as pool:
    got = list(pool.map(ask, prompts))
print(json.dumps({"kind": coordinator().kind, "answers": {p: a.text for p, a in zip(prompts, got)},
                  "paid": sum(not a.usage.cached for a in got)}))
"""



def test_two_processes_sharing_only_the_postgres_url_pay_once_per_key_and_stay_within_the_slots(
    pg_url: str, tmp_path: Path
) -> None:
    fake = FakeGemini(teacher=Teacher(), latency_text_s=0.25).start()
    seen_advisory: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # the locks really are Postgres advisory locks, visible to a third session
        conn = psycopg2.connect(pg_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
                seen_advisory.append(cur.fetchone()[0])
                time.sleep(0.02)
        conn.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        start = time.time() + 4.0  # both are imported and waiting by then: they ask at the same moment
        procs = []
        for name in ("hostA", "hostB"):
            env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "VR_HOST_SLOTS_DIR")}
            env.update(PYTHONPATH=str(REPO), VR_DAGSTER_POSTGRES_URL=pg_url,
                       VR_HOST_SLOTS_DIR=str(tmp_path / name / "slots"))  # separate: only Postgres is shared
            procs.append(subprocess.Popen(
                [sys.executable, "-c", HOST, fake.base_url, str(tmp_path / "answers"), name, str(start), "2"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.set()
        watcher.join(5)
        fake.stop()
    assert [o["kind"] for o in outs] == ["postgres", "postgres"]
    asked = Counter(json.dumps(r.json["contents"], sort_keys=True) for r in fake.log if r.route == "generateContent")
    assert len(asked) == 6 + 4 + 4 and set(asked.values()) == {1}, "a question was paid for twice"
    assert sum(o["paid"] for o in outs) == 14
    shared = [p for p in outs[0]["answers"] if p.startswith("shared")]
    assert all(outs[0]["answers"][p] == outs[1]["answers"][p] for p in shared)
    spans = [(r.started_at, r.started_at + r.duration_s) for r in fake.log if r.route == "generateContent"]
    assert max_overlap(spans) == 2, "two slots in all, across both processes (each alone would allow two)"
    assert max(seen_advisory) >= 2
    assert not list((tmp_path / "answers").rglob("*.lock"))
    # no slot files on the host: the slots were Postgres's (the circuit breaker's state is host-local by design)
    local = tmp_path / "hostA" / "slots"
    assert all(p.suffix == ".breaker" for p in local.glob("*")) if local.exists() else True


def test_locks_slots_and_upload_records_across_sessions(pg_url: str, tmp_path: Path) -> None:
    """Two coordinators are two sessions, as two hosts: exclusive locks, bounded slots, one set of records;
    a holder whose connection dies gives everything back."""
    a, b = PgCoordinator(pg_url), PgCoordinator(pg_url)
    order: list[str] = []

    def b_takes_it() -> None:
        with b.lock("call:k", tmp_path / "unused.lock"):
            order.append("b")

    with a.lock("call:k", tmp_path / "unused.lock"):
        waiter = threading.Thread(target=b_takes_it)
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and order == []
        order.append("a done")
    waiter.join(10)
    assert order == ["a done", "b"]

    release = a.slots("gemini/m", 1).acquire()
    assert release is not None and b.slots("gemini/m", 1).acquire(timeout_s=0.2) is None
    release()
    assert b.slots("gemini/m", 1).acquire(timeout_s=5) is not None
    assert a.slots("gemini/m", 1).acquire(timeout_s=0.2) is None
    b._slot.close()  # noqa: SLF001 - b's session dies holding the slot, like a killed host
    held_by_a = a.slots("gemini/m", 1).acquire(timeout_s=5)
    assert held_by_a is not None
    # the server ends a's session (a restart): the slot is free for b, and a's late release frees nothing
    with psycopg2.connect(pg_url) as admin, admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (a._slot.get_backend_pid(),))  # noqa: SLF001
    assert b.slots("gemini/m", 1).acquire(timeout_s=5) is not None
    held_by_a()
    assert a.slots("gemini/m", 1).acquire(timeout_s=0.3) is None  # a reconnected, and b still holds it

    one = UploadRegistry(tmp_path / "h1" / "endpoint", a.records("uploads:endpoint", tmp_path / "h1"))
    two = UploadRegistry(tmp_path / "h2" / "endpoint", b.records("uploads:endpoint", tmp_path / "h2"))
    entry = UploadEntry(name="files/x", uri="u", mime_type="video/mp4", size=1, created_unix=time.time(), owners=["v1"])
    assert one.record("sha1", entry)
    claimed = two.claim("sha1", "v2")
    assert claimed is not None and claimed.name == "files/x" and one.holders("sha1") == ["v1", "v2"]
    assert two.owned_by("v2") == ["sha1"]
    assert one.unclaim("sha1", "v1") is None and two.unclaim("sha1", "v2") is not None
    assert one.holders("sha1") == [] and not (tmp_path / "h1").exists() and not (tmp_path / "h2").exists()
