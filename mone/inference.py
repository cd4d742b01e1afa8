"""Model-side helpers for the explorer: reading arbitrary images safely, preprocessing, and running one image at many
budgets in one batched pass.

Axes: B rows (budgets, allocators or frames), N patch tokens, E nested experts, D width, C classes.

Preprocessing squashes the whole image to the model's square input (no crop), so patch (r, c) of the model's grid
covers the same *fraction* of the original image; `mone.vis` maps that grid back onto the original aspect ratio.

The per-upload work is split in two:
  `encode(model, x)`      patch embedding + position embedding + router probabilities: once per upload (and model);
  `forward_assignments`   the nested blocks for many assignments at once. Rows may have *different* tokens per expert
                          (different budgets): the rows of all images are sorted by expert globally, so each expert is
                          still one matmul at its own width over the whole batch, and attention runs per image.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .allocators import get_allocator
from .capacity import achieved_capacity, capacity_distribution, tokens_per_expert
from .nested import RowLayout, token_groups

__all__ = [
    "ImageReadError", "LoadedImage", "read_image", "MAX_IMAGE_PIXELS", "MAX_WORKING_SIDE", "to_model_input",
    "Encoded", "encode", "assignments_for", "forward_assignments", "BUDGET_GRID", "budget_grid",
]

# Images above this many pixels are refused from their header alone, before any pixel is decoded (64 MP of RGB is
# 192 MB decoded; 20000 x 20000 would be 1.2 GB). Pillow's own bomb check is set to the same limit.
MAX_IMAGE_PIXELS = 64_000_000
# Decoded images are reduced to at most this long side right away: the model sees <= 224 px, the overlay <= 1024 px.
MAX_WORKING_SIDE = 2048
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False      # a truncated file is an error, not a grey half-image

# The budget grid precomputed per upload: e_c = 0.15, 0.20, ..., 1.00.
BUDGET_GRID = tuple(round(0.15 + 0.05 * i, 2) for i in range(18))


def budget_grid() -> list[float]:
    return list(BUDGET_GRID)


class ImageReadError(ValueError):
    """An upload that is not a usable image; the message is meant for the user."""


@dataclass
class LoadedImage:
    rgb: np.ndarray                 # (H, W, 3) uint8, at most MAX_WORKING_SIDE on the long side
    original_size: tuple[int, int]  # (width, height) as stored in the file
    mode: str                       # Pillow mode of the file ("RGB", "I;16", "CMYK", ...)
    format: str | None
    notes: list[str] = field(default_factory=list)


def _expand_palette(img: Image.Image) -> Image.Image:
    """1-bit and palette images in the mode their pixels stand for (bits and palette indices are not intensities)."""
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img


def _reduce_in_pillow(img: Image.Image, max_side: int) -> Image.Image:
    """Box-shrink by an integer factor in the file's own mode, before any conversion to float (a 62 MP RGBA or 16-bit
    image would otherwise take 2-4 GB). Alpha is averaged premultiplied, so the composite over white stays exact;
    16-bit grey goes through 32-bit "I", which Pillow can reduce (the caller keeps the 16-bit scaling)."""
    factor = -(-max(img.size) // max_side)                          # ceil: the result is at most max_side
    if factor < 2:
        return img
    img = _expand_palette(img)                                       # palette indices cannot be averaged
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA").convert("RGBa")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(factor)


def _to_rgb(img: Image.Image, notes: list[str], source_mode: str | None = None) -> np.ndarray:
    """Any Pillow mode -> RGB uint8, with the value ranges kept (16-bit scaled, alpha composited over white).

    `source_mode`: the file's mode when `img` was already converted (a 16-bit file reduced as 32-bit "I")."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img)
        if a.dtype.kind == "f":
            a = a.astype(np.float64)
            finite = a[np.isfinite(a)]
            hi = float(finite.max()) if finite.size else 1.0
            a = np.nan_to_num(a) * (255.0 if hi <= 1.0 else 255.0 / hi)
            notes.append("floating-point image: scaled to 8 bits")
        else:
            a = a.astype(np.float64)
            hi = float(a.max()) if a.size else 0.0
            if (source_mode or mode).startswith("I;16") or hi > 255:
                a = a * (255.0 / 65535.0)
                notes.append("16-bit image: scaled to 8 bits")
        grey = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    img = _expand_palette(img)
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        rgba = np.asarray(img if img.mode == "RGBa" else img.convert("RGBa"))   # premultiplied: p = rgb·a/255
        alpha = rgba[..., 3:4]
        if alpha.min() < 255:
            notes.append("transparent image: composited over white")
        return rgba[..., :3] + (255 - alpha)      # over white, p + 255·(1 - a/255): exact in uint8, as p <= a
    if img.mode == "CMYK":
        notes.append("CMYK image: converted to RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def read_image(source: str | Path | bytes, max_pixels: int = MAX_IMAGE_PIXELS,
               max_side: int = MAX_WORKING_SIDE) -> LoadedImage:
    """Decode an upload into RGB uint8 with every failure turned into an `ImageReadError` that says what is wrong.

    The size is checked from the header before decoding (huge images are refused without allocating them); JPEGs are
    decoded at a reduced scale when they are much larger than needed (`draft`). Grey, 16-bit, palette, RGBA and CMYK
    are converted; EXIF orientation is applied; of an animated GIF (or any multi-frame file) the first frame is used
    and a note says so.
    """
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageReadError("The file is empty (0 bytes).")
        fp, name = io.BytesIO(source), "upload"
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageReadError(f"File not found: {path.name}")
        if path.stat().st_size == 0:
            raise ImageReadError(f"The file {path.name} is empty (0 bytes).")
        fp, name = path, path.name
    notes: list[str] = []
    try:
        img = Image.open(fp)          # reads the header only; Pillow refuses > 2 x MAX_IMAGE_PIXELS by itself
    except Image.DecompressionBombError:
        raise ImageReadError(f"{name} is too large: more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
                             f"(refused before decoding; the limit is {max_pixels / 1e6:.0f} megapixels). "
                             "Downscale it first.") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name} is not an image Pillow can read (not a PNG/JPEG/GIF/WebP/TIFF/BMP...).") \
            from None
    except Exception as err:  # noqa: BLE001  (Pillow raises many types for malformed headers)
        raise ImageReadError(f"{name} is not a readable image: {err}") from None
    with img:
        w, h = img.size
        if w < 1 or h < 1:
            raise ImageReadError(f"{name} has no pixels ({w}x{h}).")
        if w * h > max_pixels:
            raise ImageReadError(f"{name} is too large: {w}x{h} = {w * h / 1e6:.0f} megapixels; the limit is "
                                 f"{max_pixels / 1e6:.0f} megapixels (refused before decoding). Downscale it first.")
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            kind = "animated GIF" if img.format == "GIF" else f"{img.format or 'multi-frame'} file"
            notes.append(f"{kind} with {frames} frames: the first frame is shown")
        mode, fmt = img.mode, img.format
        if fmt == "JPEG" and max(w, h) > 2 * max_side:
            img.draft(img.mode, (max_side, max_side))             # decode at 1/2, 1/4 or 1/8 scale
        try:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = _to_rgb(_reduce_in_pillow(img, max_side), notes, source_mode=mode)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
            raise ImageReadError(f"{name} is truncated or corrupt and cannot be decoded ({err}).") from None
    if max(rgb.shape[:2]) > max_side:
        scale = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    if max(w, h) > max_side:
        notes.append(f"large image ({w}x{h}): downscaled to {rgb.shape[1]}x{rgb.shape[0]} for analysis")
    return LoadedImage(np.ascontiguousarray(rgb), (w, h), mode, fmt, notes)


