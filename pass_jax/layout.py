"""Draft layouts: the static token tree of one forward call, and schedules of calls.

A layout lists the nodes of one call. Node 0 is the root: the newest token y, not yet in the
cache. The *tree nodes* are the root and the DRAFT nodes under it (nodes 0..C-1, parents first);
a draft at depth j is one of the tokens drawn from the draft distribution q_j: the (r+1)-th draw
(its *rank* r) of an ordered sample without replacement, so a node's children are ranks 0..k-1.
A chain (every rank 0) is the paper's d_1..d_J. CONTEXT nodes are drafts too, but copied from
the sequence itself (prompt-lookup decoding, Saxena 2023; ``context.py``): a chain c_1..c_m
hangs under a tree node a and holds the m tokens that followed the latest earlier occurrence of
the last (up to 3) tokens of the path to a; a chain's head comes after a's DRAFT children (its
rank is theirs + 1). LA nodes come after the tree: a group LA_1..LA_L hangs under a tree node and
drafts the L tokens that follow once the path to that node is accepted (the fused schedule hangs
one under every tree node).

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
``tree-8+ctx2`` = that tree plus a chain of 2 context drafts under the root and under every
draft; ``ctx-3`` = [y, c_1, c_2, c_3]: context drafts alone (no look-ahead, no drafting call).

Shape letters: see ``pass_jax/__init__.py`` (here T tokens of the call, C tree nodes, J draft
depth, W draft width, L LA tokens per group).
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

ROOT, DRAFT, LA, CONTEXT = 0, 1, 2, 3
TREE_KINDS = (ROOT, DRAFT, CONTEXT)  # verified nodes; LA nodes only draft


@dataclass(frozen=True)
class Layout:
    """One forward call's token tree. Tuples, so it is hashable (a static jit argument)."""

    name: str
    kind: tuple[int, ...]  # ROOT / DRAFT / LA / CONTEXT per node
    parent: tuple[int, ...]  # parent node, -1 for the root
    # DRAFT: its depth j (drawn from q_j); LA: i in 1..L; CONTEXT: i in 1..m; ROOT: 0
    index: tuple[int, ...]
    rank: tuple[int, ...]  # order among the parent's children; DRAFT: r, the (r+1)-th draw
    group: tuple[int, ...]  # LA, CONTEXT: the tree node its group / chain hangs under; else -1

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
        if ROOT in self.kind[1:] or any(k != LA for k in self.kind[C:]):
            raise ValueError("the draft tree (root, drafts) must come before the LA nodes")
        kids: dict[int, list[int]] = {}
        for t in range(1, C):
            if self.kind[t] == DRAFT and self.index[t] != self.depth[t]:
                raise ValueError(f"draft node {t}: index must be its depth")
            kids.setdefault(self.parent[t], []).append(t)
        for ts in kids.values():
            ranks = sorted(self.rank[t] for t in ts)
            drafts = sorted(self.rank[t] for t in ts if self.kind[t] == DRAFT)
            if ranks != list(range(len(ranks))) or drafts != list(range(len(drafts))):
                raise ValueError("the children of a node must have ranks 0..k-1, its drafts first")
        self._check_chains(CONTEXT, range(C), "context chain")
        self._check_chains(LA, range(C, self.T), "LA group")

    def _check_chains(self, kind: int, nodes: range, what: str):
        """The ``kind`` nodes among ``nodes`` form chains (index 1..n) hanging under tree nodes,
        one per tree node or (LA groups) under every tree node, all of one length."""
        C = self.num_tree
        mine = [t for t in nodes if self.kind[t] == kind]
        anchors = [self.group[t] for t in mine]
        if any(not 0 <= a < C or self.kind[a] == LA for a in anchors):
            raise ValueError(f"{what}s must hang under tree nodes")
        if kind == LA and anchors and sorted(set(anchors)) != list(range(C)):
            raise ValueError("LA groups must hang under every tree node or none")
        chains = [[t for t in mine if self.group[t] == a] for a in dict.fromkeys(anchors)]
        for chain in chains:
            a = self.group[chain[0]]
            if (
                len(chain) != len(chains[0])
                or [self.index[t] for t in chain] != list(range(1, len(chain) + 1))
                or [self.parent[t] for t in chain] != [a] + chain[:-1]
            ):
                raise ValueError(
                    f"the {what} under node {a} must be a chain of index 1..n, the same n "
                    f"for every {what}"
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
        """Most children of one tree node (0 without drafts)."""
        return max(
            (r + 1 for k, r in zip(self.kind, self.rank) if k in (DRAFT, CONTEXT)), default=0
        )

    @property
    def draws(self) -> int:
        """Most DRAFT children of one tree node (0 without): the draws per depth it reads."""
        return max((r + 1 for k, r in zip(self.kind, self.rank) if k == DRAFT), default=0)

    @cached_property
    def draw(self) -> np.ndarray:
        """Per tree node ``[C]``: its rank r (it is the (r+1)-th draw from q_depth) for DRAFT
        nodes, -1 for the root and CONTEXT nodes."""
        C = self.num_tree
        return np.asarray(
            [r if k == DRAFT else -1 for k, r in zip(self.kind[:C], self.rank[:C])], np.int32
        )

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
    def draft_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DRAFT nodes, their (depth - 1) and rank: node ``n[i]``'s token is
        ``drafts_BxLxW[:, j[i], r[i]]``."""
        n = np.flatnonzero(np.asarray(self.kind) == DRAFT).astype(np.int32)
        return n, np.asarray(self.index, np.int32)[n] - 1, np.asarray(self.rank, np.int32)[n]

    @cached_property
    def context_chains(self) -> tuple[np.ndarray, np.ndarray]:
        """Context chains: (anchors ``[U]``, their nodes ``[U, m]``, c_1..c_m under each);
        ``[0]``, ``[0, 0]`` without."""
        C = self.num_tree
        anchors = list(dict.fromkeys(self.group[t] for t in range(C) if self.kind[t] == CONTEXT))
        nodes = [
            [t for t in range(C) if self.kind[t] == CONTEXT and self.group[t] == a] for a in anchors
        ]
        m = len(nodes[0]) if nodes else 0
        return np.asarray(anchors, np.int32), np.asarray(nodes, np.int32).reshape(len(anchors), m)

    @cached_property
    def context_query(self) -> np.ndarray:
        """Where the lookup key of each chain comes from, ``[U, 3]``, oldest first: the last 3
        tokens of the sequence before y, then the path y (the root), .., anchor. Entry n >= 0:
        tree node n's token; entry -b: the token b places before y."""
        anchors, _ = self.context_chains
        q = np.zeros((len(anchors), 3), np.int32)
        for u, a in enumerate(anchors):
            path = [int(n) for n in self.paths[a, : self.depth[a] + 1]]  # y, .., a
            for k in range(3):  # the k-th token from the end
                q[u, 2 - k] = path[-1 - k] if k < len(path) else -(k - len(path) + 1)
        return q

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


def _build(name: str, widths: tuple[int, ...], L: int, m: int = 0) -> Layout:
    """Root; ``widths[j-1]`` draft children (ranks 0..w-1) under every tree node at depth j-1,
    breadth first; a chain of ``m`` context drafts under the root and every draft; then, when
    ``L`` > 0, a group LA_1..LA_L under every tree node."""
    kind, parent, index, rank, group = [ROOT], [-1], [0], [0], [-1]

    def add(k, p, i, r, g):
        kind.append(k)
        parent.append(p)
        index.append(i)
        rank.append(r)
        group.append(g)
        return len(kind) - 1

    level = [0]
    for j, w in enumerate(widths, start=1):
        level = [add(DRAFT, p, j, r, -1) for p in level for r in range(w)]
    for a in range(len(kind) if m else 0):
        prev = a
        draws = sum(1 for t, p in enumerate(parent) if p == a and kind[t] == DRAFT)
        for i in range(1, m + 1):  # the head ranks after a's draft children
            prev = add(CONTEXT, prev, i, draws if i == 1 else 0, a)
    for a in range(len(kind) if L else 0):
        prev = a
        for i in range(1, L + 1):
            prev = add(LA, prev, i, 0, a)
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


def tree_layout(widths: tuple[int, ...], m: int = 0) -> Layout:
    """A fused draft tree: ``widths[j-1]`` children under every node at depth j-1, a chain of
    ``m`` context drafts under the root and every draft, and an LA group of ``len(widths)``
    tokens under every tree node (drafting the next call's tree)."""
    return _build(tree_name(widths, m), tuple(widths), len(widths), m)


def context_layout(m: int) -> Layout:
    """[y, c_1..c_m]: context drafts alone (prompt-lookup decoding), no look-ahead."""
    return _build(f"ctx-{m}", (), 0, m)


def tree_name(widths: tuple[int, ...], m: int = 0) -> str:
    """``tree-3x2`` (``tree-3x2+ctx2`` with a context chain of ``m`` = 2)."""
    return "tree-" + "x".join(map(str, widths)) + (f"+ctx{m}" if m else "")


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
    def step_emits(self) -> int:
        """Most tokens one loop iteration commits: per call, its deepest accepted path + 1."""
        return sum(lay.draft_depth + 1 for lay in self.step)

    @property
    def width(self) -> int:
        """Draws kept per depth: the widest layout's (1 for chains and ``ar``)."""
        return max([1] + [lay.draws for lay in self.bootstrap + self.step])

    @property
    def depth(self) -> int:
        """Deepest draft of its calls (J; 0 for ``ar``): the depths acceptance is counted at."""
        return max(lay.draft_depth for lay in self.bootstrap + self.step)


METHODS = ("ar", "pass", "pass-fused", "tree-WxWx..", "tree-WxWx..+ctxM", "ctx-M")
_TREE = re.compile(r"tree-([1-9][0-9]*(?:x[1-9][0-9]*)*)(?:\+ctx([1-9][0-9]*))?")
_CONTEXT = re.compile(r"ctx-([1-9][0-9]*)")


def parse_tree(method: str) -> tuple[int, ...] | None:
    """The widths of a ``tree-3x2x1x1`` (or ``tree-3x2x1x1+ctx2``) method name, ``()`` for
    ``ctx-M``, None for other names."""
    if _CONTEXT.fullmatch(method):
        return ()
    m = _TREE.fullmatch(method)
    return None if m is None else tuple(int(w) for w in m.group(1).split("x"))


def parse_context(method: str) -> int:
    """The context chain length m of ``ctx-M`` and ``tree-..+ctxM`` names, else 0."""
    m = _CONTEXT.fullmatch(method) or _TREE.fullmatch(method)
    return int(m.group(m.re.groups)) if m and m.group(m.re.groups) else 0


def method_lookahead(method: str, L: int) -> int:
    """Look-ahead tokens ``method`` uses of the L available: the tree depth for trees, 0 for
    ``ar`` and ``ctx-M``."""
    widths = parse_tree(method)
    return 0 if method == "ar" else (L if widths is None else len(widths))


MAX_LOOKAHEAD = 32  # a fused call holds about L^2 tokens; far past where drafts stop paying
MAX_STEP_TOKENS = 4096  # tokens of one call (tree nodes and the LA groups under them)


def make_schedule(method: str, L: int = 0) -> Schedule:
    """``ar``, ``pass`` (the paper's two calls), ``pass-fused`` (one call per iteration),
    ``tree-3x2x1x1`` (a fused draft tree; its depth must be <= L), ``tree-3x2+ctx2`` (with
    context chains) or ``ctx-3`` (context drafts alone; L is not used)."""
    if method == "ar":
        return Schedule("ar", 0, (), (root_layout(),))
    widths, m = parse_tree(method), parse_context(method)
    if method not in METHODS[:3] and widths is None:
        raise ValueError(f"unknown decoding method {method!r}; expected one of {METHODS}")
    if widths == ():
        if 1 + m > MAX_STEP_TOKENS:
            raise ValueError(f"{method}: one call holds at most {MAX_STEP_TOKENS} tokens")
        return Schedule(method, 0, (), (context_layout(m),))
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
        nodes = (1 + int(np.cumprod(widths).sum())) * (1 + m)
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
    return Schedule(method, J, (draft_layout(J),), (tree_layout(widths, m),))
