"""Checks on the repository's deployment files: compose, Dockerfiles, Makefile, CI, README."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"postgres", "redis", "migrate", "api", "worker", "beat", "flower"}
SECRET_NAME = re.compile(r"TOKEN|KEY|PASSWORD|SECRET", re.IGNORECASE)
SHELL_COMMAND = re.compile(
    r"^(?:[A-Z_]+=\S*\s+)*(?:make|python3?|pip|docker|curl|flask|celery|gunicorn|git|export|cd|"
    r"pytest|bash|\.ci/run|\.venv/bin/\S+)(?:\s|$)"
)
REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?+])[^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- NAME=value` form
        for item in env:
            name, _, value = str(item).partition("=")
            yield name, value
    else:
        for name, value in env.items():
            yield str(name), "" if value is None else str(value)


def test_compose_has_the_seven_services(compose: dict[str, Any]) -> None:
    """The stack is postgres, redis, migrate, api, worker, beat and flower; prometheus and
    grafana are opt-in (profile `observability`)."""
    default = {name for name, s in compose["services"].items() if not s.get("profiles")}
    assert default == SERVICES
    assert set(compose["services"]) - default == {"prometheus", "grafana"}


@pytest.mark.parametrize("name", ["postgres", "redis", "api"])
def test_long_running_infrastructure_has_healthchecks(
    compose: dict[str, Any], name: str
) -> None:
    """Services others wait on declare a healthcheck."""
    check = compose["services"][name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"


def test_api_healthcheck_uses_liveness_endpoint(compose: dict[str, Any]) -> None:
    """The API container is healthy when /health/live answers."""
    assert "/health/live" in " ".join(map(str, compose["services"]["api"]["healthcheck"]["test"]))


def test_startup_order(compose: dict[str, Any]) -> None:
    """Migrations wait for a healthy database; the API waits for migrations to finish."""
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "db upgrade" in " ".join(map(str, services["migrate"]["command"]))
    assert (
        services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    )


def test_exactly_one_beat(compose: dict[str, Any]) -> None:
    """Beat runs as a single replica: two schedulers would fire every schedule twice."""
    beat = compose["services"]["beat"]
    assert beat["deploy"]["replicas"] == 1
    assert "beat" in " ".join(map(str, beat["command"]))


def test_worker_processes_use_the_worker_image(compose: dict[str, Any]) -> None:
    """worker, beat and flower are built from Dockerfile.worker, api and migrate from .api."""
    services = compose["services"]
    for name in ("worker", "beat", "flower"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile.worker"
    for name in ("api", "migrate"):
        assert services[name]["build"]["dockerfile"] == "Dockerfile.api"


def test_no_literal_secrets_in_compose(compose: dict[str, Any]) -> None:
    """Every secret-named variable is a ${...} reference; URLs carry no literal password."""
    for service_name, service in compose["services"].items():
        for name, value in _environment(service):
            if SECRET_NAME.search(name):
                assert REFERENCE.match(value), f"{service_name}.{name} holds a literal value"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert REFERENCE.match(password), f"{service_name}.{name} embeds a password"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_run_as_non_root_with_a_cmd(dockerfile: str) -> None:
    """Each image switches to a non-root USER and has a CMD."""
    text = (ROOT / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, f"{dockerfile} has no USER"
    assert users[-1] not in {"root", "0", "0:0"}, f"{dockerfile} runs as root"
    assert re.search(r"^CMD\s+\S", text, re.MULTILINE), f"{dockerfile} has no CMD"
    assert text.lstrip().startswith(("#", "FROM python:3.11"))


def test_ci_runs_make_test() -> None:
    """The CI entry point is strict bash that runs `make test`."""
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert script.stat().st_mode & 0o111, ".ci/run is not executable"
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*make test\b", text, re.MULTILINE)


def test_makefile_targets() -> None:
    """The Makefile offers run, test and bench (and the helpers around them)."""
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))
    assert {"run", "test", "bench", "demo", "lint", "migrate", "clean"} <= targets


def _readme_commands(text: str) -> list[str]:
    """Commands shown in the README, in order: fenced code lines and inline code spans."""
    commands: list[str] = []
    fenced = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.MULTILINE | re.DOTALL)
    position = 0
    for block in fenced.finditer(text):
        commands += re.findall(r"`([^`\n]+)`", text[position:block.start()])
        for line in block.group(2).splitlines():
            line = line.split(" #", 1)[0].strip()  # drop trailing comments
            if line and not line.startswith("#"):
                commands.append(line)
        position = block.end()
    commands += re.findall(r"`([^`\n]+)`", text[position:])
    return [c.strip().removeprefix("$").strip() for c in commands]


def test_readme_starts_with_make_run_and_make_test() -> None:
    """The README's first two commands are `make run` and `make test`."""
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing"
    commands = [c for c in _readme_commands(readme.read_text()) if SHELL_COMMAND.match(c)]
    assert {"make run", "make test"} <= set(commands[:2]), commands[:5]
