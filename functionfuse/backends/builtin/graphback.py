"""GraphWorkflow: draw a DAG instead of running it.

``GraphWorkflow(*nodes, workflow_name, doc_path).run()`` writes
``doc_path/<workflow_name>.dot``, ``.svg`` and ``.png`` (Graphviz) and returns the
paths. Nodes are labelled with their names; the calls on one class instance are
grouped in a box and linked by dashed "then" edges; with storage set, each node is
coloured by what storage holds for it (current, stale, missing, corrupted), as
:meth:`plan` reports. In Jupyter a GraphWorkflow displays as its drawing.

Rendering needs the ``graphviz`` Python package (``pip install 'functionfuse[graph]'``)
and Graphviz's ``dot`` program (Debian: ``apt-get install graphviz``); the DOT source is
written even without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Sequence

from ...baseworkflow import CORRUPTED, CURRENT, MISSING, NO_STORAGE, NOT_STORED, STALE, UNVERIFIED, BaseWorkflow
from ...errors import ConfigurationError, FunctionFuseError, RenderError
from ...workflow import ClassNode, MethodNode

__all__ = ["GraphWorkflow", "STATE_COLOURS", "dot_source", "svg_or_none"]

#: fill colour of a node by storage state
STATE_COLOURS = {
    CURRENT: "#b7e4c7",  # green: stored and current
    STALE: "#ffd8a8",  # orange: stored, but its code, arguments or inputs changed
    MISSING: "#e9ecef",  # grey: not stored
    CORRUPTED: "#ffa8a8",  # red: stored but unreadable
    UNVERIFIED: "#d0ebff",  # blue: stored without a fingerprint (by an older version or storage.save)
    NO_STORAGE: "#ffffff",
    NOT_STORED: "#e5dbff",  # violet: never stored (set_persist(False)), computed when needed
}


def _quote(text: str) -> str:
    """A DOT string literal; newlines become line breaks of the label."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


class GraphWorkflow(BaseWorkflow):
    """A backend that draws the workflow's DAG.

    :param nodes: DAG nodes, as for every backend.
    :param workflow_name: names the files written.
    :param doc_path: folder for the drawings (created if needed).
    """

    def __init__(self, *nodes: Any, workflow_name: str, doc_path: str = ".") -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        self.doc_path = os.fspath(doc_path)

    # -- the drawing -------------------------------------------------------------------
    def dot_source(self) -> str:
        """The DAG in Graphviz's DOT language."""
        return dot_source(self)

    # -- backend API ---------------------------------------------------------------------
    def run(self, formats: str | Sequence[str] = ("dot", "svg", "png")) -> dict[str, str]:
        """Write ``<workflow_name>.dot``, ``.svg`` and ``.png`` into ``doc_path``.

        :param formats: which of the three files to write: a sequence such as
            ``("dot", "svg")``, or a string such as ``"svg"`` or ``"dot,png"``.
        :returns: ``{"dot": path, "svg": path, "png": path}`` (the formats written).
        :raises MissingDependencyError: the graphviz package is not installed (the DOT
            file is written first).
        :raises ConfigurationError: an unknown format, or ``doc_path`` cannot be written.
        """
        if isinstance(formats, str):
            formats = [f.strip() for f in formats.split(",") if f.strip()]
        unknown = sorted(set(formats) - {"dot", "svg", "png"})
        if unknown:
            raise ConfigurationError(f"GraphWorkflow.run: unknown format(s) {', '.join(unknown)}; use dot, svg or png.")
        base = os.path.join(self.doc_path, self.workflow_name)
        source = self.dot_source()
        paths = {}
        try:
            os.makedirs(self.doc_path, exist_ok=True)
            if "dot" in formats:
                _write(base + ".dot", source.encode())
                paths["dot"] = base + ".dot"
            for fmt in ("svg", "png"):
                if fmt in formats:
                    _write(base + "." + fmt, _render(source, fmt))
                    paths[fmt] = base + "." + fmt
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot write the drawings of workflow {self.workflow_name!r} into {self.doc_path!r}: "
                f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}. "
                "Set doc_path (functionfuse graph --out) to a folder you can create and write."
            ) from exc
        return paths

    def _repr_svg_(self) -> str | None:
        return svg_or_none(self)

    def set_storage(self, object_storage: Any) -> None:
        """Colour nodes by what *object_storage* holds for them."""
        super().set_storage(object_storage)


