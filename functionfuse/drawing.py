"""A workflow's DAG in Graphviz's DOT language, nodes coloured by what storage holds
for them (as :meth:`~functionfuse.baseworkflow.BaseWorkflow.plan` reports it), and its
rendering: what :class:`~functionfuse.backends.builtin.graphback.GraphWorkflow` writes
and what Jupyter shows for any workflow (``_repr_svg_``).

Rendering needs the ``graphviz`` Python package (``pip install 'functionfuse[graph]'``)
and Graphviz's ``dot`` program; the DOT source needs neither.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, FunctionFuseError, RenderError, missing_dependency
from .planner import CORRUPTED, CURRENT, MISSING, NO_STORAGE, NOT_STORED, STALE, UNVERIFIED
from .workflow import ClassNode, MethodNode

if TYPE_CHECKING:
    from .baseworkflow import BaseWorkflow

__all__ = ["STATE_COLOURS", "REPR_MAX_NODES", "dot_source", "svg_or_none", "render"]

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


def dot_source(wf: "BaseWorkflow") -> str:
    """The DAG of any workflow in Graphviz's DOT language, nodes coloured by storage
    state; on a backend that runs execution units, each unit of several nodes is a box
    around them (:mod:`functionfuse.units`)."""
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
    units = _units_or_none(wf, lines)
    if units is not None:
        # execution units of two nodes or more (class nodes are never in one)
        for k, u in enumerate(units.running, 1):  # numbered as str(wf.units()) lists them
            if len(u.indices) < 2:
                continue
            in_cluster.update(u.indices)
            what = f"group {u.group}" if u.group else u.why
            lines.append(f"  subgraph {_quote(f'cluster_unit_{k}')} {{")
            lines.append(
                f"    label={_quote(f'unit {k}: {what}, {len(u.indices)} nodes, one task')}; "
                'style="rounded,bold"; color="#1c7ed6"; fontcolor="#1c7ed6"; fontsize=10;'
            )
            for i in u.indices:
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

def _units_or_none(wf: "BaseWorkflow", lines: list[str]) -> Any:
    """The units to draw (None: the backend has none); groups that cannot run are
    said in the drawing's label instead of failing the drawing."""
    if not wf.fuses_units:
        return None
    try:
        return wf.units()
    except ConfigurationError as exc:
        lines.append(f"  label={_quote('no execution units: ' + str(exc))}; labelloc=t; fontcolor=\"#c92a2a\";")
        return None


def _node_line(wf: "BaseWorkflow", i: int, states: list[str]) -> str:
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

def _states(wf: "BaseWorkflow") -> list[str]:
    if wf.storage is None:
        return [NO_STORAGE] * len(wf.graph)
    return [p.state for p in wf.plan()]


#: above this many nodes a workflow shows as text in Jupyter (a drawing would not be legible)
REPR_MAX_NODES = 300


def svg_or_none(wf: "BaseWorkflow") -> str | None:
    """The SVG drawing of *wf* for Jupyter, or None (then its text repr is shown) when the
    graph is too large to read or Graphviz is not installed."""
    if len(wf.graph) > REPR_MAX_NODES:
        return None
    try:
        return render(dot_source(wf), "svg").decode()
    except FunctionFuseError:
        return None


def render(source: str, fmt: str) -> bytes:
    """Run Graphviz's ``dot`` on *source*."""
    try:
        import graphviz
    except ImportError as exc:
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
