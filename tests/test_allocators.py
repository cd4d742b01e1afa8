"""Nested-expert allocators and capacity splits (mone.allocators)."""
import pytest
import torch

from mone.allocators import ALLOCATORS, SPLIT_METHODS, capacity_split, get_allocator
from mone.capacity import capacity_distribution, tokens_per_expert, width_fractions
from mone.routing import epr_allocate

ROUTER_ALLOCATORS = [name for name in ALLOCATORS if name != "random"]


def counts(assignment: torch.Tensor, num_experts: int) -> torch.Tensor:
    return torch.stack([torch.bincount(a, minlength=num_experts) for a in assignment])   # (B, E)


def test_registry_keeps_core_entries_and_adds_routers():
    assert {"epr", "random", "softmax_token_choice", "sinkhorn_token_choice", "softmax_expert_choice",
            "sinkhorn_expert_choice", "sparse_expert_choice"} == set(ALLOCATORS)
    assert ALLOCATORS["softmax_expert_choice"] is epr_allocate       # expert choice from the largest down = EPR
    with pytest.raises(ValueError, match="unknown allocator"):
        get_allocator("nope")


@pytest.mark.parametrize("name", list(ALLOCATORS))
@pytest.mark.parametrize("e_c", [0.125, 0.2, 0.5, 0.95, 1.0])
def test_every_allocator_meets_the_counts_per_image(name, e_c):
    torch.manual_seed(0)
    n = 49
    k = tokens_per_expert(capacity_distribution(e_c), n)
    probs = torch.cat([
        (torch.randn(3, n, 4) * 3).softmax(-1),                       # varied preferences
        torch.full((1, n, 4), 0.25),                                  # all ties
        torch.eye(4)[torch.zeros(1, n, dtype=torch.long)],            # everyone wants only the smallest expert
        torch.eye(4)[torch.full((1, n), 3)],                          # everyone wants only the largest
    ])
    a = ALLOCATORS[name](probs, k, torch.Generator().manual_seed(0))
    assert a.shape == (6, n) and a.dtype == torch.int64
    assert torch.equal(counts(a, 4), k.expand(6, 4))


@pytest.mark.parametrize("name", ROUTER_ALLOCATORS)
def test_favourites_with_room_are_granted(name):
    # Every token's favourite expert has exactly the room needed: every router-based allocator gives the argmax.
    torch.manual_seed(1)
    favourite = torch.randperm(16).remainder(4).view(1, 16)           # 4 tokens per expert
    probs = (torch.eye(4)[favourite] * 4 + torch.rand(1, 16, 4)).softmax(-1)
    assert torch.equal(ALLOCATORS[name](probs, torch.tensor([4, 4, 4, 4])), favourite)


@pytest.mark.parametrize("name", list(ALLOCATORS))
def test_allocators_do_not_leak_between_images(name):
    torch.manual_seed(2)
    probs = (torch.randn(2, 32, 4) * 2).softmax(-1)
    k = tokens_per_expert(capacity_distribution(0.3), 32)
    a = ALLOCATORS[name](probs, k, torch.Generator().manual_seed(0))
    other = probs.clone()
    other[1] = (torch.randn(32, 4) * 5).softmax(-1)
    b = ALLOCATORS[name](other, k, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0])


def test_token_choice_overflow_goes_down_then_up_in_order_of_confidence():
    # k = (1, 2, 1). Tokens 0, 1 want expert 0 (0 is surer); tokens 2, 3 want expert 2 (2 is surer).
    # Round 1: token 0 -> 0, token 2 -> 2. Round 2: token 1 has no smaller expert, goes up to 1; token 3 falls to 1.
    probs = torch.tensor([[[.9, .05, .05], [.8, .1, .1], [.1, .2, .7], [.1, .3, .6]]])
    a = ALLOCATORS["softmax_token_choice"](probs, torch.tensor([1, 2, 1]))
    assert a.tolist() == [[0, 1, 2, 1]]