def dot_source(wf: BaseWorkflow) -> str:
    """The DAG of any workflow in Graphviz's DOT language, nodes coloured by storage state."""
    g = wf.graph
    names = g.names
    states = _states(wf)
    lines = [
        f"digraph {_quote(wf.workflow_name)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [color="#495057"];',
    ]
    in_cluster: set[int] = set()
    for ctor, calls in g.chains.items():
        members = [ctor, *calls]
        in_cluster.update(members)
        lines.append(f"  subgraph {_quote('cluster_' + names[ctor])} {{")
        lines.append(f"    label={_quote(names[ctor] + ' (instance)')}; style=dashed; color=\"#868e96\"; fontsize=10;")
        for i in members:
            lines.append("    " + _node_line(wf, i, states))
        lines.append("  }")
    for i in range(len(g)):
        if i not in in_cluster:
            lines.append("  " + _node_line(wf, i, states))
    for i, node in enumerate(g.nodes):
        data = set(g.data_parents[i])
        for p in g.parents[i]:
            if type(node) is MethodNode and p == g.index_of(node.instance):
                continue  # the instance is drawn as the box around its calls
            style = "" if p in data else ' [style=dashed, label="then", fontsize=9]'
            lines.append(f"  {_quote(names[p])} -> {_quote(names[i])}{style};")
    # a class node used by its first call: draw it as the first step of the chain
    for ctor, calls in g.chains.items():
        first = calls[0]
        lines.append(f'  {_quote(names[ctor])} -> {_quote(names[first])} [style=dashed, label="then", fontsize=9];')
    if wf.storage is not None:
        lines.append(_legend(NOT_STORED in states))
    lines.append("}")
    return "\n".join(lines) + "\n"

def _node_line(wf: BaseWorkflow, i: int, states: list[str]) -> str:
    g = wf.graph
    node = g.nodes[i]
    name = g.names[i]
    label = name if name.startswith(node.label) else f"{name}\n{node.label}"
    shape = ", shape=component" if type(node) is ClassNode else ""
    fill = STATE_COLOURS[states[i]]
    tooltip = f"{node.label} ({states[i]})"
    return f"{_quote(name)} [label={_quote(label)}, fillcolor={_quote(fill)}, tooltip={_quote(tooltip)}{shape}];"

def _legend(not_stored: bool = False) -> str:
    shown = (CURRENT, STALE, UNVERIFIED, MISSING, CORRUPTED) + ((NOT_STORED,) if not_stored else ())
    rows = "".join(f'<TR><TD BGCOLOR="{STATE_COLOURS[s]}">{s}</TD></TR>' for s in shown)
    return (
        '  subgraph cluster_legend { label="stored"; fontsize=10; style=dashed; '
        f'legend [shape=plaintext, style="", label=<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0">{rows}</TABLE>>]; }}'
    )

def _states(wf: BaseWorkflow) -> list[str]:
    if wf.storage is None:
        return [NO_STORAGE] * len(wf.graph)
    return [p.state for p in wf.plan()]


#: above this many nodes a workflow shows as text in Jupyter (a drawing would not be legible)
REPR_MAX_NODES = 300


def svg_or_none(wf: BaseWorkflow) -> str | None:
    """The SVG drawing of *wf* for Jupyter, or None (then its text repr is shown) when the
    graph is too large to read or Graphviz is not installed."""
    if len(wf.graph) > REPR_MAX_NODES:
        return None
    try:
        return _render(dot_source(wf), "svg").decode()
    except FunctionFuseError:
        return None


def _write(path: str, data: bytes) -> None:
    """Write *path* whole or not at all (a failed render leaves no half-written file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _render(source: str, fmt: str) -> bytes:
    """Run Graphviz's ``dot`` on *source*."""
    try:
        import graphviz
    except ImportError as exc:
        from ...errors import missing_dependency

        raise missing_dependency("graphviz", "graph", exc) from exc
    if shutil.which("dot") is None:
        raise ConfigurationError(
            "Graphviz's 'dot' program is not installed; install Graphviz (Debian/Ubuntu: apt-get install graphviz, "
            "macOS: brew install graphviz). The DOT source was written."
        )
    try:
        return graphviz.Source(source).pipe(format=fmt)
    except (graphviz.backend.ExecutableNotFound, subprocess.CalledProcessError) as exc:
        raise RenderError(f"Graphviz failed to render {fmt}: {exc}") from exc
