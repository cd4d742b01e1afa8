"""The MoNE Vision Transformer on timm's building blocks, and the registered model configs.

Axes: B images, N patch tokens, E nested experts, D model width, C classes.

Parameter names are timm's (`patch_embed`, `pos_embed`, `blocks.i.attn.qkv`, …, `fc_norm`, `head`), plus `router` and
one `alpha` per block, so a plain timm `VisionTransformer(class_token=False, global_pool='avg')` loads into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .allocators import get_allocator
from .capacity import achieved_capacity, capacity_distribution, expert_dims, tokens_per_expert
from .nested import BATCH_MAJOR, TOKEN_MAJOR, RowLayout, TokenGroup, nested_attention, nested_mlp, token_groups

__all__ = ["ConvStem", "MoNEBlock", "MoNEVisionTransformer", "MoNEOutput", "TRAIN_CAPACITIES"]

# The paper samples e_c uniformly from this grid at every training step, so one model serves every budget (§5).
TRAIN_CAPACITIES = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)
# alpha is "a learnable scalar in [0, 1)", initialised to 0; how it is bounded is not stated. The router's only
# gradient is alpha·dL/dr (Eq. 1), and in our conv-stem runs the loss pulled alpha down in every block from the first
# steps: with a straight-through clamp alone alpha drifted to -0.2 and the router stayed at its initialisation for
# good; projected onto [0, 1) it sat at exactly 0, the router frozen just the same (assets/logs/ab_*alpha*.jsonl).
# So training projects alpha onto [ALPHA_MIN, ALPHA_MAX] after every optimiser step (`project_alphas`): a floor of
# 0.01 keeps the block's FFN scale within 1 % of the plain block's, yet the router keeps learning, because AdamW
# normalises its update by the gradient's own scale (in the Scenes conv-stem retrain its weights grew 0.23 -> 0.58).
# The forward pass clamps the value into [0, ALPHA_MAX] (older checkpoints hold negative alphas) with an identity
# gradient, so at a bound alpha still sees which way the loss pulls (`clamp`'s own gradient there is 0). One alpha per
# block (per block is the finer choice).
ALPHA_MIN = 0.01
ALPHA_MAX = 1.0 - 1e-3


class ConvStem(PatchEmbed):
    """Patch embedding by log2(P) 3x3 stride-2 convolutions (BN, ReLU), then a 1x1 `proj` to the model width.

    "Early convolutions help transformers see better" (Xiao et al., NeurIPS 2021): the same token grid as a PxP
    patchify, with the locality prior a small ViT lacks on small data, for a few % more MACs. The stem runs before the
    router, at full cost for every token, in MoNE and dense alike. Widths double per stage from `stem_width`.
    """

    def __init__(self, img_size: int = 28, patch_size: int = 4, in_chans: int = 1, embed_dim: int = 128,
                 bias: bool = True, stem_width: int = 32, **kwargs) -> None:
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"ConvStem needs a power-of-two patch size >= 2, got {patch_size}")
        super().__init__(img_size, patch_size, in_chans, embed_dim, bias=bias, **kwargs)
        layers, channels = [], in_chans
        for stage in range(patch_size.bit_length() - 1):                       # each stage halves H and W
            width = stem_width * 2 ** stage
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))                                              # (B, D, H/P, W/P)
        return self.norm(x.flatten(2).transpose(1, 2))                           # (B, N, D)

    def macs(self) -> int:
        """Multiply-adds of the stem and `proj` for one image."""
        total, (h, w) = 0, self.img_size
        for conv in [*(m for m in self.stem if isinstance(m, nn.Conv2d)), self.proj]:   # in the order they run
            (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
            h, w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1      # the conv's output size
            total += h * w * conv.in_channels * conv.out_channels * kh * kw
        return total


class MoNEBlock(Block):
    """timm `Block` plus the learnable alpha of Eq. 1; `forward` stays the dense timm block."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.zeros(()))

    def bounded_alpha(self) -> torch.Tensor:
        a = self.alpha
        return a + (a.clamp(0.0, ALPHA_MAX) - a).detach()    # value in [0, 1), identity gradient

    def forward_nested(self, x: torch.Tensor, groups: Sequence[TokenGroup], batch_size: int,
                       expert_prob: torch.Tensor, layout: RowLayout = TOKEN_MAJOR) -> torch.Tensor:
        """Eq. 1 on expert-sorted token rows: z = x + SA_j(LN(x)); x' = z + (alpha·r + 1)·FFN_j(LN(z)).

        x (R, D), R = N·B token-major (see `mone.nested`); expert_prob (R, 1) is r_ij, the router probability of each
        token's expert: the only path by which the router receives a gradient.
        """
        n = x.shape[0] // batch_size
        # Under autograd the residual must be a fresh tensor (LN saved x for backward); in inference it is updated
        # in place, saving a copy of the stream per branch.
        fresh = torch.Tensor.clone if torch.is_grad_enabled() else (lambda t: t)
        x = nested_attention(self.attn, fresh(x), self.norm1(x), groups, batch_size,
                             _drop_path_rows(self.drop_path1, n, batch_size, x, layout), self.ls1, layout)
        ffn_scale = self.bounded_alpha() * expert_prob + 1.0                                   # (R, 1)
        drop = _drop_path_rows(self.drop_path2, n, batch_size, x, layout)
        return nested_mlp(self.mlp, fresh(x), self.norm2(x), groups,
                          ffn_scale if drop is None else ffn_scale * drop, self.ls2)


