"""Step 4: turn parsed QA items into training tasks, and write the dataset files.

Task rules follow the reference step 4 (bucket by prompt key, Yes/No short answers, a JSON time
span for temporal localization, passthrough for the descriptive tasks) so a TAO user gets the same
files; where the reference writes bad items we skip them with a readable reason instead (MCQ answer
letter that names no option, fewer than two options; BCQ answers such as "Not sure" that only
*start* with "no").

MCQ options differ from the reference on purpose: the reference shuffles them by the question
text and leaves the reasoning alone, so "Option B is correct" ends up under answer A, and the
letters are only as balanced as chance makes them.  Here the per-video record keeps the teacher's
order; the dataset pass (:func:`place_mcq_options`) assigns each MCQ's answer letter, exactly
balanced over the whole dataset and stable as videos are added, and renames the letters in the
reasoning with the options (:mod:`vr_assets.mcq_letters`); an MCQ whose letters are ambiguous keeps
the teacher's order.

Writers:

- ``tao``: one ``<task>.json`` per non-empty task, the ``tao-vl-reason-v1.0`` envelope that
  ``tao-daft validate tao-vl-reason-v1.0`` accepts.  Stale task files from an earlier run whose
  task is now empty are removed, so the folder never mixes runs.
- ``parquet``: one flat row per item (task, video_key, video_id, mode, question, answer,
  reasoning), all string columns, so pandas, pyarrow and the Hugging Face ``datasets`` "parquet"
  builder read it without a schema file.
- ``sharegpt``: LLaMA-Factory's documented multimodal sharegpt layout in its OpenAI flavour
  (``data/mllm_video_demo.json``): a JSON list of ``{"messages": [{"role": "user", "content":
  "<video>..."}, {"role": "assistant", "content": ...}], "videos": [path]}``.  The matching
  ``dataset_info.json`` entry (``formatting: sharegpt``, ``columns: {messages, videos}``, ``tags:
  {role_tag: role, content_tag: content, user_tag: user, assistant_tag: assistant}``) comes from
  :func:`llamafactory_dataset_info`.  The same role/content messages are what Qwen-VL style
  recipes read.  Reasoning goes first as ``<think>…</think>`` (Chain-of-Thought) or is dropped.

Every file is written atomically (temp file in the same folder, then ``os.replace``), so a crash
mid-write leaves the previous file intact and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import date as _date
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Literal

from pydantic import Field

from vr_assets.mcq_letters import keep_order_reason, remap
from vr_assets.records import McqSource, Mode, QAItem, Record, TaskExports, TaskItem
from vr_assets.storage import atomic_write, ensure_dir, storage_root

if TYPE_CHECKING:  # checks.py pulls in Dagster; the export needs only the record's fields
    from upath import UPath

    from vr_assets.checks import ItemFailure

FORMAT = "tao-vl-reason-v1.0"

TASKS: tuple[str, ...] = (
    "mcq",
    "mcq_openended",
    "bcq",
    "bcq_openended",
    "open_qa",
    "causal_linkage",
    "temporal_localization",
    "temporal_description",
    "scene_description",
    "video_summarization",
)

# prompt-key fragment -> output task; checked before the question-style buckets because a
# passthrough key such as `anomaly_temporal_event_desc` must never fall into open_qa.
_PASSTHROUGH: tuple[tuple[str, str], ...] = (
    ("causal_linkage", "causal_linkage"),
    ("temporal_event_desc", "temporal_description"),
    ("scene_description", "scene_description"),
    ("event_summary", "video_summarization"),
)
_PASSTHROUGH_TASK = dict(_PASSTHROUGH)

# Answer-format instructions appended to the question; each one states the exact answer shape
# the item carries, so a fine-tuned model learns to follow it.
INSTRUCTIONS: dict[str, str] = {
    "mcq": "Reply with only the letter of the correct option.",
    "mcq_openended": "Reply with the letter of the correct option, then the option itself.",
    "bcq": "Reply with only Yes or No.",
    "bcq_openended": "Reply with Yes or No, then a short justification.",
    "temporal_localization": 'Give the time span as JSON: {"start": "MM:SS", "end": "MM:SS"}.',
}

# metadata.description per task file; description_extra from the spec is appended.
TASK_DESCRIPTIONS: dict[str, str] = {
    "mcq": "Multiple-choice questions about each video; the answer is the letter of the correct option.",
    "mcq_openended": "Multiple-choice questions about each video; the answer is the correct letter and option.",
    "bcq": "Yes/No questions about each video; the answer is Yes or No.",
    "bcq_openended": "Yes/No questions about each video; the answer is Yes or No with a short justification.",
    "open_qa": "Open questions about each video with free-text answers.",
    "causal_linkage": "Questions that link a cause to its effect across moments of each video.",
    "temporal_localization": "Questions asking when an event happens; the answer is a start/end span as JSON.",
    "temporal_description": "Questions asking what happens within a given time window of each video.",
    "scene_description": "Descriptions of each video's scene, layout and participants.",
    "video_summarization": "Summaries of the events observed in each video.",
}


# ---------------------------------------------------------------- bucketing and ids


def bucket_for_prompt_key(prompt_key: str) -> str:
    """Return the bucket of a prompt key: a passthrough task name, or mcq / bcq / temporal_localization / open_qa.

    Passthrough buckets are returned as their *output* task name (e.g. ``temporal_description``).
    """
    key = prompt_key.lower()
    for fragment, task in _PASSTHROUGH:
        if fragment in key:
            return task
    if "temporal_localization" in key:
        return "temporal_localization"
    if "mcq" in key:
        return "mcq"
    if "bcq" in key:
        return "bcq"
    return "open_qa"


def video_id_for(path: str, video_root: str) -> str:
    """Path relative to ``video_root`` (posix), else the path as given: TAO's ``video_id``."""
    posix = path.replace("\\", "/")
    if not video_root:
        return posix
    root = video_root.replace("\\", "/")
    anchor = root.rstrip("/") + "/"
    if posix.startswith(anchor) and len(posix) > len(anchor):
        return posix[len(anchor) :]
    return posix


