"""Layouts: the derived tables of draft trees, chains as trees of width 1, and bad layouts."""
import numpy as np
import pytest

from pass_jax.layout import (DRAFT, LA, ROOT, Layout, fused_layout, make_schedule, parse_tree,
                             tree_layout)


def test_tree_tables():
    """tree-2x2: root, 2 children, 2 under each (breadth first), a group of 2 LAs under each of
    the 7 tree nodes."""
    lay = tree_layout((2, 2))
    assert (lay.T, lay.num_tree, lay.draft_depth, lay.width, lay.num_lookahead) == (21, 7, 2, 2, 2)
    assert lay.parent[:7] == (-1, 0, 0, 1, 1, 2, 2) and lay.rank[:7] == (0, 0, 1, 0, 1, 0, 1)
    np.testing.assert_array_equal(lay.children, [[1, 2], [3, 4], [5, 6]] + [[-1, -1]] * 4)
    np.testing.assert_array_equal(lay.paths[[0, 2, 5]], [[0, 1, 2], [0, 2, 2], [0, 2, 5]])
    np.testing.assert_array_equal(lay.groups[5], [17, 18])
    j, r = lay.draft_slots
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
