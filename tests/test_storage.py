"""Results by storage URL: the local folder and a real S3 endpoint (moto's server, s3fs as the client)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from vr_assets.config import SpecError, parse_spec
from vr_assets.storage import atomic_write, read_many, results_root, storage_root
from vr_assets.store import JsonStore, each_video

s3fs = pytest.importorskip("s3fs", reason="the S3 client comes with the [s3] extra")
pytest.importorskip("moto", reason="moto's S3 server comes with the [test] extra")

BUCKET = "vr-results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on 127.0.0.1 in its own process; the AWS variables point every client at it.

    Set in os.environ (not monkeypatch) for the module, so processes started by the tests inherit them.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": url}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        os.environ.update(env)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        proc.wait(timeout=10)


_n = iter(range(10**6))


@pytest.fixture(params=["file", "s3"])
def root_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh storage root: a plain folder, or a fresh prefix in the S3 bucket."""
    if request.param == "file":
        return str(tmp_path / "results")
    request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/t{next(_n)}-{os.getpid()}"


def test_a_failed_write_leaves_the_previous_object_intact(root_url: str) -> None:
    target = storage_root(root_url) / "step_4_output" / "mcq.json"
    atomic_write(target, lambda f: f.write(b'{"v": 1}'))

    def dies_half_way(f: IO[bytes]) -> None:
        f.write(b'{"v": 2, "items": [')
        raise RuntimeError("serializer crashed")

    with pytest.raises(RuntimeError, match="serializer crashed"):
        atomic_write(target, dies_half_way)
    assert target.read_bytes() == b'{"v": 1}'
    # nothing else was left beside it: no temp file on disk, no partial object in the bucket
    assert sorted(p.name for p in target.parent.iterdir()) == ["mcq.json"]
    atomic_write(target, lambda f: f.write(b'{"v": 3}'))
    assert json.loads(target.read_bytes()) == {"v": 3}