# ---------------------------------------------------------------- per-item rules

_LETTERED = re.compile(r"^\s*\(?([A-Z])[.)]\s+(.*)$", re.S)
_ANSWER_LETTER = re.compile(r"^\W*(?:(?i:option|answer)\s*[:\-]?\s*)?\(?([A-Z])(?![A-Za-z0-9])")
_LONE_LETTER = re.compile(r"\W*([a-z])\W*")
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.I)
_TIMESTAMP = r"(\d{1,3}(?::\d{1,2}){1,2}(?:\.\d+)?|\d+(?:\.\d+)?\s*s\b)"
_START = re.compile(r"start[\s_-]*time\W{0,6}?" + _TIMESTAMP, re.I)
_END = re.compile(r"end[\s_-]*time\W{0,6}?" + _TIMESTAMP, re.I)


def _letter(i: int) -> str:
    return chr(ord("A") + i)


def _clean_options(options: list[str]) -> list[str]:
    """Drop letter prefixes only when every option carries the expected A, B, C… prefix."""
    stripped = [o.strip() for o in options if o and o.strip()]
    matches = [_LETTERED.match(o) for o in stripped]
    if stripped and all(m and m.group(1) == _letter(i) for i, m in enumerate(matches)):
        return [m.group(2).strip() for m in matches if m]
    return stripped


def _answer_index(answer: str, options: list[str]) -> int | None:
    """Index of the correct option from a letter answer, or from an answer equal to an option's text."""
    text = answer.strip()
    if not text:
        return None
    folded = text.casefold().rstrip(".")
    for i, option in enumerate(options):
        if option.casefold().rstrip(".") == folded:
            return i
    # a lower-case letter only counts when it stands alone ("b", "(c)"), never as the word "a".
    m = _ANSWER_LETTER.match(text) or _LONE_LETTER.fullmatch(text)
    if not m:
        return None
    idx = ord(m.group(1).upper()) - ord("A")
    return idx if 0 <= idx < len(options) else None


def shuffled_order(question: str, n: int, seed_extra: str = "") -> list[int]:
    """Deterministic option order for a question.

    ``random.Random(str)`` hashes the string with SHA-512, so the order is the same in every
    process and Python run; with an empty ``seed_extra`` it equals the reference's order.
    """
    order = list(range(n))
    random.Random(question + seed_extra).shuffle(order)
    return order


def _mmss(seconds: float, *, up: bool) -> str:
    # floor the start and ceil the end: the span always covers what the teacher stated.
    total = max(0, math.ceil(seconds - 1e-9) if up else math.floor(seconds + 1e-9))
    return f"{total // 60:02d}:{total % 60:02d}"


def parse_timestamp(text: str) -> float | None:
    """Seconds from ``SS``s, ``MM:SS`` or ``HH:MM:SS`` (fractions allowed)."""
    t = text.strip().lower().rstrip("s").strip()
    try:
        parts = [float(p) for p in t.split(":")]
    except ValueError:
        return None
    if not parts or len(parts) > 3 or any(p < 0 for p in parts):
        return None
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + p
    return seconds


def timespan_from_text(answer: str) -> tuple[float, float] | None:
    """``Start_Time: 00:05, End_Time: 00:12`` (any case, spaces or markdown) → seconds."""
    s = _START.search(answer)
    if not s:
        return None
    e = _END.search(answer, s.end())
    if not e:
        return None
    start, end = parse_timestamp(s.group(1)), parse_timestamp(e.group(1))
    if start is None or end is None:
        return None
    return start, end


