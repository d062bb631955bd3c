"""Run reports as storage keeps them: one JSON document per run beside the results.

Every storage kind keeps them under ``<workflow>/.runs/<time>-<token>.json`` (names sort
by time), the newest :data:`KEEP` of them; the storage base writes, lists and trims them
over three primitives of the kind (see :class:`functionfuse.storage.base.Storage`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

__all__ = ["FOLDER", "KEEP", "NAME", "new_name", "encode", "stored_report"]

#: the folder of a workflow that holds its run reports
FOLDER = ".runs"
#: how many run reports of a workflow are kept (the newest)
KEEP = 100
#: the name of a run report: UTC time with nanoseconds, and a random token
NAME = re.compile(r"\d{8}T\d{6}\.\d{9}-[0-9a-f]{8}\.json")

_REPORT_FIELDS: dict[str, tuple[type, ...]] = {
    "workflow": (str,), "backend": (str,), "started": (str,), "seconds": (int, float), "nodes": (int,),
    "ran": (int,), "loaded": (int,), "skipped": (int,), "recomputed": (int,), "failed": (str,), "error": (str,),
    "status": (str,),
}


def new_name() -> str:
    """A name for a run report written now (later reports sort after it)."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}"
    return f"{stamp}-{uuid.uuid4().hex[:8]}.json"


def encode(report: dict) -> bytes:
    return json.dumps(report, indent=1, default=str).encode()


def stored_report(raw: Any) -> dict[str, Any] | None:
    """A run report read back from storage, as :meth:`functionfuse.report.RunReport.as_dict` writes it, or
    None if it is not one. Run reports are plain JSON files beside the results, and
    anyone who can write to the store can write them: the fields a report has, when of
    another type, are read as None, so tools that list reports never fail on one.

    >>> stored_report({"ran": 3, "seconds": "x", "slowest": [["a", 1.5], 7]})["seconds"] is None
    True
    >>> stored_report([1, 2]) is None
    True
    """
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = dict(raw)  # other keys (a caller's own) are kept as they are
    for key, kinds in _REPORT_FIELDS.items():
        value = raw.get(key)
        if key in raw and not (isinstance(value, kinds) and not isinstance(value, bool)):
            out[key] = None
    if "slowest" not in raw and "node_seconds" not in raw:
        return out
    slowest = raw.get("slowest")
    out["slowest"] = [
        [p[0], p[1]] for p in (slowest if isinstance(slowest, list) else [])
        if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
        and isinstance(p[1], (int, float)) and not isinstance(p[1], bool)
    ]
    seconds = raw.get("node_seconds")
    out["node_seconds"] = {
        k: v for k, v in (seconds.items() if isinstance(seconds, dict) else ())
        if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return out
