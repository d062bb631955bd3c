"""Fingerprints: what a stored result was computed from.

The fingerprint of a node hashes

* its **code**: the function's (or class's, for class nodes: every method's) source,
  parsed and re-serialized so comments, docstrings and formatting do not count, with
  its decorators (except ``@workflow``), plus the code of the functions and classes
  *of the user's own modules* it refers to (recursively, as globals, through closures,
  or as ``module.name`` / ``package.module.name``), the wrappers that decorators made
  of them, the values of immutable module-level constants it reads (numbers, strings,
  bytes, and tuples/frozensets of them), its default arguments and closure values
  (whatever their type: a closure's values are fixed when the function is made);
* its **arguments** that are not nodes (bound to parameter names, so ``f(1, b=2)`` and
  ``f(1, 2)`` agree);
* the fingerprints of its **parents** (the nodes it depends on). A node's fingerprint
  is computed from its parents' fingerprints, never from their results, so nothing is
  loaded to compute it.

Values are hashed by content with xxh3-128: NumPy arrays hash their bytes once (about
30 GB/s per core; from 64 MiB on in chunks on several threads, see
:func:`functionfuse._arrayfp.buffer_digest`; an array passed to many nodes is hashed
once per run), Zarr arrays their metadata and
stored chunks (checksums the store keeps, else the compressed bytes) and Dask arrays
their graph token plus the Zarr arrays they read (see :mod:`functionfuse._arrayfp`),
built-in and C functions (``len``, ufuncs, ``math.sin``) their qualified name,
containers recurse, other objects hash their ``__reduce_ex__`` state. Nothing uses
``hash()`` or pickle bytes of functions, so fingerprints agree across processes,
machines, hash seeds and Python versions with the same ``ast`` for the code.

Limits: code outside the user's modules (installed packages, the standard library) is
identified by name only, so upgrading a library does not make results stale (library
versions are recorded in each result's metadata). Objects that cannot be reduced are
identified by type only, with a warning.
"""

from __future__ import annotations

import copyreg
import functools
import inspect
import logging
import sys
import types
import warnings
from typing import AbstractSet, Any, Callable


from ._sourcefp import (
    code_digest,
    digest,
    is_user_module,
    loaded_type,
    names_used,
    simple_constant,
    source_digest,
    user_object,
)
from .errors import FingerprintWarning
from .workflow import NODE_TYPES, NodeItem

__all__ = [
    "Fingerprinter", "code_fingerprint", "value_fingerprint", "FINGERPRINT_VERSION", "explain", "FingerprintWarning",
]

log = logging.getLogger("functionfuse.fingerprint")

FINGERPRINT_VERSION = 1
_MAX_DEPTH = 64
_MAX_WRAPPERS = 32  # decorators on one function, at most
#: nodes and node items: the lazy values an argument can hold
_LAZY_TYPES = NODE_TYPES | {NodeItem}
_MISSING = object()


