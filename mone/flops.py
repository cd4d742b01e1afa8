"""Analytic multiply-adds (MACs) of a MoNE or dense ViT forward, per budget.

In MoNE the number of tokens on each expert is fixed by the capacity split, so the cost depends on the budget and the
image size, never on the image content: a closed form is exact. Counted: the patch-embedding convolution, the router,
the four projections of every block, attention's QK^T and AV at full width, and the classifier. Norms, softmax, GELU
and the sort are not matmuls and are not counted. FlopCounterMode reports 2 × this when attention runs on SDPA's math
backend (a test checks it); with a fused SDPA kernel it does not see QK^T and AV at all and reports less.
"""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from .capacity import capacity_distribution, expert_dims, tokens_per_expert

__all__ = ["count_macs", "dense_macs"]


def _vit_shape(model: VisionTransformer) -> dict:
    pe = model.patch_embed
    blk = model.blocks[0]
    return dict(
        patches=pe.num_patches, prefix=model.num_prefix_tokens, dim=model.embed_dim, depth=len(model.blocks),
        # a patchify conv costs in·P·P·D per patch; a conv stem (`ConvStem`) says what it costs per image
        embed_macs=pe.macs() if hasattr(pe, "macs") else
        pe.num_patches * pe.proj.in_channels * pe.proj.kernel_size[0] * pe.proj.kernel_size[1] * pe.proj.out_channels,
        attn_dim=blk.attn.attn_dim, hidden=blk.mlp.fc1.out_features,
        head=model.head.in_features * model.head.out_features if hasattr(model.head, "in_features") else 0)


def count_macs(model: VisionTransformer, effective_capacity: float = 1.0, batch_size: int = 1,
               capacities=None) -> int:
    """Multiply-adds of one forward of `batch_size` images at budget `effective_capacity`.

    A plain timm ViT (no `router`) is counted dense, whatever the budget.
    """
    s = _vit_shape(model)
    n = s["patches"] + s["prefix"]
    dim, attn_dim, hidden = s["dim"], s["attn_dim"], s["hidden"]
    per_width = 3 * attn_dim + attn_dim + 2 * hidden       # qkv in, proj out, fc1 in, fc2 out: MACs per channel used
    if hasattr(model, "router"):
        if capacities is None:
            capacities = capacity_distribution(effective_capacity, model.num_experts)
        k = tokens_per_expert(capacities, n).tolist()
        projections = sum(k_j * d_j * per_width for k_j, d_j in zip(k, expert_dims(dim, model.num_experts)))
        router = n * dim * model.num_experts
    else:
        projections, router = n * dim * per_width, 0
    attention = 2 * n * n * attn_dim                        # QK^T and AV over all tokens (§3.1)
    per_image = s["embed_macs"] + router + s["depth"] * (projections + attention) + s["head"]
    return int(per_image * batch_size)


def dense_macs(model: VisionTransformer, batch_size: int = 1) -> int:
    """MACs of the dense ViT of the same shape (every token at full width, no router): the 100 % reference."""
    s = _vit_shape(model)
    n = s["patches"] + s["prefix"]
    per_block = n * s["dim"] * (4 * s["attn_dim"] + 2 * s["hidden"]) + 2 * n * n * s["attn_dim"]
    return int((s["embed_macs"] + s["depth"] * per_block + s["head"]) * batch_size)
