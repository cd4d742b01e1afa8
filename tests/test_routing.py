"""Expert Preferred Routing (Algorithm 1): hand-worked case, per-image independence, exact capacities."""
import pytest
import torch

from mone.allocators import ALLOCATORS, get_allocator
from mone.capacity import capacity_distribution, tokens_per_expert
from mone.routing import epr_allocate, expert_preferred_routing


def test_epr_hand_worked():
    # 6 tokens, 3 experts (widths D/4, D/2, D); capacities 1/2, 1/3, 1/6 -> k = (3, 2, 1).
    probs = torch.tensor([[[0.1, 0.2, 0.7],    # t0: best for the largest expert -> expert 2
                           [0.2, 0.2, 0.6],    # t1: second for expert 2, but expert 2 is full; best left for 1
                           [0.1, 0.8, 0.1],    # t2: expert 1's first choice
                           [0.6, 0.3, 0.1],    # t3
                           [0.5, 0.1, 0.4],    # t4
                           [0.9, 0.05, 0.05]]])  # t5
    capacities = torch.tensor([1 / 2, 1 / 3, 1 / 6], dtype=torch.float64)
    assignment = expert_preferred_routing(probs, capacities)
    # expert 2 takes t0; expert 1 takes its top 2 of the rest by p[:,1]: t2 (0.8), t3 (0.3); the rest -> expert 0
    assert assignment.tolist() == [[2, 0, 1, 1, 0, 0]]
    assert assignment.dtype == torch.int64


def test_epr_largest_expert_chooses_first():
    # Both experts rank token 0 first (scores need not be normalised here); the larger expert (index 1) gets it.
    probs = torch.tensor([[[0.6, 0.7], [0.4, 0.3]]])
    assert epr_allocate(probs, torch.tensor([1, 1])).tolist() == [[1, 0]]


def test_epr_images_route_independently():
    # Two images with opposite preferences in one batch: each routes as if alone.
    a = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.9, 0.1]])
    b = a.flip(0)
    k = torch.tensor([2, 2])
    together = epr_allocate(torch.stack([a, b]), k)
    assert together[0].tolist() == epr_allocate(a[None], k)[0].tolist() == [1, 1, 0, 0]
    assert together[1].tolist() == epr_allocate(b[None], k)[0].tolist() == [0, 0, 1, 1]


def test_epr_ties_are_deterministic_by_token_index():
    probs = torch.full((1, 5, 2), 0.5)
    assert epr_allocate(probs, torch.tensor([3, 2])).tolist() == [[1, 1, 0, 0, 0]]


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
@pytest.mark.parametrize("e_c", [0.2, 0.5, 0.8])
def test_allocators_respect_tokens_per_expert_exactly(name, e_c):
    torch.manual_seed(0)
    probs = torch.rand(5, 64, 4).softmax(-1)
    k = tokens_per_expert(capacity_distribution(e_c), 64)
    assignment = get_allocator(name)(probs, k)
    counts = torch.stack([(assignment == j).sum(1) for j in range(4)], dim=1)   # (B, E)
    assert (counts == k).all()


def test_epr_picks_top_tokens_of_the_largest_expert():
    torch.manual_seed(1)
    probs = torch.rand(3, 50, 4).softmax(-1)
    k = torch.tensor([20, 15, 10, 5])
    assignment = epr_allocate(probs, k)
    for i in range(3):
        top5 = probs[i, :, 3].topk(5).indices.sort().values
        assert (assignment[i] == 3).nonzero().flatten().tolist() == top5.tolist()


def test_unknown_allocator_message():
    with pytest.raises(ValueError, match="unknown allocator 'nope'"):
        get_allocator("nope")


def test_allocation_input_validation():
    with pytest.raises(ValueError, match="summing to N"):
        epr_allocate(torch.rand(1, 10, 4), torch.tensor([1, 1, 1, 1]))