class Fingerprinter:
    """Computes code and value fingerprints, caching within one run (one plan)."""

    def __init__(self, node_digest: Callable[[Any], str] | None = None) -> None:
        #: digest of a node (or node item) met inside a value: its fingerprint
        self._node_digest = node_digest
        self._code: dict[int, dict[str, str]] = {}
        self._values: dict[int, tuple[Any, str]] = {}
        self._signatures: dict[int, inspect.Signature | None] = {}
        self._positional: dict[int, Any] = {}
        self._opaque_warned: set[str] = set()

    # -- code --------------------------------------------------------------------------------
    def code(self, obj: Any) -> dict[str, str]:
        """``{qualified name: digest}`` of *obj* and of the user code it refers to."""
        key = id(obj)
        cached = self._code.get(key)
        if cached is None:
            found: dict[str, str] = {}
            outer = getattr(self, "_owners", None)  # code() is re-entered for functions inside values
            self._owners: dict[str, list[int]] = {}
            try:
                self._collect(obj, found, set())
            finally:
                if outer is not None:
                    self._owners = outer
            cached = self._code[key] = dict(sorted(found.items()))
        return cached

    def _key(self, obj: Any) -> str:
        """The name code is recorded under: its qualified name, so the same code run as a
        script (``__main__``) or imported as a module agrees. Objects met later with a
        qualified name already taken (lambdas, functions of one factory, same-named
        helpers of two modules) get ``#1``, ``#2``... in the order the code refers to
        them, which does not depend on module names either."""
        qual = getattr(obj, "__ff_qualname__", None) or getattr(obj, "__qualname__", None) or type(obj).__qualname__
        owners = self._owners.setdefault(qual, [])
        if id(obj) not in owners:
            owners.append(id(obj))
        k = owners.index(id(obj))
        return qual if k == 0 else f"{qual}#{k}"

    def _collect(self, obj: Any, found: dict[str, str], seen: set[int]) -> None:
        wrappers: list[Any] = []
        if callable(obj):
            # decorators made with functools.wraps: the wrappers are code too (their
            # closures hold the decorator's arguments); the innermost function names it
            chain = {id(obj)}
            inner = getattr(obj, "__wrapped__", None)
            while inner is not None and id(inner) not in chain and callable(inner) and len(chain) <= _MAX_WRAPPERS:
                wrappers.append(obj)
                chain.add(id(inner))
                obj = inner
                inner = getattr(obj, "__wrapped__", None)
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, property):
            for f in (obj.fget, obj.fset, obj.fdel):
                if f is not None:
                    self._collect(f, found, seen)
            return
        if isinstance(obj, functools.partial):
            found[self._key(obj)] = digest(b"partial", self.value(obj.args).encode(), self.value(obj.keywords).encode())
            self._collect(obj.func, found, seen)
            return
        name = self._key(obj)
        if isinstance(obj, type):
            if not user_object(obj):
                return
            parts = [(source_digest(obj) or "").encode()]
            for attr, value in sorted(vars(obj).items()):
                if attr.startswith("__") and attr not in ("__init__", "__call__", "__new__", "__post_init__"):
                    continue
                if isinstance(value, (types.FunctionType, staticmethod, classmethod, property)):
                    self._collect(value, found, seen)
                elif simple_constant(value):
                    parts.append(f"{attr}={value!r}".encode())
            for base in obj.__bases__:
                if user_object(base):
                    self._collect(base, found, seen)
            found[name] = digest(*parts)
            return
        code = getattr(obj, "__code__", None)
        if not isinstance(code, types.CodeType):
            return  # builtins, C functions: identified by name where they are used
        if not user_object(obj) and found:
            return  # library code referenced by user code: by name only
        parts = self._function_parts(obj, code, found, seen)
        for wrapper in wrappers:
            wcode = getattr(wrapper, "__code__", None)
            if isinstance(wcode, types.CodeType) and user_object(wrapper):
                parts.append(b"wrapped-by:" + digest(*self._function_parts(wrapper, wcode, found, seen)).encode())
        found[name] = digest(*parts)

    def _function_parts(self, obj: Any, code: types.CodeType, found: dict[str, str], seen: set[int]) -> list[bytes]:
        """A function's own code, defaults, closure values and the globals (and user
        modules) it reads."""
        own = source_digest(obj) or ("bc:" + code_digest(code))
        parts = [own.encode()]
        if getattr(obj, "__defaults__", None):
            parts.append(self.value(obj.__defaults__).encode())
        if getattr(obj, "__kwdefaults__", None):
            parts.append(self.value(obj.__kwdefaults__).encode())
        used, attrs, imported = names_used(code)
        if getattr(obj, "__closure__", None):
            for cell in obj.__closure__:
                try:
                    content = cell.cell_contents
                except ValueError:
                    continue
                parts.append(self._reference(content, found, seen, code_names=attrs, closure=True).encode())
        globs = getattr(obj, "__globals__", {})
        for gname in sorted(used):
            if gname not in globs:
                continue
            ref = self._reference(globs[gname], found, seen, code_names=attrs)
            if ref:
                parts.append(f"{gname}:{ref}".encode())
        for modname in sorted(imported):  # import statements inside the function
            module = sys.modules.get(modname)
            if isinstance(module, types.ModuleType):
                ref = self._module_reference(module, found, seen, attrs, set())
                if ref:
                    parts.append(f"import {modname}:{ref}".encode())
        return parts

    def _reference(
        self, value: Any, found: dict[str, str], seen: set[int], code_names: Any = (), closure: bool = False
    ) -> str:
        """How a global or closure value enters a code fingerprint.

        Mutable globals (caches, counters, registries) are left out: they change while
        the program runs and would make every result look stale. A closure's values are
        fixed when the function is made, so they count whatever their type.
        """
        if isinstance(value, types.ModuleType):
            return self._module_reference(value, found, seen, set(code_names), set())
        if isinstance(value, functools.partial):
            inner = self._reference(value.func, found, seen, code_names, closure)
            return digest(b"partial", inner.encode(), self.value(value.args).encode(), self.value(value.keywords).encode())
        if isinstance(value, (types.FunctionType, type)) or hasattr(value, "__wrapped__"):
            target = value
            for _ in range(_MAX_WRAPPERS):
                if user_object(target) or not hasattr(target, "__wrapped__"):
                    break
                target = target.__wrapped__  # a library wrapper of user code
            if user_object(target):
                self._collect(target, found, seen)
                return ""
            return _display_name(target)
        if type(value) in _LAZY_TYPES and self._node_digest is None:
            return digest(b"node", str(getattr(value, "name", "")).encode())
        if callable(value) and not closure:
            return _display_name(value)
        if closure or simple_constant(value):
            return self.value(value)
        return ""

    def _module_reference(
        self, module: types.ModuleType, found: dict[str, str], seen: set[int], names: AbstractSet[str], visited: set[int]
    ) -> str:
        """The members of a user module that the code names (``helpers.normalize``,
        ``pkg.sub.deep``: through submodules too), collected or hashed like globals."""
        if not is_user_module(module.__name__) or id(module) in visited:
            return ""
        visited.add(id(module))
        parts = []
        for attr in sorted(names):
            member = getattr(module, attr, _MISSING)
            if member is _MISSING:
                continue
            if isinstance(member, types.ModuleType):
                ref = self._module_reference(member, found, seen, names, visited)
            elif simple_constant(member) or isinstance(member, functools.partial) or user_object(member):
                ref = self._reference(member, found, seen)
            else:
                ref = ""  # library objects imported into the module, mutable values
            if ref:
                parts.append(f"{attr}:{ref}".encode())
        return digest(b"module", *parts) if parts else ""

    # -- values ------------------------------------------------------------------------------
    def value(self, value: Any) -> str:
        """Content digest of a value (arguments, constants)."""
        return self._value(value, 0)

    def _value(self, v: Any, depth: int) -> str:
        if depth > _MAX_DEPTH:
            return digest(b"deep", type(v).__qualname__.encode())
        t = type(v)
        if v is None or t is bool or t is int or t is float or t is complex:
            return digest(t.__name__.encode(), repr(v).encode())
        if t is str:
            return digest(b"str", v.encode("utf-8", "surrogatepass"))
        if t is bytes or t is bytearray:
            return digest(b"bytes", bytes(v))
        if t is list or t is tuple:
            return digest(t.__name__.encode(), *(self._value(x, depth + 1).encode() for x in v))
        if t is dict:
            items = sorted((self._value(k, depth + 1), self._value(x, depth + 1)) for k, x in v.items())
            return digest(b"dict", *(f"{k}:{x}".encode() for k, x in items))
        if t is set or t is frozenset:
            return digest(t.__name__.encode(), *sorted(self._value(x, depth + 1).encode() for x in v))
        if t in _LAZY_TYPES:
            if self._node_digest is None:
                raise TypeError("a node inside a value needs a node_digest function")
            return self._node_digest(v)
        cached = self._values.get(id(v))
        if cached is not None and cached[0] is v:
            return cached[1]
        found = self._object(v, depth)
        self._values[id(v)] = (v, found)  # keep v alive so its id is not reused
        return found

    def _object(self, v: Any, depth: int) -> str:
        t = type(v)
        module = t.__module__
        if t is loaded_type("numpy", "ndarray"):
            import numpy as np

            if v.dtype.hasobject:
                return digest(b"ndarray-object", str(v.shape).encode(), self._value(v.tolist(), depth + 1).encode())
            from ._arrayfp import buffer_digest

            data = np.ascontiguousarray(v)
            return digest(b"ndarray", v.dtype.str.encode(), str(v.shape).encode(), buffer_digest(memoryview(data).cast("B")))  # type: ignore[arg-type]
        if module == "numpy" and hasattr(v, "dtype") and getattr(v, "shape", None) == ():
            return digest(b"npscalar", str(v.dtype).encode(), repr(v.item()).encode())
        if t is loaded_type("dask.array", "Array"):
            from ._arrayfp import dask_summary

            return dask_summary(self, v)
        if t is loaded_type("zarr", "Array"):
            from ._arrayfp import zarr_summary

            return zarr_summary(self, v)
        if isinstance(v, (types.FunctionType, type)) or hasattr(v, "__wrapped__"):
            return digest(b"code", repr(sorted(self.code(v).items())).encode())
        if isinstance(v, types.ModuleType):
            return digest(b"module", v.__name__.encode())
        if hasattr(v, "__dataclass_fields__") or (hasattr(v, "__dict__") and not hasattr(t, "__reduce_ex__")):
            return digest(b"obj", _type_name(t).encode(), self._value(dict(vars(v)), depth + 1).encode())
        try:
            reducer = copyreg.dispatch_table.get(t)  # as pickle does: NumPy's ufuncs register here
            reduced = reducer(v) if reducer is not None else v.__reduce_ex__(4)
        except Exception:
            reduced = None
        if isinstance(reduced, str):
            # a global found by name (built-in and C functions, ufuncs, singletons)
            return digest(b"global", f"{_owner_module(v, reduced)}.{reduced}".encode())
        if isinstance(reduced, tuple) and len(reduced) >= 2:
            parts = [b"reduce", _type_name(t).encode(), _type_name(reduced[0]).encode()]
            parts.append(self._value(tuple(reduced[1]) if isinstance(reduced[1], tuple) else reduced[1], depth + 1).encode())
            if len(reduced) > 2 and reduced[2] is not None:
                state = reduced[2]
                if isinstance(state, dict):
                    state = {k: x for k, x in state.items()}
                parts.append(self._value(state, depth + 1).encode())
            for extra in reduced[3:5]:
                if extra is not None:
                    parts.append(self._value(list(extra), depth + 1).encode())
            return digest(*parts)
        return self.opaque(t)

    def opaque(self, t: type) -> str:
        """The digest of a value known by its type only (with a warning, once per type)."""
        name = _display_name(t)
        if name not in self._opaque_warned:
            self._opaque_warned.add(name)
            warnings.warn(
                f"Values of type {name} cannot be fingerprinted by content; changes to them will not "
                "make results stale. Pass plain data, NumPy arrays or picklable objects instead.",
                FingerprintWarning,
                stacklevel=5,
            )
        return digest(b"opaque", name.encode())

    # -- arguments ----------------------------------------------------------------------------
    def positional_names(self, func: Any) -> tuple[str, ...] | None:
        """Parameter names when every parameter is a plain positional-or-keyword one
        (then binding arguments is a zip); None otherwise."""
        key = id(func)
        names = self._positional.get(key, False)
        if names is False:
            sig = self.signature(func)
            params = list(sig.parameters.values()) if sig is not None else None
            if params is not None and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
                names = tuple(p.name for p in params)
            else:
                names = None
            self._positional[key] = names
        return names

    def signature(self, func: Any) -> inspect.Signature | None:
        key = id(func)
        if key not in self._signatures:
            try:
                self._signatures[key] = inspect.signature(func)
            except (TypeError, ValueError):
                self._signatures[key] = None
        return self._signatures[key]


