"""Layouts: the derived tables of draft trees, chains as trees of width 1, and bad layouts."""

import re

import numpy as np
import pytest

from pass_jax.layout import (
    CONTEXT,
    DRAFT,
    LA,
    MAX_LOOKAHEAD,
    ROOT,
    Layout,
    draft_layout,
    fused_layout,
    make_schedule,
    method_lookahead,
    parse_context,
    parse_tree,
    root_layout,
    tree_layout,
    tree_name,
    verify_layout,
)


def test_tree_tables():
    """tree-2x2: root, 2 children, 2 under each (breadth first), a group of 2 LAs under each of
    the 7 tree nodes."""
    lay = tree_layout((2, 2))
    assert (lay.T, lay.num_tree, lay.draft_depth, lay.width, lay.num_lookahead) == (21, 7, 2, 2, 2)
    assert lay.parent[:7] == (-1, 0, 0, 1, 1, 2, 2) and lay.rank[:7] == (0, 0, 1, 0, 1, 0, 1)
    np.testing.assert_array_equal(lay.children, [[1, 2], [3, 4], [5, 6]] + [[-1, -1]] * 4)
    np.testing.assert_array_equal(lay.paths[[0, 2, 5]], [[0, 1, 2], [0, 2, 2], [0, 2, 5]])
    np.testing.assert_array_equal(lay.groups[5], [17, 18])
    n, j, r = lay.draft_slots
    assert n.tolist() == [1, 2, 3, 4, 5, 6]
    assert j.tolist() == [0, 0, 1, 1, 1, 1] and r.tolist() == [0, 1, 0, 1, 0, 1]
    # a node sees exactly its ancestors: node 5's group sees 0, 2, 5 and its own LAs
    assert np.flatnonzero(lay.mask[18]).tolist() == [0, 2, 5, 17, 18]
    assert lay.depth[18] == 4 and not lay.is_chain


def test_chain_is_a_tree_of_width_one():
    chain, tree = fused_layout(3), tree_layout((1, 1, 1))
    for name in ("kind", "parent", "index", "rank", "group"):
        assert getattr(chain, name) == getattr(tree, name)
    assert chain.is_chain
    np.testing.assert_array_equal(chain.paths, np.tile(np.arange(4), (4, 1)))


def test_schedules_of_trees():
    s = make_schedule("tree-3x2x1x1", 6)
    assert s.num_lookahead == 4 and s.width == 3 and s.step_tokens == 22 * 5
    assert [lay.name for lay in s.bootstrap + s.step] == ["draft4", "tree-3x2x1x1"]
    assert make_schedule("pass-fused", 2).width == make_schedule("ar").width == 1
    assert parse_tree("tree-12x1") == (12, 1) and parse_tree("pass") is None
    with pytest.raises(ValueError, match="needs at least 4 look-ahead tokens, there are 2"):
        make_schedule("tree-3x2x1x1", 2)
    for bad in ("tree-", "tree-0x2", "tree-2x", "tree2x2"):
        with pytest.raises(ValueError, match="unknown decoding method"):
            make_schedule(bad, 4)
    assert make_schedule("pass", np.int64(3)).num_lookahead == 3  # a numpy integer is an L


def test_bad_layouts_are_refused():
    # children of the root with ranks 0 and 2 (rank 1 missing)
    with pytest.raises(ValueError, match="ranks 0..k-1"):
        Layout("x", (ROOT, DRAFT, DRAFT), (-1, 0, 0), (0, 1, 1), (0, 0, 2), (-1, -1, -1))
    # an LA group under the root only, while the tree has a draft
    with pytest.raises(ValueError, match="every tree node or none"):
        Layout("x", (ROOT, DRAFT, LA), (-1, 0, 0), (0, 1, 1), (0, 0, 0), (-1, -1, 0))
    # a draft after an LA node
    with pytest.raises(ValueError, match="before the LA nodes"):
        Layout("x", (ROOT, LA, DRAFT), (-1, 0, 0), (0, 1, 1), (0, 0, 0), (-1, 0, -1))


def test_oversized_schedules_are_refused_before_any_table_is_built():
    """L = 1000 once tried to allocate 935 GiB of masks; a huge tree likewise."""
    assert make_schedule("pass-fused", 32).num_lookahead == 32
    with pytest.raises(ValueError, match="1000 look-ahead tokens: at most 32"):
        make_schedule("pass-fused", 1000)
    with pytest.raises(ValueError, match="4369 tree nodes, each with 3 look-ahead tokens"):
        make_schedule("tree-16x16x16", 3)
    assert make_schedule("tree-4x4x4", 3).step_tokens == (1 + 4 + 16 + 64) * 4


