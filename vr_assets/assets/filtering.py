"""Step 0: probe the video, keep it or stop it here, decide anomaly vs normal.

What the probe alone decides (too long, too short to chunk; unreadable files fail in the probe) is decided
before the first model call, so such a video costs nothing.
"""


from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, Failure, MetadataValue, Output, asset

from vr_assets.assets.common import (
    OFFLINE_NOTE,
    Pipeline,
    data_version_of,
    drop_media_cache,
    excerpt,
    full_video_media,
    media_failure,
    run_calls,
    usage_metadata,
)
from vr_assets.fsnames import printable
from vr_assets.media import MIN_CHUNK_SEC, MediaError, check_unchanged
from vr_assets.media_cache import audio_version, code_version, one_upload_per_video
from vr_assets.partitions import videos_partitions
from vr_assets.records import FilterResult
from vr_assets.resources import MediaResource, TeacherResource
from vr_assets.whole_video import (
    SCREENING_KEYS,
    ScreeningError,
    asks_relevance,
    known_mode,
    one_request_per_step,
    probe_stop_reason,
    screen,
    whole_video_requests_version,
)


def build(pipe: Pipeline) -> AssetsDefinition:
    spec = pipe.spec
    wf = spec.workflow
    run_filter = asks_relevance(spec)
    version = code_version(
        "filter_result/1", pipe.pack.fingerprint(SCREENING_KEYS), spec.vlm.backend, spec.vlm.model_name,
        spec.vlm.gemini.temperature if spec.vlm.backend == "gemini" else spec.vlm.openai.temperature,
        wf.mode, run_filter, wf.max_video_length_sec, wf.long_video_threshold_sec, wf.long_video_sample_fps,
        wf.long_video_max_frames, spec.media.max_side, spec.media.fps, one_upload_per_video(spec),
        audio_version(spec), MIN_CHUNK_SEC,  # the sound the model hears; the probe's too-short stop
        *whole_video_requests_version(spec, pipe.pack),
    )

    @asset(
        name="filter_result",
        partitions_def=videos_partitions,
        group_name="step_0_filter",
        code_version=version,
        kinds={"python", "ffmpeg", spec.vlm.backend},
        owners=["team:video-data"],
        pool="vlm",
        description="Step 0. Probes the video once, asks the VLM whether it belongs to the domain and, in auto mode, "
        "whether it shows an anomaly. A video that is off-domain, too long or too short to chunk stops here (not "
        "a failure); what the probe decides (length) is decided before any model call.",
    )
    def filter_result(
        context: AssetExecutionContext, vlm: TeacherResource, media: MediaResource
    ) -> Output[FilterResult]:
        key = context.partition_key
        video = pipe.video(key)
        tool = media.tool()
        try:
            probe = tool.probe(Path(video.path))
        except (MediaError, OSError) as e:
            raise media_failure(video, e) from e
        mode, mode_source = known_mode(spec, video.mode)
        result: FilterResult
        if (stop := probe_stop_reason(spec, probe)) is not None:  # what the probe decides costs no call
            result = FilterResult(
                video=video, probe=probe, proceed=False, mode=mode or "normal", mode_source=mode_source,
                stop_reason=stop,
            )
        else:
            model = vlm.client(spec)
            ref = full_video_media(pipe, video, probe, tool)
            try:
                asked = screen(
                    pipe.pack, lambda calls, step: run_calls(model, calls, key, step), key, ref,
                    ask_relevance=run_filter, mode=mode, one_request=one_request_per_step(spec, pipe.pack),
                )
            except ScreeningError as e:
                raise Failure(description=str(e)) from None
            try:  # answers about the version probed, or none: a source sent as it is was read again by the call
                check_unchanged(video.path, probe, "screen")
            except MediaError as e:
                raise media_failure(video, e) from e
            if asked.is_valid is False:
                model.discard(key)  # no later step looks at it: its upload goes now
            result = FilterResult(
                video=video, probe=probe, proceed=asked.is_valid is not False, is_valid=asked.is_valid,
                stop_reason="" if asked.is_valid is not False
                else f"not relevant to the domain: {excerpt(asked.reason, 200)}",
                relevance_reason=asked.reason, raw_response=asked.raw, mode=asked.label or mode or "normal",
                mode_source=mode_source, classification_raw=asked.class_raw, usage=asked.usage,
            )
        decision = "proceed" if result.proceed else f"stopped: {result.stop_reason}"
        preview = (
            f"**Decision:** {decision}\n\n**Mode:** {result.mode} (from {result.mode_source})\n\n"
            f"**Duration:** {probe.duration_sec:.1f} s, {probe.width}x{probe.height}, {probe.video_codec}\n\n"
            + (f"**Relevance reason:** {excerpt(result.relevance_reason)}\n\n" if result.relevance_reason else "")
            + (f"_{OFFLINE_NOTE}_\n" if pipe.offline_teacher else "")
        )
        if not result.proceed:
            context.log.info(f"video {key} stops at step 0: {result.stop_reason}")
            drop_media_cache(pipe, key)
        return Output(
            result,
            data_version=data_version_of(result),
            metadata={
                "decision": decision,
                "mode": result.mode,
                "duration_s": MetadataValue.float(probe.duration_sec),
                "video": MetadataValue.path(printable(video.path)),
                "preview": MetadataValue.md(preview),
                **usage_metadata(result.usage),
            },
        )

    return filter_result
