"""Execution units: which nodes of a run go to an engine as one task.

Every backend can run one engine task per node (one Ray task, one Prefect task, one
KFP container step). For cheap nodes the engine's cost per task dominates, so
:func:`partition` groups the nodes a plan runs into **units**, each run as one task
that computes its nodes in order. What stays per node: each result is stored as soon
as its node is computed, plans, reports and progress list nodes, a failure names the
node. A pure function: same inputs, same units.

How the units are chosen, in order:

1. **Groups** the user made (``query(...).set_group(name)``): the running nodes of a
   group are one unit.
2. **Chains** (automatic, unless fusion is off): a node joins its parent's unit when
   the parent is the only running node it depends on and it is the only running node
   that depends on the parent. A chain is sequential anyway, so fusing it costs no
   parallelism (Dask's optimiser fuses the same linear chains).
3. **Limit** (``max_units``, KFP's default is 10 steps): while there are more units,
   units are merged level by level (a unit's level is the length of the longest path
   of units leading to it): units sorted by level are cut into consecutive blocks of
   about equal size. Units of one level that land in different blocks still run in
   parallel; a block is an interval of a topological order, so the merged units never
   depend on each other in a cycle. Groups and nodes kept alone are not merged.

Nodes fuse only when their **fusion keys** are equal: a backend's key holds what a
task is launched with (resources, retries, image, plugin), and ``None`` (class and
method nodes, which run in their own actor) never fuses. ``query(...).set_fusion(False)``
keeps nodes alone. Stored results that are loaded are separate steps: a unit reads
them as inputs.
"""

from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

from .errors import ConfigurationError
from .graph import Graph, gc_paused
from .planner import LOAD, RUNS

__all__ = ["Unit", "Units", "partition"]

#: why a unit is what it is (Unit.why)
SINGLE, CHAIN, GROUP, MERGED, SOLO, LOADED = "single", "chain", "group", "merged", "alone", "load"


@dataclass(frozen=True)
class Unit:
    """One step of a run: a stored result to load, or nodes run as one task."""

    #: node positions, in the order they run (topological)
    indices: tuple[int, ...]
    #: how it was formed: "load", "single", "chain", "group", "merged" or "alone"
    why: str
    #: the group's name (why == "group")
    group: str | None = None
    #: nodes outside the unit whose values its nodes need (sorted)
    parents: tuple[int, ...] = ()
    #: the unit's nodes whose values are needed after it: by a later step, or outputs
    exports: tuple[int, ...] = ()

    @property
    def loads(self) -> bool:
        return self.why == LOADED


@dataclass
class Units:
    """The steps of a run, in submission order (see the module documentation)."""

    #: every step: loads and units; a step's outside parents are all in earlier steps
    steps: list[Unit]
    #: after step k is submitted, these values are needed by no later step
    release: list[tuple[int, ...]]
    names: Sequence[str] = field(repr=False, default=())
    #: max_units asked for (None: no limit)
    limit: int | None = None
    #: whether automatic fusion was on
    enabled: bool = True
    #: lines on choices worth knowing (a limit not reached, and why)
    notes: list[str] = field(default_factory=list)

    @property
    def running(self) -> list[Unit]:
        """The units that run nodes (not loads)."""
        return [u for u in self.steps if not u.loads]

    def unit_of(self) -> dict[int, int]:
        """Node position -> position of its unit in :attr:`running`."""
        return {i: k for k, u in enumerate(self.running) for i in u.indices}

    def summary(self) -> str:
        units = self.running
        nodes = sum(len(u.indices) for u in units)
        kinds: dict[str, int] = {}
        for u in units:
            kinds[u.why] = kinds.get(u.why, 0) + 1
        parts = ", ".join(f"{c} {k}" for k, c in sorted(kinds.items()))
        limit = "" if self.limit is None else f"; limit {self.limit}"
        auto = "" if self.enabled else "; automatic fusion off"
        return f"{nodes} running node{'s' * (nodes != 1)} in {len(units)} unit{'s' * (len(units) != 1)} ({parts}){limit}{auto}"

    def __str__(self) -> str:
        names = self.names
        lines = [self.summary()]
        for k, u in enumerate(self.running, 1):
            shown = [names[i] for i in u.indices] if names else [str(i) for i in u.indices]
            if len(shown) > 6:
                shown = shown[:3] + [f"... {len(shown) - 5} more"] + shown[-2:]
            why = f"group {u.group!r}" if u.why == GROUP else u.why
            lines.append(f"  unit {k}: {len(u.indices)} node{'s' * (len(u.indices) != 1)} [{why}]: {', '.join(shown)}")
        lines.extend("  note: " + n for n in self.notes)
        return "\n".join(lines)


