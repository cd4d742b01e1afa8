"""Routers of Liu et al. (mone.routers) and the V-MoE layer/model (mone.vmoe)."""
import math

import pytest
import timm
import torch

import mone.vmoe  # noqa: F401  (registers vmoe_vit_* with timm)
from mone.routers import (ROUTERS, SoftMoERouter, compute_capacity, ranking_scores, sinkhorn_plan,
                          softmax_expert_choice, softmax_token_choice, sparse_ot_plan)
from mone.vmoe import MoEMlp, moe_block_indices

SPARSE = [name for name in ROUTERS if name != "soft_moe"]
EXPERT_CHOICE = ["softmax_expert_choice", "sinkhorn_expert_choice", "sparse_expert_choice"]


def logits_for(gates: list[list[float]]) -> torch.Tensor:
    """Logits (1, S, E) whose softmax is the given rows."""
    return torch.tensor(gates).log().unsqueeze(0)


# ------------------------------------------------------------------------------------------------------- capacity
@pytest.mark.parametrize("args, expected", [
    ((64, 4, 1.0, 1), 16), ((64, 4, 1.25, 2), 40), ((49, 4, 1.0, 1), 13), ((30, 3, 0.1, 1), 1),
    ((8, 2, 10.0, 1), 8),   # capped at S
])
def test_capacity_rule(args, expected):
    assert compute_capacity(*args) == expected


@pytest.mark.parametrize("args", [(64, 4, 0.0, 1), (64, 4, -1.0, 1), (64, 4, math.nan, 1), (64, 4, 1.0, 0),
                                  (64, 4, 1.0, 5), (0, 4, 1.0, 1)])
def test_capacity_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        compute_capacity(*args)


def test_achieved_capacity_factor_is_reported():
    r = softmax_token_choice(torch.randn(2, 49, 4), 1.0)             # C = ceil(49/4) = 13 -> 4*13/49
    assert r.dispatch.shape == (2, 49, 4, 13)
    assert float(r.metrics["capacity_factor"]) == pytest.approx(52 / 49)


# --------------------------------------------------------------------------------------------------- token choice
def test_token_choice_fills_buffers_k_major():
    # C = ceil(4 * 2 * 0.5 / 2) = 2. Tokens 0, 1 prefer expert 0, tokens 2, 3 expert 1. K-major serves all first
    # choices before any second choice, so every token gets its first choice and all second choices are dropped
    # (token-major filling would instead give tokens 0 and 1 both experts and drop tokens 2 and 3 entirely).
    r = softmax_token_choice(logits_for([[.7, .3], [.6, .4], [.2, .8], [.1, .9]]), 0.5, k=2)
    expected = torch.zeros(1, 4, 2, 2)
    expected[0, 0, 0, 0] = expected[0, 1, 0, 1] = expected[0, 2, 1, 0] = expected[0, 3, 1, 1] = 1
    assert torch.equal(r.dispatch, expected)
    assert float(r.metrics["dropped_assignments"]) == pytest.approx(0.5)
    assert float(r.metrics["dropped_tokens"]) == 0.0


@pytest.mark.parametrize("k, batch_priority", [(1, False), (2, False), (2, True), (3, True)])
def test_token_choice_never_exceeds_capacity(k, batch_priority):
    for name in ("softmax_token_choice", "sinkhorn_token_choice"):
        r = ROUTERS[name](torch.randn(3, 32, 4) * 3, 0.5, k=k, batch_priority=batch_priority)
        d = r.dispatch
        assert d.sum(1).max() <= 1                                    # a slot holds at most one token
        assert d.sum(3).max() <= 1                                    # a token enters an expert at most once
        assert d.sum((2, 3)).max() <= k                               # at most K experts per token
        assert (d.sum((1, 3)) <= d.shape[-1]).all()                   # never more than C tokens per expert


def test_batch_priority_favours_confident_tokens():
    # Everyone wants expert 0, which has one slot (C = ceil(4 * 0.5 / 2) = 1); token 2 is the most confident.
    logits = logits_for([[.6, .4], [.7, .3], [.9, .1], [.8, .2]])
    plain = softmax_token_choice(logits, 0.5)
    priority = softmax_token_choice(logits, 0.5, batch_priority=True)
    assert plain.dispatch[0, :, 0, 0].tolist() == [1, 0, 0, 0]       # by position
    assert priority.dispatch[0, :, 0, 0].tolist() == [0, 0, 1, 0]    # by confidence
    assert priority.dispatch.sum((2, 3))[0].tolist() == [0, 0, 1, 0]  # K = 1: the other three are dropped