def test_token_choice_overflow_tries_every_smaller_expert_before_a_larger_one():
    # One place per expert. Tokens 0, 2, 3 want expert 2, token 1 wants expert 1. Token 2 (surer than 3) finds 2 and
    # 1 full and goes down to 0; token 3 then finds 2, 1, 0 full and goes up to 3.
    probs = torch.tensor([[[.0, .1, .9, .0], [.1, .8, .1, .0], [.1, .1, .7, .1], [.1, .1, .6, .2]]])
    a = ALLOCATORS["softmax_token_choice"](probs, torch.tensor([1, 1, 1, 1]))
    assert a.tolist() == [[2, 1, 0, 3]]


def test_token_choice_serves_confident_tokens_first():
    # All four want the largest expert, which has two places: the two surest get it, the others fall one step down.
    probs = torch.tensor([[[.1, .2, .7], [.05, .05, .9], [.3, .1, .6], [.0, .2, .8]]])
    a = ALLOCATORS["softmax_token_choice"](probs, torch.tensor([0, 2, 2]))
    assert a.tolist() == [[1, 2, 1, 2]]


def test_allocators_validate_inputs():
    for name in ALLOCATORS:
        with pytest.raises(ValueError):
            ALLOCATORS[name](torch.rand(1, 8, 4).softmax(-1), torch.tensor([1, 1, 1, 1]))   # sums to 4, not 8


# ------------------------------------------------------------------------------------------------- capacity splits
@pytest.mark.parametrize("method", SPLIT_METHODS)
@pytest.mark.parametrize("num_experts", [2, 3, 4])
def test_splits_meet_both_constraints(method, num_experts):
    r = torch.tensor(width_fractions(num_experts), dtype=torch.float64)
    for e_c in torch.linspace(float(r[0]), 1.0, 23).tolist():
        c = capacity_split(e_c, num_experts, method)
        assert c.dtype == torch.float64 and c.shape == (num_experts,)
        assert (c >= -1e-12).all()
        assert float(c.sum()) == pytest.approx(1.0, abs=1e-9)
        assert float((c * r).sum()) == pytest.approx(e_c, abs=1e-9)


@pytest.mark.parametrize("method, e_c, expected", [
    ("greedy", 0.5, [4 / 7, 0, 0, 3 / 7]),                            # (0.5 - 1/8) / (1 - 1/8) on the full expert
    ("uniform", 15 / 32, [0.25] * 4),                                 # the mean width: exactly uniform
    ("uniform", 0.2, [46 / 55, 3 / 55, 3 / 55, 3 / 55]),              # m = (0.2 - 1/8) / (15/8 - 4/8) = 3/55
    ("proportionate", 4 / 15, [8 / 15, 4 / 15, 2 / 15, 1 / 15]),      # c ∝ 1/d: equal compute per expert
    ("proportionate", 17 / 24, [1 / 15, 2 / 15, 4 / 15, 8 / 15]),     # c ∝ d
])
def test_splits_hand_computed(method, e_c, expected):
    assert capacity_split(e_c, 4, method).tolist() == pytest.approx(expected, abs=1e-9)


def test_mone_split_is_the_paper_split():
    assert torch.equal(capacity_split(0.3, 4, "mone"), capacity_distribution(0.3, 4))


def test_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        capacity_split(0.5, 4, "nope")
    for method in SPLIT_METHODS:
        with pytest.raises(ValueError):
            capacity_split(0.1, 4, method)                            # below 1/8: infeasible


def test_sinkhorn_expert_choice_ranks_underflowed_plan_entries_by_router_probability(monkeypatch):
    # A very confident router makes Sinkhorn plan entries underflow to exact 0 (fp32 exp). Among such ties the
    # larger expert must take the token the router prefers (token 2 here), not the lowest token index.
    import mone.allocators as allocators
    plan = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])    # expert 1's column underflowed
    monkeypatch.setattr(allocators, "sinkhorn_plan", lambda log_probs, k: plan)
    probs = torch.tensor([[[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]]])
    a = ALLOCATORS["sinkhorn_expert_choice"](probs, torch.tensor([3, 1]))
    assert a.tolist() == [[0, 0, 1, 0]]
