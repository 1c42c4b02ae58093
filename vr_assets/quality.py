"""Item rules for the ways real teachers fail, beyond the format rules in `checks.py`.

A small real LLM as teacher wrote items the format rules passed but a reader rejects at once: the
prompt's own example copied, a "yes/no" question that is not one, a cause placed after its effect,
an MCQ whose reasoning picks another option. These rules catch those, plus times outside the video
and guesses where the task asks for what is visible. The rules are deliberately narrow (explicit
phrases, long word runs, conservative comparisons): a rule that drops good items costs more than
the rare bad item it would also catch. `tests/data/quality_corpus/` holds the cases each rule must
and must not flag.
"""

from __future__ import annotations

import re
from collections import Counter

from dagster import AssetCheckSeverity

from vr_assets.prompts import PromptPack, qa_prompt_key
from vr_assets.records import TaskItem

ERROR = AssetCheckSeverity.ERROR
WARN = AssetCheckSeverity.WARN

# bump when a rule changes what it flags: step 4's code versions include it, so the checks and exclusions re-run
QUALITY_VERSION = "5"

QUALITY_CHECKS: dict[str, tuple[AssetCheckSeverity, str]] = {
    "no_example_leakage": (ERROR, "No question, option, answer or reasoning repeats the example text of the prompt "
                           "the item was written with (a run of 8 words, or a whole line of 6 or more), or keeps a "
                           "format-only example's placeholder (\"MM:SS\", \"MM:02\", \"<the person>\")."),
    "question_form": (ERROR, "Yes/no questions are closed questions (an auxiliary verb first: is, does, did, can…); "
                      "temporal localization questions ask when and name the event they locate."),
    "causal_order": (ERROR, "In causal items the cause's time is not after its effect's time."),
    "mcq_answer_matches_reasoning": (ERROR, "Where an MCQ's reasoning states its verdict (\"the answer is C\", "
                                     "\"Option B is correct\", \"the correct answer is <option text>\"), it names "
                                     "the answer's option."),
    "times_inside_video": (ERROR, "Every MM:SS time a question or answer names lies inside the video, and a named "
                           "window (between X and Y, from X to Y) has positive length."),
    "answer_not_speculative": (ERROR, "Answers of fact tasks (open QA, causal linkage, temporal description, the "
                               "open-ended Yes/No and MCQ twins) state what is visible, without likely/may/might/"
                               "possibly/probably/it seems."),
    "no_actor_labels": (ERROR, "No question, option, answer or reasoning names an actor by a label (\"Person A\", "
                        "\"Actor 1\", \"Vehicle B\") instead of what is visible: a reader of one item cannot tell "
                        "who that is."),
    "mcq_answer_not_longest": (WARN, "The correct MCQ option is not by far the longest (at most 1.5 times the "
                               "longest wrong option), a cue a model can learn instead of the video."),
    "description_not_speculative": (WARN, "Scene descriptions and summaries state what is visible, without "
                                    "likely/may/might/possibly/probably/it seems."),
    "no_repetition": (ERROR, "No answer or reasoning says the same sentence twice (6 words or more; three times "
                      "when only its times differ) or repeats a run of 12 words: the loop a small teacher falls "
                      "into."),
    "no_source_reference": (ERROR, "No reasoning cites \"the description\", \"the caption(s)\" or \"the transcript\", "
                            "and no question, answer or reasoning cites \"the text\", \"the provided information\" "
                            "or \"the notes\": the student sees only the video."),
    "yes_no_answer_matches_reasoning": (ERROR, "A Yes/No item's answer agrees with the verdict its reasoning or "
                                        "justification states (\"so yes\", \"the answer is no\"), or, without one, "
                                        "with a reasoning that restates the question negated (\"does not show any "
                                        "movement …\" under Yes)."),
    "times_as_timestamps": (WARN, "Tasks whose prompt asks for MM:SS times do not write a moment as seconds "
                            "(\"at 20.0 seconds\", \"between 0.0 and 5.0 seconds\", \"at 5 s\"); durations (\"for 5 "
                            "seconds\") are fine."),
    "no_duplicate_questions": (ERROR, "No question appears twice in one task of a video (case, spaces and punctuation "
                               "folded): the later copy is left out, unless the first is left out itself."),
    "no_duplicate_answers": (WARN, "No two items of one free-text task of a video give the same answer of 12 words "
                             "or more to different questions (one answer for two windows)."),
    "no_cross_task_duplicates": (WARN, "No question appears in two tasks of a video, except an MCQ or Yes/No item and "
                                 "its open-ended twin."),
    "no_duplicate_reasoning": (ERROR, "No two items of one task of a video give the same reasoning (20 words or more, "
                               "word for word) to different questions with different answers: one reasoning cannot "
                               "support both. The later copy is left out, unless the first is left out itself."),
}
# rules that compare the items of one video with each other (`video_problems`); the others judge one item alone
VIDEO_RULES = ("no_duplicate_questions", "no_duplicate_answers", "no_cross_task_duplicates",
               "no_duplicate_reasoning")

# ---------------------------------------------------------------- shared text helpers

