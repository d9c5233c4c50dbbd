"""Draft layouts: the static token tree of one forward call, and schedules of calls.

A layout lists the nodes of one call. Node 0 is the root: the newest token y, not yet in the
cache. The *tree nodes* are the root and the DRAFT nodes under it (nodes 0..C-1, parents first);
a draft at depth j is one of the tokens drawn from the draft distribution q_j: the (r+1)-th draw
(its *rank* r) of an ordered sample without replacement, so a node's children are ranks 0..k-1.
A chain (every rank 0) is the paper's d_1..d_J. LA nodes come after the tree: a group LA_1..LA_L
hangs under a tree node and drafts the L tokens that follow once the path to that node is
accepted (the fused schedule hangs one under every tree node).

Everything else is derived from the tables: the in-call attention mask (a node sees itself and
its ancestors), positions (cache length + depth), cache slots (node t is written at slot
``lengths + t``), each tree node's children by rank, and each tree node's path from the root.
After acceptance the path root, n_1..n_a is moved to slots ``lengths + 0..a`` (a chain is already
there, so committing it is a change of ``lengths``). The decode step reads only these derived
tables, never the layout's name.

Schedules: ``ar`` = [y]; ``pass`` = drafting call [y, LA_1..LA_L] then validation call
[z, d_1..d_L]; ``pass-fused`` = [y, d_1..d_L, g_0, .., g_L] every call (g_n: the group LA_1..LA_L
under tree node n), after one drafting call;
``tree-3x2x1x1`` = a fused draft tree with 3 children under the root, 2 under each of those, ..
(widths per depth; depth <= L), an LA group under each of its nodes, after one drafting call.
A tree of widths 1x1x..x1 of depth L is ``pass-fused`` with L look-ahead tokens.

Shape letters: see ``pass_jax/__init__.py`` (here T tokens of the call, C tree nodes, J draft
depth, W draft width, L LA tokens per group).
"""

from __future__ import annotations