class CutProxy:
    """A TCP proxy to the S3 endpoint that forwards only the first `limit` bytes a client sends, then hangs up
    on both sides: an upload cut off mid-body, as a dropped connection or a killed process would leave it."""

    def __init__(self, upstream: str, limit: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream, self.limit = (host, int(port)), limit
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)
        threading.Thread(target=self._back, args=(server, client), daemon=True).start()
        sent = 0
        with contextlib.suppress(OSError):
            while sent < self.limit and (data := client.recv(65536)):
                server.sendall(data[: self.limit - sent])
                sent += len(data)
        self.cuts += sent >= self.limit
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    @staticmethod
    def _back(server: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                client.sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_an_upload_cut_off_mid_object_leaves_the_previous_object_intact(s3_endpoint: str) -> None:
    from upath import UPath

    url = f"s3://{BUCKET}/cut-{os.getpid()}/dataset.parquet"
    old = b"old object " * 100
    atomic_write(storage_root(url), lambda f: f.write(old))
    proxy = CutProxy(s3_endpoint, limit=64 * 1024)
    try:
        cut = UPath(url, client_kwargs={"endpoint_url": proxy.url}, skip_instance_cache=True,
                    config_kwargs={"retries": {"max_attempts": 1}})  # fmt: skip
        cut.fs.retries = 1  # s3fs's own retry loop: one attempt is enough to show it
        with pytest.raises(Exception):  # noqa: B017 (aiohttp/botocore name a dropped connection differently)
            atomic_write(cut, lambda f: f.write(os.urandom(512 * 1024)))
        assert proxy.cuts >= 1  # the body really was cut off part way
    finally:
        proxy.close()
    assert storage_root(url).read_bytes() == old


def test_a_filesystem_that_writes_in_place_gets_a_temp_name_and_a_rename() -> None:
    """Not an object store (fsspec's in-process memory filesystem stands in for sftp/ftp): the old file stays
    whole until the new one is complete, and no temp file is left behind either way."""
    target = storage_root(f"memory://vr-{os.getpid()}/out/a.json")
    atomic_write(target, lambda f: f.write(b"old"))

    def dies(f: IO[bytes]) -> None:
        f.write(b"ne")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        atomic_write(target, dies)
    assert target.read_bytes() == b"old"
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_json_store_round_trip(root_url: str) -> None:
    store = JsonStore(root_url)
    assert store.partitions("captions") == []
    assert store.read_optional("captions", "cam__a.mp4") is None
    with pytest.raises(FileNotFoundError, match="no stored captions for video 'cam__a.mp4'"):
        store.read("captions", "cam__a.mp4")
    from vr_assets.store import ASSET_RECORDS

    # a real record type, via the per-asset table
    rec_type = ASSET_RECORDS["task_exports"]
    rec = rec_type.model_validate({"video_key": "cam__a.mp4", "mode": "normal", "tasks": {}})
    path = store.write("task_exports", "cam__a.mp4", rec)
    assert str(path) == f"{root_url.rstrip('/')}/assets/task_exports/cam__a.mp4.json"
    assert store.exists("task_exports", "cam__a.mp4")
    assert store.read("task_exports", "cam__a.mp4") == rec
    assert store.partitions("task_exports") == ["cam__a.mp4"]


def test_the_dataset_pass_reads_each_video_once_in_batches(root_url: str) -> None:
    from vr_assets.store import ASSET_RECORDS

    store = JsonStore(root_url)
    rec_type = ASSET_RECORDS["task_exports"]
    keys = [f"v{i:03d}.mp4" for i in range(7)]
    for k in keys[:-1]:  # the last video has no record: it reads as None
        store.write("task_exports", k, rec_type.model_validate({"video_key": k, "mode": "anomaly", "tasks": {}}))
    seen = [(k, s.read_optional("task_exports", k)) for k, s in each_video(root_url, keys, ["task_exports"], batch=3)]
    assert [k for k, _ in seen] == keys
    assert [r.video_key if r else None for _, r in seen] == [*keys[:-1], None]
    got = read_many([store.path("task_exports", k) for k in keys])
    assert len(got) == 6


def test_a_storage_url_without_its_client_fails_at_load_naming_the_field() -> None:
    with pytest.raises(SpecError, match=r"storage_url.*nosuchproto://x/y.*not usable"):
        parse_spec({"storage_url": "nosuchproto://x/y"}, "spec.yaml")
    spec = parse_spec({"results_dir": "out", "storage_url": ""}, "spec.yaml", Path("/data"))
    assert results_root(spec) == Path("/data/out")
    spec = parse_spec({"results_dir": "out", "storage_url": "file:///srv/results"}, "spec.yaml", Path("/data"))
    assert results_root(spec) == Path("/srv/results")


def test_a_pipeline_run_writes_its_results_and_dataset_to_s3(
    s3_endpoint: str, make_pipeline: Any, synthetic_videos: dict[str, Path], tmp_path: Path
) -> None:
    """Two clips, MCQ only, storage_url on the S3 endpoint: every record and dataset file is an object there,
    the dataset is complete and passes NVIDIA's validator, and the local results_dir holds only working files.

    The runs execute in this process (`materialize`, a real Dagster instance, the real SDKs against the fake
    teacher) with the IO manager given the spec's storage_url; the moto server is another process.
    """
    from dagster import AssetKey, DagsterInstance, materialize

    from tests.test_export import tao_validate
    from vr_assets.graph import PER_VIDEO_ASSETS, build_definitions
    from vr_assets.io_manager import PartitionedJsonIOManager
    from vr_assets.partitions import videos_partitions
    from vr_assets.sensors import sync_partitions

    env = make_pipeline("gemini")
    env.add_video(synthetic_videos["clip8"], "cam/a.mp4")
    env.add_video(synthetic_videos["short_mp4"], "cam/b.mp4")
    url = f"s3://{BUCKET}/pipeline-{os.getpid()}"
    spec = env.spec(storage_url=url, workflow={"qa_types": ["mcq"], "max_workers": 1})
    keys, _ = sync_partitions(spec, set())
    assert keys == ["cam__a.mp4", "cam__b.mp4"]
    (tmp_path / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    instance.add_dynamic_partitions(videos_partitions.name, keys)
    defs = build_definitions(spec)
    resources = {**defs.resources, "io_manager": PartitionedJsonIOManager(results_dir=spec.results_dir,
                                                                           storage_url=spec.storage_url)}  # fmt: skip
    graph = [*defs.assets, *defs.asset_checks]
    for k in keys:
        got = materialize(graph, partition_key=k, resources=resources, instance=instance, selection=PER_VIDEO_ASSETS)
        assert got.success
    assert materialize(graph, resources=resources, instance=instance, selection=["dataset"]).success

    # every per-video record is an object under the URL, and Dagster's metadata says so
    store = JsonStore(url)
    for asset in PER_VIDEO_ASSETS:
        assert store.partitions(asset) == keys, asset
    mat = instance.fetch_materializations(AssetKey("qa"), limit=1).records[0].asset_materialization
    assert mat is not None and mat.metadata["path"].value.startswith(f"{url}/assets/qa/")
    # the local working folder has the caches, not the results
    local = Path(spec.results_dir)
    assert not (local / "assets").exists() and not (local / "step_4_output").exists()
    assert (local / "cache").is_dir()

    # the dataset: readable from the store, complete (every video's MCQ items), valid for NVIDIA's validator
    out = storage_root(url) / "step_4_output"
    exports = [store.read("task_exports", k) for k in keys]
    tasks = sorted({t for e in exports for t, items in e.tasks.items() if items})
    names = sorted(p.name for p in out.iterdir() if p.name != "dataset_report.json")
    assert (out / "dataset_report.json").exists()
    assert "mcq" in tasks and names == [f"{t}.json" for t in tasks], names
    for task in tasks:
        data = json.loads((out / f"{task}.json").read_bytes())
        expected = [i.model_dump() for e in exports for i in e.tasks.get(task, [])]
        assert data["format"] == "tao-vl-reason-v1.0" and data["metadata"]["task"] == task
        assert expected
        if task.startswith("mcq"):  # options placed in the dataset pass: the same items, letters balanced
            assert len(data["items"]) == len(expected)
            assert sorted(i["video_id"] for i in data["items"]) == sorted(i["video_id"] for i in expected)
        else:
            assert data["items"] == expected
    fetched = tmp_path / "fetched"
    out.fs.get(out.path + "/", str(fetched), recursive=True)
    assert tao_validate(fetched) == ([], len(tasks))
    # TAO's step files sit beside it: one QA line per video (one prompt key each)
    qa_lines = (storage_root(url) / "step_3_qa" / "qa_output.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["video"] for line in qa_lines) == ["cam/a.mp4", "cam/b.mp4"]
    report = instance.fetch_materializations(AssetKey("dataset"), limit=1).records[0].asset_materialization
    assert report is not None and report.metadata["files"].value == names
    assert report.metadata["output_dir"].value == f"{url}/step_4_output"
    # the item rules' verdicts are kept with the results, so a build on any host reuses them
    judgments = json.loads((storage_root(url) / "cache" / "item_judgments.json").read_bytes())
    assert len(judgments["clean"]) + len(judgments["problems"]) == report.metadata["items_judged"].value > 0


def test_the_graphs_io_manager_writes_where_the_dataset_reads(tmp_path: Path) -> None:
    from vr_assets.graph import build_definitions

    spec = parse_spec({"results_dir": str(tmp_path / "work"), "storage_url": str(tmp_path / "store")}, "spec.yaml")
    io_manager = build_definitions(spec).resources["io_manager"]
    assert JsonStore(io_manager.storage_url or io_manager.results_dir).root == results_root(spec) / "assets"
