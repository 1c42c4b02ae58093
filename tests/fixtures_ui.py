"""The real Dagster UI, and a headless Debian Chromium to look at it.

`dagster_ui`: a `dagster-webserver` over a finished demo run. The run comes from the CLI demo
(offline teacher) in a subprocess, so the UI shows exactly what a user sees after `vr-annotate
demo`; the webserver gets the same Dagster home and a spec pointing at the same results folder. No
daemon runs, so the default-on sensors launch nothing.

`vr_annotate_ui`: `vr-annotate ui` itself (webserver and daemon), with a live offline teacher, for
the runs a user launches from the UI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from vr_assets.execution.instance import instance_yaml
from vr_assets.execution.services import stop_group

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
SCREENSHOT_DIR = REPO / "test-output" / "ui"
DEMO_TIMEOUT_S = 300.0
SERVER_TIMEOUT_S = 90.0
# keys that would make the demo call a real provider instead of the offline teacher
PROVIDER_ENV = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL")

LOCATION_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


LIVE_UI_KEY = "live-ui-key-5f3a9c"  # the API key the live UI's spec carries: found in no artefact the UI shows

_METADATA = """fragment M on MetadataEntry { label description ... on TextMetadataEntry { text }
  ... on MarkdownMetadataEntry { mdStr } ... on JsonMetadataEntry { jsonString } ... on PathMetadataEntry { path }
  ... on UrlMetadataEntry { url } }"""
UI_QUERIES = {
    "runs": "{ runsOrError { __typename ... on Runs { results { runId jobName status runConfigYaml "
            "tags { key value } } } } }",
    "event log": """query($runId: ID!) { logsForRun(runId: $runId, limit: 100000) { __typename
      ... on EventConnection { events { __typename ... on MessageEvent { message stepKey }
        ... on DisplayableEvent { label description metadataEntries { ...M } }
        ... on ExecutionStepFailureEvent { error { message stack } }
        ... on LogsCapturedEvent { fileKey stepKeys } } }
      ... on PythonError { message } } }""" + _METADATA,
    "asset pages": "{ assetNodes { assetKey { path } description assetMaterializations(limit: 1000) { runId partition "
                   "metadataEntries { ...M } } } }" + _METADATA,
    "resources": '{ allTopLevelResourceDetailsOrError(repositorySelector: {repositoryLocationName: "vr_assets", '
                 'repositoryName: "__repository__"}) { __typename ... on ResourceDetailsList { results { name '
                 "description configuredValues { key value type } } } } }",
    "compute logs": "query($key: [String!]!) { capturedLogs(logKey: $key) { stdout stderr } }",
}


def graphql(base_url: str, query: str, **variables: Any) -> dict[str, Any]:
    data = json.dumps({"query": query, "variables": variables}).encode()
    req = urllib.request.Request(base_url + "/graphql", data=data, headers={"Content-Type": "application/json"})
    body = json.loads(urllib.request.urlopen(req, timeout=60).read())
    assert not body.get("errors"), body["errors"]
    return body["data"]


def ui_answers(base_url: str) -> dict[str, str]:
    """What the webserver serves about every run and asset, as text: the runs with their run config and tags,
    each run's event log and captured compute logs, every asset's materialization metadata, the resources'
    configured values. `where -> text` for a scan."""
    out = {"runs": json.dumps(runs := graphql(base_url, UI_QUERIES["runs"]))}
    out["asset pages"] = json.dumps(graphql(base_url, UI_QUERIES["asset pages"]))
    out["resources"] = json.dumps(graphql(base_url, UI_QUERIES["resources"]))
    for run in runs["runsOrError"]["results"]:
        log = graphql(base_url, UI_QUERIES["event log"], runId=run["runId"])
        out[f"event log of {run['runId']}"] = json.dumps(log)
        for event in log["logsForRun"].get("events", []):
            if event["__typename"] == "LogsCapturedEvent":
                key = [run["runId"], "compute_logs", event["fileKey"]]
                out[f"compute log {key}"] = json.dumps(graphql(base_url, UI_QUERIES["compute logs"], key=key))
    return out


@dataclass
class DagsterUI:
    base_url: str
    results: Path
    home: Path
    spec_path: Path
    log_path: Path

    def url(self, route: str) -> str:
        return self.base_url + route

    def partition_keys(self) -> list[str]:
        return sorted(p.name.removesuffix(".json") for p in (self.results / "assets" / "filter_result").glob("*.json"))

    def stored(self, asset: str, key: str) -> dict[str, Any]:
        """What the IO manager stored for one partition: the ground truth the UI must show."""
        return json.loads((self.results / "assets" / asset / f"{key}.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _write_ui_spec(path: Path, results: Path) -> None:
    """The demo spec with absolute paths, so the code location finds the same videos and results."""
    raw = yaml.safe_load((SAMPLES / "demo_spec.yaml").read_text())
    data = raw.setdefault("data", {})
    data["video_root"] = str((SAMPLES / data.get("video_root", "videos")).resolve())
    data["input_jsonl_files"] = [str((SAMPLES / p).resolve()) for p in data.get("input_jsonl_files", [])]
    raw["results_dir"] = str(results)
    raw["offline_teacher"] = True
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _run_demo(results: Path, env: dict[str, str], log_path: Path) -> None:
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "vr_assets.cli", "demo", "--results", str(results)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=DEMO_TIMEOUT_S, check=False,
        )
    if proc.returncode != 0:
        pytest.fail(f"demo run failed (exit {proc.returncode}):\n{_log_tail(log_path)}")


def _init_instance(home: Path) -> None:
    """Create the sqlite storages once: two processes creating them at the same time corrupt the
    alembic version table ("more than one head"), and the webserver boots while the demo starts."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)