def _owner_module(obj: Any, name: str) -> str:
    """The module *obj* is the global *name* of (as pickle finds it)."""
    module = getattr(obj, "__module__", None)
    if isinstance(module, str):
        return module
    for modname, mod in list(sys.modules.items()):
        if getattr(mod, name, None) is obj:
            return modname
    return "__main__"


def _display_name(obj: Any) -> str:
    qual = getattr(obj, "__ff_qualname__", None) or getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(qual, str):
        qual = type(obj).__qualname__
    mod = getattr(obj, "__module__", None) or ""
    return f"{mod}.{qual}" if mod else qual


def _type_name(obj: Any) -> str:
    """How a value's class (or reconstructor) is named in its fingerprint: a class or
    function of the user's own modules by its qualified name alone, so a file run as a
    script (``__main__``) and the same file imported agree, as code keys do; anything
    else by module and qualified name."""
    module = getattr(obj, "__module__", None)
    if isinstance(module, str) and is_user_module(module):
        qual = getattr(obj, "__qualname__", None)
        if isinstance(qual, str):
            return qual
    return _display_name(obj)


def code_fingerprint(obj: Any) -> dict[str, str]:
    """``{qualified name: digest}`` for *obj* and the user code it refers to."""
    return Fingerprinter().code(obj)


