"""The per-node step options of a KFPWorkflow (``query(...).set_task_args``), checked
when they are set, so a wrong value is named with its node before anything is built.

KFP 2.x checks resources only when the pipeline is built; these checks accept what it
accepts (``PipelineTask._validate_cpu_request_limit`` / ``_validate_memory_request_limit``)
and say what to write instead (a decimal memory quantity as a whole one of a smaller unit).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ...errors import ConfigurationError
from ._kfppipeline import TASK_OPTIONS

__all__ = ["check_option", "check_task_args", "options_key", "whole_memory"]

#: the quantities kfp 2.x accepts: a CPU count may be decimal, memory may not
_CPU = re.compile(r"([0-9]*[.])?[0-9]+m?")
_MEMORY_UNITS = ("E", "Ei", "P", "Pi", "T", "Ti", "G", "Gi", "M", "Mi", "K", "Ki")
_MEMORY = re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")
_PULL_POLICIES = ("Always", "Never", "IfNotPresent")


def whole_memory(value: str) -> str | None:
    """*value* (a decimal memory quantity such as ``1.5Gi``) as a whole number of a
    smaller unit of the same kind (``1536Mi``), or of bytes; None if it is no quantity.

    >>> whole_memory("1.5Gi"), whole_memory("0.5G"), whole_memory("lots")
    ('1536Mi', '500M', None)
    """
    from decimal import Decimal, InvalidOperation

    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(Ei|Pi|Ti|Gi|Mi|Ki|E|P|T|G|M|K)?", value.strip())
    if not m:
        return None
    try:
        amount = Decimal(m.group(1))
    except InvalidOperation:  # pragma: no cover - the pattern admits numbers only
        return None
    unit = m.group(2) or ""
    binary = unit.endswith("i")
    ladder = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki", ""] if binary else ["E", "P", "T", "G", "M", "K", ""]
    step = 1024 if binary else 1000
    for smaller in ladder[ladder.index(unit):-1]:
        if amount == amount.to_integral_value():
            return f"{int(amount)}{smaller}"
        amount *= step
    return str(int(amount.to_integral_value(rounding="ROUND_CEILING")))  # bytes


def check_option(key: str, value: Any, nodes: str = "") -> Any:
    """*value* checked (and normalised) as the step option *key* of *nodes* (their names,
    for the error)."""
    bad = None
    fix = ""
    if key in ("cpu_request", "cpu_limit"):
        value = str(value)
        bad = None if _CPU.fullmatch(value) else "a CPU quantity such as '500m', '1' or '2.5'"
    elif key in ("memory_request", "memory_limit"):
        value = str(value)
        if not _MEMORY.fullmatch(value):
            bad = (f"a memory quantity: a whole number of bytes, optionally followed by one of {', '.join(_MEMORY_UNITS)} "
                   "(e.g. '512Mi', '4G'; KFP takes no decimals)")
            whole = whole_memory(value)
            fix = f" Use {whole!r} instead." if whole is not None and whole != value else ""
    elif key in ("accelerator_limit", "retries"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        bad = None if ok else "a whole number >= 0"
    elif key == "accelerator_type":
        bad = None if isinstance(value, str) and value else "an accelerator name such as 'nvidia.com/gpu'"
    elif key in ("node_selector", "env"):
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        bad = None if ok else "a dict of str to str"
        value = {k: str(v) for k, v in value.items()} if ok else value
    elif key == "image_pull_policy":
        bad = None if value in _PULL_POLICIES else f"one of {', '.join(_PULL_POLICIES)}"
    elif key == "image_pull_secrets":
        ok = isinstance(value, (list, tuple)) and all(isinstance(s, str) and s for s in value)
        bad = None if ok else "a list of Kubernetes secret names"
        value = list(value) if ok else value
    if bad:
        where = f" of {nodes}" if nodes else ""
        raise ConfigurationError(f"Task option {key!r}{where} must be {bad}, not {value!r}.{fix}")
    return value


def check_task_args(args: Any, names: Sequence[str]) -> dict[str, Any]:
    """The step options *args* given to ``set_task_args`` for the nodes *names*, checked
    and normalised (:class:`~functionfuse.errors.ConfigurationError` names the option,
    the nodes and the fix)."""
    if not isinstance(args, Mapping):
        raise ConfigurationError(f"set_task_args takes a dict of step options, not {type(args).__name__} {args!r}.")
    unknown = sorted(k for k in args if k not in TASK_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"set_task_args: {', '.join(map(repr, unknown))} "
            f"{'is not a step option' if len(unknown) == 1 else 'are not step options'}. "
            f"Valid options: {', '.join(sorted(TASK_OPTIONS))}."
        )
    nodes = (f"node {names[0]!r}" if len(names) == 1 else
             f"nodes {', '.join(map(repr, names[:3]))}{', ...' if len(names) > 3 else ''}")
    return {k: check_option(k, v, nodes) for k, v in args.items()}


def options_key(options: Mapping[str, Any]) -> Any:
    """The step *options* of a node (as checked by :func:`check_task_args`) as a hashable
    value, equal for equal options however they were set: nodes share a container step
    only when their keys are equal (``KFPWorkflow.fusion_key``).

    >>> options_key({"env": {"B": "2", "A": "1"}, "cpu_limit": "2"}) == options_key({"cpu_limit": "2", "env": {"A": "1", "B": "2"}})
    True
    """
    def frozen(value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple(sorted((str(k), frozen(v)) for k, v in value.items()))
        if isinstance(value, (list, tuple)):
            return tuple(frozen(v) for v in value)
        return value

    return frozen(options)
