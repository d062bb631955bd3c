"""The resume plan: a pure function from what is known before a run to what it does.

:func:`plan` takes the graph, what storage holds (metadata by node name, ``None``
without storage), the current fingerprint record of each node, and the cache
policies, and returns a :class:`Plan`; it reads nothing, writes nothing and warns about
nothing, so the same inputs always give the same plan. In reverse topological order:

* a node **runs** if no usable result is stored under its name (missing, unreadable,
  stale under the ``"fingerprint"`` policy, or the policy is ``"off"``);
* a stored class constructor or method call is **replayed** (run, not saved again)
  if a later running method call on the same instance needs it, or a running node that
  takes the instance and was written after the call, or the instance is an output: the
  instance's state between calls is not stored, so it is rebuilt from the constructor;
* a node that is never stored (``set_persist(False)``, ``log_nodes``) is replayed when
  a running node needs it, when it is an output, or when nothing depends on it;
* a stored node is **loaded** if it is an output or a running node needs its value;
* every other stored node is **skipped**.

Besides each node's action, reason and storage state, a plan carries what a run needs
from it: the fingerprint record each node's result is saved with (:attr:`Plan.records`),
and the stored results it reuses although they changed (:attr:`Plan.stale`, for the
one ``StaleResultWarning`` of a run) or cannot read (:attr:`Plan.unreadable`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from ._records import RecordRef, Records, digests_of, fp_join
from .errors import ConfigurationError
from .fingerprint import explain
from .graph import Graph, gc_paused
from .workflow import MethodNode

__all__ = [
    "plan", "Plan", "NodePlan", "Policies", "RUN", "REPLAY", "LOAD", "SKIP", "RUNS", "REUSED",
    "CURRENT", "STALE", "MISSING", "CORRUPTED", "NO_STORAGE", "NOT_STORED", "UNVERIFIED", "UNRECORDED",
    "NO_FINGERPRINT", "CACHE_POLICIES", "check_policy",
]

RUN, REPLAY, LOAD, SKIP = "run", "replay", "load", "skip"
#: actions that execute the node (a replayed node is stored already: it is not saved again)
RUNS = frozenset({RUN, REPLAY})
#: actions that use what storage holds instead of running the node
REUSED = frozenset({LOAD, SKIP})

#: what storage holds for a node, as a plan reports it; UNVERIFIED: stored without a
#: fingerprint (by an older version, or by ``storage.save``), so nothing is known to
#: have changed, and nothing is known to be current
CURRENT, STALE, MISSING, CORRUPTED, NO_STORAGE = "current", "stale", "missing", "corrupted", "no storage"
#: a node whose results are never stored (Query.set_persist(False))
NOT_STORED = "not stored"
UNVERIFIED = "unverified"
NO_FINGERPRINT = "stored without a fingerprint"
#: the input digest recorded for a parent whose stored result had no fingerprint
UNRECORDED = "unrecorded"
CACHE_POLICIES = ("name", "fingerprint", "off")


def check_policy(policy: str) -> str:
    """*policy* if it is one of :data:`CACHE_POLICIES`; else ConfigurationError."""
    if policy not in CACHE_POLICIES:
        raise ConfigurationError(f"Cache policy {policy!r} is not one of {', '.join(map(repr, CACHE_POLICIES))}.")
    return policy


@dataclass(frozen=True)
class NodePlan:
    name: str
    action: str
    reason: str
    state: str = NO_STORAGE
    #: why storage holds what *state* says, without what the run does ("" when current)
    detail: str = ""


@dataclass(frozen=True)
class Policies:
    """The cache settings a plan follows (node positions as in the graph)."""

    #: the workflow's cache policy ("name", "fingerprint" or "off")
    default: str = "fingerprint"
    #: per-node overrides of *default* (Query.set_cache)
    per_node: Mapping[int, str] = field(default_factory=dict)
    #: nodes whose results are never stored (Query.set_persist(False))
    unstored: frozenset[int] = frozenset()
    #: nodes that run on every run and are never stored (LocalWorkflow.log_nodes)
    logged: frozenset[int] = frozenset()


class Plan(Sequence[NodePlan]):
    """What a run will do with each node, in topological order.

    :param records: the fingerprint record each node's result is saved with in this
        run (None: the plan was made without storage, nothing is saved).
    :param stale: (node, why, current node digest) of the stored results the run
        reuses although they changed (cache policy ``"name"``).
    :param unreadable: (node, why) of the stored results found unreadable (recomputed).
    """

    def __init__(
        self,
        entries: list[NodePlan],
        *,
        records: Sequence[dict] | None = None,
        stale: Sequence[tuple[str, str, str]] = (),
        unreadable: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._entries = entries
        #: the action of each node (a list, for the executors' loops)
        self.actions: list[str] = [e.action for e in entries]
        self.records = records
        self.stale = list(stale)
        self.unreadable = list(unreadable)

    def __getitem__(self, i: Any) -> Any:
        return self._entries[i]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[NodePlan]:
        return iter(self._entries)

    def action(self, name: str) -> str:
        for e in self._entries:
            if e.name == name:
                return e.action
        raise KeyError(name)

    def count(self, action: str) -> int:
        return sum(1 for e in self._entries if e.action == action)

    def record(self, i: int) -> dict | None:
        """The fingerprint record node *i*'s result is saved with (None without storage)."""
        return None if self.records is None else self.records[i]

    def __repr__(self) -> str:
        width = max((len(e.name) for e in self._entries), default=4)
        lines = [f"{'node':<{width}}  {'action':<6}  {'stored':<9}  reason"]
        lines += [f"{e.name:<{width}}  {e.action:<6}  {e.state:<9}  {e.reason}" for e in self._entries]
        return "\n".join(lines)


