"""Step 3: one LLM call per configured question type, parsed into QA items."""

from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetsDefinition, Failure, MetadataValue, Output, asset

from vr_assets.assets.common import (
    BatchWait,
    Pipeline,
    data_version_of,
    end_for_batch,
    excerpt,
    md_escape,
    run_calls,
    usage_metadata,
)
from vr_assets.media_cache import code_version
from vr_assets.parsing import parse_qa
from vr_assets.partitions import videos_partitions
from vr_assets.prompt_inputs import caption_values, chunk_captions_str
from vr_assets.prompts import qa_prompt_key
from vr_assets.records import Captions, ChunkCaptions, Description, QAItem, QAResult
from vr_assets.resources import TeacherResource


def qa_keys(qa_types: list[str]) -> list[str]:
    return sorted({qa_prompt_key(t, m) for t in qa_types for m in ("anomaly", "normal")})


def build(pipe: Pipeline) -> AssetsDefinition:
    spec = pipe.spec
    qa_types = spec.workflow.qa_types

    @asset(
        name="qa",
        partitions_def=videos_partitions,
        group_name="step_3_qa",
        code_version=code_version("qa/1", pipe.pack.fingerprint(qa_keys(qa_types)), qa_types, spec.llm.backend,
                                  spec.llm.model_name, spec.llm.gemini.temperature, spec.llm.openai.temperature,
                                  pipe.pack.structured_output),
        kinds={"python", spec.llm.backend},
        owners=["team:video-data"],
        pool="llm",
        output_required=False,  # on the batch tier a run may end before the answers are in
        description="Step 3. Question/answer pairs with step-by-step reasoning, one LLM call per question type "
        "(mcq, bcq, open_qa, causal_linkage, temporal_localization, temporal_event_desc, scene_description, "
        "event_summary), all sent at once.",
    )
    def qa(
        context: AssetExecutionContext,
        captions: Captions,
        chunk_captions: ChunkCaptions,
        description: Description,
        llm: TeacherResource,
    ) -> Iterator[Output[QAResult]]:
        key = context.partition_key
        values = caption_values(captions)
        values["chunk_captions_str"] = chunk_captions_str(chunk_captions.chunks)
        values["step_2_output"] = description.detailed_description
        keyed = [(t, qa_prompt_key(t, captions.mode)) for t in qa_types]
        calls = [pipe.call("3", k, key, None, **values) for _, k in keyed]
        try:
            answers = run_calls(llm.client(spec), calls, key, "3")
        except BatchWait as wait:
            end_for_batch(context, "qa", wait)
            return
        items, raw, failures = [], {}, {}
        for (qa_type, prompt_key), ans in zip(keyed, answers, strict=True):
            raw[prompt_key] = ans.text
            parsed = parse_qa(ans.text, qa_type, prompt_key)
            if not parsed:
                failures[prompt_key] = f"no question could be read from the answer: {excerpt(ans.text, 200)!r}"
            items.extend(parsed)
        if failures and len(failures) == len(keyed):
            raise Failure(description=f"video {key}: step 3: no QA item could be parsed from any answer: "
                          + "; ".join(f"{k}: {v}" for k, v in failures.items()))
        for k, why in failures.items():
            context.log.warning(f"video {key}: step 3: {k}: {why}")
        result = QAResult(video_key=key, raw=raw, items=items, parse_failures=failures,
                          usage=[a.usage for a in answers])
        per_type: dict[str, int] = {}
        for it in items:
            per_type[it.qa_type] = per_type.get(it.qa_type, 0) + 1
        def shown(it: QAItem) -> str:
            options = " ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(it.options))
            return md_escape(excerpt(f"{it.question} {options}".strip(), 220))

        sample = "\n".join(
            f"| {it.qa_type} | {shown(it)} | {md_escape(excerpt(it.answer, 80))} |"
            for it in items[:: max(1, len(items) // 6)][:6]
        )
        preview = "| type | question | answer |\n|---|---|---|\n" + sample
        yield Output(
            result,
            data_version=data_version_of(result),
            metadata={"items": len(items), "items_per_type": MetadataValue.json(per_type),
                      "parse_failures": len(failures), "preview": MetadataValue.md(preview),
                      **usage_metadata(result.usage)},
        )

    return qa
