"""Prompt packs: the 26-key prompt contract as data, loaded, checked, rendered and hashed.

Prompt prose lives in `prompts/<pack>/<key>.txt`, never in code: a pack is a folder the
user can copy and edit. This module knows only the contract (which keys exist and which
`{placeholders}` each may use), so a typo in a pack fails at load time with a message
naming the pack, the key and the placeholder instead of surfacing as a half-filled
prompt in the middle of a run.

Two pack flavours:
- folder packs: only the contract's `{name}` tokens are substituted; every other brace
  (JSON shapes shown to the model) is sent verbatim, so authors never escape anything;
- TAO modules (`prompts_module`, a dotted path to a module with `PROMPT_TEMPLATES`):
  str.format style, `{{`/`}}` are un-escaped exactly as `.format` does.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import os
import re
import string
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from vr_assets.providers.base import MediaRef, ModelCall
from vr_assets.records import (
    ALL_QA_TYPES,
    AnomalyTime,
    AnomalyVerdict,
    MultipleChoiceSet,
    OpenQASet,
    RelevanceVerdict,
    TimeSpanSet,
    YesNoSet,
)

log = logging.getLogger(__name__)

PROMPTS_DIR_ENV = "VR_PROMPTS_DIR"
DEFAULT_PACK = "general"
PACK_FILE = "pack.yaml"
MODULE_PREFIX = "module:"

_QA_INPUTS = frozenset({"video_length", "global_caption", "dense_caption", "chunk_captions_str", "step_2_output"})
_NORMAL_QA_INPUTS = frozenset({"video_length", "global_caption", "dense_caption"})
_DESCRIPTION_QA_INPUTS = frozenset({"video_length", "step_2_output"})

PLACEHOLDERS: dict[str, frozenset[str]] = {
    "video_filtering": frozenset(),
    "video_anomaly_classification": frozenset(),
    "anomaly_global_caption": frozenset(),
    "normal_global_caption": frozenset(),
    "anomaly_dense_caption": frozenset(),
    "normal_dense_caption": frozenset(),
    "anomaly_chunk_caption": frozenset({"chunk_duration"}),
    "normal_chunk_caption": frozenset({"chunk_duration"}),
    "highlight_timestamp_extraction": frozenset({"global_caption", "dense_caption", "chunk_captions_str"}),
    "highlight_chunk_caption": frozenset({"anomaly_time", "start_time", "end_time", "duration"}),
    "anomaly_description": frozenset(
        {"video_length", "global_caption", "dense_section", "chunk_captions_str", "highlight_section"}
    ),
    "normal_description": frozenset({"video_length", "global_caption", "dense_section", "chunk_captions_str"}),
    "anomaly_mcq": _QA_INPUTS,
    "anomaly_bcq": _QA_INPUTS,
    "anomaly_open_qa": _QA_INPUTS,
    "normal_mcq": _NORMAL_QA_INPUTS,
    "normal_bcq": _NORMAL_QA_INPUTS,
    "normal_open_qa": _NORMAL_QA_INPUTS,
    "scene_description": _DESCRIPTION_QA_INPUTS,
    "event_summary": _DESCRIPTION_QA_INPUTS,
    "anomaly_temporal_event_desc": _DESCRIPTION_QA_INPUTS,
    "normal_temporal_event_desc": _DESCRIPTION_QA_INPUTS,
    "anomaly_causal_linkage": _DESCRIPTION_QA_INPUTS,
    "normal_causal_linkage": _DESCRIPTION_QA_INPUTS,
    "anomaly_temporal_localization": _DESCRIPTION_QA_INPUTS,
    "normal_temporal_localization": _DESCRIPTION_QA_INPUTS,
}
PROMPT_KEYS: tuple[str, ...] = tuple(PLACEHOLDERS)

MODE_INDEPENDENT_QA_TYPES: frozenset[str] = frozenset({"scene_description", "event_summary"})

_SCHEMAS: dict[str, type[BaseModel]] = {
    "video_filtering": RelevanceVerdict,
    "video_anomaly_classification": AnomalyVerdict,
    "highlight_timestamp_extraction": AnomalyTime,
}
_QA_SCHEMAS: dict[str, type[BaseModel]] = {
    "mcq": MultipleChoiceSet,
    "bcq": YesNoSet,
    "temporal_localization": TimeSpanSet,
}

# `{name}` tokens a folder pack may contain; anything else in braces is literal text.
_BRACE_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Markers of the `template` pack ([DOMAIN], [EDGE_CASE_GUIDANCE], ...): at least 3 upper-case chars.
MARKER = re.compile(r"\[[A-Z][A-Z0-9_]{2,}\]")


class PromptPackError(ValueError):
    """A pack that cannot be used; the message names pack, key and placeholder."""


class TemplateNotFilledError(PromptPackError):
    """A prompt still carries `[UPPER_CASE]` markers of the template pack."""


class PromptPack(BaseModel):
    """All 26 prompt texts of one pack, validated against the contract."""

    name: str
    source: str = Field(description="folder path, or 'module:<dotted.path>' for a TAO PROMPT_TEMPLATES module")
    templates: dict[str, str]
    structured_output: bool = False
    description: str = ""

    @property
    def format_style(self) -> bool:
        """TAO modules are str.format templates; folder packs are not."""
        return self.source.startswith(MODULE_PREFIX)

    def text(self, key: str) -> str:
        if key not in self.templates:
            raise PromptPackError(f"prompt pack {self.name!r} has no key {key!r}; known keys: {', '.join(PROMPT_KEYS)}")
        return self.templates[key]

    def markers(self, key: str | None = None) -> list[str]:
        """Unfilled template markers, sorted; of one key or of the whole pack."""
        keys = [key] if key else list(self.templates)
        return sorted({m for k in keys for m in MARKER.findall(self.text(k))})

    def render(self, key: str, **values: object) -> str:
        """Fill the contract's placeholders of `key`; extra values are ignored (callers may pass a superset)."""
        text = self.text(key)
        left = MARKER.findall(text)
        if left:
            shown = ", ".join(sorted(set(left)))
            raise TemplateNotFilledError(
                f"prompt pack {self.name!r} key {key!r} still contains template markers {shown}: "
                "fill the template first (see docs/domain_adaptation.md)"
            )
        allowed = PLACEHOLDERS.get(key, frozenset())
        needed = _placeholders(text, self.format_style, self.name, key)
        missing = sorted(needed - set(values))
        if missing:
            raise PromptPackError(
                f"prompt pack {self.name!r} key {key!r}: no value given for placeholder {missing[0]!r}"
            )
        if self.format_style:
            return _format_render(text, {k: v for k, v in values.items() if k in allowed})

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            return str(values[name]) if name in allowed else m.group(0)

        return _BRACE_NAME.sub(sub, text)

    def call(self, step: str, key: str, video_key: str, media: MediaRef | None = None, **values: object) -> ModelCall:
        """A model call for one prompt key; structured output when the pack asks for it."""
        return ModelCall(
            step=step, prompt_key=key, video_key=video_key, prompt=self.render(key, **values), media=media,
            schema_model=self.schema(key),
        )

    def schema(self, key: str) -> type[BaseModel] | None:
        """The JSON schema to enforce for `key`, or None when this pack asks for free text."""
        return schema_for_key(key) if self.structured_output else None

    def fingerprint(self, keys: Iterable[str]) -> str:
        """sha256 over the given keys' texts (+ structured flag): stable across runs and machines.

        The pack name and untouched keys are deliberately left out, so renaming a pack or
        editing an unrelated prompt does not mark already materialized assets stale.
        """
        h = hashlib.sha256()
        h.update(b"structured=1\n" if self.structured_output else b"structured=0\n")
        h.update(b"style=format\n" if self.format_style else b"style=braces\n")
        for key in sorted(set(keys)):
            text = self.text(key)
            h.update(key.encode())
            h.update(b"\x00")
            h.update(str(len(text.encode())).encode())
            h.update(b"\x00")
            h.update(text.encode())
            h.update(b"\x00")
        return h.hexdigest()


