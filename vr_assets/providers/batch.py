"""Calls of steps on the batch tier: they wait in a provider batch (half price, up to 24 h) instead of a worker.

A step on the batch tier looks each call up in the answer cache; a miss is written to the outbox here (one JSON
file per call, keyed by its answer-cache key, under `<results_dir>/cache/batch/`) and the run ends without that
step. The `provider_batches` sensor (`vr_assets.batch_sensor`) calls `tick`: it submits what waits (grouped per
teacher, after `max_entries` calls or `max_wait_s`), polls the batches in flight, stores each answer in the
answer cache exactly as a live call would (ledger entry at the batch price, marked as asked ahead so the step's
own lookup reports it once with its cost), puts entries the provider failed into a later batch (bounded), and
names the videos whose answers are all in, for the sensor to run their step again (it then hits the cache).

Gemini: JSONL input (`{"key", "request"}` lines) uploaded through the Files API, `batches.create(model, src=
file name)`, `batches.get` until JOB_STATE_SUCCEEDED, results file downloaded (`{"key", "response"|"error"}`).
OpenAI: JSONL (`custom_id`, `method`, `url`, `body`) through `files.create(purpose="batch")`, `batches.create(
input_file_id, endpoint, completion_window="24h")`, `batches.retrieve`, output and error files read by
`files.content`.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vr_assets.config import TIER_STEPS, Spec
from vr_assets.providers.base import Attempt, BadOutput, ModelAnswer, ModelCall, ProviderError, parse_structured
from vr_assets.shared_state import Records, coordinator

log = logging.getLogger(__name__)

GEMINI_DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
OPENAI_DONE = {"completed", "failed", "expired", "cancelled"}
STEP_ASSET = {i: name for name, i in TIER_STEPS.items()}


class WaitingForBatch(ProviderError):
    """A batch-tier call with no answer yet: it waits in the outbox or in a submitted batch."""


class BatchEntry(BaseModel):
    """One call waiting for a batch; enough to send it again without the run that asked it."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="the answer-cache key: the batch's custom_id / key, and the file name here")
    role: Literal["vlm", "llm"]
    video_key: str
    step: str
    prompt_key: str
    prompt: str
    system: str = ""
    schema_ref: str | None = Field(None, description="module:QualName of the pydantic answer schema")
    queued_at: float
    state: Literal["queued", "submitted", "failed"] = "queued"
    batch_id: str = ""
    batches: int = Field(0, description="batches it went into")
    error: str = ""

    @property
    def asset(self) -> str:
        return STEP_ASSET.get(self.step, self.step)

    def call(self) -> ModelCall:
        schema = None
        if self.schema_ref:
            module, _, name = self.schema_ref.partition(":")
            schema = getattr(importlib.import_module(module), name)
        return ModelCall(step=self.step, prompt_key=self.prompt_key, video_key=self.video_key, prompt=self.prompt,
                         schema_model=schema, system=self.system, tier="batch")

    @classmethod
    def of(cls, call: ModelCall, key: str, role: str) -> BatchEntry:
        ref = f"{call.schema_model.__module__}:{call.schema_model.__qualname__}" if call.schema_model else None
        return cls(key=key, role=role, video_key=call.video_key, step=call.step,  # type: ignore[arg-type]
                   prompt_key=call.prompt_key, prompt=call.prompt, system=call.system, schema_ref=ref,
                   queued_at=time.time())


