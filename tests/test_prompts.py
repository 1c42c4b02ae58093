"""Prompt packs: contract conformance, rendering, fingerprints, TAO modules, the template workflow."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from vr_assets.mcq_letters import scan
from vr_assets.prompts import (
    MARKER,
    PLACEHOLDERS,
    PROMPT_KEYS,
    PromptPack,
    PromptPackError,
    TemplateNotFilledError,
    TemplateValues,
    fill_template,
    list_packs,
    load_pack,
    main,
    prompts_root,
    qa_prompt_key,
    schema_for_key,
)
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

SHIPPED = ("general", "traffic", "warehouse")
ALL_PACKS = (*SHIPPED, "template")
EXAMPLES = Path(__file__).resolve().parent.parent / "prompts" / "template" / "examples"

# The contract as the fact sheet states it (reference_pipeline.md), written out independently of the module.
CONTRACT = {
    "video_filtering": set(),
    "video_anomaly_classification": set(),
    "anomaly_global_caption": set(),
    "normal_global_caption": set(),
    "anomaly_dense_caption": set(),
    "normal_dense_caption": set(),
    "anomaly_chunk_caption": {"chunk_duration"},
    "normal_chunk_caption": {"chunk_duration"},
    "highlight_timestamp_extraction": {"global_caption", "dense_caption", "chunk_captions_str"},
    "highlight_chunk_caption": {"anomaly_time", "start_time", "end_time", "duration"},
    "anomaly_description": {
        "video_length",
        "global_caption",
        "dense_section",
        "chunk_captions_str",
        "highlight_section",
    },
    "normal_description": {"video_length", "global_caption", "dense_section", "chunk_captions_str"},
    **{
        f"anomaly_{t}": {"video_length", "global_caption", "dense_caption", "chunk_captions_str", "step_2_output"}
        for t in ("mcq", "bcq", "open_qa")
    },
    **{f"normal_{t}": {"video_length", "global_caption", "dense_caption"} for t in ("mcq", "bcq", "open_qa")},
    "scene_description": {"video_length", "step_2_output"},
    "event_summary": {"video_length", "step_2_output"},
    **{
        f"{m}_{t}": {"video_length", "step_2_output"}
        for m in ("anomaly", "normal")
        for t in ("temporal_event_desc", "causal_linkage", "temporal_localization")
    },
}


def _values(key: str) -> dict[str, str]:
    return {name: f"<<{name.upper()}-VALUE>>" for name in PLACEHOLDERS[key]}


def _copy_pack(name: str, dest: Path) -> Path:
    shutil.copytree(prompts_root() / name, dest)
    return dest


def test_contract_table_matches_fact_sheet() -> None:
    assert len(PROMPT_KEYS) == 26
    assert {k: set(v) for k, v in PLACEHOLDERS.items()} == CONTRACT


def test_all_packs_are_shipped() -> None:
    assert set(ALL_PACKS) <= set(list_packs())


@pytest.mark.parametrize("pack_name", ALL_PACKS)
def test_pack_has_every_key_with_exactly_the_contract_placeholders(pack_name: str) -> None:
    pack = load_pack(pack_name)
    assert set(pack.templates) == set(PROMPT_KEYS)
    assert pack.structured_output is True
    for key, text in pack.templates.items():
        names = set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
        assert names == CONTRACT[key], (pack_name, key)


@pytest.mark.parametrize("pack_name", SHIPPED)
def test_render_fills_every_placeholder_and_keeps_json_braces(pack_name: str) -> None:
    pack = load_pack(pack_name)
    assert pack.markers() == []
    for key in PROMPT_KEYS:
        values = _values(key)
        out = pack.render(key, **values, unrelated_extra="ignored")
        for name, value in values.items():
            assert value in out, (key, name)
            assert "{" + name + "}" not in out
        assert "ignored" not in out
        if schema_for_key(key) is not None:
            assert re.search(r'\{"\w+": ', out), f"{key}: the JSON shape shown to the model lost its braces"


@pytest.mark.parametrize("pack_name", SHIPPED)
def test_structured_prompts_name_every_schema_field(pack_name: str) -> None:
    """Prompts describe what to put in each field, by name, so the enforced schema is never a surprise."""
    pack = load_pack(pack_name)
    for key in PROMPT_KEYS:
        schema = schema_for_key(key)
        if schema is None:
            continue
        model = schema.model_fields["items"].annotation.__args__[0] if "items" in schema.model_fields else schema
        for field_name in model.model_fields:
            assert f"`{field_name}`" in pack.text(key), (key, field_name)


@pytest.mark.parametrize("pack_name", SHIPPED)
def test_qa_prompts_ask_about_the_video_not_the_text(pack_name: str) -> None:
    pack = load_pack(pack_name)
    for key in PROMPT_KEYS:
        if key.endswith(
            ("_mcq", "_bcq", "_open_qa", "_causal_linkage", "_temporal_localization", "_temporal_event_desc")
        ) or key in (
            "scene_description",
            "event_summary",
        ):
            text = pack.text(key).lower()
            assert "never mention or allude to" in text, key
            assert "according to the" not in text, key
        if key.endswith("_mcq"):
            assert "exactly 4 distinct option" in pack.text(key)
        if key.endswith("_temporal_localization"):
            assert "MM:SS" in pack.text(key)


@pytest.mark.parametrize("pack_name", SHIPPED)
def test_mcq_prompts_ask_for_option_contents_and_show_a_format_only_example(pack_name: str) -> None:
    pack = load_pack(pack_name)
    for key in ("anomaly_mcq", "normal_mcq"):
        text = pack.text(key)
        assert "Name options by what they say, never by letter or position" in text, key
        example = text.split("Format-only example", 1)[1].split("Return a JSON object", 1)[0]
        fields = dict(re.findall(r"^(question|options|answer|reasoning): (.*)$", example, re.M))
        assert set(fields) == {"question", "options", "answer", "reasoning"}, key
        # every concrete detail is a placeholder: nothing a teacher could copy into another video
        for name in ("question", "options", "reasoning"):
            assert fields[name].count("<") >= 3 and fields[name].count("<") == fields[name].count(">"), (key, name)
        assert scan(fields["reasoning"], 4).refs == [], f"{key}: the example reasoning names an option by letter"


_EXAMPLE_FIELDS = {
    "bcq": {"question", "answer", "explanation", "reasoning"},
    "open_qa": {"question", "answer", "reasoning"},
    "causal_linkage": {"question", "answer", "reasoning"},
    "temporal_localization": {"question", "start_time", "end_time", "reasoning"},
}


@pytest.mark.parametrize("pack_name", SHIPPED)
def test_every_qa_example_is_format_only(pack_name: str) -> None:
    """A real 1.5B teacher returned a concrete example word for word (issue 23): every shipped QA example is
    placeholders, so nothing in it can end up as a fact about an unrelated video."""
    pack = load_pack(pack_name)
    for qa_type, expected in _EXAMPLE_FIELDS.items():
        for mode in ("anomaly", "normal"):
            key = qa_prompt_key(qa_type, mode)
            text = pack.text(key)
            assert "Example of the expected style" not in text, key
            example = text.split("Format-only example", 1)[1].split("Return a JSON object", 1)[0]
            fields = dict(re.findall(r"^(\w+): (.*)$", example, re.M))
            assert set(fields) == expected, (key, set(fields))
            for name, value in fields.items():
                if name == "answer" and qa_type == "bcq":
                    assert value in ('"Yes"', '"No"'), key
                    continue
                assert "<" in value and value.count("<") == value.count(">"), (key, name, value)
                # no concrete time (a digit outside the placeholders) a teacher could copy
                assert not re.search(r"\d", re.sub(r"<[^>]*>", "", value)), (key, name, value)


def test_render_requires_every_placeholder_value() -> None:
    pack = load_pack("general")
    values = _values("anomaly_description")
    del values["highlight_section"]
    with pytest.raises(PromptPackError, match="highlight_section"):
        pack.render("anomaly_description", **values)
    with pytest.raises(PromptPackError, match="no key 'no_such_key'"):
        pack.render("no_such_key")


def test_fingerprint_changes_only_for_edited_keys(tmp_path: Path) -> None:
    original = load_pack("general")
    folder = _copy_pack("general", tmp_path / "edited")
    target = folder / "anomaly_mcq.txt"
    target.write_text(target.read_text() + "\nAsk at least one question about the weather.\n")
    edited = load_pack(str(folder))

    assert original.fingerprint(["anomaly_mcq"]) != edited.fingerprint(["anomaly_mcq"])
    assert original.fingerprint(["anomaly_bcq", "normal_mcq"]) == edited.fingerprint(["normal_mcq", "anomaly_bcq"])
    assert original.fingerprint(["anomaly_mcq", "normal_mcq"]) != edited.fingerprint(["anomaly_mcq", "normal_mcq"])
    # stable, order- and duplicate-insensitive, and a sha256 hex digest
    again = load_pack("general").fingerprint(["normal_mcq", "anomaly_bcq", "anomaly_bcq"])
    assert again == original.fingerprint(["anomaly_bcq", "normal_mcq"])
    assert re.fullmatch(r"[0-9a-f]{64}", again)
    # a key's fingerprint is not the fingerprint of another key with the same text
    assert original.fingerprint(["scene_description"]) != original.fingerprint(["event_summary"])


def test_fingerprint_ignores_trailing_newlines_and_pack_name_but_not_structured_flag(tmp_path: Path) -> None:
    original = load_pack("general")
    folder = _copy_pack("general", tmp_path / "renamed")
    (folder / "video_filtering.txt").write_text((folder / "video_filtering.txt").read_text() + "\n\n")
    meta = yaml.safe_load((folder / "pack.yaml").read_text())
    meta["name"] = "my-copy"
    (folder / "pack.yaml").write_text(yaml.safe_dump(meta))
    renamed = load_pack(str(folder))
    assert renamed.name == "my-copy"
    assert renamed.fingerprint(PROMPT_KEYS) == original.fingerprint(PROMPT_KEYS)

    meta["structured_output"] = False
    (folder / "pack.yaml").write_text(yaml.safe_dump(meta))
    unstructured = load_pack(str(folder))
    assert unstructured.fingerprint(["video_filtering"]) != original.fingerprint(["video_filtering"])
    assert unstructured.schema("video_filtering") is None
    assert original.schema("video_filtering") is RelevanceVerdict


def test_folder_pack_errors_name_pack_key_and_placeholder(tmp_path: Path) -> None:
    folder = _copy_pack("general", tmp_path / "broken")
    (folder / "normal_bcq.txt").unlink()
    with pytest.raises(PromptPackError, match=r"'general'.*missing key 'normal_bcq'"):
        load_pack(str(folder))
    shutil.copy(prompts_root() / "general" / "normal_bcq.txt", folder / "normal_bcq.txt")

    good = (folder / "anomaly_mcq.txt").read_text()
    (folder / "anomaly_mcq.txt").write_text(good.replace("{video_length}", "{video_lenght}"))
    with pytest.raises(PromptPackError, match=r"'general' key 'anomaly_mcq' uses unknown placeholder \{video_lenght\}"):
        load_pack(str(folder))

    (folder / "anomaly_mcq.txt").write_text(good.replace("{step_2_output}", "(description omitted)"))
    with pytest.raises(PromptPackError, match=r"key 'anomaly_mcq' is missing required placeholder \{step_2_output\}"):
        load_pack(str(folder))

    (folder / "anomaly_mcq.txt").write_text(good)
    (folder / "anomaly_mcqq.txt").write_text("typo'd file name")
    with pytest.raises(PromptPackError, match="unknown key 'anomaly_mcqq'"):
        load_pack(str(folder))

    with pytest.raises(PromptPackError, match="unknown prompt pack 'no-such-pack'"):
        load_pack("no-such-pack")


def test_pack_folder_without_pack_yaml_defaults_to_free_text(tmp_path: Path) -> None:
    folder = _copy_pack("traffic", tmp_path / "bare")
    (folder / "pack.yaml").unlink()
    pack = load_pack(str(folder))
    assert pack.name == "bare"
    assert pack.structured_output is False
    assert pack.text("anomaly_mcq") == load_pack("traffic").text("anomaly_mcq")


TAO_MODULE = '''
"""My site's prompts, TAO style."""
PROMPT_TEMPLATES = {
    "video_filtering": "Is this a parking lot? Reply {{\\"ok\\": true}} or {{\\"ok\\": false}}.",
    "anomaly_mcq": (
        "Video of {video_length:.1f}s.\\n{global_caption}\\n{dense_caption}\\n{chunk_captions_str}\\n{step_2_output}\\n"
        "Return {{\\"items\\": []}}"
    ),
    "normal_mcq": "Length {video_length}. {global_caption}",
}
'''


def test_tao_module_loads_renders_and_fills_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site_prompts_ok.py").write_text(textwrap.dedent(TAO_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning) as record:
        pack = load_pack("traffic", prompts_module="site_prompts_ok")
    messages = " ".join(str(w.message) for w in record)
    assert "lacks keys" in messages and "'general'" in messages  # missing keys come from `general`, not `traffic`
    assert "normal_mcq" in messages and "{dense_caption}" in messages  # a TAO module may omit an input: warned
    assert pack.source == "module:site_prompts_ok"
    assert pack.structured_output is False
    assert set(pack.templates) == set(PROMPT_KEYS)

    assert pack.render("video_filtering") == 'Is this a parking lot? Reply {"ok": true} or {"ok": false}.'
    out = pack.render(
        "anomaly_mcq",
        video_length=12.345,
        global_caption="G",
        dense_caption="D",
        chunk_captions_str="C",
        step_2_output="S",
    )
    assert out == 'Video of 12.3s.\nG\nD\nC\nS\nReturn {"items": []}'
    assert pack.render("normal_mcq", video_length=9, global_caption="x {not a field}", dense_caption="") == (
        "Length 9. x {not a field}"
    )
    # keys filled from `general` render exactly like the general pack does (braces survive the escaping)
    general = load_pack("general")
    for key in ("anomaly_bcq", "highlight_timestamp_extraction", "scene_description"):
        assert pack.render(key, **_values(key)) == general.render(key, **_values(key))


def test_tao_module_errors_are_loud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PromptPackError, match="prompts_module 'no_such_prompts_mod' could not be imported"):
        load_pack(prompts_module="no_such_prompts_mod")
    (tmp_path / "site_prompts_bad.py").write_text('PROMPT_TEMPLATES = {"normal_mcq": "{video_length} {secret}"}\n')
    (tmp_path / "site_prompts_none.py").write_text("TEMPLATES = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with (
        pytest.raises(PromptPackError, match=r"key 'normal_mcq' uses unknown placeholder \{secret\}"),
        pytest.warns(UserWarning),
    ):
        load_pack(prompts_module="site_prompts_bad")
    with pytest.raises(PromptPackError, match="no PROMPT_TEMPLATES"):
        load_pack(prompts_module="site_prompts_none")


def test_template_pack_raises_until_filled(tmp_path: Path) -> None:
    template = load_pack("template")
    assert "[DOMAIN]" in template.markers() and "[EDGE_CASE_GUIDANCE]" in template.markers()
    for key in PROMPT_KEYS:
        with pytest.raises(TemplateNotFilledError, match="fill the template first"):
            template.render(key, **_values(key))

    values = TemplateValues.model_validate(yaml.safe_load((EXAMPLES / "traffic.yaml").read_text()))
    values.name = "traffic-copy"
    pack = fill_template(values, tmp_path / "traffic-copy")
    assert pack.name == "traffic-copy" and pack.markers() == []
    for key in PROMPT_KEYS:
        out = pack.render(key, **_values(key))
        assert not MARKER.search(out)
    assert "red-light" in pack.text("video_anomaly_classification") or "red light" in pack.text(
        "video_anomaly_classification"
    )


def test_fill_rejects_missing_or_unknown_markers(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLES / "warehouse.yaml").read_text())
    missing = TemplateValues.model_validate(
        {**raw, "markers": {k: v for k, v in raw["markers"].items() if k != "DOMAIN"}}
    )
    with pytest.raises(PromptPackError, match=r"lack marker\(s\) \['DOMAIN'\]"):
        fill_template(missing, tmp_path / "a")
    extra = TemplateValues.model_validate({**raw, "markers": {**raw["markers"], "DOMAIN_MOOD": "x"}})
    with pytest.raises(PromptPackError, match="DOMAIN_MOOD"):
        fill_template(extra, tmp_path / "b")
    sneaky = TemplateValues.model_validate({**raw, "markers": {**raw["markers"], "DOMAIN": "[TODO_LATER]"}})
    with pytest.raises(TemplateNotFilledError, match="TODO_LATER"):
        fill_template(sneaky, tmp_path / "c")


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_cli_fill_and_check_each_example(example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "filled"
    assert main(["fill", "--values", str(EXAMPLES / example), "--out", str(out_dir)]) == 0
    assert main(["check", str(out_dir)]) == 0
    assert "ready: no template markers left" in capsys.readouterr().out
    assert main(["check", "template"]) == 1
    assert "NOT READY" in capsys.readouterr().out


def test_qa_prompt_key_mapping() -> None:
    for qa_type in ALL_QA_TYPES:
        for mode in ("anomaly", "normal"):
            key = qa_prompt_key(qa_type, mode)
            assert key in PROMPT_KEYS
            if qa_type in ("scene_description", "event_summary"):
                assert key == qa_type
            else:
                assert key == f"{mode}_{qa_type}"
    with pytest.raises(ValueError, match="unknown qa type"):
        qa_prompt_key("trivia", "normal")
    with pytest.raises(ValueError, match="mode"):
        qa_prompt_key("mcq", "auto")


def test_schema_for_key_mapping() -> None:
    expected = {
        "video_filtering": RelevanceVerdict,
        "video_anomaly_classification": AnomalyVerdict,
        "highlight_timestamp_extraction": AnomalyTime,
        "anomaly_mcq": MultipleChoiceSet,
        "normal_mcq": MultipleChoiceSet,
        "anomaly_bcq": YesNoSet,
        "normal_bcq": YesNoSet,
        "anomaly_temporal_localization": TimeSpanSet,
        "normal_temporal_localization": TimeSpanSet,
        "anomaly_open_qa": OpenQASet,
        "normal_causal_linkage": OpenQASet,
        "anomaly_temporal_event_desc": OpenQASet,
        "scene_description": OpenQASet,
        "event_summary": OpenQASet,
    }
    for key in PROMPT_KEYS:
        want = expected.get(key)
        if want is None and "caption" not in key and "description" not in key:
            want = OpenQASet
        assert schema_for_key(key) is want, key
    for key in ("anomaly_global_caption", "normal_chunk_caption", "highlight_chunk_caption", "normal_description"):
        assert schema_for_key(key) is None
    with pytest.raises(ValueError):
        schema_for_key("nope")


def test_pack_model_round_trips() -> None:
    pack = load_pack("warehouse")
    clone = PromptPack.model_validate_json(pack.model_dump_json())
    assert clone.fingerprint(PROMPT_KEYS) == pack.fingerprint(PROMPT_KEYS)
    assert clone.render("normal_chunk_caption", chunk_duration=10) == pack.render(
        "normal_chunk_caption", chunk_duration=10
    )
