"""Warnings located at the user's code: the first frame outside functionfuse (past
library code, such as Prefect's flow engine, that only leads back into it)."""

from __future__ import annotations

import os
import sys
import sysconfig
import warnings
from types import FrameType

__all__ = ["user_frame", "warn_at_user_frame"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY_DIRS = tuple(
    {os.path.abspath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_path(key))}
)


def _ours(frame: FrameType) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def _library(frame: FrameType) -> bool:
    filename = frame.f_code.co_filename
    return filename.startswith("<") or os.path.abspath(filename).startswith(_LIBRARY_DIRS)


def user_frame() -> FrameType | None:
    """The innermost frame of the code that called into functionfuse: the first frame
    outside this package, past library code (Prefect's flow engine, ...) that only
    leads back into it."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if _ours(frame):
            frame = frame.f_back
            continue
        outer: FrameType | None = frame
        while outer is not None and not _ours(outer) and _library(outer):
            outer = outer.f_back
        if outer is None or not _ours(outer):
            return frame
        frame = outer
    return None


def warn_at_user_frame(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` with the location of the user's code that called into
    functionfuse (see :func:`user_frame`), from whatever thread or depth it is called."""
    frame = user_frame()
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    module_globals = frame.f_globals
    warnings.warn_explicit(
        message,
        category,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=module_globals.get("__name__", "<unknown>"),
        registry=module_globals.setdefault("__warningregistry__", {}),
        # no module_globals: their loader may refuse get_source (``python -c``: BuiltinImporter);
        # the source line shown is read from the file, as for any traceback
    )
