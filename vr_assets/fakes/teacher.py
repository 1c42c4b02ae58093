"""Deterministic offline annotator behind the fake servers.

An answer is a pure function of (prompt text, media fingerprints, schema): the same
request always gets the same bytes back, so a run with injected faults and retries
produces the same dataset as a clean run. Variety comes from sha256 of the inputs.

Free-text routing markers (case-insensitive, checked in this order):
``start_time`` → temporal-localization QA blocks; ``multiple-choice`` → MCQ blocks;
``yes or no``/``yes/no`` + ``question`` → yes/no QA blocks; ``question`` → open QA
blocks; ``anomaly`` + ``normal`` + ``last line`` → classification (last line is the
label); words ``yes`` and ``no`` + ``relevan``/``domain`` → relevance answer;
``timestamp``/``seconds`` + ``when`` → a number of seconds; anything else → a caption.
The verdict and number answers are skipped when the prompt asks for prose ("Describe …",
"Write a caption …", "100 to 250 words"), since such prompts mention seconds in passing.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

Label = Literal["anomaly", "normal"]

QA_SEPARATOR = "====="
KNOWN_TITLES: tuple[str, ...] = (
    "RelevanceVerdict",
    "AnomalyVerdict",
    "AnomalyTime",
    "MultipleChoiceSet",
    "YesNoSet",
    "TimeSpanSet",
    "OpenQASet",
)
ANOMALY_TIME_SEC = 1.0  # inside any test clip of >= 2 s

_SCENES = (
    "a street intersection",
    "a warehouse aisle",
    "a parking area",
    "an office corridor",
    "a loading dock",
    "a shop floor",
    "a building entrance",
    "a highway ramp",
)
_ACTORS = ("a pedestrian", "a delivery worker", "a cyclist", "a forklift", "a small van", "two people")
_ACTIONS = (
    "moves steadily from left to right",
    "pauses near the center of the frame",
    "enters from the bottom edge and turns away",
    "crosses the frame at walking pace",
    "waits briefly and then continues",
    "approaches the camera and stops",
)
_DETAILS = (
    "Lighting stays even and the background remains static.",
    "Colored markings on the ground stay visible throughout.",
    "No other activity draws attention while this happens.",
    "The camera does not pan or zoom during the clip.",
    "Shadows stay short and the view remains unobstructed.",
)
_ANOMALY_DETAILS = (
    "About one second in, an abrupt irregular movement breaks the usual flow.",
    "Shortly after the start, an object stops suddenly in an unexpected place.",
    "Early in the clip, an actor swerves sharply against the normal direction.",
)
_Q_OPEN = (
    "What is {actor} doing in {scene}",
    "Where does the main movement happen in {scene}",
    "How does the activity in {scene} change over the clip",
    "Which part of {scene} stays unchanged",
)
_Q_MCQ = (
    (
        "What does the main actor do in {scene}",
        ("Moves across the view", "Stays still", "Leaves the view", "Turns around"),
    ),
    ("Which object is most prominent in {scene}", ("A person", "A vehicle", "A stack of boxes", "A traffic sign")),
    ("How would the pace of activity in {scene} be characterized", ("Slow", "Moderate", "Fast", "Irregular")),
    (
        "Where is the camera positioned relative to {scene}",
        ("Above it", "At ground level", "Behind a window", "Inside a car"),
    ),
)
_Q_YESNO = (
    "Does {actor} remain visible for the whole clip in {scene}",
    "Is there any sudden movement in {scene}",
    "Does the camera stay fixed while watching {scene}",
    "Is more than one actor active in {scene}",
)
_Q_SPAN = (
    "When does {actor} first appear in {scene}",
    "During which interval is the main movement in {scene} visible",
    "When does the notable event in {scene} take place",
)


# A request for prose (captions, descriptions) often mentions seconds and "when" in passing;
# these patterns keep such prompts from being answered with a bare number or a verdict.
_PROSE_REQUEST = (
    re.compile(r"(?:^|[.!?:]\s+)(?:describe|narrate|summari[sz]e)\b", re.M),
    re.compile(r"\b\d+\s*(?:to|-)\s*\d+\s+words\b"),
    re.compile(r"\bwrite (?:a|an|one)\b[^.\n]{0,60}\b(?:caption|log|description|narrative|summary|paragraph)\b"),
)


def sha256_file(path: str | Path) -> str:
    """Fingerprint a file the way the fakes fingerprint media parts."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _pick(seq: tuple[Any, ...], hexdigest: str, salt: int = 0) -> Any:
    return seq[int(hexdigest[salt * 4 : salt * 4 + 8], 16) % len(seq)]