def _drop_path_rows(drop_path: nn.Module, n: int, b: int, like: torch.Tensor,
                    layout: RowLayout) -> torch.Tensor | None:
    """Stochastic depth as a per-row scale (R, 1): one keep/drop draw per image, repeated over its N token rows."""
    p = getattr(drop_path, "drop_prob", 0.0)
    if not (drop_path.training and p > 0):
        return None
    keep = like.new_empty(b).bernoulli_(1 - p) / (1 - p)                                      # (B,)
    # row = t·B + b (token-major) or b·N + t (batch-major, then in the layout's own row order)
    if layout.token_major:
        return keep.repeat(n).unsqueeze(-1)                                                   # (R, 1)
    rows = keep.repeat_interleave(n)
    return (rows if layout.from_batch_major is None else rows[layout.from_batch_major]).unsqueeze(-1)


@dataclass
class MoNEOutput:
    logits: torch.Tensor             # (B, C)
    assignment: torch.Tensor         # (B, N) int64, expert per token in image order, 0 = smallest
    router_probs: torch.Tensor       # (B, N, E)
    effective_capacity: float        # achieved budget after integer rounding
    tokens_per_expert: torch.Tensor  # (E,) int64, the same for every image
    capacities: torch.Tensor         # (E,) float64, the requested split


