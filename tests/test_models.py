"""The MoNE ViT: timm registration, equivalence with the plain ViT, routing output, gradients, budgets."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import mone  # noqa: F401  registers the models
from mone.models import ALPHA_MAX, ALPHA_MIN, TRAIN_CAPACITIES, MoNEVisionTransformer


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    dense = timm.create_model("dense_vit_tiny_patch4_32", num_classes=10).eval()
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10).eval()
    model.load_vit_state_dict(dense.state_dict())
    return model, dense


def test_create_model_registered():
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=7)
    assert isinstance(model, MoNEVisionTransformer)
    assert model(torch.randn(2, 3, 32, 32), effective_capacity=0.5).shape == (2, 7)
    assert "mone_vit_s_patch16_224" in timm.list_models("mone_vit_*")
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("mone_vit_tiny_patch4_32", pretrained=True)


def test_plain_timm_vit_loads_and_matches_at_full_budget(pair):
    model, dense = pair
    # a plain timm ViT built directly (not through our registry) has the same parameter names
    plain = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10,
                              class_token=False, global_pool="avg")
    missing = set(model.state_dict()) - set(plain.state_dict())
    assert missing == {"router.weight", "router.bias"} | {f"blocks.{i}.alpha" for i in range(2)}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x, effective_capacity=1.0), dense(x), atol=1e-5)
    assert torch.allclose(model(x, effective_capacity=1.0), dense(x), atol=1e-5)   # autograd path too


def test_wrong_state_dict_is_refused(pair):
    model, _ = pair
    with pytest.raises(ValueError, match="not a matching ViT"):
        model.load_vit_state_dict({"foo": torch.zeros(1)})


@pytest.mark.parametrize("e_c", [0.2, 0.5, 0.8])
def test_forward_routing_outputs(pair, e_c):
    model, _ = pair
    out = model.forward_routing(torch.randn(3, 3, 32, 32), effective_capacity=e_c)
    assert out.logits.shape == (3, 10)
    assert out.assignment.shape == (3, 64) and out.assignment.dtype == torch.int64
    assert out.router_probs.shape == (3, 64, 4)
    assert torch.allclose(out.router_probs.sum(-1), torch.ones(3, 64))
    counts = torch.stack([(out.assignment == j).sum(1) for j in range(4)], 1)
    assert (counts == out.tokens_per_expert).all()
    # each of the 3 larger experts loses < 1 token to the floors, worth < 1 - 1/8 of a token's budget
    assert e_c - 3 * (7 / 8) / 64 < out.effective_capacity
    assert out.effective_capacity <= e_c


def test_scores_replace_what_the_allocator_ranks_by_not_the_ffn_scale(pair):
    model, _ = pair
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        own = model.forward_routing(x, 0.4)
        same = model.forward_routing(x, 0.4, scores=own.router_probs)                  # the router's own: no change
        torch.testing.assert_close(same.logits, own.logits)
        # scores that put token i above token i+1 for every expert: EPR's largest expert takes the first k_E tokens
        ranked = torch.linspace(1, 0, 64).expand(2, 4, 64).transpose(1, 2)             # (B, N, E)
        out = model.forward_routing(x, 0.4, scores=ranked)
    k = out.tokens_per_expert.tolist()
    expected = torch.repeat_interleave(torch.arange(3, -1, -1), torch.tensor(k[::-1]))  # 3…3 2…2 1…1 0…0
    assert torch.equal(out.assignment, expected.expand(2, 64))
    torch.testing.assert_close(out.router_probs, own.router_probs)                     # the router still ran


def test_batch_elements_are_independent(pair):
    """An image's logits and routing do not depend on the other images in the batch."""
    model, _ = pair
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        together = model.forward_routing(x, 0.4)
        alone = model.forward_routing(x[1:2], 0.4)
    assert torch.allclose(together.logits[1], alone.logits[0], atol=1e-5)
    assert torch.equal(together.assignment[1], alone.assignment[0])


def test_grad_and_inference_paths_agree(pair):
    model, _ = pair
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x, 0.3)
    b = model(x, 0.3)
    assert torch.allclose(a, b, atol=1e-5)


