"""Steps 1a and 1b: the VLM captions the whole video, then each chunk of it."""


from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetsDefinition,
    Failure,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from vr_assets.assets.common import (
    OFFLINE_NOTE,
    Pipeline,
    data_version_of,
    drop_frames,
    drop_media_cache,
    excerpt,
    full_video_media,
    md_escape,
    media_failure,
    prepared_copy,
    run_calls,
    usage_metadata,
)
from vr_assets.call_cache import CachedModel
from vr_assets.checks import CAPTION_SPECS, CHUNK_SPECS, check_captions, check_chunks
from vr_assets.fsnames import printable
from vr_assets.media import MediaError, MediaTool, check_unchanged, video_mime, video_workdir
from vr_assets.media_cache import audio_version, chunk_plan, code_version, one_upload_per_video
from vr_assets.partitions import videos_partitions
from vr_assets.providers import MediaRef, ModelAnswer
from vr_assets.records import Captions, ChunkCaption, ChunkCaptions, FilterResult
from vr_assets.resources import MediaResource, TeacherResource
from vr_assets.storage import DiskFullError
from vr_assets.whole_video import (
    CAPTION_KEYS,
    caption_calls,
    caption_texts,
    one_request_per_step,
    whole_video_requests_version,
)

CHUNK_KEYS = ("anomaly_chunk_caption", "normal_chunk_caption")