def plan(
    graph: Graph,
    stored: Mapping[str, Any] | None,
    records: Sequence[dict] | None,
    policies: Policies = Policies(),
) -> Plan:
    """The plan of a run of *graph* (see the module documentation).

    :param stored: metadata of the stored results by node name (an Exception for an
        unreadable one); ``None``: no storage (every node runs, nothing is saved).
    :param records: the current fingerprint record of each node (needed with storage).

    The cyclic GC is paused meanwhile: a plan is made of a few objects per node, none
    in a cycle, and collections they trigger would traverse the graph, the records
    and what storage holds again and again.
    """
    with gc_paused():
        return _plan(graph, stored, records, policies)


def _plan(graph: Graph, stored: Mapping[str, Any] | None, records: Sequence[dict] | None, policies: Policies) -> Plan:
    g = graph
    n = len(g)
    names = g.names
    if stored is None:
        return Plan([NodePlan(name, RUN, "no storage", NO_STORAGE, "") for name in names])
    assert records is not None, "a plan with storage needs the fingerprint records"
    nodes, data_parents, chains = g.nodes, g.data_parents, g.chains
    need = [False] * n
    replay = [False] * n
    for o in g.outputs:
        need[o] = True
        calls = g.chains.get(o)
        if calls:  # an object as an output: as its calls left it (what is stored is as constructed)
            replay[calls[-1]] = True
    actions = [SKIP] * n
    reasons = [""] * n
    states = [MISSING] * n
    digests = digests_of(records)
    details = [""] * n
    default, per_node, unstored = policies.default, policies.per_node, policies.unstored
    needed_by: dict[int, int] = {}  # a never-stored node -> a running node that needs it
    for i in range(n - 1, -1, -1):
        name = names[i]
        if unstored and i in unstored:
            # never stored: runs (not saved: REPLAY) when needed, as an output, or as a sink
            states[i], details[i] = NOT_STORED, "never stored (set_persist(False))"
            if replay[i]:
                why = "a later method call needs this instance"
            elif i in needed_by:
                why = f"{names[needed_by[i]]!r} needs it"
            elif need[i]:
                why = "an output"
            elif not g.children[i]:
                why = "nothing depends on it"
            else:
                reasons[i] = "not stored; no node that runs needs it"
                continue
            actions[i] = REPLAY
            reasons[i] = "not stored; runs: " + why
        else:
            policy = per_node.get(i, default)
            reuse, states[i], why, details[i] = _judge(stored.get(name, None), records, digests[i], i, policy)
            if reuse and not replay[i]:
                if need[i]:
                    actions[i] = LOAD
                    reasons[i] = why or "stored"
                else:
                    reasons[i] = (why + "; " if why else "") + "no node that runs needs it"
                continue
            if reuse:
                actions[i] = REPLAY
                reasons[i] = "replayed: a later method call needs this instance"
            else:
                actions[i] = RUN
                reasons[i] = why
        for p in data_parents[i]:
            need[p] = True
            if unstored and p in unstored:
                needed_by.setdefault(p, i)
            calls = chains.get(p)
            if calls:  # p is a class node: its object must be as the calls written before i left it
                k = bisect.bisect_left(calls, i)
                if not (k < len(calls) and calls[k] == i) and k > 0:
                    replay[calls[k - 1]] = True
        node = nodes[i]
        if type(node) is MethodNode:
            replay[g.index_of(node.previous)] = True
            replay[g.index_of(node.instance)] = True
    for i in policies.logged:
        if actions[i] == RUN:
            actions[i] = REPLAY  # run, not saved
            reasons[i] = "selected by log_nodes(): runs on every run, never stored"
            if states[i] == MISSING:
                states[i], details[i] = NOT_STORED, "never stored (log_nodes())"
    effective = _run_records(g, actions, states, stored, records, digests)
    unreadable = [(names[i], reasons[i]) for i, s in enumerate(states) if s == CORRUPTED]
    stale = _stale(g, actions, states, details, stored, digests)
    entries = [NodePlan(*e) for e in zip(names, actions, reasons, states, details)]
    return Plan(entries, records=effective, stale=stale, unreadable=unreadable)


