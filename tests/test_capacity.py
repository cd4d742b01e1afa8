"""Capacity split (paper Eq. 3): test vectors from the notes, integer tokens per expert, validation."""
import math

import pytest
import torch

from mone.capacity import (achieved_capacity, capacity_distribution, expert_dims, single_expert_capacities,
                           tokens_per_expert, width_fractions)

# Experts ordered D/8, D/4, D/2, D (docs/mone-paper.md).
VECTORS = {
    0.2: [0.601, 0.310, 0.083, 0.006],
    0.3: [0.414, 0.321, 0.194, 0.071],
    0.4: [0.307, 0.282, 0.239, 0.171],
    0.5: [0.227, 0.235, 0.251, 0.287],
    0.6: [0.161, 0.184, 0.241, 0.413],
}


@pytest.mark.parametrize("e_c", sorted(VECTORS))
def test_capacity_matches_paper_vectors(e_c):
    c = capacity_distribution(e_c)
    assert c.shape == (4,) and c.dtype == torch.float64
    assert [round(v, 3) for v in c.tolist()] == VECTORS[e_c]


@pytest.mark.parametrize("e_c", [0.13, 0.25, 0.37, 0.5, 0.77, 0.99])
@pytest.mark.parametrize("num_experts", [2, 3, 4, 5])
def test_capacity_meets_both_constraints(e_c, num_experts):
    if e_c <= 2.0 ** -(num_experts - 1):
        pytest.skip("at or below the feasible range: a one-hot split")
    c = capacity_distribution(e_c, num_experts)
    r = torch.tensor(width_fractions(num_experts), dtype=torch.float64)
    assert float(c.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float((c * r).sum()) == pytest.approx(e_c, abs=1e-9)
    assert (c >= 0).all()
    # maximum entropy under the constraints: log c_j is affine in d_j/D
    logc = c.log()
    slopes = (logc[1:] - logc[:-1]) / (r[1:] - r[:-1])
    assert torch.allclose(slopes, slopes[0].expand_as(slopes), atol=1e-6)


def test_capacity_endpoints():
    assert capacity_distribution(1.0).tolist() == [0, 0, 0, 1]
    assert capacity_distribution(0.125).tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("bad", [0.1, 1.01, -1, float("nan"), float("inf"), "abc", None, True])
def test_capacity_rejects_bad_budgets(bad):
    with pytest.raises(ValueError, match="effective_capacity"):
        capacity_distribution(bad)


def test_capacity_error_names_feasible_range():
    with pytest.raises(ValueError, match=r"\[0.125, 1\]"):
        capacity_distribution(0.05)


@pytest.mark.parametrize("e_c", [0.2, 0.3, 0.5, 0.6, 0.9])
@pytest.mark.parametrize("n", [49, 64, 144, 196])
def test_tokens_per_expert_floors_with_leftovers_on_smallest(e_c, n):
    c = capacity_distribution(e_c)
    k = tokens_per_expert(c, n)
    assert k.dtype == torch.int64 and int(k.sum()) == n
    for j in range(1, 4):
        assert int(k[j]) == math.floor(float(c[j]) * n)
    assert achieved_capacity(k, n) <= e_c + 1e-12


def test_tokens_per_expert_hand_worked():
    # c = (0.25, 0.25, 0.25, 0.25), N = 10: floors 2, 2, 2 for the larger experts; 4 stay on the smallest.
    assert tokens_per_expert(torch.full((4,), 0.25), 10).tolist() == [4, 2, 2, 2]
    # achieved budget: (4/8 + 2/4 + 2/2 + 2) / 10 = 0.4
    assert achieved_capacity(torch.tensor([4, 2, 2, 2]), 10) == pytest.approx(0.4)


def test_tokens_per_expert_validates():
    with pytest.raises(ValueError, match="summing to 1"):
        tokens_per_expert(torch.tensor([0.5, 0.6, 0.0, 0.0]), 10)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_tokens must be an integer >= 1"):
            tokens_per_expert(torch.full((4,), 0.25), bad)


def test_expert_dims():
    assert expert_dims(384) == [48, 96, 192, 384]
    with pytest.raises(ValueError, match="divisible"):
        expert_dims(100)


def test_single_expert_capacities_put_every_token_on_one_expert():
    for j in range(4):
        c = single_expert_capacities(j)
        assert c.tolist() == [1.0 if i == j else 0.0 for i in range(4)]
        assert achieved_capacity(tokens_per_expert(c, 49)) == width_fractions(4)[j]
    with pytest.raises(ValueError, match=r"expert must be in \[0, 4\), got 4"):
        single_expert_capacities(4)
