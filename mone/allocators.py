"""Token-to-nested-expert allocators, selectable on a trained MoNE model, and the capacity splits the paper compares.

Axes: B images, N tokens per image, E nested experts (0 = smallest, d_j = D / 2^(E-1-j); E-1 = the full width).

An allocator is `fn(router_probs (B, N, E), tokens_per_expert (E,), generator=None) -> assignment (B, N)` int64; each
image gets exactly tokens_per_expert[j] tokens on expert j, which the nested forward relies on. Besides EPR and the
random baseline (`mone.routing`), the routers of Liu et al. (`mone.routers`) are adapted to that contract: their
capacities become the fixed counts k_j, every token gets exactly one expert, and overflow never leaves a token
unprocessed. Each image is allocated on its own (the plans and sorts run per image).

| allocator              | who chooses first                            | where overflow goes                      |
|------------------------|----------------------------------------------|------------------------------------------|
| epr                    | experts, largest first (MoNE Algorithm 1)    | leftovers to the smallest expert         |
| softmax_token_choice   | tokens, most confident (max prob) first      | next smaller expert with room, else up   |
| sinkhorn_token_choice  | tokens, by the Sinkhorn plan (marginals k_j) | as softmax_token_choice                  |
| softmax_expert_choice  | = epr (see ALLOCATORS)                       |                                          |
| sinkhorn_expert_choice | experts, largest first, by the Sinkhorn plan | leftovers to the smallest expert         |
| sparse_expert_choice   | experts, largest first, by a sparse OT plan  | leftovers to the smallest expert         |
| random                 | nobody: a uniform random permutation         |                                          |
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .capacity import capacity_distribution, validate_effective_capacity, width_fractions
from .routers import ranking_scores, sinkhorn_plan, sparse_ot_plan
from .routing import epr_allocate, random_allocate, validate_allocation_inputs

__all__ = [
    "ALLOCATORS", "get_allocator", "softmax_token_choice_allocate", "sinkhorn_token_choice_allocate",
    "sinkhorn_expert_choice_allocate", "sparse_expert_choice_allocate", "capacity_split", "SPLIT_METHODS",
]


def _token_choice_allocate(select: Tensor, k: Tensor) -> Tensor:
    """Each token asks for its argmax expert by `select`; a full expert sends it down to the next smaller one.

    Served like V-MoE's K-major buffers with batch priority: in round r every still-unplaced token asks for its r-th
    fallback (preferred p, then p-1, ..., 0, then p+1, ..., E-1: down first, so overflow lowers the compute, up only
    when every smaller expert is full), and within a round the tokens are served in order of confidence, max_j
    select. E rounds place every token: a token refused by all E experts would mean all of them are full.
    """
    b, n, e = select.shape
    confidence, preferred = select.max(-1)                                       # (B, N) each
    order = torch.sort(confidence, dim=1, descending=True, stable=True).indices  # (B, N) most confident first
    preferred = preferred.gather(1, order)                                       # (B, N) in service order
    experts = torch.arange(e, device=select.device)                             # (E,)
    rank = torch.where(experts <= preferred[..., None], preferred[..., None] - experts, experts)  # (B, N, E)
    fallback = rank.argsort(-1)                                                  # (B, N, E) r-th choice of a token
    free = k.to(select.device).expand(b, e).clone()                              # (B, E) open slots
    placed = torch.full((b, n), -1, dtype=torch.int64, device=select.device)     # (B, N) -1 = not yet
    for r in range(e):
        want = fallback[..., r]                                                  # (B, N)
        asking = F.one_hot(want, e) * (placed < 0)[..., None]                    # (B, N, E)
        queue = (asking.cumsum(1) * asking).sum(-1)                              # (B, N) 1-based place in line
        accepted = (queue > 0) & (queue <= free.gather(1, want))                 # (B, N)
        placed = torch.where(accepted, want, placed)
        free -= (asking * accepted[..., None]).sum(1)
    return torch.empty_like(placed).scatter_(1, order, placed)                  # back to image order


def _log_probs(router_probs: Tensor) -> Tensor:
    """Router log-probabilities with zeros clamped, so that the log-space Sinkhorn stays finite."""
    return router_probs.float().clamp_min(torch.finfo(torch.float32).tiny).log()


def softmax_token_choice_allocate(router_probs: Tensor, tokens_per_expert: Tensor,
                                  generator: torch.Generator | None = None) -> Tensor:
    """Token choice: tokens, most confident first, take their argmax expert; overflow falls to the next smaller one.

    The nested analogue of V-MoE's top-1 routing with batch priority; nothing is dropped, since every token must be
    processed by some expert.
    """
    k = validate_allocation_inputs(router_probs, tokens_per_expert)
    return _token_choice_allocate(router_probs, k)


def sinkhorn_token_choice_allocate(router_probs: Tensor, tokens_per_expert: Tensor,
                                   generator: torch.Generator | None = None) -> Tensor:
    """Token choice on the Sinkhorn plan whose column marginals are the counts k_j (20 iterations, epsilon = 1).

    The plan already leans towards the fixed counts, so fewer tokens overflow than with the raw probabilities.
    Preference and confidence come from the plan's rows.
    """
    k = validate_allocation_inputs(router_probs, tokens_per_expert)
    return _token_choice_allocate(sinkhorn_plan(_log_probs(router_probs), k), k)


def sinkhorn_expert_choice_allocate(router_probs: Tensor, tokens_per_expert: Tensor,
                                    generator: torch.Generator | None = None) -> Tensor:
    """Expert choice on the Sinkhorn plan (column marginals k_j): the largest expert takes its top-k_j tokens first.

    EPR's greedy order run on the plan instead of the probabilities: a token wanted by a larger expert but whose
    column is crowded is weighed against the others through the per-expert potentials. Plan entries that underflow
    to exactly 0 (a very confident router) are ranked by router probability, as in the sparse allocator below.
    """
    k = validate_allocation_inputs(router_probs, tokens_per_expert)
    return epr_allocate(ranking_scores(sinkhorn_plan(_log_probs(router_probs), k), router_probs.float()), k)


def sparse_expert_choice_allocate(router_probs: Tensor, tokens_per_expert: Tensor,
                                  generator: torch.Generator | None = None) -> Tensor:
    """Expert choice on the sparsity-constrained OT plan: column j sums to k_j with at most k_j non-zeros.

    The largest expert takes first (as EPR); ties among the plan's exact zeros are broken by router probability.
    """
    k = validate_allocation_inputs(router_probs, tokens_per_expert)
    plan = sparse_ot_plan(router_probs, k, k)                                    # (B, N, E)
    return epr_allocate(ranking_scores(plan, router_probs.float()), k)


ALLOCATORS = {
    "epr": epr_allocate,
    "random": random_allocate,
    "softmax_token_choice": softmax_token_choice_allocate,
    # Expert choice with fixed counts k_j and one expert per token must let one expert choose before the next; taken
    # from the largest expert down by softmax probability, it *is* EPR (Algorithm 1), so the two names share a function.
    "softmax_expert_choice": epr_allocate,
    "sinkhorn_token_choice": sinkhorn_token_choice_allocate,
    "sinkhorn_expert_choice": sinkhorn_expert_choice_allocate,
    "sparse_expert_choice": sparse_expert_choice_allocate,
}


def get_allocator(name: str):
    """The allocator registered under `name`, or a ValueError that lists the known names."""
    try:
        return ALLOCATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown allocator {name!r}; choose one of {sorted(ALLOCATORS)}") from None


# ------------------------------------------------------------------------------------------------- capacity splits
SPLIT_METHODS = ("mone", "proportionate", "uniform", "greedy")


def _power_split(e_c: float, r: list[float]) -> list[float]:
    """c_j proportional to (d_j/D)^p, with the exponent p found by bisection so that sum c_j d_j/D = e_c.

    The mean width under c is increasing in p, so bisection works; weights are taken in log space.
    """
    log_r = [math.log(x) for x in r]

    def split(p: float) -> list[float]:
        top = max(p * x for x in log_r)
        w = [math.exp(p * x - top) for x in log_r]
        return [v / sum(w) for v in w]

    def budget(p: float) -> float:
        return sum(c * x for c, x in zip(split(p), r))

    lo, hi = -1.0, 1.0
    while budget(lo) > e_c:
        lo *= 2
    while budget(hi) < e_c:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if budget(mid) < e_c else (lo, mid)
    return split(0.5 * (lo + hi))


def capacity_split(effective_capacity: float, num_experts: int = 4, method: str = "mone") -> Tensor:
    """Share of tokens per expert (E,), float64, smallest first: sum c_j = 1 and sum c_j d_j/D = e_c for every method.

    - "mone": the paper's maximum-entropy split (Eq. 3), `capacity_distribution`.
    - "proportionate": c_j proportional to (d_j/D)^p, p chosen to meet e_c. p = -1 (c_j proportional to 1/d_j: every
      expert gets the same compute) at e_c = E / sum_j D/d_j (4/15 for E = 4); p = 0 is uniform; p = 1 (c_j
      proportional to d_j) at e_c = sum_j d_j^2 / (D sum_j d_j) (17/24 for E = 4).
    - "uniform": every expert gets the same share m, as large as the budget allows; the rest of the tokens go to the
      smallest expert (e_c below the mean width, 15/32 for E = 4) or to the largest (above it). Exactly uniform at the
      mean width; m is the largest minimum share of any split that meets e_c.
    - "greedy": as many tokens as the budget allows on the full expert, the rest on the smallest; the middle experts
      get none (the two-expert split, like Mixture-of-Depths' process-or-skip but with the smallest expert as "skip").
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"unknown split method {method!r}; choose one of {list(SPLIT_METHODS)}")
    if method == "mone":
        return capacity_distribution(effective_capacity, num_experts)
    e_c = validate_effective_capacity(effective_capacity, num_experts)
    r = width_fractions(num_experts)                                             # d_j / D, smallest first
    if num_experts == 1:
        return torch.ones(1, dtype=torch.float64)
    low, mean = r[0], sum(r) / num_experts
    if method == "greedy":
        top = (e_c - low) / (1.0 - low)                                          # share on the full expert
        c = [1.0 - top] + [0.0] * (num_experts - 2) + [top]
    elif method == "uniform":
        if e_c <= mean:                                                          # m*sum(r) + (1 - E m)*r_0 = e_c
            m = (e_c - low) / (sum(r) - num_experts * low)
            c = [m + 1.0 - num_experts * m] + [m] * (num_experts - 1)
        else:                                                                    # m*sum(r) + (1 - E m)*1 = e_c
            m = (1.0 - e_c) / (num_experts - sum(r))
            c = [m] * (num_experts - 1) + [m + 1.0 - num_experts * m]
    elif e_c <= low + 1e-12:                                                     # proportionate, p -> -inf
        c = [1.0] + [0.0] * (num_experts - 1)
    elif e_c >= 1.0 - 1e-12:                                                     # proportionate, p -> +inf
        c = [0.0] * (num_experts - 1) + [1.0]
    else:
        c = _power_split(e_c, r)
    return torch.tensor(c, dtype=torch.float64)
