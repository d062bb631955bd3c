"""GraphWorkflow: real Graphviz drawings of the seed DAGs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from contracts.backend import seed_incremental_sum, seed_quick_start
from functionfuse import workflow
from functionfuse.backends.builtin.graphback import STATE_COLOURS, GraphWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import ConfigurationError
from functionfuse.storage import storage_factory

pytest.importorskip("graphviz", reason="the graph extra is not installed")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_seed_graph_is_drawn_in_three_formats(tmp_path):
    paths = GraphWorkflow(seed_quick_start(), workflow_name="plot_graph", doc_path=str(tmp_path)).run()
    assert set(paths) == {"dot", "svg", "png"}
    svg = Path(paths["svg"]).read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for name in ("node1", "node2", "node3"):
        assert f">{name}</text>" in svg
    width, height = png_size(Path(paths["png"]).read_bytes())
    assert width > 50 and height > 50
    dot = Path(paths["dot"]).read_text()
    assert '"node1" -> "node2";' in dot and '"node1" -> "node3";' in dot and '"node2" -> "node3";' in dot


def test_class_method_chains_are_visible(tmp_path):
    wf = GraphWorkflow(seed_incremental_sum(), workflow_name="stateful", doc_path=str(tmp_path))
    dot = wf.dot_source()
    assert 'subgraph "cluster_IncrementalSum"' in dot
    assert '"IncrementalSum" -> "one_plus_two" [style=dashed, label="then"' in dot
    assert '"one_plus_two" -> "three_plus_two" [style=dashed' in dot
    assert '"three_minus_one" -> "one_plus_two";' in dot
    svg = Path(wf.run()["svg"]).read_text()
    for name in ("four_minus_three", "IncrementalSum", "three_minus_one", "one_plus_two", "three_plus_two", "five_plus_one", "six_minus_two"):
        assert f">{name}</text>" in svg


def stored_drawing(tmp_path, damage):
    """The seed DAG run once into file storage, *damage* done to the storage, and a
    GraphWorkflow of the DAG reading that storage."""
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    out = seed_quick_start()
    run = LocalWorkflow(out, workflow_name="ops")
    run.set_storage(storage)
    run.run()
    damage(storage)
    drawing = GraphWorkflow(out, workflow_name="ops", doc_path=str(tmp_path))
    drawing.set_storage(storage)
    return drawing


def test_nodes_are_coloured_by_storage_state(tmp_path):
    drawing = stored_drawing(tmp_path, lambda storage: storage.remove_task("ops", task_name="node3"))
    dot = drawing.dot_source()
    node1 = dot.split('"node1" [')[1].split("\n")[0]
    assert f'fillcolor="{STATE_COLOURS["current"]}"' in node1
    node3 = dot.split('"node3" [')[1].split("\n")[0]
    assert STATE_COLOURS["missing"] in node3
    assert "legend" in dot


def test_an_unreadable_stored_result_is_drawn_red(tmp_path):
    drawing = stored_drawing(tmp_path, lambda storage: (tmp_path / "s" / "ops" / "node2.ffr").write_bytes(b"torn"))
    node2 = drawing.dot_source().split('"node2" [')[1].split("\n")[0]
    assert f'fillcolor="{STATE_COLOURS["corrupted"]}"' in node2 and "(corrupted)" in node2
    svg = Path(drawing.run(formats="svg")["svg"]).read_text()
    assert STATE_COLOURS["corrupted"] in svg


def test_formats_may_be_a_string(tmp_path):
    wf = GraphWorkflow(seed_quick_start(), workflow_name="one", doc_path=str(tmp_path))
    assert set(wf.run(formats="svg")) == {"svg"}
    assert set(wf.run(formats="dot,png")) == {"dot", "png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.dot", "one.png", "one.svg"]
    with pytest.raises(ConfigurationError, match="unknown format.*jpg"):
        wf.run(formats="jpg")


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    wf = GraphWorkflow(seed_quick_start(), workflow_name="x", doc_path=str(tmp_path / "file" / "docs"))
    with pytest.raises(ConfigurationError, match="file/docs.*doc_path"):
        wf.run()


def test_jupyter_displays_the_drawing():
    svg = GraphWorkflow(seed_quick_start(), workflow_name="nb")._repr_svg_()
    assert svg is not None and "<svg" in svg and ">node3</text>" in svg


def test_without_graphviz_jupyter_shows_text(monkeypatch):
    import functionfuse.drawing as drawing

    monkeypatch.setattr(drawing.shutil, "which", lambda name: None)
    assert GraphWorkflow(seed_quick_start(), workflow_name="nb")._repr_svg_() is None


def test_any_workflow_displays_as_its_graph_in_jupyter(tmp_path):
    wf = LocalWorkflow(seed_quick_start(), workflow_name="nb")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    missing = wf._repr_svg_()
    assert "<svg" in missing and ">node3</text>" in missing and STATE_COLOURS["missing"] in missing
    wf.run()
    assert STATE_COLOURS["current"] in wf._repr_svg_()


def test_a_graph_too_large_to_read_displays_as_text():
    from functionfuse.backends.builtin.graphback import REPR_MAX_NODES

    @workflow
    def step(x):
        return x + 1

    x = step(0)
    for _ in range(REPR_MAX_NODES):
        x = step(x)
    assert LocalWorkflow(x, workflow_name="big")._repr_svg_() is None
