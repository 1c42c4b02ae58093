"""Step 2: the LLM merges every caption into one structured description of the video."""


from collections.abc import Iterator

from dagster import AssetExecutionContext, AssetsDefinition, MetadataValue, Output, asset

from vr_assets.assets.common import (
    BatchWait,
    Pipeline,
    data_version_of,
    end_for_batch,
    excerpt,
    run_calls,
    usage_metadata,
)
from vr_assets.media_cache import code_version
from vr_assets.partitions import videos_partitions
from vr_assets.prompt_inputs import caption_values, chunk_captions_str, dense_section, highlight_section
from vr_assets.records import Captions, ChunkCaptions, Description, Highlight
from vr_assets.resources import TeacherResource

KEYS = ("anomaly_description", "normal_description")


def build(pipe: Pipeline) -> AssetsDefinition:
    spec = pipe.spec

    @asset(
        name="description",
        partitions_def=videos_partitions,
        group_name="step_2_description",
        code_version=code_version("description/1", pipe.pack.fingerprint(KEYS), spec.llm.backend,
                                  spec.llm.model_name, spec.llm.gemini.temperature, spec.llm.openai.temperature),
        kinds={"python", spec.llm.backend},
        owners=["team:video-data"],
        pool="llm",
        output_required=False,  # on the batch tier a run may end before the answer is in
        description="Step 2. A detailed, structured description written by the LLM from the global, dense, chunk "
        "and highlight captions; the QA step builds on it.",
    )
    def description(
        context: AssetExecutionContext,
        captions: Captions,
        chunk_captions: ChunkCaptions,
        highlight: Highlight,
        llm: TeacherResource,
    ) -> Iterator[Output[Description]]:
        key = context.partition_key
        prompt_key = f"{captions.mode}_description"
        values = caption_values(captions)
        values.pop("dense_caption")
        values["dense_section"] = dense_section(captions.dense_caption)
        values["chunk_captions_str"] = chunk_captions_str(chunk_captions.chunks)
        if captions.mode == "anomaly":
            values["highlight_section"] = highlight_section(highlight)
        try:
            (ans,) = run_calls(llm.client(spec), [pipe.call("2", prompt_key, key, None, **values)], key, "2")
        except BatchWait as wait:
            end_for_batch(context, "description", wait)
            return
        result = Description(video_key=key, prompt_key=prompt_key, detailed_description=ans.text, usage=[ans.usage])
        yield Output(
            result,
            data_version=data_version_of(result),
            metadata={"prompt_key": prompt_key, "words": len(ans.text.split()),
                      "preview": MetadataValue.md(excerpt(ans.text, 1500)), **usage_metadata(result.usage)},
        )

    return description
