"""The container images, built for real and pushed to a real registry on 127.0.0.1.

The images are built by ``functionfuse image build`` (the CLI users run) with the local
Docker daemon, FROM a base image made locally by debootstrap (Debian bookworm, Python
3.11, as python:3.11-slim), Python packages from a wheelhouse served on 127.0.0.1.
Pushes go to Debian's docker-registry started on a free loopback port, with and without
credentials.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest

from kitsupport import LOCAL_BASE, ROOT, built_images, docker_client, modules_imported_parsing

pytestmark = pytest.mark.slow

VERSION_RE = r"\d+\.\d+\.\d+"


@pytest.fixture(scope="module")
def client():
    return docker_client()


@pytest.fixture(scope="module")
def images(client):
    return built_images()


def run(client, image: str, code: str, **kwargs) -> str:
    out = client.containers.run(image, ["python", "-c", code], remove=True, network_mode="none", **kwargs)
    return out.decode().strip()


def sh(client, image: str, script: str) -> str:
    out = client.containers.run(image, ["sh", "-c", script], remove=True, network_mode="none")
    return out.decode().strip()


def pin(path: str, name: str) -> str | None:
    """The version pinned for *name* in a requirements file (None if not there)."""
    try:
        with open(os.path.join(ROOT, path)) as f:
            for line in f:
                m = re.match(rf"^\s*{re.escape(name)}(\[[^\]]*\])?==([^\s#;]+)", line, re.I)
                if m:
                    return m.group(2)
    except FileNotFoundError:
        return None
    return None


# -- without Docker --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image_req,project_req,name",
    [
        ("images/ray/requirements.txt", "requirements/ray.txt", "ray"),
        ("images/prefect/requirements.txt", "requirements/prefect.txt", "prefect"),
        ("images/prefect/requirements.txt", "requirements/prefect.txt", "fastapi"),
        ("images/kfp/requirements.txt", "requirements/kfp.txt", "kfp"),
    ],
    ids=["ray", "prefect", "fastapi", "kfp"],
)
def test_engine_pins_match_the_project_pins(image_req, project_req, name):
    """An image runs the engine version the project is tested with (a driver and a Ray
    cluster must run the same Ray)."""
    image_pin = pin(image_req, name)
    assert image_pin, f"{image_req} does not pin {name}"
    project_pin = pin(project_req, name)
    if project_pin is None:
        pytest.skip(f"{project_req} does not pin {name} (yet)")
    assert image_pin == project_pin


def test_image_cli_keeps_import_light():
    assert modules_imported_parsing(["image", "build", "base"], ("docker", "functionfuse.kit.images")) == []


def test_missing_docker_sdk_names_the_extra():
    code = (
        "import sys\n"
        "sys.modules['docker'] = None\n"
        "from functionfuse.kit.images import docker_client\n"
        "from functionfuse.errors import MissingDependencyError\n"
        "try:\n"
        "    docker_client()\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "pip install 'functionfuse[kit]'" in out.stdout


def test_cli_rejects_unknown_images_and_bad_options(capsys):
    from functionfuse.cli import main

    assert main(["image", "build", "spark", "--quiet"]) == 1
    assert "Unknown image(s) ['spark']" in capsys.readouterr().err
    assert main(["image", "build", "ray", "--engine-base-image", "rayproject/ray"]) == 1
    assert "ENGINE=IMAGE" in capsys.readouterr().err


def test_image_tags():
    from functionfuse.kit.images import image_tag

    assert image_tag("0.1.0", "py311") == "0.1.0-py311"
    assert image_tag("0.1.0", "py312", "kfp") == "0.1.0-py312-kfp"
    with pytest.raises(ValueError, match="py311"):
        image_tag("0.1.0", "3.11")


# -- built images ----------------------------------------------------------------------------------
def test_images_are_tagged_version_python_engine(images):
    from functionfuse import __version__

    assert set(images) == {"base", "ray", "prefect", "kfp"}
    for name, record in images.items():
        suffix = "" if name == "base" else f"-{name}"
        assert record["tag"] == f"functionfuse:{__version__}-py311{suffix}"
        assert record["python"] == "py311"
    assert images["base"]["base_image"] == LOCAL_BASE
    assert images["ray"]["base_image"] == images["base"]["tag"]


def test_base_image_is_small(client, images):
    """Target: under 250 MB on python:3.11-slim. Here the base is the debootstrap image
    (bigger than python:3.11-slim), so what is checked is what functionfuse adds on top
    of its base: at most 120 MB, i.e. under 250 MB on python:3.11-slim (about 125-130 MB)."""
    base = client.images.get(LOCAL_BASE).attrs["Size"]
    added = images["base"]["size"] - base
    print(f"\nbase image {images['base']['tag']}: {images['base']['size'] / 1e6:.1f} MB = "
          f"{base / 1e6:.1f} MB ({LOCAL_BASE}) + {added / 1e6:.1f} MB functionfuse layers")
    for name in ("ray", "prefect", "kfp"):
        print(f"{images[name]['tag']}: {images[name]['size'] / 1e6:.1f} MB")
    assert added < 120e6


def test_base_image_runs_as_non_root_without_build_tools(client, images):
    tag = images["base"]["tag"]
    out = sh(
        client,
        tag,
        "id -u; id -g; "
        "for t in gcc cc make strip; do command -v $t || true; done; "
        "test -w /opt/functionfuse && echo writable-venv; "
        "ls -d /root/.cache/pip ~/.cache/pip 2>/dev/null; "
        "find /opt/functionfuse -name tests -type d | head -3; "
        "echo done",
    )
    assert out.splitlines()[:2] == ["1000", "1000"], out
    assert out.splitlines()[2:] == ["done"], f"unexpected tools, caches or tests in the image:\n{out}"
    attrs = client.images.get(tag).attrs
    assert attrs["Config"]["User"] == "1000:1000"


def test_base_image_has_functionfuse_with_s3_and_dask(client, images):
    out = run(
        client,
        images["base"]["tag"],
        "import functionfuse, s3fs, zarr, dask.array as da, h5py, numcodecs.blosc\n"
        "from functionfuse.storage import available_storages\n"
        "print(functionfuse.__version__, int(da.ones(10, chunks=5).sum().compute()), sorted(available_storages))",
    )
    from functionfuse import __version__

    assert out.startswith(f"{__version__} 10 ")
    assert "'file'" in out


def test_base_image_runs_the_quickstart_dag_and_resumes(client, images, tmp_path):
    """The quickstart DAG, run twice in the image as its non-root user, storing into a
    volume: the second run loads every result instead of running it."""
    os.chmod(tmp_path, 0o777)
    script = (
        "from functionfuse import workflow\n"
        "from functionfuse.backends.builtin.localback import LocalWorkflow\n"
        "from functionfuse.storage import storage_factory\n"
        "@workflow\n"
        "def add(a, b): return a + b\n"
        "@workflow\n"
        "def mul(a, b): return a * b\n"
        "n1 = add(1, 1).set_name('node1'); n2 = add(n1, 1).set_name('node2'); n3 = mul(n1, n2).set_name('node3')\n"
        "wf = LocalWorkflow(n3, workflow_name='operations')\n"
        "wf.set_storage(storage_factory({'kind': 'file', 'options': {'path': '/data/storage'}}))\n"
        "print(wf.run(), wf.last_run.ran, wf.last_run.loaded)\n"
    )
    volumes = {str(tmp_path): {"bind": "/data", "mode": "rw"}}
    first = run(client, images["base"]["tag"], script, volumes=volumes)
    second = run(client, images["base"]["tag"], script, volumes=volumes)
    assert first == "6 3 0"
    assert second == "6 0 1"
    # the results are ordinary functionfuse files, readable here
    from functionfuse.storage import storage_factory

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    assert storage.read_task("operations", "node3") == 6


def test_ray_image_runs_the_pinned_ray(client, images):
    out = run(client, images["ray"]["tag"], "import ray, functionfuse.backends.builtin.rayback, s3fs; print(ray.__version__)")
    assert out == pin("images/ray/requirements.txt", "ray")
    assert sh(client, images["ray"]["tag"], "bash -lc 'command -v ray'") == "/opt/functionfuse/bin/ray"


def test_kfp_image_has_the_kfp_sdk_and_pip(client, images):
    out = run(client, images["kfp"]["tag"], "import kfp, cloudpickle, functionfuse; print(kfp.__version__)")
    assert out == pin("images/kfp/requirements.txt", "kfp")
    assert sh(client, images["kfp"]["tag"], "python -m pip --version").startswith("pip ")


def test_prefect_image_runs_prefect(client, images):
    out = run(client, images["prefect"]["tag"], "import prefect, prefect_kubernetes, functionfuse; print(prefect.__version__)")
    assert out == pin("images/prefect/requirements.txt", "prefect")


# -- pushing -----------------------------------------------------------------------------------------
@pytest.fixture
def registry():
    from functionfuse.kit.registry import LocalRegistry, RegistryError

    try:
        reg = LocalRegistry().start()
    except RegistryError as exc:
        pytest.skip(f"no local registry: {exc}")
    yield reg
    reg.stop()


def _cli(*argv: str) -> tuple[int, str]:
    from functionfuse.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_push_to_a_registry_on_loopback_and_pull_back(client, images, registry):
    tag = images["base"]["tag"].split(":", 1)[1]
    code, out = _cli("image", "push", registry.address, "base", "kfp", "--json")
    assert code == 0, out
    pushed = {p["reference"]: p for p in json.loads(out)}
    ref = f"{registry.address}/functionfuse:{tag}"
    assert set(pushed) == {ref, f"{registry.address}/functionfuse:{tag}-kfp"}
    # what the registry holds: the tags, and the manifest whose digest the push reported
    assert registry.tags("functionfuse") == sorted([tag, f"{tag}-kfp"])
    manifest = registry.manifest("functionfuse", tag)
    assert manifest["schemaVersion"] == 2 and manifest["layers"]
    assert pushed[ref]["digest"].startswith("sha256:")
    # a real round trip: drop the local reference, pull it back from the registry
    client.images.remove(ref)
    pulled = client.images.pull(f"{registry.address}/functionfuse", tag=tag)
    assert pulled.id == client.images.get(images["base"]["tag"]).id
    for reference in pushed:
        client.images.remove(reference)


def test_push_with_credentials_kept_in_memory(client, images, tmp_path, monkeypatch):
    from functionfuse.kit.images import ImagePushError, push_images
    from functionfuse.kit.registry import LocalRegistry, RegistryError

    monkeypatch.setenv("HOME", str(tmp_path))  # any docker config written would land here
    try:
        reg = LocalRegistry(users={"ci": "s3cr3t-pw"}).start()
    except RegistryError as exc:
        pytest.skip(f"no local registry: {exc}")
    try:
        with pytest.raises(ImagePushError, match="(?i)auth|denied|unauthorized"):
            push_images([images["base"]["tag"]], reg.address, username="ci", password="wrong", client=client)
        monkeypatch.setenv("FUNCTIONFUSE_REGISTRY_PASSWORD", "s3cr3t-pw")
        code, out = _cli("image", "push", reg.address, "base", "--username", "ci")
        assert code == 0, out
        assert reg.tags("functionfuse", auth=("ci", "s3cr3t-pw")) == [images["base"]["tag"].split(":", 1)[1]]
        assert not (tmp_path / ".docker").exists(), "credentials were written to disk"
    finally:
        for t in client.images.get(images["base"]["tag"]).tags:
            if t.startswith(reg.address):
                client.images.remove(t)
        reg.stop()
