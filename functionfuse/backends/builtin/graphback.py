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
from typing import Any, Sequence

from ...baseworkflow import BaseWorkflow
from ...drawing import REPR_MAX_NODES, STATE_COLOURS, dot_source, render, svg_or_none
from ...errors import ConfigurationError

__all__ = ["GraphWorkflow", "STATE_COLOURS", "REPR_MAX_NODES", "dot_source", "svg_or_none"]


class GraphWorkflow(BaseWorkflow):
    """A backend that draws the workflow's DAG.

    :param nodes: DAG nodes, as for every backend.
    :param workflow_name: names the files written.
    :param doc_path: folder for the drawings (created if needed).

    The drawing shows the execution units the engines (Ray, Prefect, KFP) would run:
    each unit of several nodes is a box around them, labelled with why they were put
    together (``set_fusion``, ``query(...).set_group`` change them as on those backends).
    """

    fuses_units = True

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
                    _write(base + "." + fmt, render(source, fmt))
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


def _write(path: str, data: bytes) -> None:
    """Write *path* whole or not at all (a failed render leaves no half-written file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
