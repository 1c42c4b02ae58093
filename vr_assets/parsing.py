"""Turn model answers into records: structured JSON first, the reference text format second.

Teachers drift: they wrap JSON in fences, think aloud in `<think>` blocks, bold their
labels, number their questions, drop the `=====` separators, write `A)` instead of `A.`
and chat after the last answer. The reference parser loses such items silently; this
one accepts the drift it can interpret unambiguously and reports every item it drops.

Run `python -m vr_assets.parsing --corpus tests/data/parse_corpus` to measure it on the
corpus of messy outputs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from vr_assets.records import QAItem

# ---------------------------------------------------------------- small answers

_THINK_BLOCK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_THINK_CLOSE = re.compile(r"</(?:think|thinking|reasoning)>", re.I)
_THINK_OPEN = re.compile(r"^\s*<(?:think|thinking|reasoning)>", re.I)
_LEAD_JUNK = re.compile(r"^[\s*_#>`\"'“”‘’()\[\]\-:.,]+")
_VERDICT_LABEL = re.compile(
    r"^(?:final\s+|my\s+)?(?:answer|verdict|decision|label|classification|result|conclusion|relevant|relevance)\s*"
    r"(?:is\s*)?[:=\-]?\s*",
    re.I,
)


def excerpt(text: str, limit: int = 280) -> str:
    """Whitespace folded, cut to `limit` characters: answers quoted in errors and in the UI."""
    t = " ".join(text.split())
    return t if len(t) <= limit else t[: limit - 1] + "…"


def strip_think(text: str) -> str:
    """Drop reasoning-model thoughts: `<think>…</think>`, an orphan closing tag, or an unclosed opening one."""
    out = _THINK_BLOCK.sub("", text or "")
    close = list(_THINK_CLOSE.finditer(out))
    if close:  # the opening tag was part of the chat template; everything before the close is thought
        out = out[close[-1].end() :]
    if _THINK_OPEN.match(out):  # thinking never finished: there is no answer
        return ""
    return out.strip()


def _lead_clean(text: str) -> str:
    s = _LEAD_JUNK.sub("", text)
    stripped = _VERDICT_LABEL.sub("", s, count=1)
    return _LEAD_JUNK.sub("", stripped)


def parse_yes_no(text: str) -> bool | None:
    """Yes/No from the start of an answer, after markdown, quotes, punctuation and a label like `Answer:`."""
    s = _lead_clean(strip_think(text))
    m = re.match(r"(yes|no)\b", s, re.I)
    if not m:
        return None
    return m.group(1).lower() == "yes"


def parse_mmss(value: str | float | int) -> float | None:
    """Seconds from `MM:SS`, `HH:MM:SS`, `M:SS.s` or a plain number of seconds; None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    s = str(value).strip().strip("\"'").strip()
    s = re.sub(r"\s*(?:s|sec|secs|seconds?)$", "", s, flags=re.I)
    m = re.fullmatch(r"(?:(\d{1,2}):)?(\d{1,3}):(\d{1,2}(?:\.\d+)?)", s)
    if m:
        hours = int(m.group(1) or 0)
        minutes = int(m.group(2))
        seconds = float(m.group(3))
        if seconds >= 60 or (m.group(1) is not None and minutes >= 60):
            return None
        return hours * 3600 + minutes * 60 + seconds
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    return None


