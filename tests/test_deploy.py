"""The cluster examples read right: deploy/*.yaml against Dagster's instance schema, dagster_cloud.yaml and the
Dockerfile against each other and the package. Nothing here starts Docker or Kubernetes (neither is on this machine).
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster._config import validate_config
from dagster._config.field_utils import convert_potential_field
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes import class_from_code_pointer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLES = {"dagster-k8s.yaml": "dagster_k8s", "dagster-docker.yaml": "dagster_docker"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_instance_config_passes_dagsters_instance_schema(name: str) -> None:
    config, custom_class = dagster_instance_config(str(DEPLOY), name)
    assert custom_class is None
    db = config["storage"]["postgres"]["postgres_db"]
    assert db["hostname"] == {"env": "DAGSTER_PG_HOST"} and db["scheme"] == "postgresql+psycopg2"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] > 0  # the queue bound
    assert config["run_launcher"]["module"] == EXAMPLES[name]
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_the_schema_check_is_real(tmp_path: Path) -> None:
    """A misspelled key is refused: the check above would catch a typo in the examples."""
    text = (DEPLOY / "dagster-k8s.yaml").read_text().replace("max_concurrent_runs:", "max_concurent_runs:")
    (tmp_path / "dagster.yaml").write_text(text)
    with pytest.raises(DagsterInvalidConfigError, match="max_concurent_runs"):
        dagster_instance_config(str(tmp_path))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_run_launcher_config_passes_the_launchers_schema(name: str) -> None:
    module = EXAMPLES[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (it is only needed on the cluster's webserver/daemon image)")
    config, _ = dagster_instance_config(str(DEPLOY), name)
    launcher = config["run_launcher"]
    cls = class_from_code_pointer(launcher["module"], launcher["class"])
    result = validate_config(convert_potential_field(cls.config_type()).config_type, launcher["config"])
    assert result.success, [e.message for e in result.errors]


def _cloud() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dagster_cloud.yaml").read_text())


def test_dagster_cloud_yaml_names_the_code_location_as_documented() -> None:
    """Dagster+'s documented keys: location_name, code_source with exactly one of package_name / module_name /
    python_file, build.directory holding the Dockerfile, build.registry for a Hybrid image."""
    (location,) = _cloud()["locations"]
    assert set(location) <= {"location_name", "code_source", "build", "container_context", "image",
                             "working_directory", "executable_path", "agent_queue"}  # fmt: skip
    assert location["location_name"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"][
        "code_location_name"]  # fmt: skip
    (kind, module), = location["code_source"].items()
    assert kind == "module_name" and importlib.util.find_spec(module) is not None
    assert (ROOT / location["build"]["directory"] / "Dockerfile").is_file()
    assert location["build"]["registry"]
    k8s = location["container_context"]["k8s"]
    assert set(k8s) <= {"env_vars", "env_secrets", "env_config_maps", "volumes", "volume_mounts", "namespace",
                        "service_account_name", "resources", "server_k8s_config", "run_k8s_config"}  # fmt: skip


def test_the_dockerfile_serves_the_same_module_as_dagster_cloud_yaml() -> None:
    text = (ROOT / "Dockerfile").read_text()
    module = _cloud()["locations"][0]["code_source"]["module_name"]
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m",
                                            module]  # fmt: skip
    assert re.search(r"apt-get install .*\bffmpeg\b", text)
    assert re.search(r"pip install .*\"\.\[s3\]\"", text)