import numbers
import re
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
    index: tuple[int, ...]  # DRAFT: its depth j (drawn from q_j); LA: i in 1..L; ROOT: 0
    rank: tuple[int, ...]  # DRAFT: r, the (r+1)-th draw from q_j; else 0
    group: tuple[int, ...]  # LA: the tree node its group hangs under; else -1

    def __post_init__(self):
        n = len(self.kind)
        if not (len(self.parent) == len(self.index) == len(self.rank) == len(self.group) == n):
            raise ValueError("layout tables must have one entry per node")
        if n == 0 or self.kind[0] != ROOT or self.parent[0] != -1:
            raise ValueError("node 0 must be the root")
        for t in range(1, n):
            if not 0 <= self.parent[t] < t:
                raise ValueError(f"node {t}: parent must be an earlier node")
        C = self.num_tree
        if ROOT in self.kind[1:] or DRAFT in self.kind[C:]:
            raise ValueError("the draft tree (root, drafts) must come before the LA nodes")
        kids: dict[int, list[int]] = {}
        for t in range(1, C):
            if self.index[t] != self.depth[t]:
                raise ValueError(f"draft node {t}: index must be its depth")
            kids.setdefault(self.parent[t], []).append(self.rank[t])
        if any(sorted(r) != list(range(len(r))) for r in kids.values()):
            raise ValueError("the children of a node must have ranks 0..k-1")
        self._check_groups()

    def _check_groups(self):
        C = self.num_tree
        anchors = [self.group[t] for t in range(C, self.T)]
        if any(not 0 <= a < C for a in anchors):
            raise ValueError("LA groups must hang under tree nodes")
        if anchors and sorted(set(anchors)) != list(range(C)):
            raise ValueError("LA groups must hang under every tree node or none")
        for a in set(anchors):
            nodes = [t for t in range(C, self.T) if self.group[t] == a]
            if (
                len(nodes) != len(anchors) // C
                or [self.index[t] for t in nodes] != list(range(1, len(nodes) + 1))
                or [self.parent[t] for t in nodes] != [a] + nodes[:-1]
            ):
                raise ValueError(
                    f"the group under node {a} must be a chain LA_1..LA_L, the "
                    "same L for every group"
                )

    @property
    def T(self) -> int:
        """Tokens in the call."""
        return len(self.kind)

    @property
    def num_tree(self) -> int:
        """Tree nodes C (the root and the drafts: nodes 0..C-1)."""
        return sum(k != LA for k in self.kind)

    @cached_property
    def depth(self) -> np.ndarray:
        """Position offset of each node from the root, int32 ``[T]``."""
        d = np.zeros(self.T, np.int32)
        for t in range(1, self.T):
            d[t] = d[self.parent[t]] + 1
        return d

    @property
    def draft_depth(self) -> int:
        """Depth J of the draft tree (0 without drafts): drafts come from q_1..q_J."""
        return int(self.depth[: self.num_tree].max())

    @property
    def width(self) -> int:
        """Most children of one tree node (0 without drafts): draws per depth it reads."""
        return max((r + 1 for k, r in zip(self.kind, self.rank) if k == DRAFT), default=0)

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
    def children(self) -> np.ndarray:
        """Tree node ids ``[C, W]``: row n lists n's children by rank, -1 past the last."""
        c = np.full((self.num_tree, max(self.width, 1)), -1, np.int32)
        for t in range(1, self.num_tree):
            c[self.parent[t], self.rank[t]] = t
        return c

    @cached_property
    def paths(self) -> np.ndarray:
        """Ancestors ``[C, J + 1]``: row n is the path root, n_1, .., n (its nodes at depths
        0..depth(n)), then k at column k past depth(n) (so moving slot ``lengths + paths[n, k]``
        to ``lengths + k`` for every k commits the path and leaves the other slots alone)."""
        J = self.draft_depth
        p = np.tile(np.arange(J + 1, dtype=np.int32), (self.num_tree, 1))
        for n in range(self.num_tree):
            a = n
            while a >= 0:
                p[n, self.depth[a]] = a
                a = self.parent[a]
        return p

    @property
    def is_chain(self) -> bool:
        """Drafts d_1..d_J at nodes 1..J: every path is already at its committed slots."""
        return self.width <= 1

    @cached_property
    def draft_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """(depth - 1, rank) of draft nodes 1..C-1: where their tokens sit in ``drafts_BxLxW``."""
        C = self.num_tree
        return (np.asarray(self.index[1:C], np.int32) - 1, np.asarray(self.rank[1:C], np.int32))

    @cached_property
    def groups(self) -> np.ndarray:
        """LA node indices ``[C, L]``: row n is the group under tree node n (LA_1..LA_L);
        ``[C, 0]`` without groups."""
        C = self.num_tree
        table = [[t for t in range(C, self.T) if self.group[t] == n] for n in range(C)]
        return np.asarray(table, np.int32).reshape(C, -1)

    @property
    def num_lookahead(self) -> int:
        """L, the LA tokens of each group (0 without groups)."""
        return self.groups.shape[1]

    @cached_property
    def la_index(self) -> np.ndarray:
        """0-based LA embedding per node (0 for non-LA nodes, masked by ``is_la``), ``[T]``."""
        return np.asarray(
            [i - 1 if k == LA else 0 for k, i in zip(self.kind, self.index)], np.int32
        )

    @cached_property
    def is_la(self) -> np.ndarray:
        return np.asarray([k == LA for k in self.kind])


def _build(name: str, widths: tuple[int, ...], L: int) -> Layout:
    """Root; ``widths[j-1]`` draft children (ranks 0..w-1) under every tree node at depth j-1,
    breadth first; then, when ``L`` > 0, a group LA_1..LA_L under every tree node."""
    kind, parent, index, rank, group = [ROOT], [-1], [0], [0], [-1]
    level = [0]
    for j, w in enumerate(widths, start=1):
        nxt = []
        for p in level:
            for r in range(w):
                nxt.append(len(kind))
                kind.append(DRAFT)
                parent.append(p)
                index.append(j)
                rank.append(r)
                group.append(-1)
        level = nxt
    for a in range(len(kind) if L else 0):
        prev = a
        for i in range(1, L + 1):
            kind.append(LA)
            parent.append(prev)
            index.append(i)
            rank.append(0)
            group.append(a)
            prev = len(kind) - 1
    return Layout(name, tuple(kind), tuple(parent), tuple(index), tuple(rank), tuple(group))