def value_fingerprint(value: Any) -> str:
    """The content digest of *value*."""
    return Fingerprinter().value(value)


def explain(stored: dict | None, current: dict) -> list[str]:
    """Why a stored fingerprint record differs from the current one (empty if equal)."""
    if not stored:
        return ["no fingerprint was recorded with the stored result"]
    if stored.get("node") == current.get("node"):
        return []
    reasons = []
    old_code, new_code = stored.get("code", {}), current.get("code", {})
    for name in sorted(set(old_code) | set(new_code)):
        if name not in new_code:
            reasons.append(f"code {name} is no longer used")
        elif name not in old_code:
            reasons.append(f"code {name} is new")
        elif old_code[name] != new_code[name]:
            reasons.append(f"code of {name} changed")
    old_in, new_in = stored.get("inputs", {}), current.get("inputs", {})
    inputs = [n for n in dict.fromkeys([*old_in, *new_in]) if old_in.get(n) != new_in.get(n)]
    old_args, new_args = stored.get("args", {}), current.get("args", {})
    for name in list(dict.fromkeys([*old_args, *new_args])):
        old, new = old_args.get(name), new_args.get(name)
        if old != new:
            # an argument holding nodes ("@") changes with its inputs: report the inputs
            if inputs and (old or "").startswith("@") and (new or "").startswith("@"):
                continue
            reasons.append(f"argument {name!r} changed")
    reasons.extend(f"input {n!r} changed" for n in inputs)
    if stored.get("v") != current.get("v"):
        reasons.append("fingerprint format changed")
    return reasons or ["fingerprint changed"]