def partition(
    graph: Graph,
    actions: Sequence[str],
    keys: Sequence[Hashable | None],
    *,
    groups: Mapping[int, str] | None = None,
    solo: frozenset[int] | set[int] = frozenset(),
    enabled: bool = True,
    max_units: int | None = None,
) -> Units:
    """The units of a run of *graph* whose plan has *actions* (see the module documentation).

    :param keys: each node's fusion key (``None``: never fused).
    :param groups: node position -> group name (``Query.set_group``).
    :param solo: nodes never fused (``Query.set_fusion(False)``).
    :param enabled: automatic fusion (chains, the limit); groups apply either way.
    :param max_units: merge units until at most this many remain (None: no limit).
    :raises ConfigurationError: a group whose nodes cannot share a task (different keys),
        or that depends on itself through a node outside it.
    """
    with gc_paused():  # lists of tuples for every node: the cyclic GC would walk them for nothing
        return _partition(graph, actions, keys, groups or {}, solo, enabled, max_units)


def _partition(
    g: Graph,
    actions: Sequence[str],
    keys: Sequence[Hashable | None],
    groups: Mapping[int, str],
    solo: frozenset[int] | set[int],
    enabled: bool,
    max_units: int | None,
) -> Units:
    n = len(g)
    names = g.names
    deps = _dependencies(g)
    running = [a in RUNS for a in actions]
    if groups:
        _check_groups(g, groups, keys, deps)
    deps = deps.running_only(running)
    unit = [-1] * n
    members: list[list[int]] = []
    why: list[str] = []
    group_of: list[str | None] = []
    counted: dict[int, int] = {}
    dependents: dict[int, list[int]] = {}
    for i, extra in deps.extra.items():
        for p in extra:
            dependents.setdefault(p, []).append(i)

    def _running_children(p: int) -> int:
        # counted once per parent: a fan-out's source is asked by each of its children
        c = counted.get(p)
        if c is None:
            c = counted[p] = sum(1 for k in {*g.children[p], *dependents.get(p, ())} if running[k])
        return c

    by_group: dict[str, int] = {}
    for i in range(n):
        if not running[i]:
            continue
        name = groups.get(i)
        if name is not None:
            u = by_group.get(name)
            if u is None:
                u = by_group[name] = len(members)
                members.append([])
                why.append(GROUP)
                group_of.append(name)
            unit[i] = u  # checked by _check_groups: same keys, no class or method node
            members[u].append(i)
            continue
        u = -1
        if enabled and i not in solo and keys[i] is not None:
            rp = [p for p in set(deps(i)) if running[p]]
            if len(rp) == 1:
                p = rp[0]
                if (
                    unit[p] >= 0
                    and why[unit[p]] != GROUP
                    and p not in solo
                    and keys[p] == keys[i]
                    and _running_children(p) == 1
                ):
                    u = unit[p]
                    why[u] = CHAIN
        if u < 0:
            u = len(members)
            members.append([])
            why.append(SOLO if i in solo else SINGLE)
            group_of.append(None)
        unit[i] = u
        members[u].append(i)

    order = _unit_order(g, deps, members, unit, running)
    if enabled and max_units is not None and len(members) > max_units:
        members, why, group_of, unit, order, note = _merge(deps, members, why, group_of, unit, order, keys, max_units)
        notes = [note] if note else []
    else:
        notes = []
    return _steps(g, actions, members, why, group_of, unit, order, running, max_units, enabled, notes)