class BatchJob(BaseModel):
    """A batch submitted to a provider, as the UI shows it (sensor log, observations)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    provider: str
    role: Literal["vlm", "llm"]
    model: str
    keys: list[str]
    input_file: str = ""
    state: str = ""
    done: bool = False
    submitted_at: float
    finished_at: float | None = None
    succeeded: int = 0
    failed: int = 0


class BatchBook:
    """The outbox and the submitted batches: records of the shared-state coordinator (`vr_assets.shared_state`),
    so files under the results folder on one host, rows beside Dagster's when the instance is on Postgres."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _entries(self) -> Records:
        return coordinator().records("batch_entries", self.root / "entries")

    @property
    def _jobs(self) -> Records:
        return coordinator().records("batch_jobs", self.root / "jobs")

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """One tick at a time (the UI's sensor and `vr-annotate batches`, any host): a batch is submitted once."""
        self.root.mkdir(parents=True, exist_ok=True)
        with coordinator().lock("batch-tick", self.root / ".tick.lock"):
            yield

    def queue(self, entry: BatchEntry) -> bool:
        """True when this call was not waiting yet (two runs queueing one call write it once)."""
        return self._entries.add(entry.key, entry.model_dump_json())

    def entry(self, key: str) -> BatchEntry | None:
        raw = self._entries.get(key)
        try:
            return BatchEntry.model_validate_json(raw) if raw else None
        except ValueError:
            return None

    def save(self, entry: BatchEntry) -> None:
        self._entries.put(entry.key, entry.model_dump_json())

    def drop(self, key: str) -> None:
        self._entries.delete(key)

    def take_failure(self, key: str) -> str | None:
        """The provider's last word on a call that failed in every batch it went into; taken once, so a later
        run of the step queues it afresh."""
        e = self.entry(key)
        if e is None or e.state != "failed":
            return None
        self.drop(key)
        return e.error

    def entries(self) -> list[BatchEntry]:
        records = self._entries
        out = []
        for name in records.names():
            e = self.entry(name)
            if e is not None:
                out.append(e)
        return out

    def jobs(self) -> list[BatchJob]:
        records = self._jobs
        out = []
        for name in records.names():
            raw = records.get(name)
            try:
                out.append(BatchJob.model_validate_json(raw or ""))
            except ValueError:
                continue
        return sorted(out, key=lambda j: j.submitted_at)

    def save_job(self, job: BatchJob) -> None:
        self._jobs.put(job.id.replace("/", "_"), job.model_dump_json())


def batch_book_for(results_dir: str) -> BatchBook:
    return BatchBook(Path(results_dir) / "cache" / "batch")


# ---------------------------------------------------------------- provider protocols


def _submit_gemini(teacher: Any, entries: list[BatchEntry], label: str) -> tuple[str, str]:
    from google.genai import types

    lines = [json.dumps({"key": e.key, "request": teacher.batch_request(e.call())}) for e in entries]
    data = io.BytesIO(("\n".join(lines) + "\n").encode())
    f = teacher.client.files.upload(file=data, config=types.UploadFileConfig(mime_type="jsonl", display_name=label))
    job = teacher.client.batches.create(model=teacher.model_name, src=f.name,
                                        config=types.CreateBatchJobConfig(display_name=label))
    return job.name or "", f.name or ""


def _poll_gemini(teacher: Any, job: BatchJob) -> tuple[str, dict[str, Attempt | str] | None]:
    from google.genai import types

    from vr_assets.providers.gemini import read_response

    got = teacher.client.batches.get(name=job.id)
    state = str(getattr(got.state, "value", got.state) or "")
    if state not in GEMINI_DONE:
        return state, None
    results: dict[str, Attempt | str] = {}
    if state == "JOB_STATE_SUCCEEDED" and got.dest is not None and got.dest.file_name:
        raw = teacher.client.files.download(file=got.dest.file_name)
        for line in raw.decode().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            key = str(row.get("key", ""))
            if row.get("error"):
                results[key] = f"batch entry failed: {json.dumps(row['error'])[:400]}"
            else:
                resp = types.GenerateContentResponse._from_response(response=row.get("response") or {}, kwargs={})
                results[key] = read_response(resp)
    for key in job.keys:
        results.setdefault(key, f"batch {job.id} ended {state} without an answer for this entry")
    return state, results