def test_nested_forward_matches_masked_reference(pair):
    """Against a slow reference: each token only reads/writes its first d_j channels in every projection."""
    model, _ = pair
    x = torch.randn(2, 3, 32, 32)
    out = model.forward_routing(x, 0.4)
    widths = torch.tensor(model.expert_dims)[out.assignment]                          # (B, N)
    mask = (torch.arange(64)[None, None] < widths[..., None]).float()                 # (B, N, D)
    t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    r = out.router_probs.gather(2, out.assignment[..., None])
    for blk in model.blocks:
        a = blk.attn
        h = blk.norm1(t) * mask
        b_, n, d = h.shape
        qkv = a.qkv(h).reshape(b_, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        o = torch.nn.functional.scaled_dot_product_attention(*qkv.unbind(0)).transpose(1, 2).reshape(b_, n, d)
        t = t + a.proj(o) * mask
        h = blk.norm2(t) * mask
        t = t + (blk.alpha * r + 1) * blk.mlp(h) * mask
    ref = model.forward_head(model.norm(t))
    assert torch.allclose(out.logits, ref, atol=1e-4)


def test_alpha_gets_gradient_at_init_and_router_once_alpha_nonzero():
    torch.manual_seed(0)
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(model(x, effective_capacity=0.5), y)
    loss.backward()
    assert all(float(blk.alpha.grad.abs()) > 0 for blk in model.blocks)
    assert model.router.weight.grad is None or float(model.router.weight.grad.abs().sum()) == 0.0
    model.zero_grad()
    with torch.no_grad():
        for blk in model.blocks:
            blk.alpha.fill_(0.5)
    torch.nn.functional.cross_entropy(model(x, effective_capacity=0.5), y).backward()
    assert float(model.router.weight.grad.abs().sum()) > 0


def test_alpha_is_bounded_in_forward_but_keeps_its_gradient():
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10)
    blk = model.blocks[0]
    with torch.no_grad():
        blk.alpha.fill_(-0.3)
    assert float(blk.bounded_alpha().detach()) == 0.0
    blk.bounded_alpha().backward()
    assert float(blk.alpha.grad) == 1.0
    with torch.no_grad():
        blk.alpha.fill_(5.0)
    assert 0.99 < float(blk.bounded_alpha().detach()) < 1.0


def test_project_alphas_puts_every_alpha_back_in_range():
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10, depth=4)
    with torch.no_grad():
        for blk, value in zip(model.blocks, (-0.3, 0.25, 5.0, 0.0), strict=True):
            blk.alpha.fill_(value)
    model.project_alphas()
    assert [float(blk.alpha) for blk in model.blocks] == pytest.approx([ALPHA_MIN, 0.25, ALPHA_MAX, ALPHA_MIN])
    model.project_alphas(0.5)      # a higher floor (`--alpha-floor`) lifts every alpha below it
    assert [float(blk.alpha) for blk in model.blocks] == pytest.approx([0.5, 0.5, ALPHA_MAX, 0.5])
    for bad in (-0.1, ALPHA_MAX, 1.0):
        with pytest.raises(ValueError, match="alpha floor must be in"):
            model.project_alphas(bad)


def test_training_samples_budget_per_step():
    torch.manual_seed(0)
    model = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10).train()
    seen = {model.forward_routing(torch.randn(1, 3, 32, 32)).capacities.tolist().__str__() for _ in range(30)}
    assert len(seen) > 3
    fixed = timm.create_model("mone_vit_tiny_patch4_32", num_classes=10, train_capacities=0.3).train()
    out = fixed.forward_routing(torch.randn(1, 3, 32, 32))
    assert torch.allclose(out.capacities, mone.capacity_distribution(0.3))
    assert TRAIN_CAPACITIES[0] == 0.15 and TRAIN_CAPACITIES[-1] == 0.95


def test_matvit_submodel_via_one_hot_capacities(pair):
    model, _ = pair
    out = model.forward_routing(torch.randn(2, 3, 32, 32), capacities=torch.tensor([0, 1.0, 0, 0]))
    assert (out.assignment == 1).all()
    assert out.effective_capacity == pytest.approx(0.25)