def to_model_input(images: np.ndarray | Sequence[np.ndarray], preprocess: dict) -> torch.Tensor:
    """RGB uint8 image(s) (H, W, 3) -> normalised float tensor (B, in_chans, S, S), squashed to S x S (no crop)."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    size = int(preprocess["image_size"])
    in_chans = int(preprocess.get("in_chans", 3))
    mean = torch.tensor(preprocess.get("mean", [0.0] * in_chans), dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.get("std", [1.0] * in_chans), dtype=torch.float32).view(1, -1, 1, 1)
    batch = []
    for im in images:
        h, w = im.shape[:2]
        interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
        small = cv2.resize(im, (size, size), interpolation=interp)
        if in_chans == 1:
            small = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)[..., None]
        batch.append(small)
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


@dataclass
class Encoded:
    tokens: torch.Tensor        # (B, N, D) after patch + position embedding (the input of the first block)
    router_probs: torch.Tensor  # (B, N, E)


@torch.inference_mode()
def encode(model, x: torch.Tensor) -> Encoded:
    """Patch tokens and router probabilities, as `MoNEVisionTransformer.forward_routing` computes them."""
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    return Encoded(tokens, model.router(tokens).softmax(dim=-1))


def assignments_for(router_probs: torch.Tensor, budgets: Sequence[float], allocator: str = "epr",
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """One image's router probs (1, N, E) at many budgets -> assignments (B, N), tokens per expert (B, E) and the
    achieved budgets. The random allocator is seeded (per budget) so that results are reproducible."""
    fn = get_allocator(allocator)
    _, n, e = router_probs.shape
    rows, ks, achieved = [], [], []
    for b in budgets:
        k = tokens_per_expert(capacity_distribution(b, e), n)
        gen = torch.Generator().manual_seed(seed)
        rows.append(fn(router_probs, k, gen)[0])
        ks.append(k)
        achieved.append(achieved_capacity(k, n))
    return torch.stack(rows), torch.stack(ks), achieved


@torch.inference_mode()
def forward_assignments(model, tokens: torch.Tensor, router_probs: torch.Tensor,
                        assignment: torch.Tensor) -> torch.Tensor:
    """Logits (B, C) of the nested forward for B assignments (B, N), each row with its own tokens per expert.

    tokens (B, N, D) and router_probs (B, N, E), or (1, N, ...) to share one image's encoding across all rows.
    Numerically the same computation as `model.forward_routing` with each row's assignment.
    """
    b, n = assignment.shape
    d = tokens.shape[-1]
    if tokens.shape[0] == 1 and b > 1:
        tokens, router_probs = tokens.expand(b, -1, -1), router_probs.expand(b, -1, -1)
    flat = assignment.reshape(-1)                                                  # (R,) image-major, R = B*N
    order = torch.sort(flat, stable=True).indices                                  # rows sorted by expert
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(flat, minlength=model.num_experts).tolist()
    groups = token_groups(counts, model.expert_dims, 1)                            # totals over the batch
    x = tokens.reshape(b * n, d)[order]                                            # (R, D) expert-sorted
    expert_prob = router_probs.gather(2, assignment.unsqueeze(-1)).reshape(b * n, 1)[order]
    layout = RowLayout(token_major=False, to_batch_major=inverse, from_batch_major=order)
    for blk in model.blocks:
        x = blk.forward_nested(x, groups, b, expert_prob, layout)
    x = model.norm(x[inverse].view(b, n, d))
    return model.forward_head(x)

