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
from typing import IO

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