def test_token_choice_combine_is_gate_not_renormalised():
    gates = [[.5, .3, .2], [.1, .2, .7]]
    r = softmax_token_choice(logits_for(gates), 10.0, k=2)
    assert r.combine.sum((2, 3))[0].tolist() == pytest.approx([.8, .9])


def test_importance_loss_hand_computed():
    # Summed gates (1.5, 0.5): population variance 0.25, mean 1 -> CV^2 = 0.25 (the unbiased std would give 0.5).
    r = softmax_token_choice(logits_for([[.75, .25], [.75, .25]]), 1.0)
    assert float(r.metrics["importance_loss"]) == pytest.approx(0.25)
    assert float(r.metrics["auxiliary_loss"]) == pytest.approx(0.005 * 0.25)
    assert "load_loss" not in r.metrics                               # needs noise


def test_load_loss_hand_computed():
    g = torch.Generator().manual_seed(0)
    # Every expert equally likely for every token: p(selected) is the same for all experts -> CV^2 = 0.
    assert float(softmax_token_choice(torch.zeros(1, 16, 2), 1.0, noise=True, generator=g).metrics["load_loss"]) \
        == pytest.approx(0.0, abs=1e-6)
    # Expert 1 is 100 noise std below: p = (m, 0) for some m, CV^2 = (m^2/4) / (m/2)^2 = 1 whatever the noise.
    r = softmax_token_choice(torch.tensor([[[100.0, 0.0]] * 8]), 1.0, noise=True, generator=g,
                             importance_weight=1.0, load_weight=1.0)
    assert float(r.metrics["load_loss"]) == pytest.approx(1.0)
    assert float(r.metrics["importance_loss"]) == pytest.approx(1.0)
    assert float(r.metrics["auxiliary_loss"]) == pytest.approx(2.0)