def timespan_json(start_sec: float, end_sec: float) -> str:
    return json.dumps({"start": _mmss(start_sec, up=False), "end": _mmss(end_sec, up=True)})


def _with_instruction(question: str, task: str) -> str:
    return f"{question.rstrip()}\n{INSTRUCTIONS[task]}"


def _short(text: str, n: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _video_items(items: list[QAItem], video_id: str) -> tuple[dict[str, list[TaskItem]], list[McqSource], list[str]]:
    """Apply the step-4 rules to one video's QA items, MCQ options in the teacher's order.

    Returns the items per task (non-empty tasks only, in ``TASKS`` order), the MCQ sources aligned
    with ``tasks["mcq"]``, and one readable reason per item that could not become a training item.
    """
    out: dict[str, list[TaskItem]] = {t: [] for t in TASKS}
    sources: list[McqSource] = []
    skipped: list[str] = []

    def skip(qa: QAItem, why: str) -> None:
        skipped.append(f"{video_id} [{qa.prompt_key or qa.qa_type}] {why}: {_short(qa.question)!r}")

    def add(task: str, question: str, answer: str, reasoning: str) -> None:
        out[task].append(TaskItem(video_id=video_id, question=question, answer=answer, reasoning=reasoning))

    for qa in items:
        bucket = bucket_for_prompt_key(qa.prompt_key or qa.qa_type)
        question = qa.question.strip()
        reasoning = qa.reasoning.strip()
        if not question:
            skip(qa, "empty question")
            continue
        if bucket == "mcq":
            options = _clean_options(qa.options)
            if len(options) < 2:
                skip(qa, "MCQ with fewer than two options")
                continue
            correct = _answer_index(qa.answer, options)
            if correct is None:
                skip(qa, f"MCQ answer {_short(qa.answer, 20)!r} names no option")
                continue
            source = McqSource(
                question=question,
                options=options,
                correct=correct,
                reasoning=reasoning,
                keep_order=keep_order_reason(question, options, reasoning),
            )
            sources.append(source)
            closed, open_ended = render_mcq(video_id, source, list(range(len(options))), reasoning)
            out["mcq"].append(closed)
            out["mcq_openended"].append(open_ended)
        elif bucket == "bcq":
            m = _YES_NO.match(qa.answer)
            if not m:
                skip(qa, "BCQ answer does not start with Yes or No")
                continue
            add("bcq", _with_instruction(question, "bcq"), m.group(1).capitalize(), reasoning)
            add("bcq_openended", _with_instruction(question, "bcq_openended"), qa.answer.strip(), reasoning)
        elif bucket == "temporal_localization":
            span: tuple[float, float] | None = None
            if qa.start_sec is not None and qa.end_sec is not None:
                span = (qa.start_sec, qa.end_sec)
            else:
                span = timespan_from_text(qa.answer)
            answer = timespan_json(*span) if span else qa.answer.strip()
            if not answer:
                skip(qa, "temporal localization without an answer")
                continue
            add("temporal_localization", _with_instruction(question, "temporal_localization"), answer, reasoning)
        else:
            if not qa.answer.strip():
                skip(qa, "empty answer")
                continue
            if qa.options:
                # a non-MCQ key that still carried options: keep them, or the question refers to nothing.
                opts = _clean_options(qa.options)
                question = question + "\n" + "\n".join(f"{_letter(i)}. {o}" for i, o in enumerate(opts))
            add(bucket, question, qa.answer.strip(), reasoning)
    return {t: v for t, v in out.items() if v}, sources, skipped


def render_mcq(video_id: str, source: McqSource, order: list[int], reasoning: str) -> tuple[TaskItem, TaskItem]:
    """The mcq and mcq_openended items of one MCQ shown in ``order`` (position -> teacher's option index)."""
    options = source.options
    letter = _letter(order.index(source.correct))
    body = source.question + "\n" + "\n".join(f"{_letter(i)}. {options[j]}" for i, j in enumerate(order))
    return (
        TaskItem(video_id=video_id, question=_with_instruction(body, "mcq"), answer=letter, reasoning=reasoning),
        TaskItem(
            video_id=video_id,
            question=_with_instruction(body, "mcq_openended"),
            answer=f"{letter}. {options[source.correct]}",
            reasoning=reasoning,
        ),
    )


def order_with_answer_at(source: McqSource, target: int, seed_extra: str = "") -> list[int]:
    """The question-seeded shuffle, then the correct option swapped into position ``target``."""
    order = shuffled_order(source.question, len(source.options), seed_extra)
    at = order.index(source.correct)
    order[at], order[target] = order[target], order[at]
    return order


def moved_reasoning(source: McqSource, order: list[int]) -> str:
    """The reasoning with its option letters renamed for ``order``; raises AmbiguousLetters if unsafe."""
    mapping = {_letter(j): _letter(i) for i, j in enumerate(order)}
    names = "\n".join([source.question, *source.options])
    return remap(source.reasoning, mapping, len(source.options), names)


class McqPlacement(Record):
    """What the dataset pass did with the MCQ options."""

    shuffled: int = 0
    kept_order: int = 0
    kept_order_reasons: list[str] = Field(default_factory=list)
    shuffled_letter_balance: dict[str, int] = Field(default_factory=dict)
    balance_by_option_count: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="option count -> answer letters of the shuffled MCQs with that many options"
    )


