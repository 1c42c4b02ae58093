"""The dataset pass at scale: placing MCQ options and judging every item, without and with the last build's verdicts.

    python bench/dataset_pass.py [--videos 10000]

N videos of the offline teacher's items (every QA type, half anomaly, half normal; each video's items differ) go
through `export.place_and_exclude` three times: judging every item (no cache), the first build with an empty
`judgments.ItemJudgments` (its file is saved), and a rebuild after 1 % new videos were added (the file loaded). It
prints seconds per phase and the file's size. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vr_assets.checks import item_failures, rules_fingerprint  # noqa: E402
from vr_assets.export import place_and_exclude, task_exports_for_video  # noqa: E402
from vr_assets.fakes.teacher import Teacher  # noqa: E402
from vr_assets.judgments import ItemJudgments  # noqa: E402
from vr_assets.parsing import parse_qa  # noqa: E402
from vr_assets.prompts import load_pack, qa_prompt_key, schema_for_key  # noqa: E402
from vr_assets.quality import ExampleIndex  # noqa: E402
from vr_assets.records import ALL_QA_TYPES, TaskExports  # noqa: E402


def videos(n: int, start: int = 0) -> list[TaskExports]:
    pack, teacher, out = load_pack("general"), Teacher(items_per_call=3), []
    for v in range(start, start + n):
        mode = ("anomaly", "normal")[v % 2]
        items = []
        for qt in ALL_QA_TYPES:
            key = qa_prompt_key(qt, mode)
            schema = schema_for_key(key).model_json_schema()
            items += parse_qa(teacher.answer(pack.text(key), [f"{v:064x}"], schema).text, qt, key)
        out.append(task_exports_for_video(f"v{v:06d}.mp4", mode, items, f"cam/v{v:06d}.mp4")[0])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=10_000)
    args = ap.parse_args()
    t = time.perf_counter()
    per_video = videos(args.videos)
    added = videos(max(1, args.videos // 100), start=args.videos)
    items = sum(len(x) for te in per_video for x in te.tasks.values())
    print(f"{args.videos} videos, {items} items made in {time.perf_counter() - t:.1f} s")
    examples = ExampleIndex.of(load_pack("general"))
    fingerprint = rules_fingerprint(examples)

    def build(vids: list[TaskExports], known: ItemJudgments | None) -> float:
        t0 = time.perf_counter()
        place_and_exclude(vids, lambda te: item_failures(te, 30.0, examples, known))
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    place_and_exclude(per_video, None)
    print(f"| placing only | {time.perf_counter() - t0:.2f} s |")
    print(f"| placing and judging every item (no cache) | {build(per_video, None):.2f} s |")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "item_judgments.json"
        first = ItemJudgments.load(path, fingerprint)
        s = build(per_video, first)
        t0 = time.perf_counter()
        first.save(path)
        print(f"| first build: {first.judged} judged | {s:.2f} s, file saved in {time.perf_counter() - t0:.2f} s "
              f"({path.stat().st_size / 1e6:.1f} MB) |")
        t0 = time.perf_counter()
        again = ItemJudgments.load(path, fingerprint)
        loaded = time.perf_counter() - t0
        s = build(per_video + added, again)
        print(f"| rebuild with {len(added)} new video(s): {again.judged} judged, {again.reused} reused | {s:.2f} s "
              f"(+ {loaded:.2f} s loading the file) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