def _judge(meta: Any, records: Sequence[dict], digest: str, i: int, policy: str) -> tuple[bool, str, str, str]:
    """(reuse the stored result?, state, reason, state detail) for node *i*, whose
    current record is ``records[i]`` with node digest *digest* (built only to explain a
    difference)."""
    if meta is None:
        return False, MISSING, "no stored result", "no stored result"
    if isinstance(meta, Exception):
        why = f"stored result is unreadable: {meta}"
        return False, CORRUPTED, why, why
    stored = meta.get("fingerprint")
    if type(stored) is RecordRef:  # the fingerprint index stood for a current record
        if (stored.records is records and stored.i == i) or stored.get("node") == digest:
            return (False, CURRENT, "cache is off", "") if policy == "off" else (True, CURRENT, "", "")
    elif type(records) is not Records and stored is records[i] and stored:  # the same, given a list
        return (False, CURRENT, "cache is off", "") if policy == "off" else (True, CURRENT, "", "")
    if not stored:
        # nothing is known to have changed: reused by name, recomputed under "fingerprint"
        return policy == "name", UNVERIFIED, "cache is off" if policy == "off" else NO_FINGERPRINT, NO_FINGERPRINT
    if stored.get("node") == digest:  # the common case of a resumed run: current
        return (False, CURRENT, "cache is off", "") if policy == "off" else (True, CURRENT, "", "")
    reasons = explain(stored, records[i])
    state = STALE if reasons else CURRENT
    detail = "; ".join(reasons)
    why = "stale: " + detail if reasons else ""
    if policy == "off":
        return False, state, "cache is off", detail
    if policy == "fingerprint" and reasons:
        return False, state, why, detail
    return True, state, why, detail


def _run_records(
    g: Graph,
    actions: Sequence[str],
    states: Sequence[str],
    stored: Mapping[str, Any],
    records: Sequence[dict],
    digests: Sequence[str],
) -> Sequence[dict]:
    """The fingerprint record each node that runs is saved with.

    A node computed from a parent that is loaded (or skipped) rather than run was
    computed from the parent's *stored* result: its record names the stored
    fingerprint of that parent as the input (``UNRECORDED`` if none was stored), so
    a later plan sees it stale if the parent's stored result was. Nodes computed
    from such nodes inherit the difference. Without any, these are the current
    records themselves (the common case costs one look at the state of each node, and
    builds no record).
    """
    # a reused result whose stored fingerprint is not the current one: stale or unverified
    differ = [i for i, state in enumerate(states) if state != CURRENT and state != NOT_STORED and actions[i] in REUSED]
    if not differ:
        return records
    out = list(records)
    names, parents = g.names, g.parents
    effective = list(digests)
    for i in differ:
        meta = stored.get(names[i])
        fp = meta.get("fingerprint") if isinstance(meta, dict) else None
        digest = fp.get("node") if isinstance(fp, dict) else None
        effective[i] = digest or UNRECORDED
    for i, action in enumerate(actions):
        if action in REUSED:
            continue
        changed = {names[p]: effective[p] for p in parents[i] if effective[p] != digests[p]}
        if changed:
            inputs = {**records[i]["inputs"], **changed}
            effective[i] = fp_join(digests[i], "computed from", *(f"{k}={v}" for k, v in changed.items()))
            out[i] = {**records[i], "node": effective[i], "inputs": inputs}
    return out


def _own_change(detail: str) -> bool:
    """True if why a result is stale (a plan's state detail) names more than changed
    inputs: the node itself changed."""
    return any(p and not p.startswith("input ") for p in detail.split("; "))


def _stale(
    g: Graph,
    actions: Sequence[str],
    states: Sequence[str],
    details: Sequence[str],
    stored: Mapping[str, Any],
    digests: Sequence[str],
) -> list[tuple[str, str, str]]:
    """(node, why, current digest) of the stale results the run reuses: the node itself
    changed, or an input of it is recomputed in this run and differs from what its
    stored result was computed from (e.g. under a per-node ``fingerprint`` policy)."""
    names, parents = g.names, g.parents
    stale: list[tuple[str, str, str]] = []
    for i, state in enumerate(states):
        if state != STALE or actions[i] not in REUSED:
            continue
        if _own_change(details[i]):
            stale.append((names[i], details[i], digests[i]))
            continue
        meta = stored.get(names[i])
        old = (meta.get("fingerprint") or {}).get("inputs", {}) if isinstance(meta, dict) else {}
        rerun = [names[p] for p in parents[i] if actions[p] == RUN and old.get(names[p]) != digests[p]]
        if rerun:
            inputs = ", ".join(map(repr, rerun))
            verb = "is" if len(rerun) == 1 else "are"
            stale.append((names[i], f"its input {inputs} {verb} recomputed in this run", digests[i]))
    return stale