def root_layout() -> Layout:
    """[y]: one autoregressive step."""
    return _build("ar", (), 0)


def draft_layout(L: int) -> Layout:
    """The paper's drafting call [y, LA_1..LA_L]."""
    return _build(f"draft{L}", (), L)


def verify_layout(L: int) -> Layout:
    """The paper's validation call [z, d_1..d_L]."""
    return _build(f"verify{L}", (1,) * L, 0)


def fused_layout(L: int) -> Layout:
    """Verify d_1..d_L and draft the next L in one call: [y, d_1..d_L, g_0, .., g_L] (g_n: the
    group LA_1..LA_L under tree node n)."""
    return _build(f"fused{L}", (1,) * L, L)


def tree_layout(widths: tuple[int, ...]) -> Layout:
    """A fused draft tree: ``widths[j-1]`` children under every node at depth j-1, and an LA
    group of ``len(widths)`` tokens under every tree node (drafting the next call's tree)."""
    return _build(tree_name(widths), tuple(widths), len(widths))


def tree_name(widths: tuple[int, ...]) -> str:
    return "tree-" + "x".join(map(str, widths))


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

    @property
    def width(self) -> int:
        """Draws kept per depth: the widest layout's (1 for chains and ``ar``)."""
        return max([1] + [lay.width for lay in self.bootstrap + self.step])


METHODS = ("ar", "pass", "pass-fused", "tree-WxWx..")
_TREE = re.compile(r"tree-([1-9][0-9]*(?:x[1-9][0-9]*)*)")


def parse_tree(method: str) -> tuple[int, ...] | None:
    """The widths of a ``tree-3x2x1x1`` method name, or None for other names."""
    m = _TREE.fullmatch(method)
    return None if m is None else tuple(int(w) for w in m.group(1).split("x"))


def method_lookahead(method: str, L: int) -> int:
    """Look-ahead tokens ``method`` uses of the L available: the tree depth for trees."""
    widths = parse_tree(method)
    return 0 if method == "ar" else (L if widths is None else len(widths))


MAX_LOOKAHEAD = 32  # a fused call holds about L^2 tokens; far past where drafts stop paying
MAX_STEP_TOKENS = 4096  # tokens of one call (tree nodes and the LA groups under them)


def make_schedule(method: str, L: int = 0) -> Schedule:
    """``ar``, ``pass`` (the paper's two calls), ``pass-fused`` (one call per iteration) or
    ``tree-3x2x1x1`` (a fused draft tree; its depth must be <= L)."""
    if method == "ar":
        return Schedule("ar", 0, (), (root_layout(),))
    widths = parse_tree(method)
    if method not in METHODS and widths is None:
        raise ValueError(f"unknown decoding method {method!r}; expected one of {METHODS}")
    if isinstance(L, bool) or not isinstance(L, numbers.Integral):
        raise ValueError(f"number of look-ahead tokens must be an integer, got {L!r}")
    L = int(L)
    if L < 1:
        raise ValueError(f"number of look-ahead tokens must be >= 1, got {L}")
    if L > MAX_LOOKAHEAD:
        raise ValueError(
            f"{L} look-ahead tokens: at most {MAX_LOOKAHEAD} are supported (a fused "
            f"call holds about L^2 = {L * L} tokens)"
        )
    if widths is not None:
        nodes = 1 + int(np.cumprod(widths).sum())
        if nodes * (len(widths) + 1) > MAX_STEP_TOKENS:
            raise ValueError(
                f"{method}: {nodes} tree nodes, each with {len(widths)} look-ahead "
                f"tokens, is more than one call of at most {MAX_STEP_TOKENS} tokens; "
                "use fewer or narrower levels"
            )
    if method == "pass":
        return Schedule("pass", L, (), (draft_layout(L), verify_layout(L)))
    if method == "pass-fused":
        return Schedule("pass-fused", L, (draft_layout(L),), (fused_layout(L),))
    if len(widths) > L:
        raise ValueError(
            f"{method} is {len(widths)} drafts deep: it needs at least "
            f"{len(widths)} look-ahead tokens, there are {L}"
        )
    J = len(widths)
    return Schedule(method, J, (draft_layout(J),), (tree_layout(widths),))
