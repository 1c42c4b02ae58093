"""Cost per usable item (issue #20 item 5): what one dataset item that passes every error-level check costs.

Ours: every call in the run's usage ledger (`<results>/usage/calls.jsonl`), repriced with one dated price
table (`bench/prices_2026-12.yaml`) as if the teacher were that model, so runs against the fakes (which
carry no prices) and runs with other prices compare on the same table; usable items: each video's
exported items (`task_exports`) less those `vr_assets.checks.item_failures` fails at error level.
The reference: its token usage is needed per request; see `reference_row` for when it is measured.

    python bench/cost.py --results bench/out/ours/results [--model gemini-2.5-flash] [--reference DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from vr_assets.checks import item_failures  # noqa: E402
from vr_assets.config import Pricing, load_spec  # noqa: E402
from vr_assets.estimate import estimate  # noqa: E402
from vr_assets.prompts import load_pack  # noqa: E402
from vr_assets.providers.usage import UsageLedger, cache_write_usd, cost_usd  # noqa: E402
from vr_assets.quality import ExampleIndex  # noqa: E402
from vr_assets.records import Captions, TaskExports  # noqa: E402
from vr_assets.registry import VideoRegistry  # noqa: E402
from vr_assets.store import JsonStore  # noqa: E402

PRICES = BENCH / "prices_2026-12.yaml"
DEFAULT_MODEL = "gemini-2.5-flash"
DEFAULT_TTL_S = 600.0  # ModelSpec.context_cache_ttl_s's default


class PriceTable(BaseModel):
    date: str
    sources: list[str]
    models: dict[str, Pricing]

    @classmethod
    def load(cls, path: Path = PRICES) -> PriceTable:
        return cls.model_validate(yaml.safe_load(path.read_text()))


class CostRow(BaseModel):
    who: str
    measured: bool
    reason: str = ""
    videos: int = 0
    calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    items: int = 0
    usable_items: int = 0

    @property
    def usd_per_usable_item(self) -> float | None:
        return self.usd / self.usable_items if self.usable_items else None


def ledger_cost(results: Path, price: Pricing, ttl_s: float = DEFAULT_TTL_S) -> CostRow:
    """Every paid call in the ledger (call-cache hits cost nothing), repriced with `price`."""
    row = CostRow(who="ours", measured=True)
    for e in UsageLedger(results / "usage").entries():
        u = e.usage
        if u.cached:
            continue
        row.calls += 1
        row.input_tokens += u.prompt_tokens
        row.cached_tokens += u.cached_tokens
        row.output_tokens += u.output_tokens + u.thinking_tokens
        row.usd += cost_usd(price, u.prompt_tokens, u.output_tokens, u.thinking_tokens, u.cached_tokens)
        row.usd += cache_write_usd(price, u.cache_write_tokens, ttl_s)
    row.usd = round(row.usd, 8)
    return row


def usable_items(results: Path, prompt_pack: str = "general", prompts_module: str = "") -> tuple[int, int, int]:
    """(videos exported, items, items passing every error-level check) over the run's per-video exports."""
    store = JsonStore(results)
    examples = ExampleIndex.of(load_pack(prompt_pack, prompts_module))
    videos = items = usable = 0
    for key in sorted(VideoRegistry(results).load()):
        te: TaskExports | None = store.read_optional("task_exports", key)
        if te is None:
            continue
        cap: Captions = store.read("captions", key)
        videos += 1
        bad = {(f.task, f.index) for f in item_failures(te, cap.probe.duration_sec, examples) if f.severity == "error"}
        n = sum(len(v) for v in te.tasks.values())
        items += n
        usable += n - len(bad)
    return videos, items, usable


def ours_row(results: Path, price: Pricing, prompt_pack: str = "general", prompts_module: str = "") -> CostRow:
    row = ledger_cost(results, price)
    row.videos, row.items, row.usable_items = usable_items(results, prompt_pack, prompts_module)
    return row


