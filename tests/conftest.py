import os

# Keep every test's storage and caches out of the user's home and working folder.
os.environ.setdefault("PYTHONHASHSEED", "0")


def pytest_ignore_collect(collection_path, config):
    """tests/rayworkflow/ runs only in .venv-rayworkflow (see tests/test_rayworkflowback.py).

    The main run must not even import it: ``--doctest-modules`` would, and its module-level
    setup (``FUNCTIONFUSE_TEST_CALLS``, ``PYTHONPATH``) would leak into every later test.
    """
    if collection_path.name == "rayworkflow" and os.environ.get("FUNCTIONFUSE_RAYWORKFLOW_CHECKS") != "1":
        return True
    return None