class TeacherAnswer(BaseModel):
    """The answer text plus optional think text (rendered by the fakes as <think> or thought parts)."""

    text: str
    think: str = ""

    def rendered(self) -> str:
        """Text as an open-weights reasoning model without a reasoning parser would return it."""
        return f"<think>{self.think}</think>\n{self.text}" if self.think else self.text


class Verdict(BaseModel):
    relevant: bool = True
    label: Label = "normal"


class Teacher:
    """Offline stand-in for a VLM/LLM teacher; per-video verdicts steer the filter and anomaly steps."""

    def __init__(
        self,
        *,
        think: bool = False,
        items_per_call: int = 2,
        default_relevant: bool = True,
        default_label: Label = "normal",
        anomaly_share: float = 0.0,
    ) -> None:
        self.think = think
        self.items_per_call = items_per_call
        self.default_relevant = default_relevant
        self.default_label: Label = default_label
        #: share of unlisted media judged "anomaly" by fingerprint; lets a demo on transcoded
        #: clips (whose bytes nobody registered) still show both branches
        self.anomaly_share = anomaly_share
        self._verdicts: dict[str, Verdict] = {}

    # ------------------------------------------------------------ verdicts

    def set_verdict(self, sha256_hex: str, relevant: bool = True, label: Label = "normal") -> None:
        self._verdicts[sha256_hex.lower()] = Verdict(relevant=relevant, label=label)

    def set_verdict_for_file(self, path: str | Path, relevant: bool = True, label: Label = "normal") -> str:
        """Verdict for the exact bytes of `path` (a transcoded copy has another fingerprint)."""
        sha = sha256_file(path)
        self.set_verdict(sha, relevant=relevant, label=label)
        return sha

    def verdict_for(self, media_sha256: list[str]) -> Verdict:
        first = media_sha256[0].lower() if media_sha256 else ""
        if first in self._verdicts:
            return self._verdicts[first]
        label = self.default_label
        if first and self.anomaly_share > 0 and int(_digest(first)[:8], 16) / 0xFFFFFFFF < self.anomaly_share:
            label = "anomaly"
        return Verdict(relevant=self.default_relevant, label=label)

    # ------------------------------------------------------------ answers

    def answer(
        self, prompt_text: str, media_sha256: list[str], schema: dict[str, Any] | None, model: str = ""
    ) -> TeacherAnswer:
        """Same inputs, same answer; `model` is accepted for interface symmetry and does not vary the text."""
        title = str(schema.get("title") or "") if isinstance(schema, dict) else ""
        h = _digest(prompt_text, ",".join(media_sha256), title)
        ctx = _Context(h=h, media_h=media_sha256[0] if media_sha256 else h, verdict=self.verdict_for(media_sha256))
        if schema is not None:
            text = json.dumps(self._structured(ctx, schema, title), ensure_ascii=False)
        else:
            text = self._free_text(ctx, prompt_text)
        think = f"Checking the request {h[:8]} against what is visible before answering." if self.think else ""
        return TeacherAnswer(text=text, think=think)

    def _structured(self, ctx: _Context, schema: dict[str, Any], title: str) -> Any:
        known = self._known(ctx, title)
        if known is None:
            return instance_from_schema(schema)
        return conform(known, schema)

    def _known(self, ctx: _Context, title: str) -> Any:
        n = self.items_per_call
        v = ctx.verdict
        if title == "RelevanceVerdict":
            return {"relevant": v.relevant, "reason": ctx.relevance_reason()}
        if title == "ScreeningVerdict":
            return {"relevant": v.relevant, "reason": ctx.relevance_reason(),
                    "reasoning": ctx.classification_reasoning(), "label": v.label}
        if title == "CaptionPair":  # two requests' worth: each caption from its own salt
            return {"global_caption": _Context(h=_digest(ctx.h, "global"), media_h=ctx.media_h,
                                               verdict=v).caption(),
                    "dense_caption": _Context(h=_digest(ctx.h, "dense"), media_h=ctx.media_h, verdict=v).caption()}
        if title == "AnomalyVerdict":
            return {"reasoning": ctx.classification_reasoning(), "label": v.label}
        if title == "AnomalyTime":
            return {"found": True, "anomaly_time_sec": ANOMALY_TIME_SEC, "reasoning": ctx.time_reasoning()}
        if title == "MultipleChoiceSet":
            return {"items": [ctx.mcq(i) for i in range(n)]}
        if title == "YesNoSet":
            return {"items": [ctx.yes_no(i) for i in range(n)]}
        if title == "TimeSpanSet":
            return {"items": [ctx.span(i) for i in range(n)]}
        if title == "OpenQASet":
            return {"items": [ctx.open_qa(i) for i in range(n)]}
        return None

    def _free_text(self, ctx: _Context, prompt: str) -> str:
        p = prompt.lower()
        n = self.items_per_call
        words = set(re.findall(r"[a-z]+", p))
        if "start_time" in p:
            return _blocks(_span_block(ctx.span(i)) for i in range(n))
        if "multiple-choice" in p:
            return _blocks(_mcq_block(ctx.mcq(i)) for i in range(n))
        if ("yes or no" in p or "yes/no" in p) and "question" in p:
            return _blocks(_yes_no_block(ctx.yes_no(i)) for i in range(n))
        if "question" in p:
            return _blocks(_open_block(ctx.open_qa(i)) for i in range(n))
        if "anomaly" in p and "normal" in p and "last line" in p:
            return f"{ctx.classification_reasoning()}\n{ctx.verdict.label}"
        prose = any(rx.search(p) for rx in _PROSE_REQUEST)
        if {"yes", "no"} <= words and ("relevan" in p or "domain" in p) and not prose:
            lead = "Yes" if ctx.verdict.relevant else "No"
            return f"{lead}, {ctx.relevance_reason()[0].lower()}{ctx.relevance_reason()[1:]}"
        if ("timestamp" in p or "seconds" in p) and "when" in words and not prose:
            return f"{ANOMALY_TIME_SEC:.1f}"
        return ctx.caption()


