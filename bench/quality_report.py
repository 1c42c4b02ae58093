"""The figures of a `make quality` run, read back from its results folder (no model, no server).

What a reader of the README needs to judge the real teacher: how many LLM calls, how long each took,
how many answers parsed, how many items the graph produced, which rules left how many out (and which
warned), and how many items each video keeps. `python bench/quality.py --report-only` prints them again.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from vr_assets.checks import item_failures
from vr_assets.prompts import load_pack
from vr_assets.providers.usage import UsageLedger
from vr_assets.quality import ExampleIndex
from vr_assets.records import Captions, QAResult, TaskExports, TaskItem
from vr_assets.store import JsonStore


def _rule(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def figures(results: Path) -> dict[str, Any]:
    store = JsonStore(results)
    videos = store.partitions("task_exports")
    out: dict[str, Any] = {"results": str(results), "videos": videos}

    # LLM calls as the ledger recorded them (answers from the call cache are not calls)
    llm = [e for e in UsageLedger(results / "usage").entries() if e.usage.provider == "openai"]
    paid = [e for e in llm if not e.usage.cached]
    lat = [e.usage.latency_s for e in paid if e.ok]
    # a run answered from the call cache asked nothing: the seconds are those recorded when each answer was asked
    cached = [json.loads(f.read_text())["usage"] for f in sorted((results / "cache" / "calls").glob("*/*.json"))]
    cached = [u for u in cached if u.get("provider") == "openai"]
    out["llm_calls_in_cache"] = {
        "answers": len(cached),
        "latency_s_mean": round(statistics.mean(u["latency_s"] for u in cached), 1) if cached else None,
        "latency_s_median": round(statistics.median(u["latency_s"] for u in cached), 1) if cached else None,
        "output_tokens_mean": round(statistics.mean(u["output_tokens"] for u in cached)) if cached else None,
    }
    out["llm_calls"] = {
        "calls": len(paid), "failed": sum(not e.ok for e in paid), "from_cache": len(llm) - len(paid),
        "per_step": dict(Counter(e.usage.step for e in paid)),
        "latency_s_mean": round(statistics.mean(lat), 1) if lat else None,
        "latency_s_median": round(statistics.median(lat), 1) if lat else None,
        "latency_s_max": round(max(lat), 1) if lat else None,
        "prompt_tokens_mean": round(statistics.mean(e.usage.prompt_tokens for e in paid)) if paid else None,
        "output_tokens_mean": round(statistics.mean(e.usage.output_tokens for e in paid)) if paid else None,
        "retries": sum(e.usage.retries for e in paid),
        "wall_s": round(max(e.ts for e in paid) - min(e.ts - e.usage.latency_s for e in paid), 1) if paid else None,
    }

    # step 3: answers that parsed, items per question type
    answers = parsed = 0
    items_per_type: Counter[str] = Counter()
    parse_failures: dict[str, str] = {}
    for v in store.partitions("qa"):
        qa = QAResult.model_validate(store.read("qa", v))
        answers += len(qa.raw)
        parsed += len(qa.raw) - len(qa.parse_failures)
        items_per_type.update(i.qa_type for i in qa.items)
        parse_failures.update({f"{v} {k}": why for k, why in qa.parse_failures.items()})
    out["step3"] = {"answers": answers, "parsed": parsed, "items": sum(items_per_type.values()),
                    "items_per_type": dict(items_per_type), "parse_failures": parse_failures}

    # step 4: items before the checks, what the dataset left out and why, what each video keeps
    before: Counter[str] = Counter()
    mode: dict[str, str] = {}
    durations: dict[str, float] = {}
    video_id: dict[str, str] = {}
    for v in videos:
        te = TaskExports.model_validate(store.read("task_exports", v))
        mode[v] = te.mode
        durations[v] = Captions.model_validate(store.read("captions", v)).probe.duration_sec
        before[v] = sum(len(items) for items in te.tasks.values())
        for items in te.tasks.values():
            for it in items:
                video_id[it.video_id] = v
    out["items_before_checks"] = {"total": sum(before.values()), "per_video": dict(before)}

    step4 = results / "step_4_output"
    report = json.loads((step4 / "dataset_report.json").read_text())
    by_rule: Counter[str] = Counter()
    excluded_per_video: Counter[str] = Counter()
    for e in report["excluded"]:
        excluded_per_video[e["video_key"]] += 1
        for r in e["reasons"]:
            by_rule[_rule(r)] += 1
    kept = _kept_items(step4)
    examples = ExampleIndex.of(load_pack("general"))
    warned: Counter[str] = Counter()
    kept_by_video: dict[str, dict[str, list[TaskItem]]] = defaultdict(lambda: defaultdict(list))
    for task, items in kept.items():
        for it in items:
            kept_by_video[video_id.get(it.video_id, "")][task].append(it)
    for v, tasks in kept_by_video.items():  # per video: the rules that compare a video's items need them together
        te = TaskExports(video_key=v, mode=mode.get(v, "normal"), tasks=dict(tasks))
        warned.update(f.rule for f in item_failures(te, durations.get(v, 1e9), examples) if f.severity == "warn")
    kept_per_video: Counter[str] = Counter(video_id.get(it.video_id, it.video_id)
                                           for items in kept.values() for it in items)
    out["excluded"] = {"items": report["excluded_items"], "by_rule": dict(by_rule.most_common()),
                       "per_video": dict(excluded_per_video)}
    out["warned_kept"] = dict(warned.most_common())
    out["kept"] = {"total": sum(kept_per_video.values()), "per_video": {v: kept_per_video.get(v, 0) for v in videos},
                   "per_task": {t: len(items) for t, items in kept.items()}}
    out["modes"] = mode
    return out


def _kept_items(step4: Path) -> dict[str, list[TaskItem]]:
    """The dataset's items per task, read from its TAO task files."""
    out: dict[str, list[TaskItem]] = defaultdict(list)
    for path in sorted(step4.glob("*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "items" not in data:
            continue
        out[path.stem] = [TaskItem.model_validate({k: i[k] for k in ("video_id", "question", "answer", "reasoning")})
                          for i in data["items"]]
    return dict(out)


def print_figures(f: dict[str, Any]) -> None:
    c, s3 = f["llm_calls"], f["step3"]
    print("\n## make quality: real small LLM (Qwen2.5-Coder-1.5B-Instruct Q4_K_M) as the teacher, fake VLM\n")
    print(f"videos: {len(f['videos'])} ({', '.join(f'{v} [{m}]' for v, m in f['modes'].items())})")
    print(f"LLM calls: {c['calls']} ({c['failed']} failed, {c['retries']} retries, {c['from_cache']} from the call "
          f"cache) per step {c['per_step']}")
    print(f"seconds per call: mean {c['latency_s_mean']}, median {c['latency_s_median']}, max {c['latency_s_max']} "
          f"(prompt {c['prompt_tokens_mean']} / output {c['output_tokens_mean']} tokens on average); "
          f"LLM span {c['wall_s']} s")
    k = f["llm_calls_in_cache"]
    print(f"LLM answers in the call cache (every attempt of every run, kept): {k['answers']}, as asked: mean "
          f"{k['latency_s_mean']} s, median {k['latency_s_median']} s, {k['output_tokens_mean']} output tokens")
    print(f"step 3 parse success: {s3['parsed']}/{s3['answers']} answers, {s3['items']} QA items "
          f"{s3['items_per_type']}")
    for k, why in s3["parse_failures"].items():
        print(f"  parse failure {k}: {why[:160]}")
    b, e, k = f["items_before_checks"], f["excluded"], f["kept"]
    print(f"step 4 items before the checks: {b['total']}; left out: {e['items']}; kept: {k['total']}")
    print("left out by rule (an item counts under each rule it breaks):")
    for rule, n in e["by_rule"].items():
        print(f"  {rule:32s} {n}")
    print("warn-level rules on kept items:", f["warned_kept"] or "none")
    print("per video: produced / left out / kept")
    for v in f["videos"]:
        print(f"  {v:40s} {b['per_video'].get(v, 0):4d} {e['per_video'].get(v, 0):4d} {k['per_video'].get(v, 0):4d}")
    print("kept per task:", k["per_task"])


def corpus_cases(results: Path) -> list[dict[str, Any]]:
    """Every step-4 item of the run (teacher's option order, as task_exports holds it) as a quality-corpus case:
    the rules it breaks now in `flags`, the run's video, mode and duration. Written verbatim, for review."""
    store = JsonStore(results)
    examples = ExampleIndex.of(load_pack("general"))
    cases: list[dict[str, Any]] = []
    for v in store.partitions("task_exports"):
        te = TaskExports.model_validate(store.read("task_exports", v))
        duration = Captions.model_validate(store.read("captions", v)).probe.duration_sec
        found: dict[tuple[str, int], set[str]] = defaultdict(set)
        for f in item_failures(te, duration, examples):
            found[(f.task, f.index)].add(f.rule)
        name = v.split("__")[-1].removesuffix(".mp4")
        for task, items in te.tasks.items():
            for n, it in enumerate(items):
                flags = sorted(found[(task, n)])
                cases.append({"id": f"real-{name}-{task}-{n}", "origin": "real-run", "video": name,
                              "task": task, "mode": te.mode, "duration": round(duration, 2),
                              "question": it.question, "answer": it.answer, "reasoning": it.reasoning,
                              "flags": flags})
    return cases
