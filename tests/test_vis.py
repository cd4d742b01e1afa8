"""Overlays: flat per-patch colours aligned to the image at any aspect ratio, legends, heatmap."""
import numpy as np
import pytest

from mone import vis


def _photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size,cells", [(640, 12), (427, 12), (37, 5), (96, 8), (100, 3)])
def test_cell_edges_and_index_agree(size, cells):
    edges = vis.cell_edges(size, cells)
    idx = vis.cell_index(size, cells)
    assert edges[0] == 0 and edges[-1] == size and np.all(np.diff(edges) > 0)
    for c in range(cells):
        assert np.all(idx[edges[c]:edges[c + 1]] == c)           # every pixel of cell c maps to c
    widths = np.diff(edges)
    assert widths.max() - widths.min() <= 1                       # equal cells, to the pixel


def test_patch_at_maps_pixels_to_cells_of_a_non_square_image():
    w, h, grid = 640, 256, (8, 8)                                 # a wide image: cells are 80 x 32 px
    assert vis.patch_at(0, 0, w, h, grid) == (0, 0)
    assert vis.patch_at(79.9, 31.9, w, h, grid) == (0, 0)
    assert vis.patch_at(80, 32, w, h, grid) == (1, 1)
    assert vis.patch_at(639, 255, w, h, grid) == (7, 7)
    assert vis.patch_at(640, 10, w, h, grid) is None              # outside (e.g. on the legend below)
    assert vis.patch_at(10, 256, w, h, grid) is None


@pytest.mark.parametrize("h,w,grid", [(256, 640, (8, 8)), (300, 200, (12, 12)), (37, 53, (5, 7))])
def test_expert_overlay_is_flat_per_patch_and_aligned(h, w, grid):
    image = _photo(h, w)
    rng = np.random.default_rng(1)
    assignment = rng.integers(0, 4, grid)
    out = vis.expert_overlay(image, assignment, 4, opacity=1.0, grid_lines=False)
    colours = vis.expert_colors(4)
    ye, xe = vis.cell_edges(h, grid[0]), vis.cell_edges(w, grid[1])
    for r in range(grid[0]):
        for c in range(grid[1]):
            cell = out[ye[r]:ye[r + 1], xe[c]:xe[c + 1]]
            assert np.all(cell == colours[assignment[r, c]]), (r, c)   # exact colour, whole cell, no blur


def test_overlay_blend_formula_opacity_and_grid_lines():
    image = _photo(60, 90)
    assignment = np.arange(6).reshape(2, 3) % 4
    out0 = vis.expert_overlay(image, assignment, 4, opacity=0.0)
    assert np.array_equal(out0, image)                            # opacity 0: the photo untouched, no lines
    a = 0.4
    out = vis.expert_overlay(image, assignment, 4, opacity=a)
    canvas = vis.PatchCanvas(image, (2, 3))
    lines = canvas.idx == 6
    assert lines.any() and lines[:, 30].all() and lines[30, :].all()   # inner edges at x = 30, 60 and y = 30
    ref = (np.floor(image * (1 - a)) + np.round(vis.expert_colors(4)[assignment][
        vis.cell_index(60, 2)][:, vis.cell_index(90, 3)] * a)).astype(np.uint8)
    assert np.array_equal(out[~lines], ref[~lines])
    assert out.max() <= 255 and out.dtype == np.uint8
    # the canvas path (reused across budgets) gives the same pixels and can write into a preallocated array
    buf = np.zeros((70, 90, 3), np.uint8)
    vis.expert_overlay(image, assignment, 4, opacity=a, canvas=canvas, out=buf[:60])
    assert np.array_equal(buf[:60], out)


def test_overlay_never_overflows_at_white_and_full_colour():
    image = np.full((40, 40, 3), 255, np.uint8)
    for a in (0.05, 0.33, 0.5, 0.77, 1.0):
        out = vis.expert_overlay(image, np.full((4, 4), 3), 4, opacity=a, grid_lines=False)
        ref = np.round(255 * (1 - a) + vis.expert_colors(4)[3] * a)
        assert np.all(np.abs(out[0, 0].astype(int) - ref) <= 1)   # no wrap-around to dark values


def test_expert_overlay_rejects_bad_assignments():
    with pytest.raises(ValueError, match="values must be in"):
        vis.expert_overlay(_photo(8, 8), np.full((2, 2), 4), 4)
    with pytest.raises(ValueError, match="must be"):
        vis.expert_overlay(_photo(8, 8), np.zeros(4, int), 4)
    with pytest.raises(ValueError, match="uint8 RGB"):
        vis.expert_overlay(np.zeros((8, 8)), np.zeros((2, 2), int), 4)


def test_importance_overlay_extremes_and_flat_cells():
    image = np.zeros((64, 64, 3), np.uint8)
    values = np.array([[0.1, 0.5], [0.9, 0.3]])
    out = vis.importance_overlay(image, values, opacity=1.0, grid_lines=False)
    hi, lo = out[40, 0], out[0, 0]                                # cells (1, 0) = max, (0, 0) = min
    assert not np.array_equal(hi, lo)
    assert hi[1] > lo[1] and np.all(out[32:64, 0:32] == hi)      # viridis: max is bright yellow-green, flat cell
    assert np.all(out[0:32, 0:32] == lo)


def test_legend_strip_has_each_expert_colour_and_wraps():
    entries = vis.expert_legend_entries(4, 192, [10, 20, 30, 84])
    assert [text for _, text in entries][0] == "D (192 ch): 84 tok"   # largest expert first
    wide = vis.legend_strip(640, entries)
    narrow = vis.legend_strip(200, entries)
    assert wide.shape[1] == 640 and narrow.shape[1] == 200
    assert narrow.shape[0] > wide.shape[0]                        # wrapped onto more rows
    for colour in vis.expert_colors(4):
        assert np.any(np.all(wide == colour, axis=-1)), colour    # a swatch of every expert colour


def test_render_functions_keep_the_image_on_top():
    image = _photo(120, 200)
    assignment = np.random.default_rng(0).integers(0, 4, (6, 10))
    out = vis.render_experts(image, assignment, 4, 0.5, 64, [10, 20, 10, 20])
    assert out.shape[1] == 200 and out.shape[0] > 120
    assert np.array_equal(out[:120], vis.expert_overlay(image, assignment, 4, 0.5))
    imp = vis.render_importance(image, np.random.default_rng(1).random((6, 10)), 0.5)
    assert imp.shape[1] == 200 and imp.shape[0] > 120


def test_expected_width_range():
    probs = np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    assert np.allclose(vis.expected_width(probs), [0.125, 1.0, (0.125 + 0.25 + 0.5 + 1) / 4])


@pytest.mark.parametrize("h,w", [(96, 96), (3000, 4000), (101, 33), (272, 640)])
def test_fit_long_side_keeps_aspect_and_even(h, w):
    out = vis.fit_long_side(np.zeros((h, w, 3), np.uint8), 640, even=True)
    assert max(out.shape[:2]) in (639, 640) and out.shape[0] % 2 == 0 and out.shape[1] % 2 == 0
    assert abs(out.shape[1] / out.shape[0] - w / h) < 0.05 * (w / h) + 0.02


def test_expert_colors_are_distinct():
    for e in range(1, 9):
        c = vis.expert_colors(e)
        assert len({tuple(x) for x in c}) == e
    assert tuple(vis.expert_colors(4)[-1]) == (213, 94, 0)        # the full expert is the 'hot' colour
