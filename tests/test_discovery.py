"""Discovery, partition keys, the registry, the new-video sensor, and spec loading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context, instance_for_test

from vr_assets.config import SpecError, load_spec, parse_spec
from vr_assets.discovery import discover, partition_key_for
from vr_assets.graph import build_definitions
from vr_assets.registry import VideoRegistry

REPO = Path(__file__).resolve().parent.parent


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_partition_keys_are_readable_valid_and_unique() -> None:
    assert partition_key_for("site_a/cam1/clip.mp4") == "site_a__cam1__clip.mp4"
    assert partition_key_for("clip.mp4") == "clip.mp4"
    odd = partition_key_for("a b/c...d,[e].mp4")
    assert "..." not in odd and "/" not in odd and " " not in odd
    assert odd != partition_key_for("a_b/c.d_e_.mp4")  # lossy names carry a path hash
    long = partition_key_for("x" * 300 + ".mp4")
    assert len(long) <= 120


def test_discovery_merges_root_and_jsonl(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    touch(root / "a" / "clip.mp4")
    touch(root / "b" / "clip.MP4")
    touch(root / "c" / "x.MKV")
    touch(root / "notes.txt")
    outside = touch(tmp_path / "extra" / "y.avi")
    jl = tmp_path / "in.jsonl"
    jl.write_text(
        "\n".join([
            json.dumps({"video_path": "a/clip.mp4", "mode": "anomaly", "camera": 7, "keep": True}),
            json.dumps({"video": str(outside), "keep": True}),
            json.dumps({"video": "c/x.MKV", "keep": False}),
            "not json",
            json.dumps({"nothing": 1}),
        ])
    )
    spec = parse_spec({"data": {"video_root": str(root), "input_jsonl_files": [str(jl)], "filter_field": "keep"}},
                      "t", tmp_path)
    found = {v.key: v for v in discover(spec)}
    assert set(found) == {"a__clip.mp4", "b__clip.MP4", "c__x.MKV", "extra__y.avi"}
    a = found["a__clip.mp4"]
    assert a.mode == "anomaly" and a.extra == {"camera": 7, "keep": True} and a.source == str(jl)
    assert found["c__x.MKV"].source == "video_root"  # filtered out of the JSONL, still under video_root
    assert found["extra__y.avi"].path == str(outside.resolve())


def test_registry_keeps_keys_stable(tmp_path: Path) -> None:
    root = tmp_path / "v"
    touch(root / "one.mp4")
    spec = parse_spec({"data": {"video_root": str(root)}, "results_dir": str(tmp_path / "r")}, "t", tmp_path)
    reg = VideoRegistry(spec.results_dir)
    videos, new = reg.sync(discover(spec))
    assert new == ["one.mp4"]
    touch(root / "two.mp4")
    videos, new = reg.sync(discover(spec))
    assert new == ["two.mp4"] and set(videos) == {"one.mp4", "two.mp4"}
    assert reg.get("one.mp4").path == str((root / "one.mp4").resolve())
    with pytest.raises(KeyError, match="not in the registry"):
        reg.get("missing.mp4")


def test_sensor_adds_partitions_and_requests_runs_only_for_new_videos(tmp_path: Path) -> None:
    root = tmp_path / "v"
    touch(root / "one.mp4")
    spec = parse_spec({"data": {"video_root": str(root)}, "results_dir": str(tmp_path / "r")}, "t", tmp_path)
    defs = build_definitions(spec)
    sensor = defs.resolve_sensor_def("new_videos")
    with instance_for_test() as instance:
        result = sensor(build_sensor_context(instance=instance))
        assert isinstance(result, SensorResult)
        assert [r.partition_key for r in result.run_requests or []] == ["one.mp4"]
        instance.add_dynamic_partitions("videos", ["one.mp4"])
        touch(root / "later" / "two.mp4")
        result = sensor(build_sensor_context(instance=instance))
        assert isinstance(result, SensorResult)
        assert [r.partition_key for r in result.run_requests or []] == ["later__two.mp4"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["later__two.mp4"]  # type: ignore[index]
        instance.add_dynamic_partitions("videos", ["later__two.mp4"])
        assert not isinstance(sensor(build_sensor_context(instance=instance)), SensorResult)
    assert isinstance(DagsterInstance, type)


def test_invalid_spec_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "spec.yaml"
    bad.write_text("workflow:\n  max_chunks: 0\n  qa_types: [mcq, riddles]\nvlm:\n  backend: claude\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    text = str(err.value)
    assert "workflow.max_chunks" in text and "workflow.qa_types" in text and "vlm.backend" in text
    with pytest.raises(SpecError, match="override"):
        load_spec(bad, ["novalue"])
    # the code location itself refuses to load, naming the field
    proc = subprocess.run(
        [sys.executable, "-c", "import vr_assets.definitions"], capture_output=True, text=True, cwd=REPO,
        env={"VR_CONFIG": str(bad), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert proc.returncode != 0 and "workflow.max_chunks" in proc.stderr


def test_tao_spec_and_overrides_load(tmp_path: Path) -> None:
    spec_file = tmp_path / "tao.yaml"
    spec_file.write_text(
        "results_dir: out\nvideo_reasoning_annotation:\n  workflow:\n    max_workers: 3\n  data:\n"
        "    video_root: vids\n"
    )
    spec = load_spec(spec_file, ["workflow.max_workers=9", "llm.backend=openai"])
    assert spec.workflow.max_workers == 9 and spec.llm.backend == "openai"
    assert spec.results_dir == str((tmp_path / "out").resolve())
    assert spec.data.video_root == str((tmp_path / "vids").resolve())


def test_default_spec_round_trips() -> None:
    import yaml

    from vr_assets.cli import default_spec_text

    text = default_spec_text()
    assert "# leave empty: read from env GOOGLE_API_KEY" in text
    assert parse_spec(yaml.safe_load(text), "default").workflow.qa_types[0] == "mcq"


def test_cli_hands_out_two_small_videos_then_a_big_one(tmp_path: Path) -> None:
    from vr_assets.cli import file_sizes, hand_out_order
    from vr_assets.records import VideoSource

    videos = {}
    for name, size in [("a.mp4", 10), ("b.mp4", 3000), ("c.mp4", 200), ("d.mp4", 50), ("e.mp4", 900),
                       ("f.mp4", 20), ("g.mp4", 400)]:
        p = tmp_path / name
        p.write_bytes(b"x" * size)
        videos[name] = VideoSource(key=name, path=str(p), source="video_root", rel_path=name)
    videos["gone.mp4"] = VideoSource(key="gone.mp4", path=str(tmp_path / "gone.mp4"), source="video_root",
                                     rel_path="gone.mp4")
    work = {k: ["filter_result"] for k in videos}
    ordered = hand_out_order(work, file_sizes(videos.values()))
    # a missing file goes first so its error shows at once; then the two smallest left, the biggest left, ...
    assert list(ordered) == ["gone.mp4", "a.mp4", "f.mp4", "b.mp4", "d.mp4", "c.mp4", "e.mp4", "g.mp4"]
    assert ordered["b.mp4"] == ["filter_result"]
