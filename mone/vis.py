"""Overlays for MoNE routing: one discrete colour per nested expert, a router-importance heatmap, legends.

numpy + OpenCV (+ Pillow for legend text); no UI code. Images are RGB uint8 arrays (H, W, 3).

The model sees the image squashed to a square (see `mone.inference.to_model_input`), so patch (r, c) of a gh x gw
grid covers the fraction [c/gw, (c+1)/gw) x [r/gh, (r+1)/gh) of the ORIGINAL image, whatever its aspect ratio. All
drawing maps that grid onto the pixels of the image it is drawn on with integer cell edges
`round(i * size / g)` (`cell_edges`), and fills whole cells with flat colours (no interpolation), so the grid stays
crisp and aligned at any display size. Save the result losslessly (PNG): JPEG/WebP would blur the cell edges.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "EXPERT_COLORS", "expert_colors", "expert_labels", "cell_edges", "cell_index", "patch_at", "fit_long_side",
    "expert_overlay", "importance_overlay", "legend_strip", "text_width", "colorbar_strip", "with_legend", "render_experts",
    "render_importance", "expected_width", "PatchCanvas",
]

# Okabe-Ito colour-blind-safe hues, smallest expert first, cool to hot: blue, bluish green, yellow, vermillion (the
# full-width expert); then extras for E > 4. Adjacent widths differ in hue and lightness, so they stay apart when
# blended over a photo.
EXPERT_COLORS = np.array([
    (0, 114, 178), (0, 158, 115), (240, 228, 66), (213, 94, 0),
    (204, 121, 167), (86, 180, 233), (230, 159, 0), (120, 120, 120),
], dtype=np.uint8)
GRID_COLOR = (20, 20, 20)
LEGEND_BG = (250, 250, 250)
LEGEND_FG = (25, 25, 25)


def expert_colors(num_experts: int) -> np.ndarray:
    """(E, 3) uint8 RGB, smallest expert first; the largest expert is always vermillion (the 'hot' colour)."""
    if not 1 <= num_experts <= len(EXPERT_COLORS):
        raise ValueError(f"num_experts must be in [1, {len(EXPERT_COLORS)}], got {num_experts}")
    if num_experts <= 4:
        return EXPERT_COLORS[4 - num_experts:4].copy()
    return EXPERT_COLORS[:num_experts].copy()


def expert_labels(num_experts: int, dim: int | None = None) -> list[str]:
    """'D/8', 'D/4', 'D/2', 'D' (with channel counts when `dim` is given), smallest first."""
    labels = []
    for j in range(num_experts):
        div = 2 ** (num_experts - 1 - j)
        name = "D" if div == 1 else f"D/{div}"
        labels.append(f"{name} ({dim // div} ch)" if dim else name)
    return labels


def cell_edges(size: int, cells: int) -> np.ndarray:
    """Integer pixel edges (cells + 1,) of `cells` equal cells over `size` pixels: round(i * size / cells)."""
    return np.round(np.arange(cells + 1) * (size / cells)).astype(np.int64)


def cell_index(size: int, cells: int) -> np.ndarray:
    """Cell of every pixel (size,), consistent with `cell_edges`."""
    edges = cell_edges(size, cells)
    return np.clip(np.searchsorted(edges, np.arange(size), side="right") - 1, 0, cells - 1)


def patch_at(x: float, y: float, width: int, height: int, grid: tuple[int, int]) -> tuple[int, int] | None:
    """(row, col) of the patch under pixel (x, y) of a width x height drawing of the image, None outside it."""
    if not (0 <= x < width and 0 <= y < height):
        return None
    gh, gw = grid
    return int(cell_index(height, gh)[int(y)]), int(cell_index(width, gw)[int(x)])


def fit_long_side(image: np.ndarray, long_side: int, min_side: int = 16, even: bool = False) -> np.ndarray:
    """Resize so that the longer side is `long_side` (area filter down, bicubic up), keeping the aspect ratio.

    `even` rounds both sides down to even numbers (H.264 yuv420p needs even dimensions).
    """
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    nh, nw = max(min_side, int(round(h * scale))), max(min_side, int(round(w * scale)))
    if even:
        nh, nw = nh - nh % 2, nw - nw % 2
    if (nh, nw) == (h, w):
        return np.ascontiguousarray(image)
    interp = cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_CUBIC
    return cv2.resize(image, (nw, nh), interpolation=interp)


def _cells_to_pixels(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-cell upsampling of a (gh, gw, ...) array to (height, width, ...) with `cell_edges` boundaries."""
    gh, gw = cells.shape[:2]
    return cells[cell_index(height, gh)][:, cell_index(width, gw)]


