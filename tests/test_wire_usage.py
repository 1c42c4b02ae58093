"""The fakes' wire usage log: what any client's requests cost, counted by the media's duration."""

from __future__ import annotations

import subprocess
from pathlib import Path

from google import genai
from google.genai import types

from vr_assets.fakes import FakeGemini
from vr_assets.fakes.usage_log import UsageLog

MODEL = "gemini-2.5-flash"


def _clip(path: Path) -> Path:
    """4 s of video with a sine tone (so it has an audio track)."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10", "-f", "lavfi", "-i", "sine=frequency=440",
                    "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    str(path)], check=True)  # fmt: skip
    return path


def test_usage_log_counts_video_by_duration_resolution_and_audio(tmp_path: Path) -> None:
    log_path = tmp_path / "wire.jsonl"
    clip = _clip(tmp_path / "clip.mp4")
    fake = FakeGemini(usage_log=log_path, video_tokens="duration", processing_polls=0).start()
    try:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=fake.base_url,
                                                                          api_version="v1beta"))
        # inline, seconds 1-3 at 2 fps, low resolution: 4 frames x 66 + 2 s x 32 audio
        part = types.Part(inline_data=types.Blob(data=clip.read_bytes(), mime_type="video/mp4"),
                          video_metadata=types.VideoMetadata(start_offset="1s", end_offset="3s", fps=2))
        low = types.GenerateContentConfig(media_resolution=types.MediaResolution.MEDIA_RESOLUTION_LOW)
        r = client.models.generate_content(model=MODEL, contents=[part, "Describe."], config=low)
        assert r.usage_metadata is not None
        assert r.usage_metadata.prompt_token_count == len("Describe.") // 4 + 4 * 66 + 2 * 32
        # uploaded once, cached explicitly, read by one call at the default resolution: 4 frames x 258 + 4 s x 32
        f = client.files.upload(file=clip, config=types.UploadFileConfig(mime_type="video/mp4"))
        cache = client.caches.create(model=MODEL, config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[types.Part.from_uri(file_uri=f.uri, mime_type="video/mp4")])],
            ttl="600s"))
        r2 = client.models.generate_content(model=MODEL, contents="Summarize.",
                                            config=types.GenerateContentConfig(cached_content=cache.name))
        client.caches.delete(name=cache.name)
    finally:
        fake.stop()
    assert r2.usage_metadata is not None and r2.usage_metadata.cached_content_token_count == 4 * 258 + 4 * 32
    entries = UsageLog.read(log_path)
    assert [e.kind for e in entries] == ["generate", "upload", "cache_create", "generate", "cache_delete"]
    first, _, made, read, gone = entries
    assert first.by_modality == {"TEXT": 2, "VIDEO": 4 * 66, "AUDIO": 64} and first.parts[0].seconds == 2.0
    assert made.prompt_tokens == 4 * 258 + 128 and made.ttl_s == 600.0
    assert read.cached_tokens == made.prompt_tokens and read.parts[0].from_cache and gone.lived_s is not None
    # the facts are kept, so the log can be recounted as another model (Gemini 3 low: 70 per frame)
    assert first.parts[0].recount("gemini-3-flash") == (4 * 70, 64)
    assert first.parts[0].recount(MODEL, resolution=None, audio=False) == (4 * 258, 0)