class _Deps:
    """What each node must come after: its parents, and for a node that uses a class
    node's object (not one of its method calls; taking the object or a call's result,
    which may be the object), the method call written before it;
    the method call written after it must in turn come after the node. LocalWorkflow
    runs them in the order written, so units must not reorder them. Among the nodes
    that run (:meth:`running_only`), a node comes after the nearest one written before
    it that runs: a skipped or loaded node in between does not break the order."""

    def __init__(self, g: Graph) -> None:
        self.parents = g.parents
        self.extra: dict[int, list[int]] = {}
        #: per class node with users of its object: it, its calls and the users, in written order
        self.sequences: list[list[int]] = []
        for k, calls in g.chains.items():
            chain = set(calls)
            # the object's users: nodes taking it, or a call's result (``fit`` may return it)
            users = {c for s in (k, *calls) for c in g.children[s] if c not in chain and s in g.data_parents[c]}
            if users:
                self.sequences.append(sorted({k, *calls, *users}))
        self._link(None)

    def _link(self, running: Sequence[bool] | None) -> None:
        self.extra = {}
        for seq in self.sequences:
            last = -1
            for b in seq:
                if last >= 0 and last not in self.parents[b]:
                    self.extra.setdefault(b, []).append(last)
                if running is None or running[b]:
                    last = b

    def running_only(self, running: Sequence[bool]) -> "_Deps":
        """The same order among the nodes that run (see the class documentation)."""
        deps = copy.copy(self)
        deps._link(running)
        return deps

    def __call__(self, i: int) -> Sequence[int]:
        extra = self.extra.get(i)
        return self.parents[i] if extra is None else (*self.parents[i], *extra)


def _dependencies(g: Graph) -> _Deps:
    return _Deps(g)


def _check_groups(g: Graph, groups: Mapping[int, str], keys: Sequence[Hashable | None], deps: _Deps) -> None:
    """Groups are checked as if every node ran, so that a group accepted now is not
    refused by a later plan (a stored result in between found damaged, removed...)."""
    n = len(g)
    members: list[list[int]] = []
    unit = [-1] * n
    by_group: dict[str, int] = {}
    for i in range(n):
        name = groups.get(i)
        if name is None:
            unit[i] = len(members)
            members.append([i])
            continue
        u = by_group.get(name)
        if u is None:
            u = by_group[name] = len(members)
            members.append([])
        unit[i] = u
        members[u].append(i)
    for name, u in by_group.items():
        nodes = members[u]
        if len(nodes) < 2:
            continue
        for i in nodes:
            if keys[i] is None:
                raise ConfigurationError(
                    f"Group {name!r}: node {g.names[i]!r} cannot run in a task with other nodes (a class or "
                    "method node runs in its own actor or process). Leave it out of the group's pattern."
                )
            if keys[i] != keys[nodes[0]]:
                raise ConfigurationError(
                    f"Group {name!r}: nodes {g.names[nodes[0]]!r} and {g.names[i]!r} cannot run as one task: "
                    "they are launched differently (resources, retries, image or plugin differ). Give them the "
                    "same options, or put them in different groups."
                )
    _unit_order(g, deps, members, unit, [True] * n)