_OPTION_LINE = re.compile(r"^([A-Z])\.\s+(.+?)\s*$", re.MULTILINE)
_TIME = re.compile(
    r"(?<![\d:.])(?:(\d{1,2}):)?(\d{1,2}):([0-5]\d(?:\.\d+)?)(?![\d:])(?!\s*[ap]\.?m\b)", re.IGNORECASE
)
_WORD = re.compile(r"<t>|[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def stem(question: str) -> str:
    """The question's first line: without the options and the answer-format instruction export appends."""
    return question.strip().split("\n", 1)[0].strip()


def mcq_options(question: str) -> list[tuple[str, str]]:
    return _OPTION_LINE.findall(question)


def answer_letter(task: str, answer: str) -> str:
    return answer.strip()[:1] if task == "mcq_openended" else answer.strip()


def times_in(text: str) -> list[tuple[float, int, int]]:
    """(seconds, start, end) of every MM:SS / H:MM:SS time in `text`; clock times (10:30 am) are left out."""
    out = []
    for m in _TIME.finditer(text):
        h, mm, ss = m.groups()
        out.append((int(h or 0) * 3600 + int(mm) * 60 + float(ss), m.start(), m.end()))
    return out


def _tokens(text: str) -> list[str]:
    return _WORD.findall(_TIME.sub(" <t> ", text.lower().replace("’", "'")))


def _excerpt(text: str, n: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


# ---------------------------------------------------------------- example leakage

# Which step-3 question type wrote the items of a task (the prompt whose example could leak).
TASK_QA_TYPE: dict[str, str] = {
    "mcq": "mcq",
    "mcq_openended": "mcq",
    "bcq": "bcq",
    "bcq_openended": "bcq",
    "open_qa": "open_qa",
    "causal_linkage": "causal_linkage",
    "temporal_localization": "temporal_localization",
    "temporal_description": "temporal_event_desc",
    "scene_description": "scene_description",
    "video_summarization": "event_summary",
}
_EXAMPLE_HEAD = re.compile(r"^\s*(?:#+\s*)?(?:an?\s+)?(?:format-only\s+)?examples?\b[^:\n]*:(.*)$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"<[^<>\n]*>")
_FIELD_LABEL = re.compile(r"^\s*[\w -]{1,20}:\s*")
_QUOTED = re.compile(r"[\"“]([^\"”]+)[\"”]")
RUN = 8  # words in a row shared with the example that count as copying
WHOLE_LINE = 6  # a line this long or longer that sits inside the example counts as copied


def example_segments(prompt: str) -> list[str]:
    """The example texts of a prompt: the lines after an `Example …:` (or `Format-only example …:`) heading up to
    the next blank line, cut at every `<placeholder>`.

    Only examples count; the instructions' own quoted forms ("When does [event] occur in the video?",
    "the person in the red jacket") are what every good item follows, so they are never matched. A format-only
    example's scaffolding between its placeholders ("At <MM:SS> <the event>.") is too short to copy, so the
    shipped packs, whose examples are all format-only, leave nothing to match; a pack with concrete examples does.
    """
    out: list[str] = []
    lines = prompt.splitlines()
    i = 0
    while i < len(lines):
        m = _EXAMPLE_HEAD.match(lines[i])
        if not m:
            i += 1
            continue
        # "Format-only example: the parts in <angle brackets> …:" is all heading; "Example: <text>" holds text
        block = [m.group(1)] if m.group(1).strip() and not lines[i].rstrip().endswith(":") else []
        i += 1
        while i < len(lines) and lines[i].strip():
            block.append(lines[i])
            i += 1
        for line in block:
            quoted = _QUOTED.findall(line)
            out += [q for q in quoted if q.strip(" .")] if quoted else [_FIELD_LABEL.sub("", line)]
    if any(_PLACEHOLDER.search(s) for s in out):
        # a run never spans a placeholder, and the short scaffolding between two is what any item says
        return [p.strip() for s in out for p in _PLACEHOLDER.split(s) if len(_tokens(p)) >= RUN]
    return [s for s in out if len(_tokens(s)) >= 3]


class ExampleIndex:
    """Word runs of every example in a pack's QA prompts, per prompt key, for the leakage rule."""

    def __init__(self, segments_per_key: dict[str, list[str]]) -> None:
        self.segments = segments_per_key
        self._grams: dict[str, set[tuple[str, ...]]] = {}
        for key, segments in segments_per_key.items():
            grams: set[tuple[str, ...]] = set()
            for s in segments:
                toks = _tokens(s)
                for n in range(WHOLE_LINE, RUN + 1):
                    grams.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
            self._grams[key] = grams
        self._per_item: dict[tuple[str, str | None], set[tuple[str, ...]]] = {}

    @classmethod
    def of(cls, pack: PromptPack) -> ExampleIndex:
        keys = {qa_prompt_key(t, m) for t in set(TASK_QA_TYPE.values()) for m in ("anomaly", "normal")}
        return cls({k: example_segments(pack.text(k)) for k in sorted(keys) if k in pack.templates})

    def keys_for(self, task: str, mode: str | None) -> list[str]:
        qa_type = TASK_QA_TYPE.get(task)
        if qa_type is None:
            return list(self._grams)
        modes = [mode] if mode in ("anomaly", "normal") else ["anomaly", "normal"]
        return [k for k in {qa_prompt_key(qa_type, m) for m in modes} if k in self._grams]

    def copied(self, task: str, mode: str | None, text: str) -> str | None:
        """The first line of `text` that repeats an example of the item's prompt, else None."""
        grams = self._per_item.get((task, mode))
        if grams is None:
            grams = set().union(*(self._grams[k] for k in self.keys_for(task, mode)))
            self._per_item[(task, mode)] = grams
        if not grams:
            return None
        for line in text.splitlines():
            toks = _tokens(line)
            if len(toks) >= RUN and any(tuple(toks[i : i + RUN]) in grams for i in range(len(toks) - RUN + 1)):
                return line
            if WHOLE_LINE <= len(toks) < RUN and tuple(toks) in grams:
                return line
        return None


# a format-only example's placeholder kept in the item: "at MM:00" (seen from the real 1.5B teacher), "<MM:SS>"
_KEPT_PLACEHOLDER = re.compile(r"\b(?:[HM]{1,2}:)?MM:(?:SS|\d\d)\b|<[A-Za-z][^<>\n]{1,60}>")


def placeholder_problem(task: str, item: TaskItem) -> str | None:
    fields = [("question", stem(item.question)), ("reasoning", item.reasoning)]
    if task != "temporal_localization":  # its answer is the JSON span the export writes
        fields.append(("answer", item.answer))
    if task in ("mcq", "mcq_openended"):
        fields += [("option", text) for _, text in mcq_options(item.question)]
    for name, text in fields:
        m = _KEPT_PLACEHOLDER.search(text)
        if m:
            return f"{name} keeps the example's placeholder {m.group(0)!r}: {_excerpt(text)!r}"
    return None


def leakage_problem(task: str, item: TaskItem, mode: str | None, examples: ExampleIndex | None) -> str | None:
    kept = placeholder_problem(task, item)
    if kept is not None or examples is None:
        return kept
    for name, text in (("question", item.question), ("answer", item.answer), ("reasoning", item.reasoning)):
        line = examples.copied(task, mode, text)
        if line is not None:
            return f"{name} repeats the prompt's example: {_excerpt(line)!r}"
    return None


# ---------------------------------------------------------------- actor labels

# "Person A", "Actor 1", "the man B", "Vehicle 2": a label for an actor, which the prompts forbid
_ACTOR_NOUNS = sorted(words("person actor man woman individual subject pedestrian worker driver cyclist vehicle car "
                           "truck"))
_NOT_UNIT = r"(?!\s*(?:m|metres?|meters?|feet|ft|s|seconds?|km|%)\b)"
_ACTOR_LABEL = re.compile(
    # "Person A and …": a capitalised noun takes any letter; "the woman A few …": after a lowercase one "A" is
    # the article unless no lowercase word follows
    r"\b(?:(?:" + "|".join(n.capitalize() for n in _ACTOR_NOUNS) + r")\s+(?:[A-H]\b|\d{1,2}\b" + _NOT_UNIT + r")"
    r"|(?:" + "|".join(_ACTOR_NOUNS) + r")\s+(?:[B-H]\b|A\b(?!\s+[a-z])|\d{1,2}\b" + _NOT_UNIT + r"))"
)


def actor_label_problem(item: TaskItem) -> str | None:
    for name, text in (("question", stem(item.question)), ("answer", item.answer), ("reasoning", item.reasoning),
                       *(("option", t) for _, t in mcq_options(item.question))):
        m = _ACTOR_LABEL.search(text)
        if m:
            return f"{name} names an actor by a label ({m.group(0)!r}) instead of what is visible"
    return None


# ---------------------------------------------------------------- question form

_AUX = words(
    "is are was were am do does did can could will would should shall has have had may might must "
    "isn't aren't wasn't weren't don't doesn't didn't can't couldn't won't wouldn't shouldn't hasn't haven't "
    "hadn't"
)
_LEAD_PREP = words(
    "at in on before after during between by from while once within throughout around as upon until over near "
    "inside outside"
)
_TEMPORAL_ASK = re.compile(
    r"\b(?:when|what\s+time|at\s+what\s+(?:point|moment|time)|during\s+(?:which|what)|how\s+long|"
    r"time\s*(?:span|stamp|range|window|interval|frame)|timestamps?|interval|period|segment|moment|"
    r"(?:which|what)\s+(?:part|portion|section|point|second)|how\s+many\s+seconds|"
    r"(?:start|begin|end|stop)s?\s+and\s+(?:end|stop)s?)\b",
    re.IGNORECASE,
)
# words that ask for a time or stand for "something" without naming what happens
_VAGUE = words(
    "when what which time span timestamp timestamps range window interval period segment moment point during "
    "how long does did do is are was were the a an in of on at to this that it its there video clip footage "
    "scene recording camera event events anomaly anomalous incident notable main key important specific "
    "something thing activity action happen happens happened occur occurs occurred take takes taking place "
    "start starts begin begins end ends stop stops and or from first last visible shown seen"
)


def yes_no_form_problem(question: str) -> str | None:
    """A yes/no question opens with an auxiliary verb, possibly after a leading time or place phrase."""
    s = stem(question)
    words = [w.strip(",.;:!?\"'()*_").lower() for w in s.split()]
    words = [w for w in words if w]
    if not words:
        return "question is empty"
    if words[0] in _AUX:
        return None
    lead, sep, rest = s.partition(",")
    if sep and len(lead.split()) <= 10:
        after = rest.strip().split(maxsplit=1)
        if after and after[0].strip(",.;:!?\"'()").lower() in _AUX:
            return None
    if words[0] in _LEAD_PREP and any(w in _AUX for w in words[1:8]):
        return None
    return f"not a yes/no question (does not open with is/does/did/can…): {_excerpt(s)!r}"


def temporal_form_problem(question: str) -> str | None:
    """A localization question asks for a time and names the event to locate."""
    s = stem(question)
    if not _TEMPORAL_ASK.search(s):
        return f"does not ask when something happens: {_excerpt(s)!r}"
    content = [w for w in _tokens(s) if w not in _VAGUE and w != "<t>" and len(w) > 2]
    if not content:
        return f"names no event to locate: {_excerpt(s)!r}"
    return None


# ---------------------------------------------------------------- causal order

_FORWARD = re.compile(
    r"\b(?:lead(?:s|ing)?\s+to|led\s+to|result(?:s|ed|ing)?\s+in|caus(?:e|es|ed|ing)(?!\s+by\b)|"
    r"trigger(?:s|ed|ing)?(?!\s+by\b)|prompt(?:s|ed|ing)?(?!\s+by\b)|forc(?:e|es|ed|ing)(?!\s+by\b)|"
    r"contribut(?:e|es|ed|ing)\s+to|br(?:ing|ings|ought)\s+about)\b",
    re.IGNORECASE,
)
_BACKWARD = re.compile(
    r"\b(?:because(?:\s+of)?|due\s+to|as\s+a\s+result\s+of|in\s+response\s+to|caused\s+by|triggered\s+by|"
    r"prompted\s+by|forced\s+by|after|following)\b",
    re.IGNORECASE,
)
# a time after these words ends a state that began earlier ("stays red until 00:09"): not when a cause happened
_RANGE_END = re.compile(r"\b(?:until|till|up\s+to|through|by|to|and)\s*$|[-–]\s*$", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _event_times(text: str) -> list[float]:
    return [t for t, start, _ in times_in(text) if not _RANGE_END.search(text[max(0, start - 12) : start])]


# the two events a connector joins are the clauses right next to it: "enters at 00:01 and, after picking the
# box up at 00:03, leaves" must not read 00:01 as the effect of 00:03
_CLAUSE_BREAK = re.compile(r"[,;()]|:\s|\s(?:and|then|while|but)\s", re.IGNORECASE)


def causal_pair(text: str) -> tuple[list[float], list[float]] | None:
    """(cause times, effect times) of the two clauses joined by the first causal connector with a time in both."""
    found = sorted([(m, True) for m in _FORWARD.finditer(text)] + [(m, False) for m in _BACKWARD.finditer(text)],
                   key=lambda p: p[0].start())
    for m, forward in found:
        before = text[: m.start()]
        breaks = list(_CLAUSE_BREAK.finditer(before))
        left_clause = before[breaks[-1].end() :] if breaks else before
        after = text[m.end() :]
        nxt = _CLAUSE_BREAK.search(after)
        right_clause = after[: nxt.start()] if nxt else after
        left, right = _event_times(left_clause), _event_times(right_clause)
        if left and right:
            return (left, right) if forward else (right, left)
    return None


def _order_problem(cause: list[float], effect: list[float], where: str) -> str | None:
    # conservative: only when every time of the cause lies after every time of the effect
    if min(cause) > max(effect):
        return (f"{where}: the cause at {_mmss(min(cause))} comes after its effect at {_mmss(max(effect))}")
    return None


def _mmss(sec: float) -> str:
    return f"{int(sec) // 60:02d}:{int(sec) % 60:02d}"


def causal_order_problem(item: TaskItem) -> str | None:
    q = stem(item.question)
    pair = causal_pair(q)
    if pair:
        return _order_problem(*pair, where="question")
    for sentence in _SENTENCE.split(item.answer.strip()):
        pair = causal_pair(sentence)
        if pair:
            return _order_problem(*pair, where="answer")
    if q.lower().startswith("why"):
        effect = _event_times(q)
        m = re.search(r"\b(?:because(?:\s+of)?|due\s+to|as\s+a\s+result\s+of|since)\b([^.!?]*)", item.answer,
                      re.IGNORECASE)
        cause = _event_times(m.group(1)) if m else []
        if effect and cause:
            return _order_problem(cause, effect, where="answer")
    return None


# ---------------------------------------------------------------- MCQ verdict in the reasoning

_L = r"\(?(?<![A-Za-z0-9'])(?P<l>[A-H])\)?(?![A-Za-z0-9'])"
_AFTER = r"(?=\s*(?:$|[^\w\s]|(?i:is|was|because|since|as|which|and|for|here|then|fits|matches)\b))"
_IS = r"(?:is|would\s+be|must\s+be|should\s+be)"
_LETTER_VERDICTS = [
    re.compile(r"(?i:\b(?:(?:correct|right|best|final|true)\s+(?:answer|option|choice)\s+" + _IS + r"|answer\s+"
               + _IS + r"|answer\s*[:=]))[\s:]*(?i:(?:option|choice)\s+)?" + _L + _AFTER),
    re.compile(r"(?i:\b(?:option|choice)\s+)" + _L + r"(?i:\s+" + _IS + r"\s+(?:the\s+)?"
               r"(?:correct|right|best|true|answer)\b)"),
    re.compile(_L + r"(?i:\s+is\s+(?:the\s+)?(?:correct|right|best)\s+(?:answer|option|choice)\b)"),
    re.compile(r"(?i:\b(?:choose|select|pick|go\s+with)\s+(?:option\s+)?)" + _L + _AFTER),
    re.compile(r"(?i:\bwhich\s+(?:is|corresponds\s+to|matches)\s+option\s+)" + _L + _AFTER),
]
_TEXT_VERDICT = re.compile(
    r"(?i:\b(?:correct|right|best)\s+(?:answer|option|choice)\s+" + _IS + r"|\bthe\s+answer\s+" + _IS + r")"
    r"\s*:?\s*(?i:that\s+)?[\"'“]?(?!(?i:not|never)\b)(?P<t>[^\s\"”.;][^\"”\n.;]{3,})"
)
_STOP = words("the a an of to in on at and or is are was were he she it they his her their its with by")


def _content(text: str) -> set[str]:
    return {w for w in _tokens(text) if w not in _STOP}


def reasoning_verdict(reasoning: str, options: list[tuple[str, str]]) -> tuple[int, str] | None:
    """(position, letter) of the last option the reasoning declares correct, by letter or by its text."""
    letters = [letter for letter, _ in options]
    verdicts: list[tuple[int, str]] = []
    for rx in _LETTER_VERDICTS:
        verdicts += [(m.start(), m.group("l")) for m in rx.finditer(reasoning) if m.group("l") in letters]
    for m in _TEXT_VERDICT.finditer(reasoning):
        said = _content(m.group("t"))
        if len(said) < 2:
            continue
        scores = sorted(((len(_content(t) & said) / max(1, len(_content(t))), letter) for letter, t in options),
                        reverse=True)
        best, second = scores[0], scores[1] if len(scores) > 1 else (0.0, "")
        if best[0] >= 0.6 and best[0] > second[0]:
            verdicts.append((m.start(), best[1]))
    return max(verdicts) if verdicts else None


def mcq_agreement_problem(task: str, item: TaskItem) -> str | None:
    options = mcq_options(item.question)
    letter = answer_letter(task, item.answer)
    verdict = reasoning_verdict(item.reasoning, options)
    if verdict is None or verdict[1] == letter:
        return None
    at = verdict[0]
    return f"reasoning concludes {verdict[1]} ({_excerpt(item.reasoning[at:], 40)!r}) but the answer is {letter}"


def mcq_length_problem(task: str, item: TaskItem) -> str | None:
    options = dict(mcq_options(item.question))
    letter = answer_letter(task, item.answer)
    if letter not in options or len(options) < 2:
        return None
    right = len(options[letter])
    longest_wrong = max(len(t) for k, t in options.items() if k != letter)
    if right > 1.5 * longest_wrong:
        return f"the answer {letter} ({right} chars) is far longer than any wrong option ({longest_wrong} chars)"
    return None


# ---------------------------------------------------------------- times inside the video

_WINDOW = re.compile(
    r"\b(?:between\s+(?P<a>\S+)\s+and\s+(?P<b>\S+)|from\s+(?P<c>\S+)\s+(?:to|until|till)\s+(?P<d>\S+))",
    re.IGNORECASE,
)


def times_problem(task: str, item: TaskItem, duration: float) -> str | None:
    fields = [("question", stem(item.question))]
    if task != "temporal_localization":  # its JSON span has its own rule, temporal_span_valid
        fields.append(("answer", item.answer))
    for name, text in fields:
        for t, _, _ in times_in(text):
            if t > duration + 1.0:
                return f"{name} names {_mmss(t)}, past the video's {duration:.1f}s"
        for m in _WINDOW.finditer(text):
            a, b = (m.group("a"), m.group("b")) if m.group("a") else (m.group("c"), m.group("d"))
            ta, tb = times_in(a), times_in(b)
            if ta and tb and not ta[0][0] < tb[0][0]:
                how = "of no length" if ta[0][0] == tb[0][0] else "that ends before it starts"
                return f"{name} names a window {_mmss(ta[0][0])}-{_mmss(tb[0][0])} {how}"
    return None


# ---------------------------------------------------------------- speculation

_SPECULATIVE = re.compile(
    r"\b(?:likely|unlikely|may|might|possibly|it\s+is\s+possible|probably|perhaps|presumably|maybe|"
    r"it\s+seems|seems?\s+to|seemingly|apparently|i\s+think|i\s+believe|i\s+guess|could\s+have|"
    r"could\s+be(?!\s+seen))\b",
    re.IGNORECASE,
)
# tasks whose prompt asks for what the video settles, and whose answer is free text
FACT_TASKS = frozenset({"open_qa", "causal_linkage", "temporal_description", "bcq_openended", "mcq_openended"})
DESCRIPTIVE_TASKS = frozenset({"scene_description", "video_summarization"})


# "nothing that might block him" states what is absent; it guesses nothing
_ABSENCE = re.compile(r"\b(?:nothing|anything|nobody|no\s+one|without)\b[^.,;!?]*$", re.IGNORECASE)


def speculation_problem(answer: str) -> str | None:
    for m in _SPECULATIVE.finditer(answer):
        if _ABSENCE.search(answer[max(0, m.start() - 40) : m.start()]):
            continue
        start = max(0, m.start() - 25)
        return f"answer guesses ({m.group(0).lower()!r}): {_excerpt(answer[start:], 60)!r}"
    return None


# ---------------------------------------------------------------- repetition

REPEAT_RUN = 12  # words in a row said twice in one field: longer than a referring expression with its verb
REPEAT_SENTENCE = 6  # a sentence this long or longer said twice, word for word (times kept), is a loop too
REPEAT_RETIMED = 3  # the same sentence with other times, this often: "At 00:02, he crosses … At 00:04, he crosses …"


def _sentence_key(sentence: str) -> str:
    return " ".join(_WORD.findall(sentence.lower().replace("’", "'")))


def repetition_problem(item: TaskItem) -> str | None:
    """The same sentence twice (or three times with other times), or a run of `REPEAT_RUN` words twice, within
    the answer or within the reasoning.

    A state said at two times ("At 00:02 the signal is red. At 00:05 the signal is red.") and a long referring
    expression used twice ("at 00:04 the man in the grey coat with the trolley …") are no loop; the teacher's
    loops are whole clauses ("…, passing through the crosswalks and avoiding collisions with other vehicles. He
    is interacting with the …" twice).
    """
    for name, text in (("answer", item.answer), ("reasoning", item.reasoning)):
        seen: set[str] = set()
        retimed: Counter[str] = Counter()
        for sentence in _SENTENCE.split(text.strip()):
            key = _sentence_key(sentence)
            if len(key.split()) >= REPEAT_SENTENCE and key in seen:
                return f"{name} says the same sentence twice: {_excerpt(sentence)!r}"
            seen.add(key)
            folded = " ".join(_tokens(sentence))
            retimed[folded] += 1
            if len(folded.split()) >= REPEAT_SENTENCE and retimed[folded] >= REPEAT_RETIMED:
                return f"{name} says the same sentence {retimed[folded]} times: {_excerpt(sentence)!r}"
        toks = _tokens(text)
        first: set[tuple[str, ...]] = set()
        for i in range(len(toks) - REPEAT_RUN + 1):
            gram = tuple(toks[i : i + REPEAT_RUN])
            if gram in first:
                return f"{name} repeats {REPEAT_RUN} words in a row: {_excerpt(' '.join(gram))!r}"
            first.add(gram)
    return None


# ---------------------------------------------------------------- the text behind the item

_NOT_THE_VIDEO = (r"(?!\s+(?:on|of|painted|written|printed|displayed|shown|visible|seen|in\s+the\s+(?:video|footage|"
                  r"clip|frames?|scene)|(?:by|from)\s+the\s+(?:video|footage|clip|camera|frames?|scene))\b)")
# the captions and descriptions step 3 was written from; in question and answer `no_caption_talk` reads them
_CAPTION_SOURCE = re.compile(
    r"\b(?:the|this|these|that|provided|given|above)\s+(?:dense\s+|global\s+|chunk\s+|detailed\s+|scene\s+|video\s+|"
    r"highlight\s+)?(?:captions?|descriptions?|transcripts?)\b"
    r"(?!\s+(?:in|of|given\s+in)\s+(?:the\s+)?(?:options?|choices?|answers?)\b)",  # "the description in option B"
    re.IGNORECASE,
)
# any other text the teacher was given ("the provided information", "according to the text"); "the text on the
# truck" and "the details visible in the video" are the video
_TEXT_SOURCE = re.compile(
    r"\b(?:provided|given|available|supplied)\s+(?:information|text|details|context|notes|data)\b" + _NOT_THE_VIDEO
    + r"|\bthe\s+(?:information|details|notes|text|context)\s+(?:provided|given|supplied|above)\b" + _NOT_THE_VIDEO
    + r"|\b(?:according\s+to|based\s+on)\s+the\s+(?:text|information|notes|context)\b" + _NOT_THE_VIDEO
    + r"|\bthe\s+(?:text|notes|information)\s+(?:states?|mentions?|describes?|indicates?|suggests?)\b",
    re.IGNORECASE,
)


def source_reference_problem(item: TaskItem) -> str | None:
    fields = [("reasoning", item.reasoning, (_CAPTION_SOURCE, _TEXT_SOURCE)),
              ("question", stem(item.question), (_TEXT_SOURCE,)), ("answer", item.answer, (_TEXT_SOURCE,))]
    for name, text, patterns in fields:
        for rx in patterns:
            m = rx.search(text)
            if m:
                return (f"{name} cites {m.group(0)!r} instead of the video: "
                        f"{_excerpt(text[max(0, m.start() - 20) :], 70)!r}")
    return None


# ---------------------------------------------------------------- times as seconds

_SECONDS = r"\s*(?:s|secs?|seconds?)\b"
_POINT_SECONDS = re.compile(
    # a decimal number of seconds after a preposition of time is a moment ("at 20.0 seconds", "before 10.0 seconds")
    r"\b(?:at|before|after|until|till|from|since|around|by|to|and)\s+(?:about\s+|around\s+|approximately\s+|"
    r"roughly\s+)?\d+\.\d+" + _SECONDS
    # a whole number after at/from/since/until is a moment too, unless what follows makes it a length
    + r"|\b(?:at|from|since|until|till)\s+(?:about\s+|around\s+|approximately\s+|roughly\s+)?\d+" + _SECONDS
    + r"(?!\s*(?:later|earlier|after|before|long|of|each|apart|ago|in\s+total|more|less|intervals?|per)\b)"
    # a window in seconds, and the other ways of naming a moment in seconds
    + r"|\b(?:between|from)\s+\d+(?:\.\d+)?(?:" + _SECONDS + r")?\s*(?:and|to|-|–)\s*\d+(?:\.\d+)?" + _SECONDS
    + r"|\b\d+(?:\.\d+)?" + _SECONDS + r"\s+into\s+the\s+(?:video|clip|footage|recording)\b"
    + r"|\bthe\s+\d+(?:\.\d+)?[- ]second\s+mark\b",
    re.IGNORECASE,
)
# every QA prompt but the scene description's asks for times as MM:SS
TIMESTAMP_TASKS = frozenset(TASK_QA_TYPE) - {"scene_description"}


def seconds_times_problem(item: TaskItem) -> str | None:
    for name, text in (("question", stem(item.question)), ("answer", item.answer), ("reasoning", item.reasoning)):
        m = _POINT_SECONDS.search(text)
        if m:
            return f"{name} writes a time as seconds, not MM:SS: {_excerpt(m.group(0), 40)!r}"
    return None


# ---------------------------------------------------------------- Yes/No verdict in the reasoning

_YN_AFTER = r"(?=\s*(?:[,.;:!\"'”)]|$))"
_YN_VERDICTS = re.compile(
    r"\b(?:so|thus|therefore|hence)\s*,?\s*(?:the\s+answer\s+is\s*:?\s*)?[\"'“]?(?P<a>yes|no)" + _YN_AFTER
    + r"|\b(?:correct\s+|final\s+|right\s+)?answer\s+(?:is|would\s+be|must\s+be)\s*:?\s*[\"'“]?(?P<b>yes|no)"
    + _YN_AFTER
    + r"|\banswer\s*:\s*[\"'“]?(?P<c>yes|no)\b",
    re.IGNORECASE,
)
_NEGATION = words("not no never cannot")
NEGATED_RUN = 3  # question words right after a negation, reaching the question's end (or 6 of them anywhere)


def _negated(tok: str) -> bool:
    return tok in _NEGATION or tok.endswith("n't")


def negated_restatement(question: str, text: str) -> str | None:
    """The sentence of `text` that states the question's own words negated ("Does the camera show any movement
    in the area?" → "The camera does not show any movement in the area"), if any.

    The words after the negation must be the question's, in a row: 3 or more up to the question's end, or 6 or
    more anywhere, so "does not stop at the first line, it stops at the crossing" does not answer "Does the car
    stop at the crossing?" with No.
    """
    q = _tokens(stem(question))[1:]  # without the auxiliary the question opens with
    if not q or any(_negated(t) for t in q):
        return None  # a negative question ("Does nobody stop?") is not restated this simply
    for sentence in _SENTENCE.split(text.strip()):
        toks = _tokens(sentence)
        for i, tok in enumerate(toks):
            if not _negated(tok):
                continue
            for j in range(len(q)):
                n = 0
                while i + 1 + n < len(toks) and j + n < len(q) and toks[i + 1 + n] == q[j + n]:
                    n += 1
                if n >= 6 or (n >= NEGATED_RUN and j + n == len(q)):
                    return sentence
    return None


def yes_no_verdict(question: str, texts: list[str]) -> tuple[str, str] | None:
    """("yes"/"no", the words that say it): the last explicit verdict in `texts`, else a negated restatement."""
    explicit = [(m.group("a") or m.group("b") or m.group("c")).lower() for t in texts for m in _YN_VERDICTS.finditer(t)]
    said = [m.group(0) for t in texts for m in _YN_VERDICTS.finditer(t)]
    if explicit:
        return explicit[-1], said[-1]
    for t in texts:
        sentence = negated_restatement(question, t)
        if sentence is not None:
            return "no", sentence
    return None


def yes_no_agreement_problem(task: str, item: TaskItem) -> str | None:
    answer = item.answer.strip()
    head = answer.split(maxsplit=1)[0].strip(",.;:!").lower() if answer else ""
    if head not in ("yes", "no"):
        return None  # bcq_yes_no says so
    texts = [item.reasoning]
    if task == "bcq_openended":
        texts.insert(0, answer[len(answer.split(maxsplit=1)[0]) :])  # the justification after the Yes/No
    verdict = yes_no_verdict(item.question, texts)
    if verdict is None or verdict[0] == head:
        return None
    return f"the answer is {head.capitalize()} but the reasoning says {verdict[0]}: {_excerpt(verdict[1])!r}"


# ---------------------------------------------------------------- the items of one video together

# free-text tasks whose answers should differ per question; an open-ended Yes/No justification may repeat
ANSWER_TASKS = frozenset({"open_qa", "causal_linkage", "temporal_description", "scene_description",
                          "video_summarization"})
SAME_ANSWER_WORDS = 12
# a reasoning this long said word for word under another question is a copy; a short generic line may recur
SAME_REASONING_WORDS = 20


def _question_key(question: str) -> str:
    return " ".join(re.sub(r"[^\w\s':]", " ", stem(question).lower().replace("’", "'")).split())


def _answer_key(task: str, item: TaskItem) -> str:
    """What the item answers, comparable across its task's questions: Yes or No, the chosen option's text, or the
    answer's words."""
    if task in ("bcq", "bcq_openended"):
        return _sentence_key(item.answer.split(maxsplit=1)[0]) if item.answer.strip() else ""
    if task in ("mcq", "mcq_openended"):
        letter = answer_letter(task, item.answer)
        return next((_sentence_key(text) for lt, text in mcq_options(item.question) if lt == letter), letter)
    return _sentence_key(item.answer)


def video_problems(
    tasks: dict[str, list[TaskItem]], left_out: set[tuple[str, int]]
) -> list[tuple[str, int, str, str]]:
    """(task, index, rule, problem) for the items of one video that repeat an earlier item of the video: its
    question, its answer, or its reasoning under another question and answer.

    Only an item the dataset keeps counts as the earlier one: `left_out` holds the (task, index) of the items
    that fail an error-level rule of their own (an MCQ with its twin), so a copy of a left-out item stays.
    The open-ended twin repeats its closed question on purpose, so twins count as one task across tasks.
    """
    out: list[tuple[str, int, str, str]] = []
    first_in_task: dict[tuple[str, str], int] = {}
    first_answer: dict[tuple[str, str], int] = {}
    first_family: dict[str, tuple[str, str, int]] = {}
    first_reasoning: dict[tuple[str, str], int] = {}
    for task, items in tasks.items():
        family = task.removesuffix("_openended")
        for n, item in enumerate(items):
            q = _question_key(item.question)
            kept = (task, n) not in left_out
            if (task, q) in first_in_task:
                m = first_in_task[(task, q)]
                out.append((task, n, "no_duplicate_questions",
                            f"the same question as {task}[{m}]: {_excerpt(stem(item.question))!r}"))
            elif q in first_family and first_family[q][0] != family:
                _, other, m = first_family[q]
                out.append((task, n, "no_cross_task_duplicates",
                            f"the same question as {other}[{m}]: {_excerpt(stem(item.question))!r}"))
            if task in ANSWER_TASKS:
                a = _sentence_key(item.answer)
                j = first_answer.get((task, a))
                if len(a.split()) >= SAME_ANSWER_WORDS and j is not None and _question_key(
                        tasks[task][j].question) != q:
                    out.append((task, n, "no_duplicate_answers",
                                f"the same answer as {task}[{j}] ({_excerpt(stem(tasks[task][j].question), 50)!r}): "
                                f"{_excerpt(item.answer, 50)!r}"))
                if kept:
                    first_answer.setdefault((task, a), n)
            r = _sentence_key(item.reasoning)
            j = first_reasoning.get((task, r))
            if len(r.split()) >= SAME_REASONING_WORDS and j is not None and (
                    _question_key(tasks[task][j].question) != q
                    and _answer_key(task, tasks[task][j]) != _answer_key(task, item)):
                out.append((task, n, "no_duplicate_reasoning",
                            f"the same reasoning as {task}[{j}] ({_excerpt(stem(tasks[task][j].question), 50)!r}), "
                            f"another answer: {_excerpt(item.reasoning, 50)!r}"))
            if kept:
                first_reasoning.setdefault((task, r), n)
                first_in_task.setdefault((task, q), n)
                first_family.setdefault(q, (family, task, n))
    return out


# ---------------------------------------------------------------- all of them


def quality_problems(
    task: str, item: TaskItem, duration: float, *, mode: str | None = None, examples: ExampleIndex | None = None
) -> list[tuple[str, str]]:
    """(rule, problem) for every quality rule the item breaks, error- and warn-level alike."""
    found: list[tuple[str, str | None]] = [("no_example_leakage", leakage_problem(task, item, mode, examples))]
    if task in ("bcq", "bcq_openended"):
        found.append(("question_form", yes_no_form_problem(item.question)))
    if task == "temporal_localization":
        found.append(("question_form", temporal_form_problem(item.question)))
    if task in ("causal_linkage", "open_qa"):
        found.append(("causal_order", causal_order_problem(item)))
    if task in ("mcq", "mcq_openended"):
        found.append(("mcq_answer_matches_reasoning", mcq_agreement_problem(task, item)))
        found.append(("mcq_answer_not_longest", mcq_length_problem(task, item)))
    found.append(("times_inside_video", times_problem(task, item, duration)))
    found.append(("no_actor_labels", actor_label_problem(item)))
    if task in FACT_TASKS:
        found.append(("answer_not_speculative", speculation_problem(item.answer)))
    if task in DESCRIPTIVE_TASKS:
        found.append(("description_not_speculative", speculation_problem(item.answer)))
    found.append(("no_repetition", repetition_problem(item)))
    found.append(("no_source_reference", source_reference_problem(item)))
    if task in ("bcq", "bcq_openended"):
        found.append(("yes_no_answer_matches_reasoning", yes_no_agreement_problem(task, item)))
    if task in TIMESTAMP_TASKS:
        found.append(("times_as_timestamps", seconds_times_problem(item)))
    return [(name, p) for name, p in found if p]
