"""V-MoE (Riquelme et al. 2021) on timm: a sparse (or soft) mixture of MLP experts with any router of `mone.routers`.

Axes: G groups (= images: tokens are routed per image), S tokens per group, E experts, C slots per expert,
D model width.

`MoEMlp` replaces a block's MLP: expert inputs are X~ = einsum(dispatch, x), outputs are einsum(combine, Expert(X~)).
A token no expert takes gets 0 from the layer, so the block's residual passes it through unchanged. Registered timm
models `vmoe_vit_<config>` put a MoEMlp in every other block of the second half, ending with the last block.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import Mlp
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer, init_weights_vit_timm
from torch import Tensor, nn

from .models import CONFIGS as MONE_CONFIGS
from .routers import ROUTERS, TOKEN_CHOICE_ROUTERS, SoftMoERouter, compute_capacity

__all__ = ["MoEMlp", "VMoEVisionTransformer", "moe_block_indices", "CONFIGS"]


class MoEMlp(nn.Module):
    """E independent timm `Mlp` experts behind a router; a drop-in for a ViT block's `mlp`.

    Sparse routers get logits from a linear gate (no bias) and run with training noise while `self.training`; token
    choice routers also take `k` and `batch_priority`. "soft_moe" needs `num_tokens` to size its slots with the same
    capacity rule as the sparse routers (P = ceil(S cf / E)). After each forward, `last_metrics` holds the router's
    metrics and `aux_loss()` its auxiliary loss (with gradient).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int = 4, router: str = "softmax_token_choice",
                 capacity_factor: float = 1.0, k: int = 1, batch_priority: bool = True, num_tokens: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0, router_options: dict[str, Any] | None = None,
                 ) -> None:
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; choose one of {sorted(ROUTERS)}")
        if router not in TOKEN_CHOICE_ROUTERS and k != 1:
            raise ValueError(f"k={k} only applies to token choice routers {sorted(TOKEN_CHOICE_ROUTERS)}")
        self.router_name, self.num_experts, self.capacity_factor = router, num_experts, capacity_factor
        self.experts = nn.ModuleList(Mlp(dim, hidden, act_layer=act_layer, drop=drop) for _ in range(num_experts))
        self.options = dict(router_options or {})
        if router in TOKEN_CHOICE_ROUTERS:
            self.options.update(k=k, batch_priority=batch_priority)
        if router == "soft_moe":
            if num_tokens is None:
                raise ValueError("soft_moe needs num_tokens to size its slots")
            slots = compute_capacity(num_tokens, num_experts, capacity_factor)
            self.router = SoftMoERouter(dim, num_experts, slots)
        else:
            compute_capacity(num_tokens or num_experts, num_experts, capacity_factor, k)   # fail early on bad args
            self.router = nn.Linear(dim, num_experts, bias=False)
        self.last_metrics: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        """x (G, S, D) -> (G, S, D)."""
        if isinstance(self.router, SoftMoERouter):
            routing = self.router(x)
        else:
            logits = self.router(x)                                                  # (G, S, E)
            routing = ROUTERS[self.router_name](logits, self.capacity_factor, noise=self.training, **self.options)
        expert_in = torch.einsum("gsec,gsd->egcd", routing.dispatch.to(x.dtype), x)  # (E, G, C, D)
        expert_out = torch.stack([expert(xe) for expert, xe in zip(self.experts, expert_in)])  # (E, G, C, D)
        self.last_metrics = routing.metrics
        return torch.einsum("gsec,egcd->gsd", routing.combine.to(x.dtype), expert_out)   # (G, S, D)

    def aux_loss(self) -> Tensor:
        """The auxiliary loss of the last forward (0 before any, and for routers without one)."""
        if "auxiliary_loss" in self.last_metrics:
            return self.last_metrics["auxiliary_loss"]
        return self.experts[0].fc1.weight.new_zeros(())


def moe_block_indices(depth: int) -> list[int]:
    """Every other block of the second half, ending with the last: depth 12 -> [7, 9, 11], depth 4 -> [3]."""
    return [i for i in range(depth - 1, depth // 2 - 1, -2)][::-1]


class VMoEVisionTransformer(VisionTransformer):
    """timm ViT (no class token, average pooling) with `MoEMlp` in the blocks of `moe_block_indices`.

    Args:
        num_experts, router, capacity_factor, k, batch_priority, router_options: passed to every `MoEMlp`.
        moe_blocks: block indices to make MoE (default: every other block of the second half).
        **kwargs: timm `VisionTransformer` arguments.
    """

    def __init__(self, num_experts: int = 4, router: str = "softmax_token_choice", capacity_factor: float = 1.0,
                 k: int = 1, batch_priority: bool = True, router_options: dict[str, Any] | None = None,
                 moe_blocks: list[int] | None = None, **kwargs) -> None:
        for key, value in (("class_token", False), ("global_pool", "avg")):
            if kwargs.setdefault(key, value) != value:
                raise ValueError(f"V-MoE ViT here needs {key}={value!r}, got {kwargs[key]!r}")
        super().__init__(**kwargs)
        self.moe_blocks = moe_block_indices(len(self.blocks)) if moe_blocks is None else list(moe_blocks)
        num_tokens = self.patch_embed.num_patches
        for i in self.moe_blocks:
            mlp = self.blocks[i].mlp
            moe = MoEMlp(self.embed_dim, mlp.fc1.out_features, num_experts, router, capacity_factor, k,
                         batch_priority, num_tokens, drop=mlp.drop1.p, router_options=router_options)
            moe.apply(init_weights_vit_timm)                      # same init as the dense MLPs it replaces
            self.blocks[i].mlp = moe

    def moe_layers(self) -> list[MoEMlp]:
        return [self.blocks[i].mlp for i in self.moe_blocks]

    def aux_loss(self) -> Tensor:
        """Sum of the MoE layers' auxiliary losses from the last forward; add it to the task loss."""
        return torch.stack([m.aux_loss() for m in self.moe_layers()]).sum()

    def routing_metrics(self) -> dict[str, float]:
        """Dropped-token fraction and achieved capacity factor averaged over the MoE layers (last forward)."""
        layers = [m.last_metrics for m in self.moe_layers() if m.last_metrics]
        return {key: sum(float(m[key]) for m in layers) / len(layers)
                for key in ("dropped_tokens", "capacity_factor")} if layers else {}


# The MoNE model shapes (`mone.models.CONFIGS`) plus a small Fashion-MNIST model for CPU runs.
CONFIGS = {
    **MONE_CONFIGS,
    "tiny_patch4_28": dict(img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=2, in_chans=1),
}


def _register(name: str) -> None:
    def vmoe_model(pretrained: bool = False, **kwargs) -> VMoEVisionTransformer:
        if pretrained:
            raise ValueError(f"vmoe_vit_{name}: no pretrained weights exist")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these along
            kwargs.pop(key, None)
        return VMoEVisionTransformer(**{**CONFIGS[name], **kwargs})

    vmoe_model.__name__ = vmoe_model.__qualname__ = f"vmoe_vit_{name}"
    vmoe_model.__doc__ = f"V-MoE ViT {name}: {CONFIGS[name]}"
    register_model(vmoe_model)


for _name in CONFIGS:
    _register(_name)