def _webserver_bin() -> str:
    beside = Path(sys.executable).parent / "dagster-webserver"
    found = str(beside) if beside.exists() else shutil.which("dagster-webserver")
    if not found:
        pytest.fail("dagster-webserver is not installed beside this Python")
    return found


def _wait_until_ready(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    """server_info answers before the code location is loaded, so also wait for the location."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{_log_tail(log_path)}")
        try:
            urllib.request.urlopen(base_url + "/server_info", timeout=5).read()
            req = urllib.request.Request(
                base_url + "/graphql", data=json.dumps({"query": LOCATION_QUERY}).encode(),
                headers={"Content-Type": "application/json"},
            )
            body = json.loads(urllib.request.urlopen(req, timeout=10).read())
            entries = body["data"]["workspaceOrError"].get("locationEntries") or []
            loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
            for e in loaded:
                err = e["locationOrLoadError"] or {}
                if err.get("__typename") == "PythonError":
                    pytest.fail(f"code location {e['name']} failed to load: {err.get('message')}")
            if loaded:
                return
            last = f"location entries: {entries}"
        except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
            last = repr(e)
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver not ready after {SERVER_TIMEOUT_S:.0f} s ({last}):\n{_log_tail(log_path)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """The webserver and its code server share a process group: end the group (a clean stop takes ~7 s)."""
    stop_group(proc, grace_s=10.0)


@pytest.fixture(scope="session")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    """A webserver on a free port over a finished offline demo run (Dagster home + results in tmp)."""
    root = tmp_path_factory.mktemp("ui")
    results, home = root / "results", root / "dagster_home"
    home.mkdir()
    # what `vr-annotate` writes for a new home: nux off (its dialog would cover every page), pooled storages
    (home / "dagster.yaml").write_text(instance_yaml(str(home)))
    spec_path = root / "ui_spec.yaml"
    _write_ui_spec(spec_path, results)
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_ENV}
    env.update(DAGSTER_HOME=str(home), VR_CONFIG=str(spec_path), VR_HOST_SLOTS_DIR=str(root / "slots"))
    _init_instance(home)

    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = root / "webserver.log"
    # the webserver boots while the demo runs (it only reads the instance when a page asks)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [_webserver_bin(), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _run_demo(results, env, root / "demo.log")
        _wait_until_ready(proc, base_url, log_path)
        yield DagsterUI(base_url=base_url, results=results, home=home, spec_path=spec_path, log_path=log_path)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright; never a downloaded browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def ui_page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def screenshot(tmp_path: Path) -> Any:
    """`screenshot(page, name)`: full-page PNG in the test's tmp dir, copied to test-output/ui/ for people."""

    def take(page: Any, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOT_DIR / path.name)
        return path

    return take


@dataclass
class LiveUI:
    """`vr-annotate ui` (webserver + daemon, sensors on) over the demo videos, one of them annotated."""

    base_url: str
    results: Path
    home: Path
    done: str  # the partition the CLI annotated before the UI started
    missing: list[str]  # the partitions registered but not annotated
    log_path: Path

    def url(self, route: str) -> str:
        return self.base_url + route


@pytest.fixture
def vr_annotate_ui(tmp_path: Path) -> Iterator[LiveUI]:
    """The README's road to the UI, with a live offline teacher for the runs the UI launches."""
    from vr_assets.fakes import FakeGemini, Teacher

    fake = FakeGemini(teacher=Teacher()).start()
    results, home = tmp_path / "results", tmp_path / "dagster_home"
    spec_path = tmp_path / "live_spec.yaml"
    _write_ui_spec(spec_path, results)
    raw = yaml.safe_load(spec_path.read_text())
    for role in ("vlm", "llm"):
        raw[role] = {"backend": "gemini", "gemini": {"base_url": fake.base_url, "api_key": LIVE_UI_KEY},
                     "retry": {"initial_delay_s": 0.1}}
    raw.setdefault("workflow", {})["qa_types"] = ["mcq", "bcq"]
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_ENV}
    env.update(DAGSTER_HOME=str(home), VR_HOST_SLOTS_DIR=str(tmp_path / "slots"))
    cli = [sys.executable, "-m", "vr_assets.cli"]
    log_path = tmp_path / "ui.log"
    proc = None
    try:
        one = ["--video", "pedestrians__vtest_crossing_14s.mp4"]
        first = subprocess.run([*cli, "run", "--config", str(spec_path), *one],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
        if first.returncode != 0:
            pytest.fail(f"vr-annotate run failed:\n{first.stdout[-2000:]}\n{first.stderr[-2000:]}")
        port = _free_port()
        with log_path.open("w") as log:
            proc = subprocess.Popen([*cli, "ui", "--config", str(spec_path), "--port", str(port)], cwd=REPO, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_ready(proc, base_url, log_path)
        all_keys = sorted(json.loads((results / "registry" / "videos.json").read_text()))
        done = "pedestrians__vtest_crossing_14s.mp4"
        yield LiveUI(base_url=base_url, results=results, home=home, done=done,
                     missing=[k for k in all_keys if k != done], log_path=log_path)
    finally:
        if proc is not None:
            _stop(proc)
        fake.stop()