def build(pipe: Pipeline) -> list[AssetsDefinition | AssetChecksDefinition]:
    spec = pipe.spec
    wf = spec.workflow
    vlm_id = (spec.vlm.backend, spec.vlm.model_name, spec.vlm.gemini.temperature, spec.vlm.openai.temperature,
              spec.vlm.gemini.media_resolution)

    @asset(
        name="captions",
        partitions_def=videos_partitions,
        group_name="step_1_captions",
        code_version=code_version(
            "captions/1", pipe.pack.fingerprint(CAPTION_KEYS), vlm_id, wf.long_video_threshold_sec,
            wf.long_video_sample_fps, wf.long_video_max_frames, spec.media.max_side, spec.media.fps,
            one_upload_per_video(spec), audio_version(spec), *whole_video_requests_version(spec, pipe.pack),
        ),
        kinds={"python", spec.vlm.backend},
        owners=["team:video-data"],
        pool="vlm",
        output_required=False,
        description="Step 1a. A global narrative caption and a dense, timestamped caption of the whole video, in "
        "the wording of its mode (anomaly or normal). Long videos are sent as sampled frames.",
    )
    def captions(
        context: AssetExecutionContext, filter_result: FilterResult, vlm: TeacherResource, media: MediaResource
    ) -> Iterator[object]:
        key = context.partition_key
        if not filter_result.proceed:
            context.log.info(f"video {key}: not captioned, stopped at step 0 ({filter_result.stop_reason})")
            return
        video, probe, mode = filter_result.video, filter_result.probe, filter_result.mode
        model = vlm.client(spec)
        ref = full_video_media(pipe, video, probe, media.tool())
        calls = caption_calls(pipe.pack, mode, key, ref, one_request=one_request_per_step(spec, pipe.pack))
        answers = run_calls(model, calls, key, "1a")
        try:
            global_caption, dense_caption = caption_texts(key, answers)
        except ValueError as e:
            raise Failure(description=str(e)) from None
        # Steps 0 and 1a are the last users of the whole video, unless chunks are time ranges of its
        # upload: free its payloads and frames now (the copy stays for step 1b to cut chunks from).
        if not model.clips_in_place:
            model.release(key)
        if ref.kind == "frames":
            drop_frames(pipe, ref)
        result = Captions(
            video=video, probe=probe, mode=mode, global_caption=global_caption, dense_caption=dense_caption,
            media_kind=ref.kind, usage=[a.usage for a in answers],
        )
        preview = (
            f"**Mode:** {mode} · sent as {ref.kind} ({len(ref.paths)} file(s))\n\n"
            f"**Global caption:** {excerpt(global_caption, 600)}\n\n**Dense caption:** {excerpt(dense_caption, 600)}\n"
            + (f"\n_{OFFLINE_NOTE}_\n" if pipe.offline_teacher else "")
        )
        yield Output(
            result,
            data_version=data_version_of(result),
            metadata={"preview": MetadataValue.md(preview), "mode": mode, "media_kind": ref.kind,
                      **usage_metadata(result.usage)},
        )

    @asset(
        name="chunk_captions",
        partitions_def=videos_partitions,
        group_name="step_1_captions",
        code_version=code_version(
            "chunk_captions/1", pipe.pack.fingerprint(CHUNK_KEYS), vlm_id, wf.chunk_duration_options, wf.max_chunks,
            spec.media.max_side, spec.media.fps, one_upload_per_video(spec), audio_version(spec),
        ),
        kinds={"python", "ffmpeg", spec.vlm.backend},
        owners=["team:video-data"],
        pool="vlm",
        check_specs=CHUNK_SPECS,
        description="Step 1b. The video in equal chunks, each captioned by the VLM, all chunks at once. Gemini "
        "with uploads gets each chunk as a time range of the copy step 0 uploaded; otherwise chunks are "
        "stream-copied from step 0's downscaled copy (else one ffmpeg pass over the source).",
    )
    def chunk_captions(
        context: AssetExecutionContext, captions: Captions, vlm: TeacherResource, media: MediaResource
    ) -> Iterator[object]:
        key = context.partition_key
        video, duration = captions.video, captions.probe.duration_sec
        chunk_len, plan = chunk_plan(spec, duration)
        if not plan:
            raise Failure(description=f"video {key} ({printable(video.path)}): too short to chunk ({duration:.2f} s)")
        model = vlm.client(spec)
        tool = media.tool()
        if model.clips_in_place:
            answers, cut_from = _chunks_in_place(model, captions, plan, tool), "time ranges of the uploaded copy"
        else:
            answers, cut_from = _cut_chunks(context, model, captions, plan, tool)
        chunks = [
            ChunkCaption(chunk_index=i, timestamp_start=start, timestamp_end=end, caption=a.text)
            for (i, start, end), a in zip(plan, answers, strict=True)
        ]
        result = ChunkCaptions(
            video_key=key, chunk_duration=chunk_len, chunks=chunks, usage=[a.usage for a in answers]
        )
        table = "| # | start | end | caption |\n|---|---|---|---|\n" + "\n".join(
            f"| {c.chunk_index} | {c.timestamp_start:.1f} | {c.timestamp_end:.1f} "
            f"| {md_escape(excerpt(c.caption, 160))} |"
            for c in chunks
        )
        yield Output(
            result,
            data_version=data_version_of(result),
            metadata={"chunks": len(chunks), "chunk_duration_s": MetadataValue.float(chunk_len), "cut_from": cut_from,
                      "preview": MetadataValue.md(table), **usage_metadata(result.usage)},
        )
        for outcome in check_chunks(result, duration):
            yield outcome.result("chunk_captions")

    def _chunks_in_place(
        model: CachedModel, captions: Captions, plan: list[tuple[int, float, float]], tool: MediaTool
    ) -> list[ModelAnswer]:
        """Each chunk a time range of the whole video's upload: nothing cut, nothing more sent."""
        key = captions.video.key
        whole = full_video_media(pipe, captions.video, captions.probe, tool)
        calls = [
            pipe.call(
                "1b", f"{captions.mode}_chunk_caption", key,
                whole.between(start, end),
                chunk_duration=f"{end - start:.1f}",
            )
            for _, start, end in plan
        ]
        answers = run_calls(model, calls, key, "1b")
        if captions.mode != "anomaly":  # else step 1c points at a range of it too, then lets it go
            model.discard(key)  # after a failure it stays registered: the retry sends nothing again
            drop_media_cache(pipe, key)
        return answers

    def _cut_chunks(
        context: AssetExecutionContext, model: CachedModel, captions: Captions, plan: list[tuple[int, float, float]],
        tool: MediaTool,
    ) -> tuple[list[ModelAnswer], str]:
        key, video = captions.video.key, captions.video
        with video_workdir(Path(spec.results_dir) / "cache" / "work", key) as work:
            clips = None
            copy = prepared_copy(pipe, video, captions.probe, tool)
            if copy is not None:
                try:
                    clips = tool.split_copy(copy, plan, work / "copied")
                except DiskFullError as e:  # cutting the source needs the same space
                    raise media_failure(video, e) from e
                except (MediaError, OSError) as e:
                    context.log.warning(f"video {key}: chunks from the prepared copy failed ({e}); cutting the source")
            cut_from = "prepared copy, stream copy" if clips is not None else "source, one re-encoding pass"
            try:
                if clips is None:
                    check_unchanged(video.path, captions.probe, "cut chunks")  # the version steps 0 and 1a saw
                    clips = tool.cut_chunks(Path(video.path), plan, work)
            except (MediaError, OSError) as e:
                raise media_failure(video, e) from e
            finally:
                if captions.mode != "anomaly":  # else step 1c cuts its clip from the copy, then frees it
                    drop_media_cache(pipe, key)
            calls = [
                pipe.call(
                    "1b", f"{captions.mode}_chunk_caption", key,
                    MediaRef(kind="video", paths=[clip], mime_type=video_mime(clip), video_key=key),
                    chunk_duration=f"{end - start:.1f}",
                )
                for (_, start, end), clip in zip(plan, clips, strict=True)
            ]
            answers = run_calls(model, calls, key, "1b")
            model.release(key)
        return answers, cut_from

    # A separate check step (not check_specs): captions is optional output, and a video that
    # stops at step 0 has nothing to check; this step is then skipped with it.
    @asset_check(asset=captions, name="captions_usable", blocking=False,
                 description=CAPTION_SPECS[0].description)
    def captions_usable(captions: Captions) -> AssetCheckResult:
        (outcome,) = check_captions(captions)
        return outcome.result("captions")

    return [captions, chunk_captions, captions_usable]