def _placement_key(seed_extra: str, video_key: str, index: int, question: str) -> str:
    return hashlib.sha256(f"{seed_extra}\0{video_key}\0{index}\0{question}".encode()).hexdigest()


def balanced_letters(items: list[tuple[str, int, int]], n: int) -> dict[tuple[int, int], int]:
    """Answer positions for MCQs of `n` options given as (hash, video, item), keyed (video, item): exactly
    balanced and stable.

    Each MCQ has a letter of its own from its hash; the letters over their share give up their MCQs with the
    highest second hash to the letters under it. Counts differ by at most one, and a new MCQ moves at most a
    few others: with the letters given by rank instead (the k-th MCQ at letter k mod n), one new MCQ moved the
    letters of every MCQ ranked after it, and a dataset refresh rewrote and re-judged nearly all of them.
    """
    base, extra = divmod(len(items), n)
    own: dict[int, list[tuple[str, int, int]]] = {letter: [] for letter in range(n)}
    for item in items:
        own[int(item[0][:16], 16) % n].append(item)
    # the letters with the most MCQs of their own take the share's remainder: the fewest moves
    by_size = sorted(range(n), key=lambda letter: (-len(own[letter]), letter))
    share = {letter: base + int(rank < extra) for rank, letter in enumerate(by_size)}
    targets: dict[tuple[int, int], int] = {}
    given_up: list[tuple[str, int, int]] = []
    for letter, mine in own.items():
        mine.sort(key=lambda item: item[0][16:])
        for _, v, i in mine[: share[letter]]:
            targets[(v, i)] = letter
        given_up += mine[share[letter] :]
    room = [letter for letter in range(n) for _ in range(share[letter] - len(own[letter]))]
    for (_, v, i), letter in zip(sorted(given_up), room, strict=True):
        targets[(v, i)] = letter
    return targets


def place_mcq_options(per_video: list[TaskExports], seed_extra: str = "") -> tuple[list[TaskExports], McqPlacement]:
    """Move every movable MCQ's options so the answer letters are balanced over the whole dataset.

    The movable MCQs (no ambiguous letter in their text) get their answer letter from a hash of video
    key, position and question, balanced exactly within each option count (`balanced_letters`: counts
    differ by at most one), the same files for the same inputs, no tie between a letter and an item's
    position in its video, and new videos leave the old MCQs' letters alone but for a few.  The other
    options follow the question-seeded shuffle; the reasoning's letters are renamed to match.  MCQs whose letters are
    ambiguous keep the teacher's order and are counted.  Videos stored without sources (older
    records) are left as they are.
    """
    placement = McqPlacement()
    movable: list[tuple[str, int, int]] = []  # (hash key, video index, item index)
    for v, te in enumerate(per_video):
        if not te.mcq_sources or len(te.mcq_sources) != len(te.tasks.get("mcq", [])):
            continue
        for i, source in enumerate(te.mcq_sources):
            # judged again here, not read from the record: the dataset always uses the current scanner
            why = keep_order_reason(source.question, source.options, source.reasoning)
            if why:
                placement.kept_order += 1
                placement.kept_order_reasons.append(f"{te.video_key} {_short(source.question, 50)!r}: {why}")
            else:
                movable.append((_placement_key(seed_extra, te.video_key, i, source.question), v, i))
    by_n: dict[int, list[tuple[str, int, int]]] = {}
    for h, v, i in movable:
        by_n.setdefault(len(per_video[v].mcq_sources[i].options), []).append((h, v, i))
    targets: dict[tuple[int, int], int] = {}
    for n, mcqs in by_n.items():
        targets.update(balanced_letters(mcqs, n))

    letters: Counter[str] = Counter()
    by_count: dict[int, Counter[str]] = {}
    out: list[TaskExports] = []
    for v, te in enumerate(per_video):
        if not any((v, i) in targets for i in range(len(te.mcq_sources))):
            out.append(te)
            continue
        closed: list[TaskItem] = []
        open_ended: list[TaskItem] = []
        for i, source in enumerate(te.mcq_sources):
            video_id = te.tasks["mcq"][i].video_id
            order, reasoning = list(range(len(source.options))), source.reasoning
            if (v, i) in targets:
                order = order_with_answer_at(source, targets[(v, i)], seed_extra)
                reasoning = moved_reasoning(source, order)  # cannot raise: keep_order_reason found no ambiguity
                placement.shuffled += 1
                letters[_letter(targets[(v, i)])] += 1
                by_count.setdefault(len(order), Counter())[_letter(targets[(v, i)])] += 1
            c, o = render_mcq(video_id, source, order, reasoning)
            closed.append(c)
            open_ended.append(o)
        tasks = dict(te.tasks)
        tasks["mcq"] = closed
        if "mcq_openended" in tasks:
            tasks["mcq_openended"] = open_ended
        out.append(te.model_copy(update={"tasks": tasks}))
    placement.shuffled_letter_balance = dict(sorted(letters.items()))
    placement.balance_by_option_count = {str(n): dict(sorted(c.items())) for n, c in sorted(by_count.items())}
    return out, placement


