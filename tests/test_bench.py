"""The benchmark driver's engine rows: what bench/run.py reads from the engine scripts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def load(name):
    spec = importlib.util.spec_from_file_location(f"ff_bench_{name}", os.path.join(BENCH, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)  # run.py imports its neighbours (cases, report)
    return load("run")


#: rows as bench/kfp_bench.py prints them
KFP_ROWS = [
    {"name": "rebuild after a one-line change vs first build", "ours": 6.0, "baseline": 60.0, "unit": "s",
     "ratio": 0.1, "target": "<= 0.5", "pass": True},
    {"name": "unchanged project: build skipped vs first build", "ours": 0.3, "baseline": 60.0, "unit": "s",
     "ratio": 0.005, "target": "<= 0.05", "pass": True},
    {"name": "base layers reused by the rebuild (cached build steps vs all)", "ours": 13, "baseline": 17,
     "unit": "steps", "ratio": 0.765, "target": "dependency install layer cached", "pass": True},
]


def test_kfp_rows_are_read_with_their_figures(run):
    rows = run.rows_engines({"engines": {"kfp_bench.py": {"rows": KFP_ROWS}}})
    assert [r.key for r in rows] == ["10a", "10b", "10c"]
    assert [(r.ours, r.baseline, r.ratio) for r in rows] == [(6.0, 60.0, 0.1), (0.3, 60.0, 0.005), (13, 17, 0.765)]
    assert [r.target for r in rows] == ["ours/base <= 0.5", "ours/base <= 0.05", "dependency install layer cached"]
    assert [r.result for r in rows] == ["PASS", "PASS", "PASS"]
    table = run.render(rows, "t")
    assert "KFP: rebuild after a one-line change vs first build" in table


def test_an_empty_target_is_not_shown_as_a_comparison(run):
    rows = run.rows_engines({"engines": {"kfp_bench.py": {"rows": [{**KFP_ROWS[0], "target": ""}]}}})
    assert rows[0].target == ""


def test_kfp_bench_takes_the_quick_flag_run_py_passes():
    out = subprocess.run([sys.executable, os.path.join(BENCH, "kfp_bench.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--quick" in out


def test_kfp_bench_counts_the_cached_build_steps():
    bench = load("kfp_bench")
    log = [
        "Step 1/4 : FROM base", " ---> 1234",
        "Step 2/4 : RUN pip install -r requirements.txt", " ---> Using cache", " ---> 5678",
        "Step 3/4 : COPY project /p", " ---> abcd",
        "Step 4/4 : RUN check", " ---> Running in x", " ---> ef01",
    ]
    assert bench.layer_counts(log) == (1, 4, True)
    assert bench.layer_counts([line for line in log if "Using cache" not in line]) == (0, 4, False)
