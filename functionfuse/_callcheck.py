"""Whether a call of a decorated function, class or method fits its signature, checked
when the node is made (:mod:`functionfuse.workflow`), and the error that says where.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from typing import TYPE_CHECKING, Any

from .errors import NodeCallError

if TYPE_CHECKING:  # pragma: no cover
    from .workflow import ClassNode

__all__ = ["CallCheck", "method_check", "qualname_of", "FRONTEND_FILES"]

#: source files of the frontend: the frame that made a node is the first outside them
FRONTEND_FILES: set[str] = {__file__}


def qualname_of(obj: Any) -> str:
    """The qualified name of a function or class (of its type for other objects)."""
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__


class CallCheck:
    """Whether a call fits one function's signature, checked when a node is made.

    The common call (positional arguments only, as many as the function takes) is
    decided by ``min_pos <= len(args) <= max_pos`` where the node is made; a call with
    keywords by :meth:`fits`. A call neither accepts goes through :meth:`bind`
    (``inspect.Signature.bind``), which raises :class:`NodeCallError` if it does not
    fit. Nodes among the arguments are values like any other. A function without a
    signature (some builtins) is not checked: its call fails when the node runs.
    """

    __slots__ = ("signature", "min_pos", "max_pos", "func", "qualname", "positions", "keywords", "required")

    def __init__(self, signature: inspect.Signature | None, func: Any, qualname: str) -> None:
        self.signature = signature
        self.func = func  # what the error names and locates
        self.qualname = qualname
        #: position of each parameter that can be given positionally (-1: positional-only)
        self.positions: dict[str, int] = {}
        #: names a keyword may have (None: any, the function takes ``**kwargs``)
        self.keywords: frozenset[str] | None = frozenset()
        #: (name, position) of each required parameter; keyword-only ones at sys.maxsize
        self.required: list[tuple[str, int]] = []
        if signature is None:
            self.min_pos, self.max_pos = 0, sys.maxsize
            self.keywords = None
            return
        required = most = 0
        keywords = set()
        for p in signature.parameters.values():
            kind = p.kind
            if kind is p.POSITIONAL_ONLY or kind is p.POSITIONAL_OR_KEYWORD:
                if p.default is p.empty:
                    required += 1
                    self.required.append((p.name, most))
                if kind is p.POSITIONAL_ONLY:
                    self.positions[p.name] = -1
                else:
                    self.positions[p.name] = most
                    keywords.add(p.name)
                most += 1
            elif kind is p.VAR_POSITIONAL:
                most = sys.maxsize
            elif kind is p.KEYWORD_ONLY:
                keywords.add(p.name)
                if p.default is p.empty:
                    self.required.append((p.name, sys.maxsize))
            else:
                self.keywords = None
        if self.keywords is not None:
            self.keywords = frozenset(keywords)
        # a required keyword-only parameter: no call without keywords fits
        keyword_required = len(self.required) > required
        self.min_pos, self.max_pos = (1, 0) if keyword_required else (required, most)

    def fits(self, args: tuple, kwargs: dict) -> bool:
        """True if the call surely fits; False sends it to :meth:`bind` to decide."""
        n = len(args)
        if n > self.max_pos:
            return False
        positions, keywords = self.positions, self.keywords
        for key in kwargs:
            i = positions.get(key, sys.maxsize)
            if i < n:  # given twice, or a positional-only name (-1) given by keyword
                return False
            if keywords is not None and key not in keywords:
                return False
        for name, i in self.required:
            if i >= n and name not in kwargs:
                return False
        return True

    @classmethod
    def of(cls, func: Any, qualname: str, *, drop_first: bool = False) -> "CallCheck":
        try:
            sig: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # builtins and C types may have none
            sig = None
        if drop_first and sig is not None:  # an instance method: the instance is bound where it runs
            params = list(sig.parameters.values())
            if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
                sig = sig.replace(parameters=params[1:])
        return cls(sig, func, qualname)

    def bind(self, args: tuple, kwargs: dict, instance: "ClassNode | None" = None) -> None:
        """Raise :class:`NodeCallError` if ``f(*args, **kwargs)`` does not fit."""
        if self.signature is None:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise NodeCallError(self.message(args, kwargs, str(exc), instance)) from None

    def message(self, args: tuple, kwargs: dict, problem: str, instance: "ClassNode | None") -> str:
        short = self.qualname.rpartition(".")[2]
        module = getattr(self.func, "__module__", None) or "?"
        if instance is None:
            what = f"a node of {module}.{self.qualname}{self.signature} ({_where(self.func)})"
        else:
            what = (
                f"a node of method {short}{self.signature} of class node {instance.name or instance.label!r} "
                f"({module}.{self.qualname}, {_where(self.func)})"
            )
        return (
            f"Cannot make {what} from {_describe_arguments(args, kwargs)}{_caller()}: {problem}. "
            f"Call {short} with the arguments its signature takes; nothing has run."
        )


def _caller() -> str:
    """`` (called at file:line)`` of the frame that made the node (the first outside the
    frontend's files)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in FRONTEND_FILES:
        frame = frame.f_back  # type: ignore[assignment]
    return "" if frame is None else f" (called at {frame.f_code.co_filename}:{frame.f_lineno})"


def _describe_arguments(args: tuple, kwargs: dict) -> str:
    parts = []
    if args or not kwargs:
        parts.append(f"{len(args)} positional argument{'' if len(args) == 1 else 's'}")
    if kwargs:
        parts.append(f"keyword{'' if len(kwargs) == 1 else 's'} {', '.join(map(repr, kwargs))}")
    return " and ".join(parts)


def _where(func: Any) -> str:
    """``file:line`` where *func* (a function, method or class) is defined, or its file."""
    target = inspect.unwrap(func) if callable(func) else func
    if isinstance(target, type):
        for klass in target.__mro__:  # the __init__ the class runs, if written in Python
            init = klass.__dict__.get("__init__")
            if inspect.isfunction(init):
                target = init
                break
    code = getattr(getattr(target, "__func__", target), "__code__", None)
    if code is not None:
        return f"defined at {code.co_filename}:{code.co_firstlineno}"
    try:
        source = inspect.getsourcefile(func if isinstance(func, type) or inspect.ismodule(func) else type(func))
    except TypeError:  # a builtin or C type
        source = None
    return f"defined in {source}" if source else "no source file"


#: class -> {method name -> CallCheck}; classes are held weakly (local classes in tests)
_METHOD_CHECKS: "weakref.WeakKeyDictionary[type, dict[str, CallCheck]]" = weakref.WeakKeyDictionary()


def method_check(cls: Any, attr: str) -> CallCheck:
    checks = _METHOD_CHECKS.get(cls)
    if checks is None:
        checks = _METHOD_CHECKS[cls] = {}
    check = checks.get(attr)
    if check is None:
        raw = inspect.getattr_static(cls, attr, None)
        qualname = f"{getattr(cls, '__ff_qualname__', qualname_of(cls))}.{attr}"
        if isinstance(raw, (staticmethod, classmethod)):  # getattr gives the callable without the instance
            check = CallCheck.of(getattr(cls, attr), qualname)
        elif inspect.isfunction(raw):
            check = CallCheck.of(raw, qualname, drop_first=True)
        else:  # another descriptor: what it binds is unknown here
            check = CallCheck(None, getattr(cls, attr), qualname)
        checks[attr] = check
    return check
