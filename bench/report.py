"""Rows of the benchmark table, their text rendering and the summary line."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

#: how a row is judged
TARGET, INFO, CONTRAST = "target", "info", "contrast"


@dataclass
class Row:
    """One line of the table.

    ``ratio`` is ``ratio_def`` evaluated ("base/ours", "ours/base", ...); ``passed`` is
    None for info rows and for rows whose measurement failed.
    """

    key: str
    name: str
    ours: float | None
    unit: str
    baseline: float | None
    baseline_unit: str
    ratio: float | None
    ratio_def: str
    target: str
    kind: str = TARGET
    passed: bool | None = None
    error: str | None = None

    @property
    def result(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.kind == INFO or self.passed is None:
            return "info"
        if self.kind == CONTRAST:
            return "FAIL (expected)" if not self.passed else "PASS (unexpected!)"
        return "PASS" if self.passed else "FAIL"

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = self.result
        return d


def judged(
    key: str,
    name: str,
    ours: float | None,
    unit: str,
    baseline: float | None,
    baseline_unit: str,
    ratio_def: str,
    target: str,
    check: Callable[[float, float | None], bool] | None,
    kind: str = TARGET,
) -> Row:
    """A row whose ratio follows *ratio_def* and whose verdict is ``check(ours, ratio)``."""
    ratio: float | None = None
    if ours is not None and baseline is not None and ours > 0 and baseline > 0:
        if ratio_def.startswith("ours/"):
            ratio = ours / baseline
        elif ratio_def.endswith("/ours"):
            ratio = baseline / ours
    passed = None if (check is None or ours is None) else check(ours, ratio)
    return Row(key, name, ours, unit, baseline, baseline_unit, ratio, ratio_def, target, kind, passed)


def error_row(key: str, name: str, target: str, error: str) -> Row:
    return Row(key, name, None, "", None, "", None, "", target, TARGET, None, error)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    a = abs(value)
    digits = 3 if a < 1 else 2 if a < 100 else 0
    text = f"{value:.{digits}f}"
    return f"{text} {unit}".strip()


def fmt_ratio(row: Row) -> str:
    if row.ratio is None:
        return "-"
    r = row.ratio
    return f"{r:.3f} {row.ratio_def}" if r < 1 else f"{r:.2f} {row.ratio_def}"


def render(rows: list[Row], title: str) -> str:
    header = ("#", "benchmark", "ours", "baseline", "ratio", "target", "result")
    lines = [
        (
            r.key,
            r.name,
            fmt_value(r.ours, r.unit) if r.error is None else "-",
            fmt_value(r.baseline, r.baseline_unit),
            fmt_ratio(r),
            r.target,
            r.result,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {2, 3, 4}

    def fmt(cells: tuple[str, ...]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    rule = "-" * len(fmt(header))
    body = [fmt(line) for line in lines]
    return "\n".join([title, rule, fmt(header), rule, *body, rule])


def summarize(rows: list[Row]) -> dict[str, int]:
    counts = {"pass": 0, "fail": 0, "info": 0, "contrast_failed_as_expected": 0, "contrast_passed": 0, "error": 0}
    for r in rows:
        if r.error is not None:
            counts["error"] += 1
        elif r.kind == INFO or r.passed is None:
            counts["info"] += 1
        elif r.kind == CONTRAST:
            counts["contrast_passed" if r.passed else "contrast_failed_as_expected"] += 1
        else:
            counts["pass" if r.passed else "fail"] += 1
    return counts


def summary_line(c: dict[str, int], mode: str, seconds: float) -> str:
    total = c["pass"] + c["fail"]
    parts = [f"summary: {c['pass']}/{total} targets met"]
    if c["fail"]:
        parts.append(f"{c['fail']} FAILED")
    if c["error"]:
        parts.append(f"{c['error']} row(s) could not be measured (ERROR)")
    if c["contrast_failed_as_expected"]:
        parts.append(f"{c['contrast_failed_as_expected']} sanity contrast failed as expected")
    if c["contrast_passed"]:
        parts.append(f"{c['contrast_passed']} sanity contrast PASSED: the memory measurement is not working")
    parts.append(f"{c['info']} info rows")
    parts.append(f"mode={mode}")
    parts.append(f"{seconds:.0f} s")
    return "; ".join(parts)