def test_load_loss_matches_formula_with_replayed_noise():
    # Noise is randn(logits.shape, generator) / E; with K = 1 the threshold is each token's best noisy logit and
    # p[s, e] = 1 - Phi((threshold_s - logit[s, e]) / (1/E)).
    logits = torch.tensor([[[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]]])
    noisy = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(7)) / 2
    p = [[0.5 * math.erfc((float(noisy[0, s].max()) - float(logits[0, s, e])) * 2 / math.sqrt(2)) for e in range(2)]
         for s in range(3)]
    mean = [sum(row[e] for row in p) / 3 for e in range(2)]
    expected = ((mean[0] - mean[1]) / 2) ** 2 / ((mean[0] + mean[1]) / 2) ** 2
    r = softmax_token_choice(logits, 1.0, noise=True, generator=torch.Generator().manual_seed(7))
    assert float(r.metrics["load_loss"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_noise_with_a_cpu_generator_on_cuda_logits():
    g = torch.Generator().manual_seed(0)
    r = softmax_token_choice(torch.zeros(2, 16, 4, device="cuda"), 1.0, noise=True, generator=g)
    assert r.dispatch.device.type == "cuda"


def test_training_noise_has_std_one_over_e():
    # K = E = 2 and room for everyone: combine holds both noisy gates, whose log ratio is n_0 - n_1 ~ N(0, 2/E^2).
    logits = torch.zeros(250, 16, 2)
    r = softmax_token_choice(logits, 1.0, k=2, noise=True, generator=torch.Generator().manual_seed(0))
    noisy = r.combine.sum(-1).log()                                   # (G, S, E) noisy logits - a row constant
    assert float((noisy[..., 0] - noisy[..., 1]).std()) == pytest.approx(2 ** 0.5 / 2, rel=0.05)
    assert torch.equal(softmax_token_choice(logits, 1.0).dispatch, softmax_token_choice(logits, 1.0).dispatch)


def test_ranking_scores_break_ties_by_secondary():
    primary = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1)        # a sparse plan column: one non-zero
    secondary = torch.tensor([0.0, 0.1, 0.3, 0.2]).view(1, 4, 1)      # gates
    assert ranking_scores(primary, secondary).flatten().tolist() == [4, 1, 3, 2]


def test_aux_loss_has_gradient():
    logits = torch.randn(2, 16, 4, requires_grad=True)
    softmax_token_choice(logits, 1.0, noise=True).metrics["auxiliary_loss"].backward()
    assert logits.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------- sinkhorn
def test_sinkhorn_plan_meets_both_marginals():
    logits = torch.randn(4, 64, 4)
    for cols in (16.0, torch.tensor([8.0, 8.0, 16.0, 32.0])):
        p = sinkhorn_plan(logits, cols)
        assert torch.allclose(p.sum(2), torch.ones(4, 64), atol=1e-3)
        assert torch.allclose(p.sum(1), torch.as_tensor(cols).expand(4, 4), atol=1e-3)


def test_sinkhorn_plan_rows_are_softmax_with_expert_biases():
    logits = torch.randn(2, 16, 4)
    p = sinkhorn_plan(logits, 4.0)
    bias = (p.log() - logits.log_softmax(-1))                         # = g_e + per-row constant
    assert torch.allclose(bias - bias[..., :1], (bias - bias[..., :1])[:, :1].expand_as(bias), atol=1e-4)


def test_sinkhorn_stays_finite_for_large_logits():
    logits = torch.randn(2, 64, 4) * 100
    logits[0, :, 0] = 100.0                                           # every token screams for expert 0
    for dtype in (torch.float32, torch.float16):
        p = sinkhorn_plan(logits.to(dtype), 16.0)
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        assert torch.allclose(p.sum(2), torch.ones(2, 64), atol=1e-3)  # rows are exact after the last step
    for name in SPARSE:
        r = ROUTERS[name](logits, 1.0)
        assert torch.isfinite(r.dispatch).all() and torch.isfinite(r.combine).all()


def test_sinkhorn_routers_combine_by_softmax():
    logits = torch.randn(2, 16, 4)
    for name in ("sinkhorn_token_choice", "sinkhorn_expert_choice"):
        r = ROUTERS[name](logits, 1.0)
        assert torch.allclose(r.combine, logits.softmax(-1)[..., None] * r.dispatch)


# -------------------------------------------------------------------------------------------------- expert choice
@pytest.mark.parametrize("name", EXPERT_CHOICE)
@pytest.mark.parametrize("cf", [0.5, 1.0, 2.0])
def test_expert_choice_gives_each_expert_exactly_c_tokens(name, cf):
    r = ROUTERS[name](torch.randn(3, 32, 4) * 2, cf)
    c = compute_capacity(32, 4, cf)
    assert r.dispatch.shape[-1] == c
    assert torch.equal(r.dispatch.sum(1), torch.ones(3, 4, c))        # every slot holds exactly one token
    assert r.dispatch.sum(3).max() <= 1                               # ... and distinct tokens
    assert r.metrics["tokens_per_expert"].tolist() == [c] * 4


def test_softmax_expert_choice_takes_top_c_by_gate():
    # Expert 0's gates by token: .9 .6 .2 .5 -> top-2 = tokens 0, 1 (slots in that order).
    r = softmax_expert_choice(logits_for([[.9, .1], [.6, .4], [.2, .8], [.5, .5]]), 1.0)
    assert r.dispatch[0, :, 0].tolist() == [[1, 0], [0, 1], [0, 0], [0, 0]]
    assert r.dispatch[0, :, 1].tolist() == [[0, 0], [0, 0], [1, 0], [0, 1]]   # ties (.5) go to the lower index
    assert float(r.metrics["dropped_tokens"]) == 0.0


def test_sparse_simplex_projection_hand_computed():
    # One column, marginal 1, no Adam steps: the plan is the k-sparse projection of the scores.
    x = torch.tensor([0.5, 0.3, 0.2, -1.0]).view(1, 4, 1)
    assert sparse_ot_plan(x, 1.0, 2, num_steps=0).flatten().tolist() == pytest.approx([0.6, 0.4, 0, 0])
    assert sparse_ot_plan(x, 1.0, 4, num_steps=0).flatten().tolist() == pytest.approx([0.5, 0.3, 0.2, 0])


@pytest.mark.parametrize("max_nz, cols", [(16, 16.0), (8, 16.0), (5, torch.tensor([4.0, 12.0, 16.0, 32.0]))])
def test_sparse_ot_plan_sparsity_and_column_sums(max_nz, cols):
    gates = (torch.randn(3, 64, 4) * 2).softmax(-1)
    p = sparse_ot_plan(gates, cols, max_nz)
    assert (p >= 0).all()
    assert (p > 0).sum(1).max() <= max_nz                             # at most C non-zeros per column
    assert torch.allclose(p.sum(1), torch.as_tensor(cols).expand(3, 4), rtol=1e-5)


def test_sparse_ot_adam_steps_move_rows_towards_their_marginal():
    gates = (torch.randn(2, 64, 4) * 2).softmax(-1)
    start = (sparse_ot_plan(gates, 16.0, 16, num_steps=0).sum(2) - 1).abs().mean()
    end = (sparse_ot_plan(gates, 16.0, 16).sum(2) - 1).abs().mean()
    assert end < 0.8 * start


# ------------------------------------------------------------------------------------------------------- soft moe
def test_soft_moe_weights_are_normalised_and_norm_invariant():
    router = SoftMoERouter(dim=8, num_experts=3, slots_per_expert=2)
    x = torch.randn(2, 10, 8)
    r = router(x)
    assert r.dispatch.shape == r.combine.shape == (2, 10, 3, 2)
    assert torch.allclose(r.dispatch.sum(1), torch.ones(2, 3, 2))     # each slot averages the tokens
    assert torch.allclose(r.combine.sum((2, 3)), torch.ones(2, 10))   # each token averages all slots
    assert torch.allclose(router(x * 5.0).dispatch, r.dispatch, atol=1e-6)  # logits use L2-normalised tokens


def test_soft_moe_layer_dispatches_unnormalised_tokens():
    layer = MoEMlp(8, 16, num_experts=2, router="soft_moe", num_tokens=6).eval()
    for expert in layer.experts:                                      # identity experts: output = combine(dispatch(x))
        expert.forward = lambda t: t
    x = torch.randn(1, 6, 8) * 7
    r = layer.router(x)
    expected = torch.einsum("gsec,gtec,gtd->gsd", r.combine, r.dispatch, x)
    assert torch.allclose(layer(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------- group isolation
@pytest.mark.parametrize("name", list(ROUTERS))
def test_no_router_leaks_between_groups(name):
    torch.manual_seed(0)
    if name == "soft_moe":
        router = SoftMoERouter(8, 4, 3)
        x = torch.randn(2, 12, 8)
        route = router
    else:
        x = torch.randn(2, 12, 4)
        def route(t):
            return ROUTERS[name](t, 1.0, **({"batch_priority": True} if "token" in name else {}))
    a = route(x)
    y = x.clone()
    y[1] = torch.randn_like(y[1]) * 10
    b = route(y)
    assert torch.equal(a.dispatch[0], b.dispatch[0]) and torch.equal(a.combine[0], b.combine[0])
    assert not torch.equal(a.dispatch[1], b.dispatch[1]) or not torch.equal(a.combine[1], b.combine[1])


# ------------------------------------------------------------------------------------------------- layer and model
def test_dropped_tokens_pass_through_as_zero_update():
    layer = MoEMlp(8, 16, num_experts=2, router="softmax_expert_choice", capacity_factor=0.25).eval()
    x = torch.randn(2, 16, 8)
    y = layer(x)
    routing = softmax_expert_choice(layer.router(x), 0.25)            # eval mode: no noise, so the same routing
    untouched = routing.dispatch.sum((2, 3)) == 0                      # (G, S) tokens no expert took
    assert untouched.any() and not untouched.all()
    assert torch.equal(y[untouched], torch.zeros_like(y[untouched]))
    assert (y[~untouched].abs().sum(-1) > 0).all()
    assert float(layer.last_metrics["dropped_tokens"]) == pytest.approx(float(untouched.float().mean()))


def test_moe_block_indices():
    assert moe_block_indices(12) == [7, 9, 11]
    assert moe_block_indices(6) == [3, 5]
    assert moe_block_indices(4) == [3]


@pytest.mark.parametrize("name", list(ROUTERS))
def test_vmoe_model_trains_with_every_router(name):
    model = timm.create_model("vmoe_vit_tiny_patch4_32", num_classes=3, router=name, depth=4).train()
    assert [type(b.mlp).__name__ for b in model.blocks] == ["Mlp", "Mlp", "Mlp", "MoEMlp"]
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).mean() + model.aux_loss()
    loss.backward()
    router_grad = [p.grad for p in model.blocks[3].mlp.router.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in router_grad)
    assert set(model.routing_metrics()) == {"dropped_tokens", "capacity_factor"}
    if name == "softmax_token_choice":
        assert float(model.aux_loss().detach()) > 0
        assert "load_loss" in model.blocks[3].mlp.last_metrics        # training noise on: the load loss exists
        model.eval()(torch.randn(2, 3, 32, 32))
        assert "load_loss" not in model.blocks[3].mlp.last_metrics    # no noise at evaluation


def test_vmoe_rejects_unknown_router():
    with pytest.raises(ValueError, match="unknown router"):
        MoEMlp(8, 16, router="nope")
