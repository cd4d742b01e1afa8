"""Analytic MACs against torch's FlopCounterMode (attention counted through the math SDPA backend)."""
import pytest
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import mone
from mone.models import CONFIGS


def counted_macs(model, *args, **kwargs) -> float:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops() / 2      # FlopCounterMode reports 2 x multiply-adds


@pytest.mark.parametrize("name", ["tiny_patch4_32", "mini_patch4_28", "mini_convstem4_28"])
@pytest.mark.parametrize("e_c", [0.2, 0.5, 1.0])
def test_count_macs_matches_flop_counter(name, e_c):
    model = timm.create_model(f"mone_vit_{name}", num_classes=10).eval()
    size = model.patch_embed.img_size
    x = torch.randn(2, CONFIGS[name]["in_chans"], *size)
    analytic = mone.count_macs(model, e_c, batch_size=2)
    assert analytic == pytest.approx(counted_macs(model, x, effective_capacity=e_c), rel=0.01)


def test_dense_macs_match_counter_and_mone_at_full_budget():
    dense = timm.create_model("dense_vit_tiny_patch4_32", num_classes=10).eval()
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    assert mone.count_macs(dense, 0.3) == mone.dense_macs(model) == pytest.approx(counted_macs(dense, x), rel=0.01)
    # MoNE at e_c = 1 costs the dense model plus its router (N·D·E)
    assert mone.count_macs(model, 1.0) - mone.dense_macs(model) == 64 * 64 * 4


def test_paper_scale_numbers():
    """ViT-S/16 at 224 px: 4.57 / 2.49 / 1.24 GMACs at e_c = 1 / 0.5 / 0.2 (docs/mone-paper.md)."""
    model = timm.create_model("mone_vit_s_patch16_224")
    got = [mone.count_macs(model, e) / 1e9 for e in (1.0, 0.5, 0.2)]
    assert got == pytest.approx([4.57, 2.49, 1.24], abs=0.015)


def test_macs_grow_with_budget():
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10)
    macs = [mone.count_macs(model, e) for e in (0.15, 0.3, 0.5, 0.7, 1.0)]
    assert macs == sorted(macs) and len(set(macs)) == 5