class _Context:
    """Hash-derived building blocks for one request; the scene follows the video, the wording the prompt."""

    def __init__(self, *, h: str, media_h: str, verdict: Verdict) -> None:
        self.h = h
        self.media_h = media_h
        self.verdict = verdict
        self.scene: str = _pick(_SCENES, media_h)
        self.actor: str = _pick(_ACTORS, media_h, 1)

    def _item_h(self, i: int) -> str:
        return _digest(self.h, str(i))

    def _tag(self, i: int) -> str:
        return f"(ref {self.h[:6]}-{i + 1})"

    def _fill(self, template: str) -> str:
        return template.format(actor=self.actor, scene=self.scene)

    def caption(self) -> str:
        action = _pick(_ACTIONS, self.h)
        detail = _pick(_DETAILS, self.h, 1)
        first = f"A fixed camera shows {self.scene}, where {self.actor} {action}."
        if self.verdict.label == "anomaly":
            return f"{first} {_pick(_ANOMALY_DETAILS, self.h, 2)} {detail}"
        return f"{first} {detail}"

    def relevance_reason(self) -> str:
        if self.verdict.relevant:
            return f"The footage shows {self.scene} with ordinary activity that fits the target domain."
        return f"The footage shows {self.scene}, which is outside the target domain."

    def classification_reasoning(self) -> str:
        lines = [f"The camera watches {self.scene} where {self.actor} {_pick(_ACTIONS, self.h)}."]
        if self.verdict.label == "anomaly":
            lines.append(_pick(_ANOMALY_DETAILS, self.h, 2))
            lines.append("This departs from the expected pattern for the scene.")
        else:
            lines.append("Movement follows a regular pattern and nothing departs from it.")
        return "\n".join(lines)

    def time_reasoning(self) -> str:
        return f"The irregular movement in {self.scene} starts about {ANOMALY_TIME_SEC:.1f} seconds into the clip."

    def mcq(self, i: int) -> dict[str, Any]:
        ih = self._item_h(i)
        template, options = _pick(_Q_MCQ, ih)
        letter = "ABCD"[int(ih[8:16], 16) % 4]
        return {
            "question": f"{self._fill(template)}? {self._tag(i)}",
            "options": list(options),
            "answer": letter,
            "reasoning": f"Watching {self.scene}, option {letter} matches what {self.actor} is seen doing.",
        }

    def yes_no(self, i: int) -> dict[str, Any]:
        ih = self._item_h(i)
        answer = "Yes" if int(ih[8:10], 16) % 2 == 0 else "No"
        verb = "is" if answer == "Yes" else "is not"
        return {
            "question": f"{self._fill(_pick(_Q_YESNO, ih))}? {self._tag(i)}",
            "answer": answer,
            "explanation": f"It {verb} what the footage of {self.scene} shows.",
            "reasoning": f"The frames of {self.scene} were checked for this and the answer is {answer.lower()}.",
        }

    def span(self, i: int) -> dict[str, Any]:
        ih = self._item_h(i)
        return {
            "question": f"{self._fill(_pick(_Q_SPAN, ih))}? {self._tag(i)}",
            "start_time": "00:00",
            "end_time": "00:01",
            "reasoning": f"The relevant movement of {self.actor} is visible during the first second.",
        }

    def open_qa(self, i: int) -> dict[str, Any]:
        ih = self._item_h(i)
        return {
            "question": f"{self._fill(_pick(_Q_OPEN, ih))}? {self._tag(i)}",
            "answer": f"{self.actor[0].upper()}{self.actor[1:]} {_pick(_ACTIONS, ih, 1)}.",
            "reasoning": f"This follows from the motion visible across the frames of {self.scene}.",
        }


