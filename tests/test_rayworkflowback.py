"""The Ray Workflows addon.

Its real tests (the backend conformance suite on Ray Workflows) run in their own
environment with ray 2.47, the last Ray with ray.workflow: ``scripts/setup-rayworkflow.sh``
creates ``.venv-rayworkflow`` (idempotent), and the test below runs
``tests/rayworkflow/addon_checks.py`` there. In this environment (a newer Ray) the addon
must refuse with a clear message.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("RAYWORKFLOW_VENV", os.path.join(ROOT, ".venv-rayworkflow"))
SETUP = os.path.join(ROOT, "scripts", "setup-rayworkflow.sh")


def test_newer_ray_gets_a_clear_error_pointing_to_rayback():
    code = (
        "from functionfuse import workflow\n"
        "from functionfuse.backends.addons.rayworkflowback import RayWorkflow\n"
        "@workflow\n"
        "def one():\n"
        "    return 1\n"
        "try:\n"
        "    RayWorkflow(one(), workflow_name='w')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    import ray

    message = out.stdout
    assert message.startswith("MissingDependencyError")
    assert f"ray {ray.__version__}" in message and "removed after 2.47" in message
    assert "ray<=2.47" in message and "functionfuse.backends.builtin.rayback.RayWorkflow" in message
    assert "storage" in message


def test_importing_the_addon_needs_no_ray_workflow():
    """The module imports anywhere (docs, doctests); the error comes when it is used."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, functionfuse.backends.addons.rayworkflowback; print('ray' in sys.modules)"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def rayworkflow_python():
    """The Python of .venv-rayworkflow, created (or checked) by the setup script."""
    setup = subprocess.run(["bash", SETUP], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    python = os.path.join(VENV, "bin", "python")
    if setup.returncode != 0 or not os.path.exists(python):
        pytest.skip(f"could not create {VENV} with ray 2.47 (no package index?): {setup.stderr[-2000:]}")
    return python


@pytest.mark.slow
def test_addon_passes_the_conformance_suite_on_ray_2_47(rayworkflow_python):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RAY_ADDRESS"))}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # its Ray stays on 127.0.0.1
    env["FUNCTIONFUSE_RAYWORKFLOW_CHECKS"] = "1"  # tests/conftest.py collects tests/rayworkflow/ only then
    out = subprocess.run(
        [
            rayworkflow_python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            # Ray 2.47's own process management leaves these behind when it shuts down
            "-W", "ignore:subprocess:ResourceWarning",
            "-W", "ignore:unclosed file <_io.TextIOWrapper name='/dev/null':ResourceWarning",
            os.path.join("tests", "rayworkflow", "addon_checks.py"),
        ],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary
