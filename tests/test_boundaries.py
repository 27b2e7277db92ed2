"""Layering: api -> shared <- worker; the API never imports worker code."""
from __future__ import annotations

import subprocess
import sys
import pytest

from tests.conftest import ROOT

# Starts real processes (a Python interpreter per check): not in the fast subset.
pytestmark = pytest.mark.processes


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def test_api_does_not_import_worker() -> None:
    modules = _modules_after("from api import create_app; create_app()")
    assert "api" in modules and "shared.models" in modules
    assert not {m for m in modules if m == "worker" or m.startswith("worker.")}


def test_worker_does_not_import_api() -> None:
    modules = _modules_after("import worker.tasks")
    assert "worker.tasks" in modules
    assert not {m for m in modules if m == "api" or m.startswith("api.")}