def test_dense_feature_paths_are_refused(pair):
    # timm's forward_features would run the blocks without Eq. 1's (alpha·r + 1) scale: a different model
    model, _ = pair
    for path in (model.forward_features, model.forward_intermediates):
        with pytest.raises(NotImplementedError, match="forward_routing"):
            path(torch.randn(1, 3, 32, 32))


def test_bad_budget_message(pair):
    model, _ = pair
    with pytest.raises(ValueError, match="outside the feasible range"):
        model(torch.randn(1, 3, 32, 32), effective_capacity=0.05)


def test_random_allocator_on_model(pair):
    model, _ = pair
    g = torch.Generator().manual_seed(0)
    out = model.forward_routing(torch.randn(2, 3, 32, 32), 0.5, allocator="random", generator=g)
    counts = torch.stack([(out.assignment == j).sum(1) for j in range(4)], 1)
    assert (counts == out.tokens_per_expert).all()


@pytest.mark.parametrize("token_major", [True, False])
def test_drop_path_drops_whole_images_in_either_row_layout(token_major):
    """Stochastic depth draws once per image; the row scale must follow the layout's row -> image map."""
    from timm.layers import DropPath

    from mone.models import _drop_path_rows
    from mone.nested import BATCH_MAJOR, TOKEN_MAJOR
    n, b = 5, 4
    torch.manual_seed(0)
    layout = TOKEN_MAJOR if token_major else BATCH_MAJOR
    rows = _drop_path_rows(DropPath(0.5).train(), n, b, torch.zeros(1), layout)           # (N·B, 1)
    image_of_row = [r % b if token_major else r // n for r in range(n * b)]
    per_image = {}
    for r, img in enumerate(image_of_row):
        per_image.setdefault(img, set()).add(float(rows[r]))
    assert all(len(v) == 1 for v in per_image.values())                                  # one draw per image
    assert set().union(*per_image.values()) <= {0.0, 2.0}                                # kept rows scaled 1/(1-p)
    assert _drop_path_rows(DropPath(0.5).eval(), n, b, torch.zeros(1), layout) is None


def test_conv_stem_keeps_the_patch_grid_and_full_budget_equivalence():
    """ConvStem: log2(P) stride-2 stages, the PxP patchify's grid and token count; MoNE at e_c=1 is the dense model."""
    from mone.models import ConvStem
    torch.manual_seed(0)
    dense = timm.create_model("dense_vit_mini_convstem4_28", num_classes=10).eval()
    model = timm.create_model("mone_vit_mini_convstem4_28", num_classes=10).eval()
    model.load_vit_state_dict(dense.state_dict())
    stem = model.patch_embed
    assert isinstance(stem, ConvStem) and stem.grid_size == (7, 7) and stem.num_patches == 49
    assert [m.stride for m in stem.stem if isinstance(m, torch.nn.Conv2d)] == [(2, 2), (2, 2)]
    # 1 -> 32 (14x14), 32 -> 64 (7x7), 1x1 64 -> 128: worked by hand
    assert stem.macs() == 14 * 14 * 32 * 9 + 7 * 7 * 64 * 32 * 9 + 7 * 7 * 64 * 128
    x = torch.randn(3, 1, 28, 28)
    assert stem(x).shape == (3, 49, 128)
    with torch.no_grad():
        assert torch.allclose(model(x, effective_capacity=1.0), dense(x), atol=1e-5)
    # the Scenes stem: three stages for 8 px patches, 3 -> 32 (48x48), 32 -> 64 (24x24), 64 -> 128 (12x12), 1x1 proj
    stem8 = timm.create_model("dense_vit_mini_convstem8_96", num_classes=8).patch_embed
    assert stem8.grid_size == (12, 12) and len([m for m in stem8.stem if isinstance(m, torch.nn.Conv2d)]) == 3
    assert stem8.macs() == (48 * 48 * 32 * 3 * 9 + 24 * 24 * 64 * 32 * 9 + 12 * 12 * 128 * 64 * 9
                            + 12 * 12 * 128 * 128)
    with pytest.raises(ValueError, match="power-of-two patch size"):
        ConvStem(img_size=30, patch_size=3, in_chans=1, embed_dim=16)