# ---------------------------------------------------------------- text-format rendering


def _blocks(blocks: Any) -> str:
    return f"\n{QA_SEPARATOR}\n".join(blocks)


def _mcq_block(item: dict[str, Any]) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", item["options"], strict=False))
    return (
        f"Multiple-Choice Question: {item['question']}\n{options}\n"
        f"Answer: {item['answer']}\nReasoning: {item['reasoning']}"
    )


def _yes_no_block(item: dict[str, Any]) -> str:
    because = item["explanation"][0].lower() + item["explanation"][1:]
    return f"Question: {item['question']}\nAnswer: {item['answer']}, because {because}\nReasoning: {item['reasoning']}"


def _span_block(item: dict[str, Any]) -> str:
    return (
        f"Question: {item['question']}\n"
        f"Answer: Start_Time: {item['start_time']}, End_Time: {item['end_time']}\n"
        f"Reasoning: {item['reasoning']}"
    )


def _open_block(item: dict[str, Any]) -> str:
    return f"Question: {item['question']}\nAnswer: {item['answer']}\nReasoning: {item['reasoning']}"


# ---------------------------------------------------------------- schema-driven instances
# Both schema styles arrive here: Gemini's OpenAPI subset (uppercase types, nullable,
# property_ordering) and standard JSON Schema (lowercase types, $defs/$ref, anyOf).

_MAX_DEPTH = 12


def _resolve(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = str(schema["$ref"])
        target: Any = root
        if ref.startswith("#"):
            for part in ref.lstrip("#").strip("/").split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, dict) else {}
        else:
            target = {}
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **extra} if isinstance(target, dict) else extra
        seen += 1
    return schema if isinstance(schema, dict) else {}


def _type_of(schema: dict[str, Any]) -> str:
    t = schema.get("type")
    if isinstance(t, list):
        non_null = [str(x).lower() for x in t if str(x).lower() != "null"]
        return non_null[0] if non_null else "null"
    if isinstance(t, str) and t:
        return t.lower()
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return ""


def _branches(schema: dict[str, Any]) -> list[Any] | None:
    for key in ("anyOf", "any_of", "oneOf", "one_of"):
        if isinstance(schema.get(key), list) and schema[key]:
            return list(schema[key])
    return None


