"""Draft layouts: the static token tree of one forward call, and schedules of calls.

A layout lists the nodes of one call. Node 0 is the root: the newest token y, not yet in the
cache. DRAFT nodes d_1..d_D form a chain under the root (nodes 1..D) and are verified by this
call. LA nodes are look-ahead tokens; a group G_j of LA_1..LA_L hangs under the prefix
(y, d_1..d_j) and drafts the tokens that follow once j drafts are accepted.

Everything else is derived from the parents: the in-call attention mask (a node sees itself and
its ancestors), positions (cache length + depth) and cache slots (node t is written at slot
``lengths + t``; the committed path root, d_1..d_a is nodes 0..a, so committing is a change of
``lengths``). The decode step reads only these derived tables, never the layout's name.

Schedules: ``ar`` = [y]; ``paper`` = drafting call [y, LA_1..LA_L] then validation call
[z, d_1..d_L]; ``fused`` = [y, d_1..d_L, G_0, .., G_L] every call, after one drafting call.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

ROOT, DRAFT, LA = 0, 1, 2


@dataclass(frozen=True)
class Layout:
    """One forward call's token tree. Tuples, so it is hashable (a static jit argument)."""

    name: str
    kind: tuple[int, ...]  # ROOT / DRAFT / LA per node
    parent: tuple[int, ...]  # parent node, -1 for the root
    index: tuple[int, ...]  # DRAFT: j in 1..D; LA: i in 1..L; ROOT: 0
    group: tuple[int, ...]  # LA: the j of G_j it belongs to; else -1

    def __post_init__(self):
        n = len(self.kind)
        if not (len(self.parent) == len(self.index) == len(self.group) == n):
            raise ValueError("layout tables must have one entry per node")
        if n == 0 or self.kind[0] != ROOT or self.parent[0] != -1:
            raise ValueError("node 0 must be the root")
        for t in range(1, n):
            if not 0 <= self.parent[t] < t:
                raise ValueError(f"node {t}: parent must be an earlier node")
        D = self.num_drafts
        if tuple(self.kind[1:D + 1]) != (DRAFT,) * D or tuple(self.index[1:D + 1]) != tuple(
                range(1, D + 1)) or tuple(self.parent[1:D + 1]) != tuple(range(D)):
            raise ValueError("drafts must be a chain d_1..d_D at nodes 1..D")

    @property
    def T(self) -> int:
        """Tokens in the call."""
        return len(self.kind)

    @property
    def num_drafts(self) -> int:
        return sum(k == DRAFT for k in self.kind)

    @cached_property
    def depth(self) -> np.ndarray:
        """Position offset of each node from the root, int32 ``[T]``."""
        d = np.zeros(self.T, np.int32)
        for t in range(1, self.T):
            d[t] = d[self.parent[t]] + 1
        return d

    @cached_property
    def mask(self) -> np.ndarray:
        """In-call attention mask ``[T, T]``: node t sees itself and its ancestors."""
        m = np.zeros((self.T, self.T), bool)
        for t in range(self.T):
            a = t
            while a >= 0:
                m[t, a] = True
                a = self.parent[a]
        return m

    @cached_property
    def groups(self) -> np.ndarray:
        """LA node indices ``[D + 1, L]``: row j is group G_j (LA_1..LA_L); ``[0, 0]`` if none."""
        gs = sorted({g for g in self.group if g >= 0})
        if not gs:
            return np.zeros((0, 0), np.int32)
        if gs != list(range(len(gs))):
            raise ValueError("LA groups must be G_0..G_k")
        table = [[t for t in range(self.T) if self.group[t] == g] for g in gs]
        table = [sorted(row, key=lambda t: self.index[t]) for row in table]
        return np.asarray(table, np.int32)

    @property
    def num_lookahead(self) -> int:
        return self.groups.shape[1]

    @cached_property
    def la_index(self) -> np.ndarray:
        """0-based LA embedding per node (0 for non-LA nodes, masked by ``is_la``), ``[T]``."""
        return np.asarray([i - 1 if k == LA else 0 for k, i in zip(self.kind, self.index)],
                          np.int32)

    @cached_property
    def is_la(self) -> np.ndarray:
        return np.asarray([k == LA for k in self.kind])


def _build(name: str, num_drafts: int, groups: list[int], L: int) -> Layout:
    """Root, a chain of ``num_drafts`` drafts, then one LA group after each prefix in ``groups``."""
    kind, parent, index, group = [ROOT], [-1], [0], [-1]
    for j in range(1, num_drafts + 1):
        kind.append(DRAFT); parent.append(j - 1); index.append(j); group.append(-1)
    for g in groups:
        prev = g  # G_g hangs under d_g (node g), or under the root for g = 0
        for i in range(1, L + 1):
            kind.append(LA); parent.append(prev); index.append(i); group.append(g)
            prev = len(kind) - 1
    return Layout(name, tuple(kind), tuple(parent), tuple(index), tuple(group))


def root_layout() -> Layout:
    """[y]: one autoregressive step."""
    return _build("ar", 0, [], 0)


def draft_layout(L: int) -> Layout:
    """The paper's drafting call [y, LA_1..LA_L]."""
    return _build(f"draft{L}", 0, [0], L)


def verify_layout(L: int) -> Layout:
    """The paper's validation call [z, d_1..d_L]."""
    return _build(f"verify{L}", L, [], L)


def fused_layout(L: int) -> Layout:
    """Verify d_1..d_L and draft the next L in one call: [y, d_1..d_L, G_0, .., G_L]."""
    return _build(f"fused{L}", L, list(range(L + 1)), L)


@dataclass(frozen=True)
class Schedule:
    """Calls before the loop (``bootstrap``) and the calls of one loop iteration (``step``)."""

    name: str
    num_lookahead: int
    bootstrap: tuple[Layout, ...]
    step: tuple[Layout, ...]

    @property
    def step_tokens(self) -> int:
        """Tokens (cache slots written) in one loop iteration's calls."""
        return sum(lay.T for lay in self.step)


METHODS = ("ar", "pass", "pass-fused")


def make_schedule(method: str, L: int = 0) -> Schedule:
    """``ar``, ``pass`` (the paper's two calls) or ``pass-fused`` (one call per iteration)."""
    if method == "ar":
        return Schedule("ar", 0, (), (root_layout(),))
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; expected one of {METHODS}")
    if not isinstance(L, int) or L < 1:
        raise ValueError(f"number of look-ahead tokens must be >= 1, got {L}")
    if method == "pass":
        return Schedule("pass", L, (), (draft_layout(L), verify_layout(L)))
    return Schedule("pass-fused", L, (draft_layout(L),), (fused_layout(L),))
