"""`import functionfuse` stays light: no optional engine is imported."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["ray", "prefect", "kfp", "dask", "zarr", "s3fs", "h5py", "docker", "kubernetes", "numpy", "graphviz"]


def test_import_functionfuse_pulls_in_no_heavy_dependency():
    code = (
        "import sys, json\n"
        "import functionfuse\n"
        "from functionfuse.backends.builtin.localback import LocalWorkflow\n"
        "from functionfuse.storage import storage_factory\n"
        "from functionfuse.storage.filestorage import FileStorage\n"
        "from functionfuse.serializers import FILE_PROTOCOL, S3_PROTOCOL\n"
        "from functionfuse.backends.plugins import RandomStatePlugin\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_protocol_constants_match_the_documented_values():
    from functionfuse.serializers import FILE_PROTOCOL, S3_PROTOCOL

    assert FILE_PROTOCOL == "file_protocol"
    assert S3_PROTOCOL == "s3 protocol"


def test_version_is_exposed():
    import functionfuse

    assert functionfuse.__version__.count(".") == 2


def test_the_command_line_parser_pulls_in_no_heavy_dependency():
    code = (
        "import sys, json\n"
        "from functionfuse.cli import build_parser\n"
        "build_parser().parse_args(['storage', 'ls'])\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_seed_import_paths_name_the_objects_where_they_live():
    import functionfuse.backends.plugins as seed_plugins
    import functionfuse.errors as errors
    import functionfuse.plugins as plugins
    from functionfuse.kit import images, registry, release, stack

    for name in seed_plugins.__all__:
        assert getattr(seed_plugins, name) is getattr(plugins, name)
    assert (images.ImageBuildError, images.ImagePushError, images.DockerUnavailableError) == (
        errors.ImageBuildError, errors.ImagePushError, errors.DockerUnavailableError,
    )
    assert (registry.RegistryError, release.ReleaseError, stack.StackError) == (
        errors.RegistryError, errors.ReleaseError, errors.StackError,
    )


def test_python_dash_m_functionfuse_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "functionfuse", "--version"], capture_output=True, text=True, check=True)
    import functionfuse

    assert out.stdout.strip() == f"functionfuse {functionfuse.__version__}"


def _extras_named_in_the_code() -> dict[str, set[str]]:
    """``{extra: {module, ...}}`` for each ``missing_dependency(name, "extra")`` call and
    each ``extra="..."`` keyword in the package."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "functionfuse"
    named: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            values = [k.value for k in node.keywords if k.arg == "extra"]
            if func == "missing_dependency" and len(node.args) >= 2:
                values.append(node.args[1])
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    named.setdefault(value.value, set()).add(str(path.relative_to(root)))
    return named


def test_every_extra_an_error_names_exists_and_all_installs_it():
    from pathlib import Path

    import pytest

    if sys.version_info < (3, 11):
        pytest.skip("reading pyproject.toml needs tomllib (Python 3.11)")
    else:
        import tomllib

        project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
        extras = project["optional-dependencies"]
        named = _extras_named_in_the_code()
        assert {"kit", "s3", "ray"} <= set(named)  # the search finds them
        assert {e: where for e, where in named.items() if e not in extras} == {}
        (everything,) = extras["all"]
        installed = set(everything.partition("[")[2].rstrip("]").split(","))
        assert set(extras) - {"all", "dev"} == installed