def without_items(te: TaskExports, drop: Mapping[str, set[int]]) -> tuple[TaskExports, int]:
    """``te`` without the given item indices per task; returns it and how many items went.

    An MCQ goes with its open-ended twin and its source, so the three lists stay aligned.
    """
    twins = set(drop.get("mcq", set())) | set(drop.get("mcq_openended", set()))
    drop = {**drop, "mcq": twins, "mcq_openended": twins} if twins else drop
    tasks: dict[str, list[TaskItem]] = {}
    removed = 0
    for task, items in te.tasks.items():
        gone = drop.get(task, set())
        kept = [item for n, item in enumerate(items) if n not in gone]
        removed += len(items) - len(kept)
        if kept:
            tasks[task] = kept
    sources = te.mcq_sources
    if twins and len(sources) == len(te.tasks.get("mcq", [])):
        sources = [s for n, s in enumerate(sources) if n not in twins]
    return te.model_copy(update={"tasks": tasks, "mcq_sources": sources}), removed


def without_failing_items(
    te: TaskExports, failures: Iterable[ItemFailure]
) -> tuple[TaskExports, list[ExcludedItem]]:
    """``te`` minus the items failing an error-level rule, and every left-out item with its reasons.

    The one way the dataset excludes items: it goes through :func:`without_items`, so an MCQ leaves
    with its open-ended twin and its source (the twin is listed with the reason it went too).
    """
    reasons: dict[tuple[str, int], list[str]] = {}
    for f in failures:
        if f.severity == "error":
            reasons.setdefault((f.task, f.index), []).append(f"{f.rule}: {f.reason}")
    if not reasons:
        return te, []
    drop: dict[str, set[int]] = {}
    for task, n in reasons:
        drop.setdefault(task, set()).add(n)
    twins = drop.get("mcq", set()) | drop.get("mcq_openended", set())
    out: list[ExcludedItem] = []
    for task, items in te.tasks.items():
        for n, it in enumerate(items):
            why = reasons.get((task, n))
            if why is None and task in ("mcq", "mcq_openended") and n in twins:
                other = "mcq_openended" if task == "mcq" else "mcq"
                why = [f"twin_excluded: its twin {other}[{n}] failed " + ", ".join(
                    r.split(":", 1)[0] for r in reasons[(other, n)])]
            if why is not None:
                question = " ".join(it.question.split("\n", 1)[0].split())[:120]
                out.append(ExcludedItem(video_key=te.video_key, task=task, question=question, reasons=why))
    kept, removed = without_items(te, drop)
    assert removed == len(out), (removed, len(out))  # every item that went is listed, and only those
    return kept, out


def place_and_exclude(
    per_video: list[TaskExports],
    judge: Callable[[TaskExports], list[ItemFailure]] | None,
    seed_extra: str = "",
) -> tuple[list[TaskExports], McqPlacement, list[ExcludedItem]]:
    """The dataset pass: MCQ options placed first, then the items ``judge`` fails left out.

    The checks judge the items as they will be written, after the shuffle renamed the letters in
    the reasoning (``mcq_answer_matches_reasoning`` compares the placed answer with the remapped
    verdict).  Leaving an MCQ out moves a few letters to keep the balance, so the rest is placed
    again from the teacher's order and judged again, until a round leaves nothing out: the written
    letters stay exactly balanced and every written item was judged in the form it is written.  ``judge=None``
    (``export.exclude_failed_checks: false``) only places.
    """
    kept = list(per_video)  # teacher's order: placement always starts from the sources
    excluded: list[ExcludedItem] = []
    while True:
        placed, placement = place_mcq_options(kept, seed_extra)
        if judge is None:
            return placed, placement, excluded
        again = False
        for v, te in enumerate(placed):
            # placing keeps every item's index (and its question line), so the failures found on the
            # placed record name the same items in the teacher's order
            kept[v], left_out = without_failing_items(kept[v], judge(te))
            excluded += left_out
            again = again or bool(left_out)
        if not again:
            return placed, placement, excluded


def task_items_for_video(
    items: list[QAItem], video_id: str, seed_extra: str = ""
) -> tuple[dict[str, list[TaskItem]], list[str]]:
    """Step 4 for one video as if it were the whole dataset: MCQ options placed and balanced.

    Returns the items per task (non-empty tasks only, in ``TASKS`` order) and one readable reason
    per item that could not become a training item.
    """
    tasks, sources, skipped = _video_items(items, video_id)
    alone = TaskExports(video_key=video_id, mode="normal", tasks=tasks, mcq_sources=sources)
    (placed,), _ = place_mcq_options([alone], seed_extra)
    return placed.tasks, skipped


def task_exports_for_video(
    video_key: str, mode: Mode, items: list[QAItem], video_id: str
) -> tuple[TaskExports, list[str]]:
    """The per-video asset record (MCQ options in the teacher's order, with their sources) and the skip reasons.

    The options are placed by :func:`place_mcq_options` in the dataset pass, where the answer
    letters can be balanced over every video.
    """
    tasks, sources, skipped = _video_items(items, video_id)
    return TaskExports(video_key=video_key, mode=mode, tasks=tasks, mcq_sources=sources), skipped


# ---------------------------------------------------------------- atomic writing


def write_json_atomic(path: Path | UPath, obj: object) -> None:
    """Serialize fully, then replace the target whole (temp file + rename, or one PUT: `storage.atomic_write`)."""

    def write(f: IO[bytes]) -> None:
        text = json.dumps(obj, indent=2, ensure_ascii=False)
        f.write(text.encode("utf-8") + b"\n")

    atomic_write(storage_root(path), write)


# ---------------------------------------------------------------- tao-vl-reason-v1.0


def build_envelope(
    task: str,
    items: list[TaskItem],
    *,
    media_root: str | None,
    license: str,
    description_extra: str,
    date: str | None = None,
) -> dict:
    """One ``tao-vl-reason-v1.0`` annotation file as the validator's schema wants it."""
    description = " ".join(p for p in (TASK_DESCRIPTIONS.get(task, ""), description_extra.strip()) if p)
    return {
        "format": FORMAT,
        "metadata": {
            "type": "annotation",
            "task": task,
            "date": date or _date.today().isoformat(),
            "description": description,
            "license": license or "",
        },
        "media_root": media_root or None,
        "items": [i.model_dump() for i in items],
    }


def _ordered(per_video: Iterable[TaskExports]) -> list[TaskExports]:
    # sorted by key: the same inputs give byte-identical files whatever order partitions finished in.
    return sorted(per_video, key=lambda v: v.video_key)


def items_by_task(per_video: Iterable[TaskExports]) -> dict[str, list[TaskItem]]:
    """All items per task (``TASKS`` order, empty tasks included), videos in key order."""
    merged: dict[str, list[TaskItem]] = {t: [] for t in TASKS}
    for video in _ordered(per_video):
        for task, items in video.tasks.items():
            merged.setdefault(task, []).extend(items)
    return merged


def _is_our_task_file(path: Path | UPath) -> bool:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def write_tao_dataset(
    out_dir: str | Path | UPath,
    per_video: list[TaskExports],
    *,
    media_root: str | None,
    license: str,
    description_extra: str,
    date: str | None = None,
) -> dict[str, int]:
    """Write ``<task>.json`` for every non-empty task; returns items per written task."""
    out_dir = storage_root(out_dir)
    ensure_dir(out_dir)
    counts: dict[str, int] = {}
    for task, items in items_by_task(per_video).items():
        path = out_dir / f"{task}.json"
        if not items:
            if _is_our_task_file(path):  # one read: a missing file is not ours either
                path.unlink()
            continue
        envelope = build_envelope(
            task, items, media_root=media_root, license=license, description_extra=description_extra, date=date
        )
        write_json_atomic(path, envelope)
        counts[task] = len(items)
    return counts


# ---------------------------------------------------------------- parquet

PARQUET_COLUMNS: tuple[str, ...] = ("task", "video_key", "video_id", "mode", "question", "answer", "reasoning")