# ---------------------------------------------------------------- placeholder handling


def _placeholders(text: str, format_style: bool, pack: str, key: str) -> set[str]:
    """Names of the `{placeholders}` a text uses, in the pack's own syntax."""
    if not format_style:
        # Identifier-only braces are placeholders (so a typo is caught); `{"a": 1}` is literal JSON.
        return set(_BRACE_NAME.findall(text))
    names: set[str] = set()
    try:
        for _, field, _, _ in string.Formatter().parse(text):
            if field is None:
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field):
                raise PromptPackError(
                    f"prompt pack {pack!r} key {key!r}: placeholder {{{field}}} is not a plain name "
                    "(positional, attribute and index fields are not part of the contract)"
                )
            names.add(field)
    except ValueError as err:
        if isinstance(err, PromptPackError):
            raise
        raise PromptPackError(
            f"prompt pack {pack!r} key {key!r}: malformed braces ({err}); escape literal braces as {{{{ }}}}"
        ) from None
    return names


def _format_render(text: str, values: Mapping[str, object]) -> str:
    """str.format semantics without its KeyError surprises: format specs and {{ }} honoured."""
    out: list[str] = []
    fmt = string.Formatter()
    for literal, field, spec, conversion in fmt.parse(text):
        out.append(literal)
        if field is None:
            continue
        value = fmt.convert_field(values[field], conversion)
        out.append(format(value, spec or ""))
    return "".join(out)