def _unit_order(g: Graph, deps: _Deps, members: list[list[int]], unit: list[int], running: list[bool]) -> list[int]:
    """The units in a topological order (earliest first node first); a group that
    depends on itself through an outside node is refused."""
    m = len(members)
    succ: list[set[int]] = [set() for _ in range(m)]
    indeg = [0] * m
    for u, nodes in enumerate(members):
        for i in nodes:
            for p in deps(i):
                if running[p]:
                    v = unit[p]
                    if v != u and u not in succ[v]:
                        succ[v].add(u)
                        indeg[u] += 1
    heap = [(members[u][0], u) for u in range(m) if indeg[u] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, u = heapq.heappop(heap)
        order.append(u)
        for v in succ[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(heap, (members[v][0], v))
    if len(order) < m:
        stuck = [u for u in range(m) if indeg[u] > 0 and len(members[u]) > 1]
        names = g.names
        u = stuck[0] if stuck else next(u for u in range(m) if indeg[u] > 0)
        inside = set(members[u])
        outside = sorted(
            {p for i in members[u] for p in deps(i) if running[p] and p not in inside and indeg[unit[p]] > 0}
        )
        between = ", ".join(repr(names[p]) for p in outside[:5]) or "another node"
        verb = "needs" if len(outside) == 1 else "need"
        raise ConfigurationError(
            f"A group of nodes {', '.join(repr(names[i]) for i in members[u][:5])} cannot run as one task: it "
            f"needs {between}, which {verb} a node of the group (or, for a user of a class node's object, runs "
            "between two of its method calls). Add the nodes in between to the group, or split the group."
        )
    return order


def _merge(
    deps: _Deps,
    members: list[list[int]],
    why: list[str],
    group_of: list[str | None],
    unit: list[int],
    order: list[int],
    keys: Sequence[Hashable | None],
    limit: int,
) -> tuple[list[list[int]], list[str], list[str | None], list[int], list[int], str]:
    """Merge automatic units level by level into consecutive blocks (module docs, 3.)."""
    level = [0] * len(members)
    for u in order:  # a topological order: every unit's parents come first
        for i in members[u]:
            for p in deps(i):
                v = unit[p]
                if v >= 0 and v != u and level[v] + 1 > level[u]:
                    level[u] = level[v] + 1
    ranked = sorted(order, key=lambda u: (level[u], members[u][0]))
    size = -(-len(members) // limit)
    blocks: list[list[int]] = []
    current: list[int] = []
    current_key: object = None
    for u in ranked:
        mergeable = why[u] in (SINGLE, CHAIN) and keys[members[u][0]] is not None
        key = keys[members[u][0]]
        if not mergeable:
            if current:
                blocks.append(current)
                current = []
            blocks.append([u])
            continue
        if current and (len(current) >= size or key != current_key):
            blocks.append(current)
            current = []
        current.append(u)
        current_key = key
    if current:
        blocks.append(current)
    new_members: list[list[int]] = []
    new_why: list[str] = []
    new_group: list[str | None] = []
    new_unit = [-1] * len(unit)
    for block in blocks:
        nodes = sorted(i for u in block for i in members[u])
        k = len(new_members)
        for i in nodes:
            new_unit[i] = k
        new_members.append(nodes)
        new_why.append(MERGED if len(block) > 1 else why[block[0]])
        new_group.append(group_of[block[0]] if len(block) == 1 else None)
    note = ""
    if len(new_members) > limit:
        note = (
            f"{len(new_members)} units, more than the limit of {limit}: units that are groups, kept alone, "
            "or launched differently (resources, image, retries, plugin) are never merged"
        )
    return new_members, new_why, new_group, new_unit, list(range(len(new_members))), note


def _steps(
    g: Graph,
    actions: Sequence[str],
    members: list[list[int]],
    why: list[str],
    group_of: list[str | None],
    unit: list[int],
    order: list[int],
    running: list[bool],
    limit: int | None,
    enabled: bool,
    notes: list[str],
) -> Units:
    """Steps in submission order: each unit, after the loads it needs (loaded right
    before their first consumer; loads nothing running needs come last), with
    exports and the release schedule."""
    n = len(g)
    data_parents = g.data_parents
    outputs = set(g.outputs)
    # who consumes each value outside its own unit
    consumers: dict[int, set[int]] = {}
    for u in order:
        for i in members[u]:
            for p in data_parents[i]:
                if unit[p] != u:
                    consumers.setdefault(p, set()).add(u)
    steps: list[Unit] = []
    loaded: set[int] = set()
    loads = [i for i in range(n) if actions[i] == LOAD]
    next_load = 0
    for u in order:
        nodes = members[u]
        inside = set(nodes)
        outside = sorted({p for i in nodes for p in data_parents[i] if p not in inside})
        # stored results are read in the order written, as LocalWorkflow reads them (a
        # damaged one is found before the nodes after it run), and before their consumers
        while next_load < len(loads) and loads[next_load] < nodes[0]:
            p = loads[next_load]
            next_load += 1
            if p not in loaded:
                loaded.add(p)
                steps.append(Unit((p,), LOADED, exports=(p,)))
        for p in outside:
            if actions[p] == LOAD and p not in loaded:
                loaded.add(p)
                steps.append(Unit((p,), LOADED, exports=(p,)))
        exports = tuple(i for i in nodes if i in outputs or i in consumers)
        steps.append(Unit(tuple(nodes), why[u], group_of[u], tuple(outside), exports))
    for i in loads:
        if i not in loaded:
            steps.append(Unit((i,), LOADED, exports=(i,)))
    # release: a value leaves memory after the last step that needs it (never an output)
    last: dict[int, int] = {}
    for k, s in enumerate(steps):
        for p in s.parents:
            last[p] = k
        if s.loads:
            last.setdefault(s.indices[0], k)
        else:
            for i in s.exports:
                last.setdefault(i, k)
            if len(s.indices) == 1 and s.indices[0] not in consumers:
                last.setdefault(s.indices[0], k)  # a value nothing consumes is dropped right after its node
    release: list[list[int]] = [[] for _ in steps]
    for v, k in last.items():
        if v not in outputs:
            release[k].append(v)
    return Units(steps, [tuple(sorted(r)) for r in release], g.names, limit, enabled, notes)
