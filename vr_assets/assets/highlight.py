"""Step 1c: for anomaly videos, find the moment of the anomaly and caption a clip around it."""


from collections.abc import Iterator
from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, Failure, MetadataValue, Output, asset

from vr_assets.assets.common import (
    Pipeline,
    data_version_of,
    drop_media_cache,
    excerpt,
    full_video_media,
    media_failure,
    prepared_copy,
    run_calls,
    usage_metadata,
)
from vr_assets.checks import HIGHLIGHT_SPECS, check_highlight
from vr_assets.media import MediaError, check_unchanged, highlight_window, video_mime, video_workdir
from vr_assets.media_cache import audio_version, code_version, one_upload_per_video
from vr_assets.parsing import parse_timestamp
from vr_assets.partitions import videos_partitions
from vr_assets.prompt_inputs import chunk_captions_str, fmt_seconds
from vr_assets.providers import MediaRef
from vr_assets.records import AnomalyTime, Captions, ChunkCaptions, Highlight, HighlightChunk
from vr_assets.resources import MediaResource, TeacherResource

KEYS = ("highlight_timestamp_extraction", "highlight_chunk_caption")


def build(pipe: Pipeline) -> AssetsDefinition:
    spec = pipe.spec
    wf = spec.workflow
    enabled = "1c" in wf.steps or wf.mode == "auto"

    @asset(
        name="highlight",
        partitions_def=videos_partitions,
        group_name="step_1c_highlight",
        code_version=code_version(
            "highlight/1", pipe.pack.fingerprint(KEYS), enabled, spec.llm.backend, spec.llm.model_name,
            spec.vlm.backend, spec.vlm.model_name, wf.highlight_before_sec, wf.highlight_after_sec,
            spec.media.max_side, spec.media.fps, one_upload_per_video(spec), audio_version(spec),
        ),
        kinds={"python", "ffmpeg", spec.llm.backend},
        owners=["team:video-data"],
        pool="llm",
        check_specs=HIGHLIGHT_SPECS,
        description="Step 1c. Anomaly videos only: the LLM reads the captions and names the anomaly's time, then the "
        "VLM captions a clip around it. Normal videos record 'not applicable' without any model call.",
    )
    def highlight(
        context: AssetExecutionContext,
        captions: Captions,
        chunk_captions: ChunkCaptions,
        llm: TeacherResource,
        vlm: TeacherResource,
        media: MediaResource,
    ) -> Iterator[object]:
        try:
            out = _highlight(context, captions, chunk_captions, llm, vlm, media)
        finally:
            drop_media_cache(pipe, context.partition_key)  # an anomaly video's copy was kept for the clip
        if captions.mode == "anomaly":  # the video's last look: its upload goes (kept after a failure)
            vlm.client(spec).discard(context.partition_key)
        yield out
        for outcome in check_highlight(out.value, captions.probe.duration_sec):
            yield outcome.result("highlight")

    def _highlight(
        context: AssetExecutionContext,
        captions: Captions,
        chunk_captions: ChunkCaptions,
        llm: TeacherResource,
        vlm: TeacherResource,
        media: MediaResource,
    ) -> Output[Highlight]:
        key = context.partition_key
        video, duration = captions.video, captions.probe.duration_sec
        if captions.mode != "anomaly" or not enabled:
            note = "not applicable: normal video" if enabled else "step 1c disabled in workflow.steps"
            result = Highlight(video_key=key, applicable=False, note=note)
            return Output(result, data_version=data_version_of(result),
                          metadata={"applicable": False, "note": note, **usage_metadata([])})
        text_model = llm.client(spec)
        (t_ans,) = run_calls(
            text_model,
            [pipe.call("1c", "highlight_timestamp_extraction", key, None,
                       global_caption=captions.global_caption, dense_caption=captions.dense_caption,
                       chunk_captions_str=chunk_captions_str(chunk_captions.chunks))],
            key, "1c (timestamp)",
        )
        usage = [t_ans.usage]
        if isinstance(t_ans.parsed, AnomalyTime):
            t = t_ans.parsed.anomaly_time_sec if t_ans.parsed.found else None
        else:
            t = parse_timestamp(t_ans.text)
        if t is None:
            result = Highlight(video_key=key, applicable=True, note="the model found no anomaly time", usage=usage)
            return Output(result, data_version=data_version_of(result),
                          metadata={"applicable": True, "note": result.note, **usage_metadata(usage)})
        if not 0 <= t <= duration:
            context.log.warning(f"video {key}: anomaly time {t:.1f}s outside 0-{duration:.1f}s; clamped")
            t = min(max(t, 0.0), duration)
        start, end = highlight_window(t, duration, wf.highlight_before_sec, wf.highlight_after_sec)
        vision = vlm.client(spec)
        with video_workdir(Path(spec.results_dir) / "cache" / "work", f"{key}-highlight") as work:
            tool = media.tool()
            if vision.clips_in_place:  # a time range of the copy step 0 uploaded: nothing cut or sent
                whole = full_video_media(pipe, video, captions.probe, tool)
                ref = whole.between(start, end)
            else:
                try:
                    # step 0's small 2 fps copy when it is still there: far less to decode than the source
                    src = prepared_copy(pipe, video, captions.probe, tool) or Path(video.path)
                    if src == Path(video.path):
                        check_unchanged(src, captions.probe, "cut clip")  # the version the earlier steps saw
                    clip = tool.cut_clip(src, start, end, work / "highlight.mp4")
                except (MediaError, OSError) as e:
                    raise media_failure(video, e) from e
                ref = MediaRef(kind="video", paths=[clip], mime_type=video_mime(clip), video_key=key)
            (c_ans,) = run_calls(
                vision,
                [pipe.call("1c", "highlight_chunk_caption", key, ref, anomaly_time=fmt_seconds(t),
                           start_time=fmt_seconds(start), end_time=fmt_seconds(end),
                           duration=fmt_seconds(end - start))],
                key, "1c (clip caption)",
            )
            vision.release(key)
        if not c_ans.text.strip():
            raise Failure(description=f"video {key}: step 1c: empty highlight caption")
        usage.append(c_ans.usage)
        result = Highlight(
            video_key=key, applicable=True,
            highlight_chunk=HighlightChunk(anomaly_timestamp_sec=t, timestamp_start=start, timestamp_end=end,
                                           caption=c_ans.text),
            usage=usage,
        )
        preview = (f"**Anomaly at** {t:.1f} s · clip {start:.1f}–{end:.1f} s of {duration:.1f} s\n\n"
                   f"**Clip caption:** {excerpt(c_ans.text, 600)}")
        return Output(
            result,
            data_version=data_version_of(result),
            metadata={"applicable": True, "anomaly_time_s": MetadataValue.float(t),
                      "window": f"{start:.1f}-{end:.1f} s", "preview": MetadataValue.md(preview),
                      **usage_metadata(usage)},
        )

    return highlight