def _pick_branch(branches: list[Any], root: dict[str, Any]) -> dict[str, Any]:
    resolved = [_resolve(b, root) for b in branches]
    for b in resolved:
        if _type_of(b) != "null" or _branches(b):
            return b
    return resolved[0]


def _properties_in_order(schema: dict[str, Any]) -> list[tuple[str, Any]]:
    props: dict[str, Any] = schema.get("properties") or {}
    order = schema.get("property_ordering") or schema.get("propertyOrdering") or []
    names = [n for n in order if n in props] + [n for n in props if n not in order]
    return [(n, props[n]) for n in names]


def instance_from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A small valid instance of `schema` (all properties filled, non-null where allowed)."""
    return _instance(schema, root if root is not None else schema, "value", 0)


def _instance(schema: Any, root: dict[str, Any], name: str, depth: int) -> Any:
    s = _resolve(schema, root)
    if "const" in s:
        return s["const"]
    enum = s.get("enum")
    if isinstance(enum, list) and enum:
        non_null = [e for e in enum if e is not None]
        return non_null[0] if non_null else None
    branches = _branches(s)
    if branches is not None:
        return _instance(_pick_branch(branches, root), root, name, depth)
    if isinstance(s.get("allOf"), list) and s["allOf"]:
        merged: dict[str, Any] = {}
        for part in s["allOf"]:
            merged.update(_resolve(part, root))
        merged.update({k: v for k, v in s.items() if k != "allOf"})
        return _instance(merged, root, name, depth)
    t = _type_of(s)
    if t == "object":
        if depth >= _MAX_DEPTH:
            return {}
        return {k: _instance(v, root, k, depth + 1) for k, v in _properties_in_order(s)}
    if t == "array":
        if depth >= _MAX_DEPTH:
            return []
        count = max(1, int(s.get("minItems") or s.get("min_items") or 0))
        max_items = s.get("maxItems") or s.get("max_items")
        if max_items is not None:
            count = min(count, int(max_items))
        prefix = s.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [_instance(p, root, name, depth + 1) for p in prefix]
        items = s.get("items", {})
        return [_instance(items, root, name, depth + 1) for _ in range(count)]
    if t in ("integer", "number"):
        value: float = 0
        for key in ("minimum", "exclusiveMinimum"):
            if isinstance(s.get(key), int | float):
                value = max(value, s[key] + (1 if key == "exclusiveMinimum" else 0))
        if isinstance(s.get("maximum"), int | float):
            value = min(value, s["maximum"])
        return int(value) if t == "integer" else float(value)
    if t == "boolean":
        return True
    if t == "null":
        return None
    return _string(s, name)


def _string(s: dict[str, Any], name: str) -> str:
    fmt = str(s.get("format") or "")
    fixed = {
        "date-time": "2025-01-01T00:00:00Z",
        "date": "2025-01-01",
        "time": "00:00:00",
        "duration": "P1D",
        "uri": "https://example.com/",
        "email": "someone@example.com",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    if fmt in fixed:
        return fixed[fmt]
    text = f"example {name.replace('_', ' ')}".strip()
    min_len = int(s.get("minLength") or s.get("min_length") or 0)
    if len(text) < min_len:
        text = text + "x" * (min_len - len(text))
    max_len = s.get("maxLength") or s.get("max_length")
    if max_len is not None:
        text = text[: int(max_len)]
    return text


def conform(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Fit a known answer to the schema actually sent: drop unknown keys, fill missing ones."""
    return _conform(value, schema, root if root is not None else schema, 0)


def _conform(value: Any, schema: Any, root: dict[str, Any], depth: int) -> Any:
    s = _resolve(schema, root)
    branches = _branches(s)
    if branches is not None:
        s = _pick_branch(branches, root)
    t = _type_of(s)
    if depth >= _MAX_DEPTH:
        return value
    if t == "object" and isinstance(value, dict) and s.get("properties"):
        out: dict[str, Any] = {}
        for k, sub in _properties_in_order(s):
            out[k] = _conform(value[k], sub, root, depth + 1) if k in value else _instance(sub, root, k, depth + 1)
        return out
    if t == "array" and isinstance(value, list):
        items = s.get("items", {})
        return [_conform(v, items, root, depth + 1) for v in value]
    return value