def reference_row(reference_dir: Path | None) -> CostRow:
    """The reference's row. Its cost needs the token usage of each of its requests; bench/run.py keeps the
    fake's request log of the reference run in memory only (dropped when the run ends), and no reference
    run can be made without bench/.ref-venv (bench/setup_reference.sh). So it is measured nowhere yet."""
    why = []
    if not (BENCH / ".ref-venv" / "bin" / "python").exists():
        why.append("bench/.ref-venv is missing (bench/setup_reference.sh not run here), so no reference run")
    if reference_dir is None or not reference_dir.exists():
        why.append("no reference run output given or found")
    why.append("bench/run.py does not keep the fake's per-request usage of the reference run")
    return CostRow(who="reference", measured=False, reason="; ".join(why))


def estimate_vs_actual(spec_path: Path, table: PriceTable, model: str = DEFAULT_MODEL) -> tuple[float, float]:
    """(model-based estimate, actual) in USD for a finished run, both priced with `model` from `table`:
    the estimate as `vr-annotate estimate` would have printed it before the run (no ledger)."""
    spec = load_spec(spec_path)
    price = table.models[model]
    spec = spec.model_copy(update={"prices": {spec.vlm.model_name: price, spec.llm.model_name: price}})
    est = estimate(spec, use_ledger=False)
    actual = ledger_cost(Path(spec.results_dir), price, spec.vlm.context_cache_ttl_s).usd
    return est.total_usd, actual


def bench_lines(out: Path, model: str = DEFAULT_MODEL) -> str:
    """What bench/run.py prints after its report: our run's estimate-vs-actual error and cost per usable item."""
    spec_path, results = out / "ours" / "spec.yaml", out / "ours" / "results"
    if not spec_path.exists() or not (results / "usage").exists():
        return f"estimate vs actual: not measured: no run of ours in {out}"
    table = PriceTable.load()
    est, actual = estimate_vs_actual(spec_path, table, model)
    error = f"{(est - actual) / actual:+.1%}" if actual else "n/a (actual $0)"
    spec = load_spec(spec_path)
    rows = [ours_row(results, table.models[model], spec.prompt_pack, spec.prompts_module),
            reference_row(out / "reference")]
    return (f"estimate vs actual (ours, priced as {model}; the estimate modelled without the ledger, as "
            f"`vr-annotate estimate` prints it before a run; the fake counts 258 tokens per media part): "
            f"estimated ${est:.5f}, actual ${actual:.5f}, error {error}\n" + render(rows, table, model))


def render(rows: list[CostRow], table: PriceTable, model: str) -> str:
    lines = [f"Cost per usable item, priced as {model} (price table {table.date}: {', '.join(table.sources)})",
             "| who | videos | calls | input tok | cached tok | output tok | USD | items | usable | USD/usable item |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.measured:
            lines.append(f"| {r.who} | not measured: {r.reason} | | | | | | | | |")
            continue
        per = r.usd_per_usable_item
        lines.append(f"| {r.who} | {r.videos} | {r.calls} | {r.input_tokens:,} | {r.cached_tokens:,} | "
                     f"{r.output_tokens:,} | {r.usd:.5f} | {r.items} | {r.usable_items} | "
                     f"{'-' if per is None else f'{per:.6f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=BENCH / "out" / "ours" / "results")
    p.add_argument("--reference", type=Path, default=BENCH / "out" / "reference")
    p.add_argument("--prices", type=Path, default=PRICES)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompt-pack", default="general")
    args = p.parse_args(argv)
    table = PriceTable.load(args.prices)
    if args.model not in table.models:
        print(f"error: model {args.model!r} is not in {args.prices} (has {', '.join(table.models)})")
        return 2
    if not (args.results / "usage").exists():
        print(f"error: {args.results} has no usage ledger (usage/calls.jsonl): run the pipeline first")
        return 2
    rows = [ours_row(args.results, table.models[args.model], args.prompt_pack), reference_row(args.reference)]
    print(render(rows, table, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