def _to_format_style(text: str, key: str) -> str:
    """Escape a folder-pack text so it can live in a str.format (module) pack."""
    allowed = PLACEHOLDERS[key]
    parts: list[str] = []
    pos = 0
    for m in _BRACE_NAME.finditer(text):
        parts.append(text[pos : m.start()].replace("{", "{{").replace("}", "}}"))
        parts.append(m.group(0) if m.group(1) in allowed else m.group(0).replace("{", "{{").replace("}", "}}"))
        pos = m.end()
    parts.append(text[pos:].replace("{", "{{").replace("}", "}}"))
    return "".join(parts)


def validate_templates(
    pack: str, templates: Mapping[str, str], format_style: bool, strict_required: bool = True
) -> list[str]:
    """Raise on unknown keys/placeholders; returns warnings (missing placeholders when not strict)."""
    problems: list[str] = []
    unknown_keys = sorted(set(templates) - set(PROMPT_KEYS))
    if unknown_keys:
        raise PromptPackError(
            f"prompt pack {pack!r} has unknown key {unknown_keys[0]!r} (all unknown: {unknown_keys}); "
            f"the contract keys are: {', '.join(PROMPT_KEYS)}"
        )
    missing_keys = [k for k in PROMPT_KEYS if k not in templates]
    if missing_keys:
        raise PromptPackError(f"prompt pack {pack!r} is missing key {missing_keys[0]!r} (all missing: {missing_keys})")
    for key in PROMPT_KEYS:
        text = templates[key]
        if not isinstance(text, str) or not text.strip():
            raise PromptPackError(f"prompt pack {pack!r} key {key!r} is empty")
        used = _placeholders(text, format_style, pack, key)
        allowed = PLACEHOLDERS[key]
        extra = sorted(used - allowed)
        if extra:
            raise PromptPackError(
                f"prompt pack {pack!r} key {key!r} uses unknown placeholder {{{extra[0]}}}; "
                f"allowed here: {sorted(allowed) or 'none'}"
            )
        absent = sorted(allowed - used)
        if absent:
            msg = f"prompt pack {pack!r} key {key!r} is missing required placeholder {{{absent[0]}}} (all: {absent})"
            if strict_required:
                raise PromptPackError(msg)
            problems.append(msg)
    return problems


# ---------------------------------------------------------------- locating and loading


def prompts_root() -> Path:
    """The prompts/ folder: repo checkout first, then $VR_PROMPTS_DIR, then installed data files."""
    candidates = [Path(__file__).resolve().parent.parent / "prompts"]
    env = os.environ.get(PROMPTS_DIR_ENV)
    if env:
        candidates.append(Path(env).expanduser())
    # Non-editable installs: pyproject `[tool.setuptools.data-files]` puts the packs here.
    candidates.append(Path(sys.prefix) / "share" / "vr-assets" / "prompts")
    for c in candidates:
        if c.is_dir() and any(d.is_dir() and any(d.glob("*.txt")) for d in c.iterdir()):
            return c
    raise PromptPackError(
        "prompts/ folder not found; looked in: " + ", ".join(str(c) for c in candidates) + f" (set {PROMPTS_DIR_ENV})"
    )


def list_packs() -> list[str]:
    return sorted(p.name for p in prompts_root().iterdir() if p.is_dir() and any(p.glob("*.txt")))