@lru_cache(maxsize=16)
def _pixel_cells(height: int, width: int, gh: int, gw: int, grid_lines: bool) -> np.ndarray:
    """(H, W) int32: flat patch index r * gw + c of every pixel, or gh * gw on the 1-px inner grid lines."""
    idx = (cell_index(height, gh)[:, None] * gw + cell_index(width, gw)[None, :]).astype(np.int32)
    if grid_lines:
        for e in cell_edges(height, gh)[1:-1]:
            idx[min(e, height - 1), :] = gh * gw
        for e in cell_edges(width, gw)[1:-1]:
            idx[:, min(e, width - 1)] = gh * gw
    idx.setflags(write=False)
    return idx


class PatchCanvas:
    """One image and one patch grid, precomputed so that an overlay is one palette gather and one add.

    out = floor(image * (1 - a)) + round(colour_of_patch * a)   (never above 255), and on the grid lines
    out = image blended with a dark line colour. The scaled image is cached per opacity, so re-colouring the patches
    (a new budget) costs a (H, W) gather: a few ms at 640 px.
    """

    def __init__(self, image: np.ndarray, grid: tuple[int, int], grid_lines: bool = True) -> None:
        self.image = _check_image(image)
        self.grid = (int(grid[0]), int(grid[1]))
        self.grid_lines = grid_lines
        self.idx = _pixel_cells(self.image.shape[0], self.image.shape[1], *self.grid, grid_lines)
        self._bases: dict[float, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def _base(self, opacity: float) -> np.ndarray:
        base = self._bases.get(opacity)
        if base is None:
            img = self.image.astype(np.float32)
            base = np.floor(img * (1.0 - opacity)).astype(np.uint8)
            if self.grid_lines and opacity > 0:
                lines = self.idx == self.grid[0] * self.grid[1]
                a = min(1.0, 0.25 + opacity * 0.5)
                base[lines] = np.round(img[lines] * (1 - a) + np.float32(GRID_COLOR) * a).astype(np.uint8)
            if len(self._bases) >= 4:                       # a few opacities; each is one image
                self._bases.clear()
            self._bases[opacity] = base
        return base

    def blend(self, patch_colours: np.ndarray, opacity: float, out: np.ndarray | None = None) -> np.ndarray:
        """patch_colours (gh*gw, 3) or (gh, gw, 3) uint8 RGB -> (H, W, 3) uint8 (written into `out` if given)."""
        opacity = float(np.clip(opacity, 0.0, 1.0))
        n = self.grid[0] * self.grid[1]
        colours = np.asarray(patch_colours).reshape(n, 3)
        pal = np.zeros((n + 1, 4), dtype=np.uint8)                 # RGBX, gathered as one uint32 per pixel
        if opacity > 0:
            pal[:n, :3] = np.round(colours.astype(np.float32) * opacity).astype(np.uint8)
        h, w = self.shape
        up = np.take(pal.view(np.uint32).ravel(), self.idx).view(np.uint8).reshape(h, w, 4)
        return cv2.add(self._base(opacity), cv2.cvtColor(up, cv2.COLOR_RGBA2RGB), dst=out)


def _colormap(values01: np.ndarray, colormap: int) -> np.ndarray:
    v = np.clip(np.round(values01 * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(v, colormap)[..., ::-1]                                   # BGR -> RGB


def expert_overlay(image: np.ndarray, assignment: np.ndarray, num_experts: int, opacity: float = 0.5,
                   grid_lines: bool = True, canvas: PatchCanvas | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Tint every patch of `image` (H, W, 3) with the colour of its expert; assignment (gh, gw) int, 0 = smallest.

    Pass a `PatchCanvas` of the same image and grid to reuse its precomputation (the slider path)."""
    assignment = np.asarray(assignment)
    if assignment.ndim != 2:
        raise ValueError(f"assignment must be (gh, gw), got shape {assignment.shape}")
    if assignment.min() < 0 or assignment.max() >= num_experts:
        raise ValueError(f"assignment values must be in [0, {num_experts}), got {assignment.min()}..{assignment.max()}")
    if canvas is None or canvas.grid != assignment.shape:
        canvas = PatchCanvas(image, assignment.shape, grid_lines)
    return canvas.blend(expert_colors(num_experts)[assignment.reshape(-1)], opacity, out)


def importance_overlay(image: np.ndarray, values: np.ndarray, opacity: float = 0.5, vmin: float | None = None,
                       vmax: float | None = None, colormap: int = cv2.COLORMAP_VIRIDIS,
                       grid_lines: bool = True, canvas: PatchCanvas | None = None,
                       out: np.ndarray | None = None) -> np.ndarray:
    """Per-patch heatmap of `values` (gh, gw) over `image`; one flat colour per patch (no interpolation)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (gh, gw), got shape {values.shape}")
    lo = float(values.min()) if vmin is None else float(vmin)
    hi = float(values.max()) if vmax is None else float(vmax)
    scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
    if canvas is None or canvas.grid != values.shape:
        canvas = PatchCanvas(image, values.shape, grid_lines)
    return canvas.blend(_colormap(scaled.reshape(1, -1), colormap).reshape(-1, 3), opacity, out)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):       # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=512)
def text_width(text: str, font_size: int = 13) -> int:
    """Width in pixels of `text` in the legend font."""
    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font(font_size)))


@lru_cache(maxsize=512)
def legend_strip(width: int, entries: tuple[tuple[tuple[int, int, int], str], ...], title: str = "",
                 font_size: int = 13, title_width: int = 0) -> np.ndarray:
    """A light strip (h, width, 3) with a swatch + text per entry, wrapped onto as many rows as needed.

    `title_width` reserves at least that many pixels for the title, so the strips of a video whose titles differ
    ("t=9.9s", "t=10.0s") share one layout and one height.
    """
    font = _font(font_size)
    pad, sw, row_h = 6, font_size + 1, font_size + 9
    items = ([(None, title)] if title else []) + list(entries)
    # lay out first, then draw
    rows, x, layout = 0, pad, []
    for colour, text in items:
        tw = text_width(text, font_size) if colour is not None else max(text_width(text, font_size), title_width)
        w = tw + (sw + 5 if colour is not None else 0) + 14
        if x + w > width - pad and x > pad:
            rows, x = rows + 1, pad
        layout.append((rows, x, colour, text))
        x += w
    height = (rows + 1) * row_h + pad
    canvas = Image.new("RGB", (width, height), LEGEND_BG)
    draw = ImageDraw.Draw(canvas)
    for r, x, colour, text in layout:
        y = pad // 2 + r * row_h + (row_h - sw) // 2
        if colour is not None:
            draw.rectangle([x, y, x + sw, y + sw], fill=tuple(int(c) for c in colour), outline=(60, 60, 60))
            x += sw + 5
        draw.text((x, y + sw // 2), text, fill=LEGEND_FG, font=font, anchor="lm")
    return np.asarray(canvas)


@lru_cache(maxsize=64)
def colorbar_strip(width: int, vmin: float, vmax: float, label: str, colormap: int = cv2.COLORMAP_VIRIDIS,
                   font_size: int = 13) -> np.ndarray:
    """A strip with a horizontal colour bar from vmin to vmax and its label."""
    font = _font(font_size)
    pad, bar_h = 6, font_size + 1
    canvas = Image.new("RGB", (width, bar_h + 2 * pad + font_size + 6), LEGEND_BG)
    draw = ImageDraw.Draw(canvas)
    lo_txt, hi_txt = f"{vmin:.3g}", f"{vmax:.3g}"
    lo_w, hi_w = draw.textlength(lo_txt, font=font), draw.textlength(hi_txt, font=font)
    x0, x1 = int(pad + lo_w + 6), int(width - pad - hi_w - 6)
    if x1 - x0 >= 8:
        ramp = _colormap(np.linspace(0, 1, x1 - x0)[None, :], colormap)
        canvas.paste(Image.fromarray(np.repeat(ramp, bar_h, axis=0)), (x0, pad))
        draw.rectangle([x0 - 1, pad - 1, x1, pad + bar_h], outline=(60, 60, 60))
    draw.text((pad, pad + bar_h // 2), lo_txt, fill=LEGEND_FG, font=font, anchor="lm")
    draw.text((width - pad, pad + bar_h // 2), hi_txt, fill=LEGEND_FG, font=font, anchor="rm")
    draw.text((width // 2, pad + bar_h + 4), label, fill=LEGEND_FG, font=font, anchor="mt")
    return np.asarray(canvas)


def with_legend(image: np.ndarray, strip: np.ndarray) -> np.ndarray:
    """The image with `strip` appended below (same width); the image keeps its pixel coordinates at the top."""
    if strip.shape[1] != image.shape[1]:
        raise ValueError(f"legend width {strip.shape[1]} != image width {image.shape[1]}")
    return np.concatenate([image, strip], axis=0)


def expert_legend_entries(num_experts: int, dim: int | None = None,
                          tokens: Sequence[int] | None = None) -> tuple[tuple[tuple[int, int, int], str], ...]:
    """Legend entries (largest expert first, the order people read 'most compute' in)."""
    colours, labels = expert_colors(num_experts), expert_labels(num_experts, dim)
    out = []
    for j in reversed(range(num_experts)):
        text = labels[j] + (f": {int(tokens[j])} tok" if tokens is not None else "")
        out.append((tuple(int(c) for c in colours[j]), text))
    return tuple(out)


def _stack(height: int, strip: np.ndarray, draw) -> np.ndarray:
    """Allocate image + strip once; `draw(out_top)` fills the image part in place."""
    out = np.empty((height + strip.shape[0], strip.shape[1], 3), dtype=np.uint8)
    draw(out[:height])
    out[height:] = strip
    return out


def render_experts(image: np.ndarray, assignment: np.ndarray, num_experts: int, opacity: float = 0.5,
                   dim: int | None = None, tokens: Sequence[int] | None = None, title: str = "",
                   canvas: PatchCanvas | None = None, title_width: int = 0) -> np.ndarray:
    """Expert overlay + legend strip below it (colour, width and token count of every expert; see `legend_strip`)."""
    h, w = image.shape[:2]
    strip = legend_strip(w, expert_legend_entries(num_experts, dim, tokens), title, title_width=title_width)
    return _stack(h, strip, lambda top: expert_overlay(image, assignment, num_experts, opacity, canvas=canvas,
                                                       out=top))


def render_importance(image: np.ndarray, values: np.ndarray, opacity: float = 0.5,
                      label: str = "router importance", canvas: PatchCanvas | None = None) -> np.ndarray:
    """Importance heatmap (scaled to the image's own min..max) + colour bar below it."""
    lo, hi = float(np.min(values)), float(np.max(values))
    h, w = image.shape[:2]
    strip = colorbar_strip(w, round(lo, 4), round(hi, 4), label)
    return _stack(h, strip, lambda top: importance_overlay(image, values, opacity, lo, hi, canvas=canvas, out=top))


def expected_width(router_probs: np.ndarray) -> np.ndarray:
    """Router importance of each token: the expected width fraction sum_j p_j d_j / D, in [1/2^(E-1), 1]."""
    p = np.asarray(router_probs, dtype=np.float64)
    e = p.shape[-1]
    return p @ np.array([2.0 ** -(e - 1 - j) for j in range(e)])


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)