# ------------------------------------------------------- every layout's tables, written out by hand


def _mask(rows):
    """A ``[T, T]`` mask from its rows' visible nodes."""
    m = np.zeros((len(rows), len(rows)), bool)
    for t, seen in enumerate(rows):
        m[t, list(seen)] = True
    return m


def _empty_slots(lay):
    n, j, r = lay.draft_slots
    return n.tolist() == j.tolist() == r.tolist() == []


def test_root_layout_is_one_token():
    lay = root_layout()
    assert (lay.name, lay.kind, lay.parent, lay.index, lay.rank, lay.group) == (
        "ar",
        (ROOT,),
        (-1,),
        (0,),
        (0,),
        (-1,),
    )
    assert (lay.T, lay.num_tree, lay.draft_depth, lay.width, lay.num_lookahead) == (1, 1, 0, 0, 0)
    np.testing.assert_array_equal(lay.mask, [[True]])
    np.testing.assert_array_equal(lay.depth, [0])
    np.testing.assert_array_equal(lay.children, [[-1]])
    np.testing.assert_array_equal(lay.paths, [[0]])
    assert lay.groups.shape == (1, 0) and _empty_slots(lay) and lay.is_chain
    np.testing.assert_array_equal(lay.is_la, [False])


def test_paper_drafting_call():
    """[y, LA_1, LA_2]: a causal chain at positions m, m+1, m+2; one group, under the root."""
    lay = draft_layout(2)
    assert (lay.name, lay.kind, lay.parent, lay.index, lay.group) == (
        "draft2",
        (ROOT, LA, LA),
        (-1, 0, 1),
        (0, 1, 2),
        (-1, 0, 0),
    )
    assert (lay.T, lay.num_tree, lay.draft_depth, lay.width, lay.num_lookahead) == (3, 1, 0, 0, 2)
    np.testing.assert_array_equal(lay.mask, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(lay.depth, [0, 1, 2])
    np.testing.assert_array_equal(lay.groups, [[1, 2]])
    np.testing.assert_array_equal(lay.la_index, [0, 0, 1])
    np.testing.assert_array_equal(lay.is_la, [False, True, True])
    np.testing.assert_array_equal(lay.children, [[-1]])
    np.testing.assert_array_equal(lay.paths, [[0]])
    assert _empty_slots(lay) and lay.is_chain


def test_paper_validation_call():
    """[z, d_1, d_2]: a causal chain of drafts read from q_1, q_2 at rank 0; no LA tokens."""
    lay = verify_layout(2)
    assert (lay.name, lay.kind, lay.parent, lay.index, lay.rank, lay.group) == (
        "verify2",
        (ROOT, DRAFT, DRAFT),
        (-1, 0, 1),
        (0, 1, 2),
        (0, 0, 0),
        (-1, -1, -1),
    )
    assert (lay.T, lay.num_tree, lay.draft_depth, lay.width, lay.num_lookahead) == (3, 3, 2, 1, 0)
    np.testing.assert_array_equal(lay.mask, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(lay.depth, [0, 1, 2])
    np.testing.assert_array_equal(lay.children, [[1], [2], [-1]])
    np.testing.assert_array_equal(lay.paths, [[0, 1, 2]] * 3)
    n, j, r = lay.draft_slots
    assert n.tolist() == [1, 2] and j.tolist() == [0, 1] and r.tolist() == [0, 0]
    assert lay.groups.shape == (3, 0) and not lay.is_la.any() and lay.is_chain


def test_fused_call_tables():
    """[y, d_1, d_2, g_0, g_1, g_2] with L = 2: g_j's LA_i sits at depth j + i and sees the root,
    d_1..d_j and its group's earlier LA (the static tree mask of a fused call)."""
    lay = fused_layout(2)
    assert lay.name == "fused2" and lay.T == 1 + 2 + 2 * 3
    assert lay.kind == (ROOT, DRAFT, DRAFT, LA, LA, LA, LA, LA, LA)
    assert lay.parent == (-1, 0, 1, 0, 3, 1, 5, 2, 7)
    assert lay.index == (0, 1, 2, 1, 2, 1, 2, 1, 2)
    assert lay.group == (-1, -1, -1, 0, 0, 1, 1, 2, 2)
    np.testing.assert_array_equal(lay.depth, [0, 1, 2, 1, 2, 2, 3, 3, 4])
    np.testing.assert_array_equal(
        lay.mask,
        [
            # y d1 d2 g0    g1    g2
            [1, 0, 0, 0, 0, 0, 0, 0, 0],  # y
            [1, 1, 0, 0, 0, 0, 0, 0, 0],  # d_1
            [1, 1, 1, 0, 0, 0, 0, 0, 0],  # d_2
            [1, 0, 0, 1, 0, 0, 0, 0, 0],  # g_0 LA_1
            [1, 0, 0, 1, 1, 0, 0, 0, 0],  # g_0 LA_2
            [1, 1, 0, 0, 0, 1, 0, 0, 0],  # g_1 LA_1
            [1, 1, 0, 0, 0, 1, 1, 0, 0],  # g_1 LA_2
            [1, 1, 1, 0, 0, 0, 0, 1, 0],  # g_2 LA_1
            [1, 1, 1, 0, 0, 0, 0, 1, 1],  # g_2 LA_2
        ],
    )
    np.testing.assert_array_equal(lay.groups, [[3, 4], [5, 6], [7, 8]])
    np.testing.assert_array_equal(lay.la_index, [0, 0, 0, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(lay.is_la, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(lay.children, [[1], [2], [-1]])
    np.testing.assert_array_equal(lay.paths, [[0, 1, 2]] * 3)
    n, j, r = lay.draft_slots
    assert n.tolist() == [1, 2] and j.tolist() == [0, 1] and r.tolist() == [0, 0]
    assert (lay.num_tree, lay.draft_depth, lay.width, lay.num_lookahead) == (3, 2, 1, 2)
    assert lay.is_chain


def test_tree_2x2_from_its_name():
    """``tree-2x2`` parsed from its method name: the full mask, depths, groups and LA indices."""
    widths = parse_tree("tree-2x2")
    assert widths == (2, 2)
    lay = make_schedule("tree-2x2", 3).step[0]
    assert lay == tree_layout(widths) and lay.name == tree_name(widths) == "tree-2x2"
    # tree: 0; 1, 2 under 0; 3, 4 under 1; 5, 6 under 2. LA pairs under 0..6: 7-8, .., 19-20
    seen = [
        {0},
        {0, 1},
        {0, 2},
        {0, 1, 3},
        {0, 1, 4},
        {0, 2, 5},
        {0, 2, 6},
        {0, 7},
        {0, 7, 8},
        {0, 1, 9},
        {0, 1, 9, 10},
        {0, 2, 11},
        {0, 2, 11, 12},
        {0, 1, 3, 13},
        {0, 1, 3, 13, 14},
        {0, 1, 4, 15},
        {0, 1, 4, 15, 16},
        {0, 2, 5, 17},
        {0, 2, 5, 17, 18},
        {0, 2, 6, 19},
        {0, 2, 6, 19, 20},
    ]
    np.testing.assert_array_equal(lay.mask, _mask(seen))
    np.testing.assert_array_equal(
        lay.depth, [0, 1, 1, 2, 2, 2, 2, 1, 2, 2, 3, 2, 3, 3, 4, 3, 4, 3, 4, 3, 4]
    )
    np.testing.assert_array_equal(
        lay.groups, [[7, 8], [9, 10], [11, 12], [13, 14], [15, 16], [17, 18], [19, 20]]
    )
    np.testing.assert_array_equal(lay.la_index, [0] * 7 + [0, 1] * 7)
    np.testing.assert_array_equal(lay.is_la, [False] * 7 + [True] * 14)
    assert lay.group == (-1,) * 7 + (0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6)
    np.testing.assert_array_equal(
        lay.paths, [[0, 1, 2], [0, 1, 2], [0, 2, 2], [0, 1, 3], [0, 1, 4], [0, 2, 5], [0, 2, 6]]
    )


def test_tree_paths_commit_by_moving_slots():
    """Moving slot ``paths[n, k]`` to slot ``k`` (all read first, as ``KVCache.move`` does) puts
    the path to n at slots 0..depth(n) and leaves the slots after it as they were."""
    lay = tree_layout((2, 1))  # 0; 1, 2 under 0; 3 under 1, 4 under 2
    np.testing.assert_array_equal(
        lay.paths, [[0, 1, 2], [0, 1, 2], [0, 2, 2], [0, 1, 3], [0, 2, 4]]
    )
    np.testing.assert_array_equal(lay.children, [[1, 2], [3, -1], [4, -1], [-1, -1], [-1, -1]])
    want = {
        0: [0, 1, 2, 3, 4],
        1: [0, 1, 2, 3, 4],
        2: [0, 2, 2, 3, 4],
        3: [0, 1, 3, 3, 4],
        4: [0, 2, 4, 3, 4],
    }
    for n, expected in want.items():
        slots = np.arange(lay.num_tree)  # slot s holds node s after the call
        slots[np.arange(lay.draft_depth + 1)] = slots[lay.paths[n]]
        assert slots.tolist() == expected, n


def test_schedules_list_their_calls():
    ar = make_schedule("ar")
    assert (ar.name, ar.num_lookahead, ar.bootstrap, ar.step) == ("ar", 0, (), (root_layout(),))
    assert ar.step_tokens == 1 and ar.width == 1
    paper = make_schedule("pass", 2)
    assert paper.bootstrap == () and paper.step == (draft_layout(2), verify_layout(2))
    assert (paper.num_lookahead, paper.step_tokens, paper.width) == (2, 6, 1)
    fused = make_schedule("pass-fused", 2)
    assert fused.bootstrap == (draft_layout(2),) and fused.step == (fused_layout(2),)
    assert (fused.num_lookahead, fused.step_tokens, fused.width) == (2, 9, 1)
    tree = make_schedule("tree-2x2", 5)  # uses the tree's depth, not all 5 LA tokens
    assert tree.bootstrap == (draft_layout(2),) and tree.step == (tree_layout((2, 2)),)
    assert (tree.name, tree.num_lookahead, tree.step_tokens, tree.width) == ("tree-2x2", 2, 21, 2)
    # the most tokens an iteration commits: per call its deepest path + 1
    assert [s.step_emits for s in (ar, paper, fused, tree)] == [1, 1 + 3, 3, 3]
    assert make_schedule("ctx-3").step_emits == 4
    assert make_schedule("tree-4+ctx2", 4).step_emits == 1 + 2 + 1
    # layouts are static jit arguments: equal tables, equal hashes
    assert hash(fused_layout(2)) == hash(make_schedule("pass-fused", 2).step[0])
    assert [method_lookahead(m, 5) for m in ("ar", "pass", "pass-fused", "tree-2x1")] == [
        0,
        5,
        5,
        2,
    ]


def test_unk_is_not_a_layout():
    """[UNK] look-ahead is the ``pass`` schedule with other embeddings (chosen by the CLI), so
    the layout module refuses the name."""
    with pytest.raises(
        ValueError,
        match=r"unknown decoding method 'unk'; expected one of "
        r"\('ar', 'pass', 'pass-fused', 'tree-WxWx..', 'tree-WxWx..\+ctxM', 'ctx-M'\)",
    ):
        make_schedule("unk", 2)


@pytest.mark.parametrize("method", ["pass", "pass-fused", "tree-2"])
@pytest.mark.parametrize(
    "L,message",
    [
        (0, "must be >= 1, got 0"),
        (-3, "must be >= 1, got -3"),
        (2.0, "must be an integer, got 2.0"),
        (True, "must be an integer, got True"),
        (
            33,
            r"33 look-ahead tokens: at most 32 are supported \(a fused call holds about "
            r"L\^2 = 1089 tokens\)",
        ),
    ],
)
def test_bad_lookahead_counts_are_refused(method, L, message):
    assert MAX_LOOKAHEAD == 32  # the limit the message names
    with pytest.raises(ValueError, match=message):
        make_schedule(method, L)


@pytest.mark.parametrize(
    "bad",
    [
        "tree-02",
        "tree-2x0",
        "tree-x2",
        "tree-2xx2",
        "TREE-2",
        "tree-2 ",
        "tree-2,2",
        "tree-a",
        "fused",
        "",
    ],
)
def test_malformed_method_names_are_named_in_the_error(bad):
    assert parse_tree(bad) is None
    with pytest.raises(ValueError, match=f"unknown decoding method {re.escape(repr(bad))}"):
        make_schedule(bad, 4)


def test_more_malformed_layout_tables_are_refused():
    with pytest.raises(ValueError, match="one entry per node"):
        Layout("x", (ROOT, DRAFT), (-1, 0), (0, 1), (0,), (-1, -1))
    with pytest.raises(ValueError, match="node 0 must be the root"):
        Layout("x", (DRAFT,), (-1,), (1,), (0,), (-1,))
    with pytest.raises(ValueError, match="node 0 must be the root"):
        Layout("x", (), (), (), (), ())
    with pytest.raises(ValueError, match="node 2: parent must be an earlier node"):
        Layout("x", (ROOT, DRAFT, DRAFT), (-1, 0, 2), (0, 1, 2), (0, 0, 0), (-1, -1, -1))
    with pytest.raises(ValueError, match="draft node 2: index must be its depth"):
        Layout("x", (ROOT, DRAFT, DRAFT), (-1, 0, 1), (0, 1, 1), (0, 0, 0), (-1, -1, -1))
    with pytest.raises(ValueError, match="LA groups must hang under tree nodes"):
        Layout("x", (ROOT, LA), (-1, 0), (0, 1), (0, 0), (-1, 3))
    # LA_2 before LA_1, and groups of different sizes
    with pytest.raises(ValueError, match="the LA group under node 0 must be a chain of index 1..n"):
        Layout("x", (ROOT, LA, LA), (-1, 0, 1), (0, 2, 1), (0, 0, 0), (-1, 0, 0))
    with pytest.raises(
        ValueError, match="must be a chain of index 1..n, the same n for every LA group"
    ):
        Layout(
            "x",
            (ROOT, DRAFT, LA, LA, LA),
            (-1, 0, 0, 2, 1),
            (0, 1, 1, 2, 1),
            (0,) * 5,
            (-1, -1, 0, 0, 1),
        )


def test_context_layout_tables():
    """ctx-3: [y, c_1, c_2, c_3], a chain with no draws and no LA; tree-2+ctx1: 2 draws under
    the root, then a context draft under the root (rank 2, after the draws) and under each
    draw, and an LA_1 under each of the 6 tree nodes."""
    lay = make_schedule("ctx-3", 0).step[0]
    assert (lay.T, lay.num_tree, lay.draft_depth, lay.width, lay.draws) == (4, 4, 3, 1, 0)
    assert lay.kind == (ROOT, CONTEXT, CONTEXT, CONTEXT) and lay.is_chain
    anchors, chains = lay.context_chains
    assert anchors.tolist() == [0] and chains.tolist() == [[1, 2, 3]]
    assert lay.context_query.tolist() == [[-2, -1, 0]]  # two tokens before y, then y
    tree = make_schedule("tree-2+ctx1", 4)
    assert (tree.num_lookahead, tree.width, tree.depth) == (1, 2, 2)
    assert [x.name for x in tree.bootstrap + tree.step] == ["draft1", "tree-2+ctx1"]
    lay = tree.step[0]
    assert (lay.T, lay.num_tree, lay.draft_depth, lay.width, lay.draws) == (12, 6, 2, 3, 2)
    assert lay.kind[:6] == (ROOT, DRAFT, DRAFT, CONTEXT, CONTEXT, CONTEXT)
    assert lay.parent[:6] == (-1, 0, 0, 0, 1, 2) and lay.rank[:6] == (0, 0, 1, 2, 0, 0)
    assert lay.draw.tolist() == [-1, 0, 1, -1, -1, -1]
    np.testing.assert_array_equal(lay.children[:3], [[1, 2, 3], [4, -1, -1], [5, -1, -1]])
    anchors, chains = lay.context_chains
    assert anchors.tolist() == [0, 1, 2] and chains.tolist() == [[3], [4], [5]]
    # under draw 1: the token before y, y, then the draw itself
    assert lay.context_query.tolist() == [[-2, -1, 0], [-1, 0, 1], [-1, 0, 2]]
    n, j, r = lay.draft_slots
    assert n.tolist() == [1, 2] and j.tolist() == [0, 0] and r.tolist() == [0, 1]
    assert parse_tree("ctx-3") == () and parse_context("ctx-3") == 3
    assert parse_tree("tree-4x1+ctx2") == (4, 1) and parse_context("tree-4x1+ctx2") == 2
    assert parse_context("tree-4x1") == 0 and method_lookahead("ctx-3", 4) == 0
    assert method_lookahead("tree-4+ctx2", 4) == 1
    for bad in ("ctx-0", "ctx3", "tree-2+ctx", "tree-2+ctx0", "ctx-2+ctx2"):
        with pytest.raises(ValueError, match="unknown decoding method"):
            make_schedule(bad, 4)
    # a context chain must be a chain hanging under a tree node, its drafts ranked after draws
    with pytest.raises(ValueError, match="drafts first"):
        Layout("x", (ROOT, CONTEXT, DRAFT), (-1, 0, 0), (0, 1, 1), (0, 0, 1), (-1, 0, -1))
    with pytest.raises(ValueError, match="the context chain under node 0 must be a chain"):
        Layout("x", (ROOT, CONTEXT, CONTEXT), (-1, 0, 1), (0, 2, 1), (0, 0, 0), (-1, 0, 0))