def write_parquet(
    path: str | Path | UPath, per_video: list[TaskExports], modes: Mapping[str, str] | None = None
) -> int:
    """One row per item; ``modes`` (video_key → mode) overrides the mode stored with each video."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[str]] = {c: [] for c in PARQUET_COLUMNS}
    for video in _ordered(per_video):
        mode = (modes or {}).get(video.video_key, video.mode)
        for task in sorted(video.tasks, key=lambda t: TASKS.index(t) if t in TASKS else len(TASKS)):
            for item in video.tasks[task]:
                row = {"task": task, "video_key": video.video_key, "mode": mode, **item.model_dump()}
                for c in PARQUET_COLUMNS:
                    columns[c].append(str(row[c]))
    schema = pa.schema([(c, pa.string()) for c in PARQUET_COLUMNS])
    table = pa.table(columns, schema=schema)
    atomic_write(storage_root(path), lambda f: pq.write_table(table, f))
    return table.num_rows


# ---------------------------------------------------------------- sharegpt / LLaMA-Factory

ReasoningPlacement = Literal["think", "none"]


def _media_path(video_id: str, media_root: str | None) -> str:
    # an absolute media_root gives paths that load from anywhere; a relative one stays relative to
    # the dataset folder, which is what LLaMA-Factory's `media_dir` defaults to.
    if media_root and not PurePosixPath(video_id).is_absolute():
        return str(PurePosixPath(media_root) / video_id)
    return video_id


def assistant_text(answer: str, reasoning: str, placement: ReasoningPlacement = "think") -> str:
    """Chain-of-Thought target: the reasoning in a think block before the answer."""
    if placement == "none":
        return answer
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}"


def sharegpt_records(
    per_video: list[TaskExports], media_root: str | None, reasoning: ReasoningPlacement = "think"
) -> list[dict]:
    records: list[dict] = []
    for video in _ordered(per_video):
        for task in sorted(video.tasks, key=lambda t: TASKS.index(t) if t in TASKS else len(TASKS)):
            for n, item in enumerate(video.tasks[task]):
                records.append(
                    {
                        "id": f"{video.video_key}/{task}/{n}",
                        "task": task,
                        "messages": [
                            {"role": "user", "content": f"<video>\n{item.question}"},
                            {"role": "assistant", "content": assistant_text(item.answer, item.reasoning, reasoning)},
                        ],
                        "videos": [_media_path(item.video_id, media_root)],
                    }
                )
    return records


def llamafactory_dataset_info(file_name: str, name: str = "vr_assets") -> dict:
    """The ``dataset_info.json`` entry LLaMA-Factory needs to read :func:`write_sharegpt` output."""
    return {
        name: {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "videos": "videos"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        }
    }


def write_sharegpt(
    path: str | Path | UPath,
    per_video: list[TaskExports],
    media_root: str | None,
    *,
    reasoning: ReasoningPlacement = "think",
    dataset_info: bool = False,
) -> int:
    """Write the LLaMA-Factory sharegpt list; with ``dataset_info`` also its entry next to it."""
    path = storage_root(path)
    records = sharegpt_records(per_video, media_root, reasoning)
    write_json_atomic(path, records)
    if dataset_info:
        write_json_atomic(path.parent / "dataset_info.json", llamafactory_dataset_info(path.name))
    return len(records)


# ---------------------------------------------------------------- report


class ExcludedItem(Record):
    """An item the dataset left out because it failed error-level checks, with every reason."""

    video_key: str
    task: str
    question: str
    reasons: list[str] = Field(description="'rule: short reason', one per failed error-level rule")


class DatasetReport(Record):
    """What the dataset asset shows: how much of what, how balanced, and what was left out."""

    items_per_task: dict[str, int]
    videos_per_mode: dict[str, int]
    mcq_letter_balance: dict[str, int]
    mcq_placement: McqPlacement = Field(default_factory=McqPlacement)
    excluded_items: int = 0
    excluded: list[ExcludedItem] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)


def build_dataset_report(
    per_video: list[TaskExports],
    *,
    files: Iterable[str | Path] = (),
    skipped: Iterable[str] = (),
    excluded_items: int = 0,
    placement: McqPlacement | None = None,
    excluded: Iterable[ExcludedItem] = (),
) -> DatasetReport:
    merged = items_by_task(per_video)
    excluded = list(excluded)
    modes = Counter(v.mode for v in per_video)
    letters = Counter(i.answer for i in merged.get("mcq", []))
    return DatasetReport(
        items_per_task={t: len(v) for t, v in merged.items() if v},
        videos_per_mode={m: modes.get(m, 0) for m in ("anomaly", "normal")},
        mcq_letter_balance=dict(sorted(letters.items())),
        mcq_placement=placement or McqPlacement(),
        excluded_items=excluded_items or len(excluded),
        excluded=excluded,
        skipped=list(skipped),
        files=[str(f) for f in files],
    )


def write_dataset(
    out_dir: str | Path | UPath,
    per_video: list[TaskExports],
    *,
    formats: Iterable[str] = ("tao",),
    media_root: str | None,
    license: str,
    description_extra: str,
    skipped: Iterable[str] = (),
    excluded_items: int = 0,
    excluded: Iterable[ExcludedItem] = (),
    reasoning: ReasoningPlacement = "think",
    mcq_seed: str = "",
    placement: McqPlacement | None = None,
) -> DatasetReport:
    """Every requested format into ``out_dir`` (tao task files at its top, so it validates as is).

    The MCQ options are placed first (:func:`place_mcq_options`, seeded with ``mcq_seed``), so every
    format carries the same balanced letters; with ``placement`` given, ``per_video`` is already
    placed (:func:`place_and_exclude`, which judged the placed items) and is written as it is.
    ``out_dir`` is a folder or a storage URL (``s3://bucket/prefix/step_4_output``; see `vr_assets.storage`).
    """
    out_dir = storage_root(out_dir)
    if placement is None:
        per_video, placement = place_mcq_options(per_video, mcq_seed)
    files: list[Path | UPath] = []
    wanted = set(formats)
    if "tao" in wanted:
        counts = write_tao_dataset(
            out_dir, per_video, media_root=media_root, license=license, description_extra=description_extra
        )
        files += [out_dir / f"{t}.json" for t in counts]
    if "parquet" in wanted:
        write_parquet(out_dir / "dataset.parquet", per_video)
        files.append(out_dir / "dataset.parquet")
    if "sharegpt" in wanted:
        write_sharegpt(out_dir / "sharegpt.json", per_video, media_root, reasoning=reasoning, dataset_info=True)
        files += [out_dir / "sharegpt.json", out_dir / "dataset_info.json"]
    return build_dataset_report(
        per_video, files=files, skipped=skipped, excluded_items=excluded_items, placement=placement,
        excluded=excluded,
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def dataset_report_markdown(
    report: DatasetReport, usage_table_md: str = "", max_skipped: int = 50, max_kept: int = 10
) -> str:
    """The report as markdown for the Dagster UI (asset metadata)."""
    total = sum(report.items_per_task.values())
    lines = [f"### Dataset: {total} items in {len(report.items_per_task)} tasks", ""]
    lines += ["| task | items |", "|---|---:|"]
    lines += [f"| {t} | {n} |" for t, n in report.items_per_task.items()] or ["| (none) | 0 |"]
    lines += ["", "**Videos per mode:** " + ", ".join(f"{m} {n}" for m, n in report.videos_per_mode.items())]
    if report.mcq_letter_balance:
        n_mcq = sum(report.mcq_letter_balance.values())
        lines += [
            "",
            "**MCQ answer letters:** "
            + ", ".join(f"{k} {v} ({100 * v / n_mcq:.0f}%)" for k, v in report.mcq_letter_balance.items()),
        ]
    mp = report.mcq_placement
    if mp.shuffled or mp.kept_order:
        by_count = mp.balance_by_option_count.items()
        moved = "; ".join(f"{n} options: " + ", ".join(f"{k} {v}" for k, v in c.items()) for n, c in by_count)
        lines += [
            "",
            f"**MCQ option order:** {mp.shuffled} shuffled (answer letters {moved or 'none'}), "
            f"{mp.kept_order} kept the teacher's order (ambiguous option letters or positions)",
        ]
        lines += [f"- {_md_cell(r)}" for r in mp.kept_order_reasons[:max_kept]]
        if len(mp.kept_order_reasons) > max_kept:
            lines.append(f"- … and {len(mp.kept_order_reasons) - max_kept} more")
    lines += ["", f"**Excluded by checks:** {report.excluded_items}"]
    if report.excluded:
        lines += ["", "| video | task | failed checks | question |", "|---|---|---|---|"]
        lines += [f"| {_md_cell(e.video_key)} | {e.task} | {_md_cell('; '.join(e.reasons))} | {_md_cell(e.question)} |"
                  for e in report.excluded[:max_skipped]]
        if len(report.excluded) > max_skipped:
            lines.append(f"| … | | {len(report.excluded) - max_skipped} more | |")
    lines += ["", f"**Skipped items:** {len(report.skipped)}"]
    if report.skipped:
        lines += [""] + [f"- {_md_cell(s)}" for s in report.skipped[:max_skipped]]
        if len(report.skipped) > max_skipped:
            lines.append(f"- … and {len(report.skipped) - max_skipped} more")
    if report.files:
        lines += ["", "**Files:**", ""] + [f"- `{f}`" for f in report.files]
    if usage_table_md.strip():
        lines += ["", "### Usage", "", usage_table_md.strip()]
    return "\n".join(lines) + "\n"
