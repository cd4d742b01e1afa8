"""Expert Preferred Routing (MoNE §4.1–4.2, Algorithm 1) and the random baseline allocator.

Axes: B images, N tokens per image, E nested experts (0 = smallest, E-1 = the full-width expert).

An allocator maps router probabilities (B, N, E) and integer tokens per expert (E,) to an expert index per token
(B, N). Every image gets exactly tokens_per_expert[j] tokens on expert j, which is what lets the nested forward run
each expert as one dense matmul over the whole batch.
"""
from __future__ import annotations

import torch

from .capacity import tokens_per_expert as _tokens_per_expert

__all__ = ["expert_preferred_routing", "epr_allocate", "random_allocate", "validate_allocation_inputs"]


def validate_allocation_inputs(router_probs: torch.Tensor, tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """Check shapes and that the counts cover every token; return the counts as int64 on the probs' device."""
    if router_probs.ndim != 3:
        raise ValueError(f"router_probs must be (B, N, E), got shape {tuple(router_probs.shape)}")
    _, n, e = router_probs.shape
    k = torch.as_tensor(tokens_per_expert, dtype=torch.int64)
    if k.shape != (e,) or (k < 0).any() or int(k.sum()) != n:
        raise ValueError(f"tokens_per_expert must be {e} non-negative counts summing to N={n}, got {k.tolist()}")
    return k


def epr_allocate(router_probs: torch.Tensor, tokens_per_expert: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1 with integer capacities: the largest expert picks its top-k_j tokens first, then the next, ….

    Vectorised over the batch (each image sorts its own tokens: no leakage between images). Ties in probability are
    broken by token index (a stable descending sort keeps the lower index first), so the result is deterministic.
    """
    k = validate_allocation_inputs(router_probs, tokens_per_expert)
    b, n, e = router_probs.shape
    assignment = torch.zeros(b, n, dtype=torch.int64, device=router_probs.device)   # (B, N) all on the smallest
    taken = torch.zeros(b, n, dtype=torch.bool, device=router_probs.device)         # (B, N)
    for j in range(e - 1, 0, -1):                      # largest expert chooses first; expert 0 gets what is left
        k_j = int(k[j])
        if k_j == 0:
            continue
        scores = router_probs[..., j].masked_fill(taken, float("-inf"))             # (B, N)
        chosen = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k_j]  # (B, k_j)
        assignment.scatter_(1, chosen, j)
        taken.scatter_(1, chosen, True)
    return assignment


def random_allocate(router_probs: torch.Tensor, tokens_per_expert: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's random-router baseline: the same capacities, tokens placed uniformly at random per image."""
    k = validate_allocation_inputs(router_probs, tokens_per_expert)
    b, n, _ = router_probs.shape
    labels = torch.repeat_interleave(torch.arange(k.numel()), k)                      # (N,) expert of each slot
    perm = torch.rand(b, n, generator=generator).argsort(dim=1)                       # (B, N) random slot per token
    return labels[perm].to(router_probs.device)


def expert_preferred_routing(router_probs: torch.Tensor, capacities: torch.Tensor) -> torch.Tensor:
    """EPR from capacity shares: router_probs (B, N, E), capacities (E,) summing to 1 -> expert per token (B, N)."""
    if router_probs.ndim != 3:
        raise ValueError(f"router_probs must be (B, N, E), got shape {tuple(router_probs.shape)}")
    return epr_allocate(router_probs, _tokens_per_expert(capacities, router_probs.shape[1]))
