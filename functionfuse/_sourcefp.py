"""What code is made of, for fingerprints (:mod:`functionfuse.fingerprint`): which
modules are the user's own, a definition's canonical source (comments, docstrings,
formatting and the ``@workflow`` decorator left out), the bytecode fallback, and the
names a code object reads; :func:`digest`, the hash every fingerprint is made with.
"""

from __future__ import annotations

import ast
import dis
import functools
import inspect
import os
import struct
import sys
import sysconfig
import textwrap
import types
from typing import Any, Callable

import xxhash

from .workflow import workflow

__all__ = [
    "digest", "is_user_module", "user_object", "source_digest", "code_digest", "names_used", "simple_constant",
    "loaded_type",
]


def digest(*parts: bytes) -> str:
    """xxh3-128 of *parts*, each length-prefixed (so ``(b"ab", b"c")`` and
    ``(b"a", b"bc")`` differ), as hex."""
    h = xxhash.xxh3_128()
    for p in parts:
        h.update(struct.pack("<Q", len(p)))
        h.update(p)
    return h.hexdigest()


def loaded_type(module: str, name: str) -> Any:
    """``module.name`` if *module* (an optional engine: numpy, dask.array, zarr) is
    imported already, else None. A value of its type exists only once it is imported,
    so nothing is imported to recognise one, and types are compared, not their names."""
    return getattr(sys.modules.get(module), name, None)


# -- which modules are the user's own -----------------------------------------------------------
@functools.lru_cache(maxsize=None)
def library_roots() -> tuple[str, ...]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(os.path.realpath(p))
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix):
        roots.add(os.path.realpath(os.path.join(p, "lib")))
    for p in sys.path:
        if "site-packages" in p or "dist-packages" in p:
            roots.add(os.path.realpath(p))
    return tuple(sorted(roots))


@functools.lru_cache(maxsize=4096)
def is_user_module(name: str) -> bool:
    if name == "__main__":
        return True
    if name.split(".")[0] in ("functionfuse", "builtins") or name in sys.builtin_module_names:
        return False
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None)
    # a namespace package (no __init__.py) has folders only
    paths = [path] if path else [p for p in getattr(mod, "__path__", None) or () if isinstance(p, str)]
    roots = library_roots()
    return any(not any(os.path.realpath(p).startswith(root + os.sep) for root in roots) for p in paths)


def user_object(obj: Any) -> bool:
    mod = getattr(obj, "__module__", None)
    return isinstance(mod, str) and is_user_module(mod)


# -- canonical source ----------------------------------------------------------------------------------
_SKIP_FIELDS = {"ctx", "lineno", "col_offset", "end_lineno", "end_col_offset", "type_comment", "kind"}


def canonical(node: Any, out: list[str], keep: Callable[[Any], bool] = lambda d: True) -> None:
    """Append the canonical form of *node* to *out*; *keep* filters the decorators of
    the outermost definition (the ``@workflow`` decorator is not part of the
    computation; every other decorator is)."""
    if isinstance(node, ast.AST):
        out.append(type(node).__name__)
        out.append("(")
        body_fields = ("body",) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ()
        for field, value in ast.iter_fields(node):
            if field == "decorator_list":
                value = [d for d in value if keep(d)]
            if field in _SKIP_FIELDS or value is None or value == []:
                continue
            if field in body_fields and value and is_docstring(value[0]):
                value = value[1:]
                if not value:
                    continue
            out.append(field)
            out.append("=")
            canonical(value, out)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            canonical(item, out)
            out.append(",")
        out.append("]")
    else:
        out.append(type(node).__name__)
        out.append(repr(node))


def is_docstring(stmt: Any) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


_SOURCE_DIGESTS: dict[tuple[Any, str], str | None] = {}


def source_digest(obj: Any) -> str | None:
    """Digest of *obj*'s canonical source, cached per code object for the process
    (parsing is the expensive part of a fingerprint). A function's source is read from
    its own code object, so a wrapper made by a decorator is not mistaken for the
    function it wraps."""
    code = getattr(obj, "__code__", None)
    if not isinstance(code, types.CodeType):
        return parse_digest(obj, obj)
    key = (code, code.co_filename)
    if key not in _SOURCE_DIGESTS:
        _SOURCE_DIGESTS[key] = parse_digest(code, obj)
    return _SOURCE_DIGESTS[key]


def parse_digest(source_of: Any, obj: Any) -> str | None:
    try:
        src = textwrap.dedent(inspect.getsource(source_of))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    if len(tree.body) != 1:
        return None
    out: list[str] = []
    canonical(tree.body[0], out, functools.partial(not_ours, namespace_of(obj)))
    return digest("".join(out).encode())


def namespace_of(obj: Any) -> dict:
    """The globals a definition's decorators were evaluated in."""
    globs = getattr(obj, "__globals__", None)
    if isinstance(globs, dict):
        return globs
    return getattr(sys.modules.get(getattr(obj, "__module__", None) or ""), "__dict__", {})


def not_ours(namespace: dict, decorator: Any) -> bool:
    """False for ``@workflow`` / ``@task`` (however imported), True for any other decorator."""
    expr = decorator.func if isinstance(decorator, ast.Call) else decorator
    path: list[str] = []
    while isinstance(expr, ast.Attribute):
        path.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return True
    value = namespace.get(expr.id, _MISSING)
    for attr in reversed(path):
        value = getattr(value, attr, _MISSING)
    return value is not workflow


_MISSING = object()


def code_digest(code: types.CodeType) -> str:
    """Bytecode fallback (no source): stable within one Python version."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            parts.append(code_digest(c).encode())
        elif isinstance(c, frozenset):
            parts.append(repr(sorted(map(repr, c))).encode())
        else:
            parts.append(repr(c).encode())
    return digest(*parts)


@functools.lru_cache(maxsize=4096)
def names_used(code: types.CodeType) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(global names read, attribute names read, modules imported) by *code* and the
    code nested in it."""
    globals_: set[str] = set()
    attrs: set[str] = set()
    imported: set[str] = set()
    # the import level and the fromlist are loaded just before IMPORT_NAME
    previous: list[Any] = [None, None]
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
            globals_.add(ins.argval)
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD", "IMPORT_FROM") and isinstance(ins.argval, str):
            attrs.add(ins.argval)
        elif ins.opname == "IMPORT_NAME" and isinstance(ins.argval, str):
            first = previous[0]  # the level: only absolute imports name a module by themselves
            if first is not None and first.opname == "LOAD_CONST" and first.argval == 0:
                imported.add(ins.argval)
                imported.add(ins.argval.partition(".")[0])
        previous = [previous[1], ins]
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            g, a, m = names_used(c)
            globals_ |= g
            attrs |= a
            imported |= m
    return frozenset(globals_), frozenset(attrs), frozenset(imported)


def simple_constant(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(simple_constant(v) for v in value)
    return False