class MoNEVisionTransformer(VisionTransformer):
    """ViT whose blocks run nested experts under one Expert Preferred Router at the first block (§4.1).

    Args:
        num_experts: E nested experts of widths D/2^(E-1) … D.
        train_capacities: budgets sampled uniformly per training step, or one float for a fixed-budget model.
        default_capacity: budget used in eval mode when none is given.
        **kwargs: timm `VisionTransformer` arguments; the class token is off and pooling is global average (§3.1).
    """

    def __init__(self, num_experts: int = 4, train_capacities: float | Sequence[float] = TRAIN_CAPACITIES,
                 default_capacity: float = 1.0, **kwargs) -> None:
        for key, value in (("class_token", False), ("global_pool", "avg")):
            if kwargs.setdefault(key, value) != value:
                raise ValueError(f"MoNE ViT needs {key}={value!r}, got {kwargs[key]!r}")
        super().__init__(block_fn=MoNEBlock, **kwargs)
        if any(getattr(blk.attn, "gate", None) is not None for blk in self.blocks):
            raise ValueError("gated attention is not supported by the nested forward")
        self.num_experts = num_experts
        self.expert_dims = expert_dims(self.embed_dim, num_experts)
        self.train_capacities = train_capacities
        self.default_capacity = default_capacity
        self.router = nn.Linear(self.embed_dim, num_experts)
        trunc_normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)

    @torch.no_grad()
    def project_alphas(self, floor: float = ALPHA_MIN) -> None:
        """Put every block's alpha back into [floor, ALPHA_MAX] (after each optimiser step; see ALPHA_MIN)."""
        if not 0.0 <= floor < ALPHA_MAX:
            raise ValueError(f"the alpha floor must be in [0, {ALPHA_MAX}), got {floor}")
        for block in self.blocks:
            block.alpha.clamp_(floor, ALPHA_MAX)

    def _resolve_capacity(self, effective_capacity: float | None) -> float:
        if effective_capacity is not None:
            return effective_capacity
        if not self.training:
            return self.default_capacity
        if isinstance(self.train_capacities, (int, float)):
            return float(self.train_capacities)
        return float(self.train_capacities[int(torch.randint(len(self.train_capacities), ()))])

    def forward_routing(self, x: torch.Tensor, effective_capacity: float | None = None, allocator: str = "epr",
                        capacities: torch.Tensor | None = None, generator: torch.Generator | None = None,
                        scores: torch.Tensor | None = None) -> MoNEOutput:
        """Images (B, C, H, W) -> logits and the routing that produced them.

        `capacities` (E,) overrides the split derived from `effective_capacity` (e.g. one-hot: a MatViT sub-model).
        `scores` (B, N, E) replaces the router's probabilities as what the allocator ranks tokens by (e.g. an oracle
        that knows the object masks); Eq. 1's FFN scale still uses the router's probability of the assigned expert.
        """
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))           # (B, N, D)
        b, n, d = x.shape
        router_probs = self.router(x).softmax(dim=-1)                                       # (B, N, E)
        if capacities is None:
            capacities = capacity_distribution(self._resolve_capacity(effective_capacity), self.num_experts)
        k = tokens_per_expert(capacities, n)                                                # (E,)
        ranked_by = router_probs.detach() if scores is None else scores                     # (B, N, E)
        assignment = get_allocator(allocator)(ranked_by, k, generator)                      # (B, N)
        expert_prob = router_probs.gather(2, assignment.unsqueeze(-1))                     # (B, N, 1)
        groups = token_groups(k.tolist(), self.expert_dims, b)
        token_major = len(groups) > 1
        if token_major:
            # Sort tokens by expert once: attention and the rest are permutation-equivariant (positions are already
            # added) and average pooling is invariant, so every block can work on contiguous row blocks.
            order = torch.sort(assignment, dim=1, stable=True).indices                     # (B, N)
            x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, d))                          # (B, N, D)
            expert_prob = expert_prob.gather(1, order.unsqueeze(-1))                        # (B, N, 1)
            x = x.transpose(0, 1).reshape(n * b, d)                                         # (R, D) token-major
            expert_prob = expert_prob.transpose(0, 1).reshape(n * b, 1)                     # (R, 1)
        else:                                       # one expert for every token: batch-major rows, no sort
            x, expert_prob = x.reshape(b * n, d), expert_prob.reshape(b * n, 1)
        for blk in self.blocks:
            x = blk.forward_nested(x, groups, b, expert_prob, TOKEN_MAJOR if token_major else BATCH_MAJOR)
        x = self.norm(x.view(n, b, d).transpose(0, 1) if token_major else x.view(b, n, d))  # (B, N, D)
        logits = self.forward_head(x)                                                       # (B, C)
        return MoNEOutput(logits, assignment, router_probs, achieved_capacity(k, n), k, capacities)

    def forward(self, x: torch.Tensor, effective_capacity: float | None = None, **kwargs) -> torch.Tensor:
        return self.forward_routing(x, effective_capacity, **kwargs).logits

    def forward_features(self, x: torch.Tensor):
        # timm's versions run the blocks' dense `forward`, which lacks Eq. 1's (alpha·r + 1) FFN scale: a silently
        # different model once alpha > 0. Every MoNE forward goes through the router.
        raise NotImplementedError("a MoNE model has no dense feature path: use forward_routing(x, effective_capacity)")

    forward_intermediates = forward_features

    def load_vit_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a plain timm ViT (class_token=False, global_pool='avg'); only router and alphas stay as they are."""
        result = self.load_state_dict(state_dict, strict=False)
        extra = [key for key in result.missing_keys if not (key.startswith("router.") or key.endswith(".alpha"))]
        if extra or result.unexpected_keys:
            raise ValueError(f"not a matching ViT state dict: missing {extra}, unexpected {result.unexpected_keys}")


# ----------------------------------------------------------------------------------------------- registered configs
# Each config is (img_size, patch_size, embed_dim, depth, num_heads, in_chans): `mone_vit_<size>_patch<P>_<img>` is the
# MoNE model, `dense_vit_<size>_patch<P>_<img>` the plain timm ViT of the same shape (the fair baseline).
CONFIGS = {
    # for tests: tiny and fast on 2 cores
    "tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, in_chans=3),
    # Fashion-MNIST: 28 px grey, 7x7 patches of 4 px; width 128: 7 epochs take ~1.1 h on one thread of this CPU
    "mini_patch4_28": dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4, in_chans=1),
    # the same with a convolutional stem in place of the 4x4 patchify (+2 % MACs), the stronger small-data tokenizer
    "mini_convstem4_28": dict(img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4, in_chans=1,
                              embed_layer=ConvStem),
    # Scenes: 96 px, a 12x12 grid of 8 px patches; same shape as above, so the two datasets share one recipe
    "mini_patch8_96": dict(img_size=96, patch_size=8, embed_dim=128, depth=6, num_heads=4, in_chans=3),
    # the same with a three-stage conv stem (widths 32, 64, 128) in place of the 8x8 patchify
    "mini_convstem8_96": dict(img_size=96, patch_size=8, embed_dim=128, depth=6, num_heads=4, in_chans=3,
                              embed_layer=ConvStem),
    # Scenes, larger (GPU): 160 px, a 20x20 grid of 8 px patches
    "small_patch8_160": dict(img_size=160, patch_size=8, embed_dim=256, depth=8, num_heads=4, in_chans=3),
    "small_convstem8_160": dict(img_size=160, patch_size=8, embed_dim=256, depth=8, num_heads=4, in_chans=3,
                                embed_layer=ConvStem),
    # the paper's ImageNet sizes (ViT-S/16, ViT-B/16), for FLOPs and speed comparisons
    "s_patch16_224": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, in_chans=3),
    "b_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, in_chans=3),
}


def _create(cls, name: str, pretrained: bool, **kwargs):
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights exist; load a trained card with mone.load_model(card_path)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):   # timm's factory passes these along
        kwargs.pop(key, None)
    return cls(**{**CONFIGS[name], "class_token": False, "global_pool": "avg", **kwargs})


def _register(name: str) -> None:
    def mone_model(pretrained: bool = False, **kwargs) -> MoNEVisionTransformer:
        return _create(MoNEVisionTransformer, name, pretrained, **kwargs)

    def dense_model(pretrained: bool = False, **kwargs) -> VisionTransformer:
        return _create(VisionTransformer, name, pretrained, **kwargs)

    for prefix, fn in (("mone_vit_", mone_model), ("dense_vit_", dense_model)):
        fn.__name__ = prefix + name
        fn.__qualname__ = fn.__name__
        fn.__doc__ = f"{prefix.rstrip('_')} {name}: {CONFIGS[name]}"
        register_model(fn)


for _name in CONFIGS:
    _register(_name)