def pack_dir(pack: str) -> Path:
    as_path = Path(pack).expanduser()
    if os.sep in pack or "/" in pack or pack.startswith("."):
        if as_path.is_dir():
            return as_path.resolve()
        raise PromptPackError(f"prompt pack folder {pack!r} does not exist")
    root = prompts_root()
    if (root / pack).is_dir():
        return root / pack
    if as_path.is_dir():
        return as_path.resolve()
    raise PromptPackError(f"unknown prompt pack {pack!r}; available: {', '.join(list_packs())} (or give a folder path)")


def _load_folder(pack: str) -> PromptPack:
    folder = pack_dir(pack)
    meta: dict[str, object] = {}
    meta_file = folder / PACK_FILE
    if meta_file.exists():
        loaded = yaml.safe_load(meta_file.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise PromptPackError(f"prompt pack {pack!r}: {meta_file} must be a mapping")
        meta = loaded
    name = str(meta.get("name") or folder.name)
    templates = {p.stem: p.read_text(encoding="utf-8").rstrip() for p in sorted(folder.glob("*.txt"))}
    validate_templates(name, templates, format_style=False)
    return PromptPack(
        name=name,
        source=str(folder),
        templates={k: templates[k] for k in PROMPT_KEYS},
        structured_output=bool(meta.get("structured_output", False)),
        description=str(meta.get("description", "")),
    )


def _load_module(dotted: str) -> PromptPack:
    try:
        module = importlib.import_module(dotted)
    except Exception as err:  # an import error of any kind means the user's pack is unusable
        # The reference pipeline silently falls back to its defaults here; a run on the wrong
        # prompts costs money and is hard to notice, so we stop instead.
        raise PromptPackError(f"prompts_module {dotted!r} could not be imported: {type(err).__name__}: {err}") from err
    raw = getattr(module, "PROMPT_TEMPLATES", None)
    if not isinstance(raw, Mapping):
        raise PromptPackError(f"prompts_module {dotted!r} has no PROMPT_TEMPLATES dict")
    templates = {str(k): str(v).rstrip() for k, v in raw.items()}
    unknown = sorted(set(templates) - set(PROMPT_KEYS))
    if unknown:
        raise PromptPackError(f"prompts_module {dotted!r} has unknown key {unknown[0]!r} (all unknown: {unknown})")
    missing = [k for k in PROMPT_KEYS if k not in templates]
    if missing:
        default = _load_folder(DEFAULT_PACK)
        msg = f"prompts_module {dotted!r} lacks keys {missing}; using the {DEFAULT_PACK!r} pack for them"
        log.warning(msg)
        warnings.warn(msg, stacklevel=3)
        for k in missing:
            templates[k] = _to_format_style(default.templates[k], k)
    # TAO modules that leave out an input still work in TAO, so that is a warning, not an error.
    for problem in validate_templates(f"module:{dotted}", templates, format_style=True, strict_required=False):
        log.warning(problem)
        warnings.warn(problem, stacklevel=3)
    return PromptPack(
        name=dotted,
        source=MODULE_PREFIX + dotted,
        templates={k: templates[k] for k in PROMPT_KEYS},
        structured_output=False,
        description=(module.__doc__ or "").strip().split("\n", 1)[0],
    )


def load_pack(pack: str = DEFAULT_PACK, prompts_module: str = "") -> PromptPack:
    """Load a folder pack by name or path, or a TAO `PROMPT_TEMPLATES` module (which wins when set)."""
    if prompts_module:
        return _load_module(prompts_module)
    return _load_folder(pack or DEFAULT_PACK)


# ---------------------------------------------------------------- key mapping


def qa_prompt_key(qa_type: str, mode: str) -> str:
    """Step-3 prompt key for a QA type; scene_description and event_summary ignore the mode."""
    if qa_type not in ALL_QA_TYPES:
        raise ValueError(f"unknown qa type {qa_type!r}; choose from {list(ALL_QA_TYPES)}")
    if qa_type in MODE_INDEPENDENT_QA_TYPES:
        return qa_type
    if mode not in ("anomaly", "normal"):
        raise ValueError(f"mode must be 'anomaly' or 'normal', got {mode!r}")
    return f"{mode}_{qa_type}"


def qa_type_of_key(key: str) -> str | None:
    """Inverse of qa_prompt_key; None for non-QA keys."""
    if key in MODE_INDEPENDENT_QA_TYPES:
        return key
    for mode in ("anomaly_", "normal_"):
        if key.startswith(mode) and key[len(mode) :] in ALL_QA_TYPES:
            return key[len(mode) :]
    return None


def schema_for_key(key: str) -> type[BaseModel] | None:
    """Structured-output model for a key; None where the answer is free text (captions, descriptions)."""
    if key not in PLACEHOLDERS:
        raise ValueError(f"unknown prompt key {key!r}")
    if key in _SCHEMAS:
        return _SCHEMAS[key]
    qa_type = qa_type_of_key(key)
    if qa_type is None:
        return None
    return _QA_SCHEMAS.get(qa_type, OpenQASet)


# ---------------------------------------------------------------- filling the template pack


class TemplateValues(BaseModel):
    """A values file for `fill`: the new pack's identity and one text per marker."""

    name: str
    description: str = ""
    structured_output: bool = True
    markers: dict[str, str]


def fill_template(values: TemplateValues, out_dir: Path, template: str = "template") -> PromptPack:
    """Write a new folder pack: the template with every `[MARKER]` replaced; checks nothing is left over."""
    src = load_pack(template)
    wanted = set(m[1:-1] for m in src.markers())
    given = {k.strip("[]"): v for k, v in values.markers.items()}
    missing = sorted(wanted - set(given))
    if missing:
        raise PromptPackError(f"values for pack {values.name!r} lack marker(s) {missing}")
    unused = sorted(set(given) - wanted)
    if unused:
        raise PromptPackError(f"values for pack {values.name!r} name marker(s) the template does not use: {unused}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for key in PROMPT_KEYS:
        text = MARKER.sub(lambda m: given[m.group(0)[1:-1]].strip(), src.text(key))
        (out_dir / f"{key}.txt").write_text(text + "\n", encoding="utf-8")
    meta = {"name": values.name, "description": values.description, "structured_output": values.structured_output}
    (out_dir / PACK_FILE).write_text(
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8"
    )
    pack = load_pack(str(out_dir))
    left = pack.markers()
    if left:
        raise TemplateNotFilledError(
            f"pack {values.name!r} still has markers {left} after filling (values add markers?)"
        )
    return pack


def main(argv: list[str] | None = None) -> int:
    """`python -m vr_assets.prompts check|markers|fill`: tools for pack authors."""
    parser = argparse.ArgumentParser(prog="python -m vr_assets.prompts", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_check = sub.add_parser("check", help="load a pack, report markers and fingerprint")
    p_check.add_argument("pack", nargs="?", default=DEFAULT_PACK)
    p_check.add_argument("--module", default="", help="dotted TAO prompts module instead of a pack")
    p_markers = sub.add_parser("markers", help="list the [MARKERS] still to fill, with the keys using them")
    p_markers.add_argument("pack", nargs="?", default="template")
    p_fill = sub.add_parser("fill", help="fill the template pack from a values YAML into a new pack folder")
    p_fill.add_argument("--values", required=True, type=Path)
    p_fill.add_argument("--out", required=True, type=Path)
    p_fill.add_argument("--template", default="template")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            pack = load_pack(args.pack, args.module)
            left = pack.markers()
            print(
                f"pack {pack.name!r} from {pack.source}: {len(pack.templates)} keys, "
                f"structured={pack.structured_output}"
            )
            print(f"fingerprint(all keys) = {pack.fingerprint(PROMPT_KEYS)}")
            if left:
                print(f"NOT READY: {len(left)} unfilled markers: {' '.join(left)}")
                return 1
            print("ready: no template markers left")
        elif args.cmd == "markers":
            pack = load_pack(args.pack)
            for marker in pack.markers():
                keys = [k for k in PROMPT_KEYS if marker in pack.text(k)]
                print(f"{marker}  ({len(keys)} keys: {', '.join(keys)})")
        else:
            raw = yaml.safe_load(args.values.read_text(encoding="utf-8"))
            pack = fill_template(TemplateValues.model_validate(raw), args.out, args.template)
            print(f"wrote pack {pack.name!r} to {args.out} ({len(pack.templates)} keys)")
    except PromptPackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