def _drop_files(teacher: Any, job: BatchJob) -> None:
    """A finished batch's files, once its answers are stored: the input and (Gemini) the results file; OpenAI's
    output and error files stay in the account's file list until deleted there."""
    names = [job.input_file]
    if teacher.provider == "gemini":
        got = teacher.client.batches.get(name=job.id)
        names.append(got.dest.file_name if got.dest is not None and got.dest.file_name else "")
    for name in filter(None, names):
        try:
            if teacher.provider == "gemini":
                teacher.client.files.delete(name=name)
            else:
                teacher.client.files.delete(name)
        except Exception as err:  # noqa: BLE001 - Gemini drops files after 48 h anyway; never fail a tick on it
            log.info("could not delete batch file %s: %s", name, err)


def _submit_openai(teacher: Any, entries: list[BatchEntry], label: str) -> tuple[str, str]:
    url = "/v1/chat/completions"
    lines = [json.dumps({"custom_id": e.key, "method": "POST", "url": url, "body": teacher.batch_request(e.call())})
             for e in entries]
    f = teacher.client.files.create(file=(f"{label}.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    b = teacher.client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h",
                                      metadata={"vr_assets": label})
    return b.id, f.id


def _poll_openai(teacher: Any, job: BatchJob) -> tuple[str, dict[str, Attempt | str] | None]:
    from openai.types.chat import ChatCompletion

    from vr_assets.providers.openai_compat import read_completion

    b = teacher.client.batches.retrieve(job.id)
    if b.status not in OPENAI_DONE:
        return b.status, None
    results: dict[str, Attempt | str] = {}
    for file_id in (b.output_file_id, b.error_file_id):
        if not file_id:
            continue
        for line in teacher.client.files.content(file_id).text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            key = str(row.get("custom_id", ""))
            resp = row.get("response") or {}
            if row.get("error") or resp.get("status_code") != 200:
                detail = row.get("error") or resp.get("body")
                results[key] = f"batch entry failed (HTTP {resp.get('status_code')}): {json.dumps(detail)[:400]}"
            else:
                results[key] = read_completion(ChatCompletion.model_validate(resp.get("body") or {}))
    for key in job.keys:
        results.setdefault(key, f"batch {job.id} ended {b.status} without an answer for this entry")
    return b.status, results


# ---------------------------------------------------------------- one sensor tick


class TickReport(BaseModel):
    """What one tick did; the sensor turns it into runs, observations and log lines."""

    submitted: list[BatchJob] = Field(default_factory=list)
    polled: list[BatchJob] = Field(default_factory=list, description="batches whose state changed on this tick")
    answered: int = 0
    requeued: int = 0
    failed: int = 0
    ready: list[tuple[str, str]] = Field(default_factory=list, description="(video key, asset) to run again")
    waiting: int = 0


def tick(spec: Spec, book: BatchBook, *, now: float | None = None,
         teacher_for: Callable[[str], Any] | None = None) -> TickReport:
    """Submit what is due, poll what is in flight, store the answers, say which steps can run again."""
    with book.ticking():
        return _tick(spec, book, now, teacher_for)


def _tick(spec: Spec, book: BatchBook, now: float | None, teacher_for: Callable[[str], Any] | None) -> TickReport:
    from vr_assets.call_cache import spec_teacher

    now = time.time() if now is None else now
    teacher_for = teacher_for or (lambda role: spec_teacher(spec, role))  # type: ignore[arg-type]
    settings = spec.workflow.batch
    report = TickReport()
    touched: set[tuple[str, str]] = set()
    for job in book.jobs():
        if job.done:
            continue
        cached = teacher_for(job.role)
        teacher = cached.model
        poll = _poll_gemini if teacher.provider == "gemini" else _poll_openai
        state, results = poll(teacher, job)
        changed = state != job.state
        job.state = state
        if results is not None:
            job.done, job.finished_at = True, now
            for key, got in results.items():
                entry = book.entry(key)
                if entry is None or entry.batch_id != job.id:
                    continue  # answered before, or resubmitted elsewhere
                touched.add((entry.video_key, entry.asset))
                error = _store_answer(cached, entry, got, now) if isinstance(got, Attempt) else got
                if error is None:
                    job.succeeded += 1
                    report.answered += 1
                    book.drop(key)
                    continue
                job.failed += 1
                entry.error = error
                if entry.batches > settings.max_resubmits:
                    entry.state = "failed"
                    report.failed += 1
                    log.warning("video %s step %s: batch entry failed for good: %s", entry.video_key, entry.step,
                                error)
                else:
                    entry.state, entry.batch_id = "queued", ""
                    report.requeued += 1
                book.save(entry)
        if changed or job.done:
            book.save_job(job)
            report.polled.append(job)
        if job.done:
            _drop_files(teacher, job)
    waiting = [e for e in book.entries() if e.state == "queued"]
    spent = _over_budget(spec)
    if spent is not None and waiting:  # what a live call would refuse is not submitted either
        for e in waiting:
            e.state, e.error = "failed", spent
            book.save(e)
            touched.add((e.video_key, e.asset))
        report.failed += len(waiting)
        log.warning("%d batch call(s) not submitted: %s", len(waiting), spent)
        waiting = []
    groups: dict[str, list[BatchEntry]] = {}
    for e in waiting:
        groups.setdefault(e.role, []).append(e)
    for role, group in groups.items():
        due = len(group) >= settings.max_entries or now - min(e.queued_at for e in group) >= settings.max_wait_s
        if not due:
            continue
        cached = teacher_for(role)
        teacher = cached.model
        for start in range(0, len(group), settings.max_entries):
            part = group[start:start + settings.max_entries]
            submit = _submit_gemini if teacher.provider == "gemini" else _submit_openai
            label = f"vr-assets-{role}-{int(now)}-{start // settings.max_entries}"
            job_id, input_file = submit(teacher, part, label)
            job = BatchJob(id=job_id, provider=teacher.provider, role=role, model=teacher.model_name,
                           keys=[e.key for e in part], input_file=input_file, state="submitted", submitted_at=now)
            book.save_job(job)
            for e in part:
                e.state, e.batch_id, e.batches = "submitted", job_id, e.batches + 1
                book.save(e)
            report.submitted.append(job)
            log.info("submitted %s batch %s: %d call(s)", teacher.provider, job_id, len(part))
    open_by_step: set[tuple[str, str]] = set()
    left = book.entries()
    for e in left:
        if e.state != "failed":
            open_by_step.add((e.video_key, e.asset))
    report.waiting = sum(1 for e in left if e.state != "failed")
    report.ready = sorted(t for t in touched if t not in open_by_step)
    return report


def _over_budget(spec: Spec) -> str | None:
    """Why nothing may be submitted: the ledger shows `budget_usd` spent (None: go ahead)."""
    if spec.budget_usd is None:
        return None
    from vr_assets.providers.usage import UsageLedger

    spent = UsageLedger(Path(spec.results_dir) / "usage").spent_usd()
    if spent < spec.budget_usd:
        return None
    return f"budget of ${spec.budget_usd:.4f} is spent (${spent:.4f} so far): not submitted"


def _store_answer(cached: Any, entry: BatchEntry, got: Attempt, now: float) -> str | None:
    """An answer into the ledger and the answer cache, as a live call would; the reason when it is unusable."""
    teacher = cached.model
    call = entry.call()
    error: str | None = None
    parsed = None
    if got.bad is not None:
        error = f"bad output: {got.bad}"
    else:
        try:
            parsed = parse_structured(got.text, call.schema_model) if call.schema_model is not None else None
        except BadOutput as b:
            error = f"bad output: {b}"
    usage = teacher._usage(call, got, time.monotonic(), 0)
    usage = usage.model_copy(update={"latency_s": round(max(0.0, now - entry.queued_at), 3)})
    teacher._record(call, usage, ok=error is None, error=error or "")  # billed either way
    if error is None:
        cached._store(entry.key, ModelAnswer(text=got.text, parsed=parsed, usage=usage,
                                             finish_reason=got.finish_reason), ahead=True)
    return error