def format_mmss(seconds: float) -> str:
    """`MM:SS` (or `MM:SS.s` when the time has a fraction); minutes are not wrapped into hours."""
    minutes = int(seconds // 60)
    rest = round(seconds - minutes * 60, 1)
    if rest >= 60:
        minutes, rest = minutes + 1, rest - 60
    if rest == int(rest):
        return f"{minutes:02d}:{int(rest):02d}"
    return f"{minutes:02d}:{rest:04.1f}"


def parse_relevance(text: str) -> tuple[bool | None, str]:
    """(relevant, reason) from a RelevanceVerdict JSON or a text answer starting with Yes/No."""
    data = _find_json(text)
    if isinstance(data, dict):
        d = _lower_keys(data)
        verdict = d.get("relevant", d.get("is_relevant", d.get("valid")))
        if isinstance(verdict, str):
            verdict = parse_yes_no(verdict) if verdict.lower() not in ("true", "false") else verdict.lower() == "true"
        if isinstance(verdict, bool):
            return verdict, str(d.get("reason", d.get("reasoning", ""))).strip()
    body = strip_think(text)
    verdict = parse_yes_no(body)
    if verdict is None:
        return None, body
    cleaned = _lead_clean(body)
    reason = _LEAD_JUNK.sub("", cleaned[3 if verdict else 2 :]).strip()
    return verdict, reason or body


def _label_of(line: str) -> str | None:
    s = _lead_clean(line.replace("**", "").replace("__", ""))
    if re.match(r"(?:anomal\w*|abnormal)\b", s, re.I):
        return "anomaly"
    if re.match(r"normal\b", s, re.I):
        return "normal"
    return None


def parse_classification(text: str) -> str | None:
    """'anomaly' / 'normal' from an AnomalyVerdict JSON, else from the last line (or a later verdict-only line)."""
    data = _find_json(text)
    if isinstance(data, dict):
        d = _lower_keys(data)
        for k in ("label", "classification", "mode", "verdict"):
            if isinstance(d.get(k), str):
                return _label_of(d[k])
    lines = [ln for ln in strip_think(text).splitlines() if ln.strip()]
    if not lines:
        return None
    found = _label_of(lines[-1])
    if found:
        return found
    # Chatter after the verdict: accept an earlier line that is nothing but a verdict.
    for ln in reversed(lines[:-1]):
        core = re.sub(r"[\s*_#>`\"'.!]+", " ", ln).strip()
        core = _VERDICT_LABEL.sub("", core).strip()
        if re.fullmatch(r"(?:anomaly|anomalous|abnormal|normal)", core, re.I):
            return _label_of(core)
    return None


_TIME_TOKEN = re.compile(r"(?<![\d.:])(\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d:])")


def parse_timestamp(text: str) -> float | None:
    """Anomaly time in seconds from an AnomalyTime JSON or text ('12.5', '12.5 seconds', '00:12', '1:02.5')."""
    data = _find_json(text)
    if isinstance(data, dict):
        d = _lower_keys(data)
        if d.get("found") is False:
            return None
        for k in ("anomaly_time_sec", "anomaly_time", "timestamp", "time_sec", "time", "seconds"):
            if k in d and d[k] is not None:
                return parse_mmss(d[k])
    body = strip_think(text)
    lines = [ln for ln in body.splitlines() if ln.strip()]
    label = re.compile(
        r"^[\s*#>_]*(?:final\s+)?(?:answer|timestamp|anomaly[\s_]time(?:stamp)?(?:[\s_]sec)?)[\s*_]*"
        r"(?:\([^)]*\))?[\s*_]*[:=]?",
        re.I,
    )
    labelled = [label.sub("", ln, count=1) for ln in lines if label.match(ln) and label.match(ln).group(0).strip()]
    labelled = [ln for ln in labelled if _TIME_TOKEN.search(ln)]
    with_time = [ln for ln in lines if _TIME_TOKEN.search(ln)]
    if labelled:
        chosen = labelled[-1]
    elif len(with_time) == 1 or (with_time and len(lines) == 1):
        chosen = with_time[0]
    elif with_time:
        chosen = with_time[-1]
    else:
        return None
    m = _TIME_TOKEN.search(chosen)
    return parse_mmss(m.group(1)) if m else None


# ---------------------------------------------------------------- JSON answers


def _lower_keys(d: dict[str, object]) -> dict[str, object]:
    return {str(k).strip().lower().replace(" ", "_").replace("-", "_"): v for k, v in d.items()}


def _loads(candidate: str) -> object | None:
    for attempt in (candidate, re.sub(r",\s*([}\]])", r"\1", candidate)):
        try:
            return json.loads(attempt)
        except (json.JSONDecodeError, ValueError):
            continue
    return None


def _is_dict(obj: object) -> bool:
    return isinstance(obj, dict)


def _find_json(text: str, want: Callable[[object], bool] = _is_dict) -> object | None:
    """The first JSON value `want` accepts: whole text, a ``` fence (closed or not), or embedded in prose."""
    body = strip_think(text)
    if not body:
        return None
    candidates = [m.group(1) for m in re.finditer(r"```[A-Za-z]*[ \t]*\n(.*?)(?:```|\Z)", body, re.S)]
    candidates.append(body)
    for c in candidates:
        c = c.strip()
        if c[:1] in "{[":
            obj = _loads(c)
            if obj is not None and want(obj):
                return obj
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[{\[]", body):
        try:
            obj, _ = decoder.raw_decode(body[m.start() :])
        except ValueError:
            continue
        if want(obj):
            return obj
    return None


_ITEM_LISTS = ("items", "questions", "qa_pairs", "qas", "qa", "data", "results")


def _json_records(obj: object) -> list[dict[str, object]] | None:
    if isinstance(obj, dict):
        d = _lower_keys(obj)
        for k in _ITEM_LISTS:
            if isinstance(d.get(k), list):
                return [x for x in d[k] if isinstance(x, dict)]  # type: ignore[union-attr]
        if "question" in d:
            return [obj]
        return None
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return list(obj)
    return None


def _first(d: dict[str, object], *names: str) -> object | None:
    for n in names:
        if n in d and d[n] not in (None, ""):
            return d[n]
    return None


def _json_options(raw: object) -> list[str]:
    if isinstance(raw, dict):
        pairs = sorted((str(k).strip().strip(".)").upper(), str(v)) for k, v in raw.items())
        return [_clean_text(v) for _, v in pairs]
    if not isinstance(raw, list):
        return []
    texts: list[str] = []
    for o in raw:
        if isinstance(o, dict):
            od = _lower_keys(o)
            texts.append(str(_first(od, "text", "option", "value", "label") or ""))
        else:
            texts.append(str(o))
    return _strip_option_letters([_clean_text(t) for t in texts])


def _strip_option_letters(options: list[str]) -> list[str]:
    """Drop `A.`/`(B)` prefixes only when every option carries the expected letter."""
    pattern = re.compile(r"^\(?([A-Ha-h])\s*[.):]\s*(.*)$", re.S)
    stripped: list[str] = []
    for i, o in enumerate(options):
        m = pattern.match(o)
        if not m or m.group(1).upper() != chr(ord("A") + i):
            return options
        stripped.append(m.group(2).strip())
    return stripped


def _join_answer(answer: str, explanation: str) -> str:
    if not explanation:
        return answer
    if not answer:
        return explanation
    if re.match(r"(yes|no)\b", explanation, re.I) and parse_yes_no(answer) is not None and len(answer) <= 4:
        return explanation  # "Yes" + "Yes, because ..." says it once
    sep = "" if answer.rstrip()[-1:] in ".!?" else "."
    return f"{answer.rstrip()}{sep} {explanation}"


# ---------------------------------------------------------------- text answers

_QUESTION_KINDS = (
    r"multiple[\s-]*choice|mcq|open[\s-]*ended|binary|yes\s*/\s*no|yes[\s-]*no|bcq|true\s*/\s*false|"
    r"temporal[\s-]+localization|temporal[\s-]+localisation|temporal[\s-]+event[\s-]+description|temporal|"
    r"causal[\s-]+linkage|causal|scene[\s-]+description|event[\s-]+summary|summary|follow[\s-]*up"
)
_NUM = r"(?:\s*(?:#|no\.?)?\s*\d{1,2})?"
_LABELS: tuple[tuple[str, str], ...] = (
    ("options", r"(?:answer\s+)?(?:options|choices)"),
    ("question", rf"(?:(?:{_QUESTION_KINDS})\s+)?question{_NUM}"),
    ("question", r"q\s*#?\s*\d{0,2}"),
    ("answer", rf"(?:(?:correct|final|short|right)\s+)?answer{_NUM}|(?:correct|right|best)\s+(?:option|choice)"),
    ("answer", r"a\s*#?\s*\d{1,2}"),
    ("reasoning", r"(?:step[\s-]+by[\s-]+step\s+)?reasoning|chain[\s-]+of[\s-]+thought|rationale|justification"),
    ("explanation", r"explanation"),
)
_SEP = r"\s*(?:\([^)\n]{1,40}\))?\s*(?:[:：]|[-–—](?=\s)|[.)](?=\s|$))"
_HEADER = [
    (kind, re.compile(rf"^(?:(?:\d{{1,2}}|[ivx]{{1,4}})[.)]\s*)?(?:{pat}){_SEP}\s*(?P<rest>.*)$", re.I))
    for kind, pat in _LABELS
]
_BARE_HEADING = [
    (kind, re.compile(rf"^(?:(?:\d{{1,2}}|[ivx]{{1,4}})[.)]\s*)?(?:{pat})\s*[:.]?\s*$", re.I)) for kind, pat in _LABELS
]
_CORRECT_IS = re.compile(
    r"^(?:the\s+)?(?:correct|right|best)\s+(?:answer|option|choice)\s+is\s*[:\-]?\s*(?P<rest>.+)$", re.I
)
_SEPARATOR = re.compile(r"^\s*(?:={3,}|-{3,}|\*{3,}|_{3,}|~{3,}|```[A-Za-z]*)\s*$")
_BANNER = re.compile(r"^\s*={3,}\s*(?P<inner>[^=]+?)\s*={3,}\s*$")
_OPTION = re.compile(r"^(?:option\s+)?\(?(?P<letter>[A-Ha-h])\s*(?:[.):：]|\s-)\s*(?P<text>\S.*)$")
_INLINE_LABEL = re.compile(r"\s(?:\*\*|__)?(?P<label>Answer|Reasoning|Explanation)(?:\*\*|__)?\s*:(?:\*\*|__)?\s")
_CHATTER = re.compile(
    r"^(?:let me know|i hope|hope this|feel free|if you (?:need|want|would)|would you like|please let|"
    r"here (?:are|is) (?:more|another)|note:|\(?note\b|these questions|this set of questions|end of (?:output|qa)|"
    r"i can (?:also )?(?:generate|create|provide)|happy to help)",
    re.I,
)


@dataclass
class _Draft:
    question: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)
    section: str | None = "question"
    option_letters: set[str] = field(default_factory=set)

    def has(self, name: str) -> bool:
        return any(x.strip() for x in getattr(self, name))

    def add(self, name: str, text: str) -> None:
        getattr(self, name).append(text)
        self.section = name


def _clean_text(text: str) -> str:
    s = text.replace("**", "").replace("__", "")
    s = re.sub(r"`([^`]+)`", r"\1", s)
    return s.strip()


def _block(lines: list[str]) -> str:
    """Lines → text: emphasis removed, blank-line paragraphs kept, outer whitespace dropped."""
    cleaned = [_clean_text(ln) for ln in lines]
    out: list[str] = []
    for ln in cleaned:
        if not ln and (not out or not out[-1]):
            continue
        out.append(ln)
    return "\n".join(out).strip()


def _strip_quotes(s: str) -> str:
    s = s.strip()
    for left, right in (('"', '"'), ("“", "”")):
        inner = s[1:-1]
        if len(s) >= 2 and s[0] == left and s[-1] == right and left not in inner and right not in inner:
            return inner.strip()
    return s


def _drop_chatter(text: str) -> str:
    paras = re.split(r"\n\s*\n", text)
    while len(paras) > 1 and _CHATTER.match(paras[-1].strip()):
        paras.pop()
    lines = "\n\n".join(paras).split("\n")
    while len(lines) > 1 and _CHATTER.match(lines[-1].strip()):
        lines.pop()
    return "\n".join(lines).strip()


def _line_view(raw: str) -> tuple[str, bool]:
    """The line as label detection sees it: no heading hashes, bullets, quotes-markers or emphasis."""
    s = raw.strip()
    heading = bool(re.match(r"#{1,6}\s", s)) or (len(s) > 4 and s.startswith("**") and s.endswith("**"))
    s = re.sub(r"^(?:#{1,6}\s*|>\s*)+", "", s)
    s = re.sub(r"^[-*+•]\s+(?=\S)", "", s)
    s = s.replace("**", "").replace("__", "")
    s = re.sub(r"^\*(?=\S)|(?<=\S)\*(?=\s*[:：])|(?<=[:：])\*", "", s)
    return s.strip(), heading


def _header(view: str, heading: bool) -> tuple[str, str] | None:
    for kind, rx in _HEADER:
        m = rx.match(view)
        if m:
            return kind, m.group("rest")
    if heading or len(view) <= 40:
        for kind, rx in _BARE_HEADING:
            if rx.match(view):
                return kind, ""
    m = _CORRECT_IS.match(view)
    if m:
        return "answer", m.group("rest")
    return None


def _split_inline(rest: str) -> list[tuple[str | None, str]]:
    """`Answer: B Reasoning: because ...` on one line → [(None, 'B'), ('reasoning', 'because ...')]."""
    parts: list[tuple[str | None, str]] = []
    kind: str | None = None
    pos = 0
    for m in _INLINE_LABEL.finditer(rest):
        parts.append((kind, rest[pos : m.start()]))
        kind = m.group("label").lower()
        pos = m.end()
    parts.append((kind, rest[pos:]))
    return parts


def _split_options(lines: list[str]) -> tuple[str, list[str]]:
    """Question lines → (question text, option texts), for options on their own lines or inline."""
    question: list[str] = []
    options: list[str] = []
    for raw in lines:
        view, _ = _line_view(raw)
        view = re.sub(r"^(?:options|choices)\s*:\s*", "", view, flags=re.I)
        m = _OPTION.match(view)
        expected = chr(ord("A") + len(options))
        if m and m.group("letter").upper() == expected and (options or expected == "A"):
            options.append(m.group("text").strip())
        elif options and view:
            options[-1] = f"{options[-1]} {view}".strip()
        elif view:
            question.append(view)
    if len(options) >= 2:
        return " ".join(question), [_clean_text(o) for o in options]
    # Inline: "Which ...? A) red car B) blue truck C) ..." — letters must run A, B, C ... in order.
    flat = " ".join(_line_view(ln)[0] for ln in lines if ln.strip())
    marks = list(re.finditer(r"(?:(?<=\s)|^)(?:[Oo]ption\s+)?\(?([A-H])[.):]\s+", flat))
    chosen: list[re.Match[str]] = []
    for m in marks:
        if m.group(1) == chr(ord("A") + len(chosen)):
            chosen.append(m)
    if len(chosen) >= 2:
        texts = []
        for i, m in enumerate(chosen):
            end = chosen[i + 1].start() if i + 1 < len(chosen) else len(flat)
            texts.append(flat[m.end() : end].strip().rstrip(";,").strip())
        head = re.sub(r"\s*(?:options|choices)\s*:\s*$", "", flat[: chosen[0].start()].strip(), flags=re.I)
        return head, [_clean_text(t) for t in texts]
    return " ".join(_line_view(ln)[0] for ln in lines if ln.strip()), []


def _answer_letter(answer: str, options: list[str]) -> str | None:
    """The option letter an answer names: `B`, `B.`, `B) text`, `(B)`, `Option B`, or the option's text."""
    first = _clean_text(answer).split("\n", 1)[0].strip()
    first = re.sub(
        r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:\-]?\s*", "", first, flags=re.I
    )
    first = re.sub(r"^(?:option|choice|letter)\s+", "", first, flags=re.I).strip()
    # The option's own text first: "A pedestrian stepped out" must not read as letter A.
    norm = re.sub(r"\W+", " ", first).strip().lower()
    for i, o in enumerate(options):
        on = re.sub(r"\W+", " ", o).strip().lower()
        if on and (norm == on or norm.startswith(on) or (len(norm) > 12 and on.startswith(norm))):
            return chr(ord("A") + i)
    m = re.match(r"^[\[(]?([A-H])[\])]?(?=$|[\s.):,;\-])", first) or re.match(r"^[\[(]?([a-h])(?:[\])]|$|\.)", first)
    if m and ord(m.group(1).upper()) - ord("A") < len(options):
        return m.group(1).upper()
    return None


_SPAN_LABELLED = re.compile(
    r"start(?:[_\s-]*time)?\s*[:=]?\s*(?P<a>\d{1,2}(?::\d{2}){1,2}(?:\.\d+)?|\d+(?:\.\d+)?\s*s\b)"
    r".*?end(?:[_\s-]*time)?\s*[:=]?\s*(?P<b>\d{1,2}(?::\d{2}){1,2}(?:\.\d+)?|\d+(?:\.\d+)?\s*s\b)",
    re.I | re.S,
)
_SPAN_TIMES = re.compile(r"(?<![\d:.])(\d{1,2}(?::\d{2}){1,2}(?:\.\d+)?)(?![\d:])")


def _parse_span(answer: str) -> tuple[float, float] | None:
    text = _clean_text(answer)
    m = _SPAN_LABELLED.search(text)
    if m:
        a, b = parse_mmss(m.group("a")), parse_mmss(m.group("b"))
    else:
        times = _SPAN_TIMES.findall(text)
        if len(times) < 2:
            return None
        a, b = parse_mmss(times[0]), parse_mmss(times[1])
    if a is None or b is None:
        return None
    return a, b


def _text_drafts(body: str, qa_type: str) -> list[_Draft]:
    drafts: list[_Draft] = []
    cur: _Draft | None = None
    mcq = qa_type == "mcq"
    for raw in body.split("\n"):
        banner = _BANNER.match(raw)
        if banner:
            if cur:
                cur.section = None
            raw = banner.group("inner")
        elif _SEPARATOR.match(raw):
            if cur:
                cur.section = None
            continue
        view, heading = _line_view(raw)
        hdr = _header(view, heading)
        bare_a = re.match(r"^A\s*[:：]\s*(?P<rest>.*)$", view)
        # "Q: ... / A: ..." pairs; in a multiple-choice item "A:" is option A until options exist.
        if hdr is None and bare_a and cur is not None and (not mcq or "A" in cur.option_letters):
            hdr = ("answer", bare_a.group("rest"))
        if hdr is None:
            if cur is not None and cur.section is None and mcq and _OPTION.match(view) and not cur.has("answer"):
                cur.section = "question"  # options set off from their question by a separator
            if cur is None or cur.section is None:
                continue  # preamble, or chatter after a separator
            target = "question" if cur.section == "options" else cur.section
            if mcq and target == "question":
                m = _OPTION.match(view)
                if m:
                    cur.option_letters.add(m.group("letter").upper())
            getattr(cur, target).append(raw.rstrip())
            continue
        kind, rest = hdr
        pieces = _split_inline(rest)
        head_rest = pieces[0][1]
        if kind == "question":
            if (
                cur is None
                or cur.has("answer")
                or cur.has("reasoning")
                or cur.has("explanation")
                or (cur.has("question") and head_rest.strip())
            ):
                if cur is not None:
                    drafts.append(cur)
                cur = _Draft()
            cur.section = "question"
            if head_rest.strip():
                cur.question.append(head_rest)
        elif kind == "options":
            if cur is None:
                cur = _Draft()
            cur.section = "options"
            if head_rest.strip():
                cur.question.append("Options: " + head_rest)
                for m in re.finditer(r"(?:(?<=\s)|^)\(?([A-H])[.):]\s+", head_rest):
                    cur.option_letters.add(m.group(1))
        elif kind == "answer":
            if cur is None or cur.has("answer"):
                if cur is not None:
                    drafts.append(cur)
                cur = _Draft()
            cur.add("answer", head_rest)
        elif cur is not None:  # reasoning / explanation
            cur.add(kind, head_rest)
        else:
            continue
        for label, text in pieces[1:]:
            if cur is not None and label:
                cur.add(label, text)
    if cur is not None:
        drafts.append(cur)
    return drafts


class ParseProblem(BaseModel):
    """One item the parser could not turn into a QAItem (or kept with a caveat)."""

    index: int = Field(description="1-based position of the item in the answer")
    problem: str
    excerpt: str = ""


def _finish(
    qa_type: str,
    prompt_key: str,
    index: int,
    question: str,
    answer: str,
    reasoning: str,
    explanation: str,
    options: list[str],
    problems: list[ParseProblem],
) -> QAItem | None:
    question = _strip_quotes(re.sub(r"\s+", " ", _clean_text(question)))
    answer = _clean_text(answer)
    reasoning = _clean_text(reasoning)
    explanation = _clean_text(explanation)
    excerpt = (question or answer)[:80]
    if qa_type in ("mcq", "temporal_localization"):
        if explanation:
            reasoning = f"{explanation}\n\n{reasoning}".strip() if reasoning else explanation
    elif explanation:
        if reasoning:
            answer = _join_answer(answer, explanation)
        else:
            reasoning = explanation
    if not question:
        problems.append(ParseProblem(index=index, problem="no question", excerpt=excerpt))
        return None
    if not answer:
        problems.append(ParseProblem(index=index, problem="no answer", excerpt=excerpt))
        return None
    item = QAItem(qa_type=qa_type, prompt_key=prompt_key, question=question, answer=answer, reasoning=reasoning)
    if qa_type == "mcq":
        if len(options) < 2:
            problems.append(ParseProblem(index=index, problem="multiple-choice item without options", excerpt=excerpt))
            return None
        letter = _answer_letter(answer, options)
        if letter is None:
            problems.append(
                ParseProblem(index=index, problem=f"answer {answer[:30]!r} names no option", excerpt=excerpt)
            )
            return None
        item.options = options
        item.answer = letter
    elif qa_type == "bcq":
        item.answer = re.sub(r"^(?:the\s+)?answer\s+is\s*[:\-]?\s*", "", answer, flags=re.I)
        item.answer = item.answer[:1].upper() + item.answer[1:]
    elif qa_type == "temporal_localization":
        span = _parse_span(answer)
        if span is None:
            problems.append(ParseProblem(index=index, problem="no start/end time in the answer", excerpt=excerpt))
        elif span[1] < span[0]:
            problems.append(ParseProblem(index=index, problem="end time before start time", excerpt=excerpt))
            return None
        else:
            item.start_sec, item.end_sec = span
            item.answer = f"Start_Time: {format_mmss(span[0])}, End_Time: {format_mmss(span[1])}"
    return item


def _from_json(
    records: list[dict[str, object]], qa_type: str, prompt_key: str
) -> tuple[list[QAItem], list[ParseProblem]]:
    items: list[QAItem] = []
    problems: list[ParseProblem] = []
    for i, rec in enumerate(records, 1):
        d = _lower_keys(rec)
        question = str(_first(d, "question", "q", "prompt") or "")
        reasoning = str(_first(d, "reasoning", "rationale", "chain_of_thought", "cot") or "")
        explanation = str(_first(d, "explanation", "justification") or "")
        raw_answer = _first(d, "answer", "correct_answer", "correct_option", "a", "label")
        options = _json_options(_first(d, "options", "choices"))
        if qa_type == "temporal_localization" and raw_answer is None:
            start = _first(d, "start_time", "start", "start_timestamp", "start_sec")
            end = _first(d, "end_time", "end", "end_timestamp", "end_sec")
            if start is not None and end is not None:
                a, b = parse_mmss(start), parse_mmss(end)  # type: ignore[arg-type]
                if a is not None and b is not None:
                    raw_answer = f"Start_Time: {format_mmss(a)}, End_Time: {format_mmss(b)}"
                else:
                    raw_answer = f"Start_Time: {start}, End_Time: {end}"
        if isinstance(raw_answer, bool):
            raw_answer = "Yes" if raw_answer else "No"
        answer = "" if raw_answer is None else str(raw_answer)
        item = _finish(qa_type, prompt_key, i, question, answer, reasoning, explanation, options, problems)
        if item is not None:
            items.append(item)
    return items, problems


def parse_qa_report(text: str, qa_type: str, prompt_key: str) -> tuple[list[QAItem], list[ParseProblem]]:
    """Items plus one ParseProblem per dropped (or caveated) item; structured JSON is tried first."""
    body = strip_think(text or "").replace("\r\n", "\n").replace("\r", "\n")
    if not body.strip():
        return [], [ParseProblem(index=0, problem="empty answer")]
    records = _json_records(_find_json(body, lambda o: _json_records(o) is not None))
    if records == []:
        return [], [ParseProblem(index=0, problem="structured answer with no items", excerpt=body.strip()[:80])]
    if records is not None:
        return _from_json(records, qa_type, prompt_key)
    items: list[QAItem] = []
    problems: list[ParseProblem] = []
    drafts = [d for d in _text_drafts(body, qa_type) if d.has("question") or d.has("answer")]
    if not drafts:
        return [], [ParseProblem(index=0, problem="no question/answer sections found", excerpt=body.strip()[:80])]
    for i, d in enumerate(drafts, 1):
        if qa_type == "mcq":
            question, options = _split_options(d.question)
        else:
            question, options = " ".join(_line_view(x)[0] for x in d.question if x.strip()), []
        answer, reasoning, explanation = _block(d.answer), _block(d.reasoning), _block(d.explanation)
        if i == len(drafts):
            if reasoning:
                reasoning = _drop_chatter(reasoning)
            elif explanation:
                explanation = _drop_chatter(explanation)
            else:
                answer = _drop_chatter(answer)
        item = _finish(qa_type, prompt_key, i, question, answer, reasoning, explanation, options, problems)
        if item is not None:
            items.append(item)
    return items, problems


def parse_qa(text: str, qa_type: str, prompt_key: str) -> list[QAItem]:
    """QA items from a structured (JSON) or reference-format text answer; unusable items are dropped."""
    return parse_qa_report(text, qa_type, prompt_key)[0]


# ---------------------------------------------------------------- corpus


class CorpusCase(BaseModel):
    """`NN_name.expected.json`: what `NN_name.txt` must parse to."""

    qa_type: str
    prompt_key: str
    note: str = ""
    items: list[dict[str, object]]

    def expected(self) -> list[QAItem]:
        return [QAItem(qa_type=self.qa_type, prompt_key=self.prompt_key, **it) for it in self.items]  # type: ignore[arg-type]


class CorpusResult(BaseModel):
    name: str
    ok: bool
    detail: str = ""


def corpus_cases(folder: Path) -> list[tuple[str, Path, Path]]:
    out = []
    for txt in sorted(folder.glob("*.txt")):
        exp = txt.with_name(txt.stem + ".expected.json")
        out.append((txt.stem, txt, exp))
    return out


def _diff(got: list[QAItem], want: list[QAItem]) -> str:
    if len(got) != len(want):
        return f"{len(got)} items parsed, {len(want)} expected"
    for i, (g, w) in enumerate(zip(got, want, strict=True), 1):
        gd, wd = g.model_dump(), w.model_dump()
        for k in wd:
            if gd[k] != wd[k]:
                return f"item {i} field {k}: got {gd[k]!r}, expected {wd[k]!r}"
    return ""


def run_corpus(folder: Path) -> list[CorpusResult]:
    results = []
    for name, txt, exp in corpus_cases(folder):
        if not exp.exists():
            results.append(CorpusResult(name=name, ok=False, detail=f"missing {exp.name}"))
            continue
        case = CorpusCase.model_validate_json(exp.read_text(encoding="utf-8"))
        got = parse_qa(txt.read_bytes().decode("utf-8"), case.qa_type, case.prompt_key)
        detail = _diff(got, case.expected())
        results.append(CorpusResult(name=name, ok=not detail, detail=detail))
    return results


def main(argv: Iterable[str] | None = None) -> int:
    """Report how many corpus cases parse to exactly their expected items."""
    parser = argparse.ArgumentParser(prog="python -m vr_assets.parsing", description=main.__doc__)
    parser.add_argument("--corpus", type=Path, default=Path("tests/data/parse_corpus"))
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    args = parser.parse_args(list(argv) if argv is not None else None)
    results = run_corpus(args.corpus)
    for r in results:
        if not r.ok or args.verbose:
            print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}{': ' + r.detail if r.detail else ''}")
    passed = sum(r.ok for r in results)
    print(f"parsed {passed}/{len(results)} cases")
    return 0 if results and passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
