"""Option-letter references in MCQ text, found and moved with the options when step 4 shuffles them.

A teacher's reasoning often names options by letter ("Option B is correct because…", "A and C are
wrong", "the answer is (D)").  When the export moves the options, those letters must move too, or
the reasoning argues for a different option than the answer.  English also uses single capital
letters for other things: the article ("A person walks…"), names ("Dock B", "lane C"), initials.

The scanner therefore sorts every free-standing letter into one of three kinds:

- a *reference*: a context that only an option letter fits ("option B", "(B)", "B)" or "B." opening a
  line, "answer is B", "Answer: B", "B is correct", "A and C are wrong", "options A, C and D");
- *not a reference*: the article "A" before a noun, lower-case letters outside a reference context,
  letters beyond the option count outside one (the pronoun "I", "Zone F"), and a letter that the
  question or the options use as a name ("Dock B" when the question asks about Dock B);
- *ambiguous*: anything else that could be an option letter (a bare "B" after a noun the question
  never names, "A clearly…", "(b)" that may enumerate steps, "option E" with four options).

Any ambiguity means the remapper cannot promise a true reasoning, so the caller keeps the teacher's
order for that item (:func:`keep_order_reason` says why) instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# bump when the rules below change what counts as a reference: step 4's code versions include it
SCANNER_VERSION = "1"

# a single letter standing alone: not inside a word, not a compound ("A-pillar", "U-turn", "Type-A"),
# not a contraction; a possessive "B's" still counts as the letter B.
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_])(?<![A-Za-z0-9]['’-])([A-Za-z])(?![A-Za-z0-9_])(?!-[A-Za-z0-9])(?!['’](?!s\b)\w)"
)
# markdown emphasis or quotes around a letter ("**B**", "'B'") do not change what it is.
_DECOR = r"[*_\"“”'‘’`]*"
_OPTION_WORD = r"(?:options?|choices?|answers?|letters?|alternatives?)"
# "option B", "Option (B)", "Answer: B", "answer - **B**", "choices [C]"
_PRE_REF_NOUN = re.compile(rf"(?i)\b{_OPTION_WORD}[ \t]*(?:[:=\-–—][ \t]*)?{_DECOR}[(\[]?{_DECOR}$")
# "the answer is B", "the correct option is (C)", "the right one would be D", "the best match is therefore A"
_PRE_REF_COPULA = re.compile(
    rf"(?i)\b(?:{_OPTION_WORD}|(?:correct|right|best|only|wrong|incorrect)\s+(?:one|match|pick))\s+"
    r"(?:here\s+|then\s+|therefore\s+|thus\s+|clearly\s+)?"
    r"(?:is|was|would\s+be|must\s+be|should\s+be|will\s+be|=)\s*(?:therefore\s+|thus\s+|clearly\s+)?:?\s*"
    rf"{_DECOR}[(\[]?{_DECOR}$"
)
_LINE_START = re.compile(rf"(?:^|\n)[ \t>•\-*]*{_DECOR}$")
# the gap between a reference and the next letter of the same list: "A, C and D", "B, not A", "B rather than A"
_LIST_GAP = re.compile(
    rf"(?i)^{_DECOR}[)\]]?{_DECOR}(?:'s)?\s*(?:[,/&;]\s*)?"
    r"(?:(?:and|or|nor|not|than|versus|vs\.?|but|rather|instead\s+of|as\s+well\s+as|over|also)\s+)*"
    rf"(?:(?:options?|choices?)\s+)?{_DECOR}[(\[]?{_DECOR}$"
)
# verbs that can follow option letter A but never the article "A" ("A is wrong", never "A is truck")
_SINGULAR_VERBS = (
    "is|was|isn't|wasn't|fits|matches|describes|cannot|can't|does|doesn't|did|didn't|would|wouldn't|could|"
    "couldn't|must|should|shows|says|states|claims|suggests|contradicts|ignores|names|mentions|gets|has|remains|"
    "wins|misses|fails|refers|implies|assumes|reflects|lists|gives|offers|confuses|mixes|omits|includes|requires|"
    "conflicts|corresponds|agrees|disagrees|captures|misreads|misstates|overstates|understates|invents|places|"
    "puts|reverses|swaps|seems|appears|sounds|looks|contains|attributes|talks|focuses|relies|proposes|depicts|"
    "predicts|misidentifies|identifies|explains|accounts|answers|contradicts"
)
# verbs after an option letter that can also follow the article ("A match", "A can of paint")
_OTHER_VERBS = (
    "are|were|fit|match|describe|can|may|might|will|do|don't|show|say|state|claim|suggest|contradict|ignore|"
    "mention|get|have|remain|miss|fail|refer|imply|assume|seem|appear|look|depict|name|explain|account"
)
_AFTER_LETTER = rf"^{_DECOR}[)\]]?{_DECOR}(?:'s)?\s*,?\s*"
_FOLLOWS_SINGULAR = re.compile(rf"{_AFTER_LETTER}(?:{_SINGULAR_VERBS})\b")
# "B's description", "C's wording": only an option has a description or wording of its own
_POSSESSIVE = re.compile(
    rf"^{_DECOR}['’]s\s+(?:description|wording|claim|statement|text|version|answer|option|account|premise)\b"
)
_FOLLOWS_ANY_VERB = re.compile(rf"{_AFTER_LETTER}(?:{_SINGULAR_VERBS}|{_OTHER_VERBS})\b")
_FOLLOWS_AS_GROUP = re.compile(
    rf"^{_DECOR}[)\]]?{_DECOR}\s*(?:,|/|&|\band\b|\bor\b|\bnor\b)\s*{_DECOR}[(\[]?{_DECOR}[A-Z](?![A-Za-z0-9])"
)
# where a sentence-level subject may start: "B is…", "So B is…", "; D fails", "neither A nor B fits"
_SUBJECT_SLOT = re.compile(
    rf"(?i)(?:^|[.!?:;,]\s*|\n\s*|[(\[—–-]\s*|\b(?:so|and|but|while|whereas|unlike|thus|therefore|hence|because|"
    rf"since|that|why|if|although|though|only|then|as|neither|either|both|nor|or|yet|meanwhile|also|whereas|"
    rf"here|which|means|leaves|leaving|only)\s+){_DECOR}[(\[]?{_DECOR}$"
)
# after the article "A" these leave open whether "A" is the article or option A ("A clearly fits")
_EITHER_WAY = re.compile(
    rf"^\s+(?:[a-z]+ly|not|also|only|too|alone|again|still|instead|however|therefore|{_OTHER_VERBS})\b"
)
_ARTICLE = re.compile(r"^\s+[\w\"“'‘(]")
_POSITIONAL = re.compile(
    r"(?i)\b(?:above|below|previous|preceding|following|other)\s+(?:options?|choices?|answers?)\b"
    r"|\b(?:all|none|both|neither|either|any)\s+of\s+(?:the\s+)?(?:above|below|these|those|them|the\s+options)\b"
    r"|\b(?:all|none)\s+of\s+the\s+(?:above|other)\b"
)


@dataclass(frozen=True)
class LetterRef:
    """One option-letter reference: where the letter stands and which option it names."""

    start: int
    letter: str  # upper case
    lower: bool  # written in lower case ("option b")


@dataclass
class LetterScan:
    """The references in a text, and why the text cannot be remapped safely (empty: it can)."""

    refs: list[LetterRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class AmbiguousLetters(ValueError):
    """The text has a letter that may or may not name an option; remapping it would be a guess."""


def _context(text: str, start: int, end: int) -> str:
    return " ".join(text[max(0, start - 18) : end + 18].split())


def _is_name(text_before: str, letter: str, text_after: str, names_from: str) -> bool:
    """The question or the options use this letter with the same neighbouring word ("Dock B", "B wing")."""
    if not names_from:
        return False
    prev = re.search(r"([A-Za-z][\w-]*)\s+$", text_before)
    if prev and re.search(rf"(?i:\b{re.escape(prev.group(1))})\s+{letter}(?![A-Za-z0-9])", names_from):
        return True
    nxt = re.match(r"\s+([A-Za-z][\w-]*)", text_after)
    return bool(nxt and re.search(rf"(?<![A-Za-z0-9]){letter}\s+(?i:{re.escape(nxt.group(1))}\b)", names_from))


def scan(text: str, n_options: int, names_from: str = "") -> LetterScan:
    """Find the option-letter references in ``text`` for an item with ``n_options`` options.

    ``names_from`` is the question and option text: a letter used there with the same neighbour
    is a name ("Dock B"), not a reference.
    """
    out = LetterScan()
    prev_ref_end = -1  # end of the previous letter when it was a reference: lists continue from it
    for m in _TOKEN.finditer(text):
        ch, start, end = m.group(1), m.start(1), m.end(1)
        kind = _classify(text, start, end, prev_ref_end, names_from, n_options)
        in_range = ord(ch.upper()) - ord("A") < n_options
        where = _context(text, start, end)
        if kind == "ref" and in_range:
            out.refs.append(LetterRef(start=start, letter=ch.upper(), lower=ch.islower()))
            prev_ref_end = end
            continue
        if kind == "ref":
            out.problems.append(f"{ch!r} names no option ({n_options} options): …{where}…")
        elif kind == "ambiguous" and in_range:
            out.problems.append(f"{ch!r} may or may not name an option: …{where}…")
        prev_ref_end = -1
    return out


def _classify(text: str, start: int, end: int, prev_ref_end: int, names_from: str, n_options: int) -> str:
    """Classify as "ref", "skip" (not a reference) or "ambiguous" for the letter at ``text[start:end]``."""
    ch = text[start]
    up, lower = ch.upper(), ch.islower()
    before, after = text[:start], text[end:]
    gap = text[prev_ref_end:start] if prev_ref_end >= 0 else ""
    continues_list = bool(gap.strip()) and bool(_LIST_GAP.match(gap))
    # the article "A"/"a" before a noun: "the answer is a forklift", "option B, a van, …", "A person walks"
    article = (
        up == "A"
        and _ARTICLE.match(after)
        and not _FOLLOWS_ANY_VERB.match(after)
        and not _EITHER_WAY.match(after)
        and not _FOLLOWS_AS_GROUP.match(after)
        and not re.match(r"\s+(?:and|or|nor)\b", after)
    )
    noun_ref = _PRE_REF_NOUN.search(before)
    if noun_ref:  # "Option A beats…" is option A, but "Answer: A forklift…" may name the content
        return "ambiguous" if article and re.search(r"[:=\-–—]", noun_ref.group(0)) else "ref"
    if _PRE_REF_COPULA.search(before):  # "the answer is a forklift" names the content
        if article:
            return "skip" if lower else "ambiguous"
        return "ambiguous" if up == "A" and _EITHER_WAY.match(after) else "ref"
    if re.search(rf"[(\[]{_DECOR}$", before) and re.match(rf"{_DECOR}[)\]]", after):
        return "ambiguous" if lower else "ref"  # "(b)" may enumerate reasoning steps
    if _LINE_START.search(before) and re.match(rf"{_DECOR}[.):](?:\s|$)", after):
        return "ambiguous" if lower else "ref"  # "B) …" / "B. …" opening a line
    if article:
        return "skip"
    if ch == "A" and not continues_list:
        if _EITHER_WAY.match(after):
            return "ambiguous"  # "A clearly…", "A can…"
        if _ARTICLE.match(after) and not _FOLLOWS_SINGULAR.match(after) and not _FOLLOWS_AS_GROUP.match(after):
            return "ambiguous"  # "A fit …": a verb that is also a noun
    if continues_list:
        return "ref"
    if lower or ord(up) - ord("A") >= n_options:
        return "skip"  # beyond the options only an explicit "option E" counts; "I would say…" is the pronoun
    if _POSSESSIVE.match(after) or (
        _SUBJECT_SLOT.search(before) and (_FOLLOWS_ANY_VERB.match(after) or _FOLLOWS_AS_GROUP.match(after))
    ):
        return "ref"
    if re.match(rf"{_DECOR}\)", after) and before.count("(") <= before.count(")"):
        return "ref"  # "B) is wrong" with no "(" open before it
    if _is_name(before, up, after, names_from):
        return "skip"
    return "ambiguous"


def remap(text: str, mapping: Mapping[str, str], n_options: int, names_from: str = "") -> str:
    """``text`` with every option-letter reference renamed by ``mapping`` (old letter → new letter).

    Raises :class:`AmbiguousLetters` when a letter's role is unclear; the text is never half-remapped.
    """
    found = scan(text, n_options, names_from)
    if found.problems:
        raise AmbiguousLetters("; ".join(found.problems))
    chars = list(text)
    for ref in found.refs:
        new = mapping.get(ref.letter, ref.letter)
        chars[ref.start] = new.lower() if ref.lower else new
    return "".join(chars)


def keep_order_reason(question: str, options: Sequence[str], reasoning: str) -> str:
    """Why this MCQ must keep the teacher's option order, or "" when its options may move.

    The reasoning must have no ambiguous letter; the question and the options must not refer to
    option letters or positions at all ("Both A and B", "None of the above").
    """
    n = len(options)
    names = "\n".join([question, *options])
    for i, option in enumerate(options):
        if _POSITIONAL.search(option):
            return f"option {chr(65 + i)} depends on its position: {option[:60]!r}"
        found = scan(option, n, option)
        if found.refs or found.problems:
            return f"option {chr(65 + i)} refers to option letters: {option[:60]!r}"
    if _POSITIONAL.search(question):
        return "the question refers to option positions"
    found = scan(question, n, names)
    if found.refs or found.problems:
        return "the question refers to option letters: " + (found.problems[:1] or [question[:60]])[0]
    found = scan(reasoning, n, names)
    if found.problems:
        return "reasoning: " + found.problems[0]
    return ""
