"""Capacity: from one compute budget e_c to a split of tokens over nested experts (MoNE §4.3, Eq. 3).

Axes: E experts, ordered smallest first (expert j works in d_j = D / 2^(E-1-j) channels, j = 0..E-1), N tokens.

The paper solves
    c = argmax  sum_j c_j delta^j - beta sum_j c_j log c_j
        s.t.    sum_j c_j = 1,  sum_j c_j d_j / D = e_c,  0 <= c_j <= 1
with delta = 2, beta = 10. For delta = 2 the first term equals 2^(E-1) * e_c on the feasible set, a constant, so the
problem is maximum entropy under two linear constraints. Its solution is c_j ∝ exp(lam * d_j / D) for the one scalar
lam that meets the budget; the mean of d_j/D under that distribution increases monotonically with lam, so bisection
finds it. (The closed form holds for any beta > 0; beta only matters for delta != 2.)
"""
from __future__ import annotations

import functools
import numbers
import math

import torch

__all__ = [
    "expert_dims", "width_fractions", "min_effective_capacity", "capacity_distribution", "tokens_per_expert",
    "achieved_capacity", "validate_effective_capacity", "single_expert_capacities",
]


def width_fractions(num_experts: int = 4) -> list[float]:
    """d_j / D for each expert, smallest first: [1/8, 1/4, 1/2, 1] for E = 4."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    return [2.0 ** -(num_experts - 1 - j) for j in range(num_experts)]


def expert_dims(dim: int, num_experts: int = 4) -> list[int]:
    """Channels used by each nested expert, smallest first: [D/8, D/4, D/2, D] for E = 4."""
    if dim % 2 ** (num_experts - 1):
        raise ValueError(f"dim={dim} must be divisible by 2^(num_experts-1)={2 ** (num_experts - 1)}")
    return [int(dim * f) for f in width_fractions(num_experts)]


def single_expert_capacities(expert: int, num_experts: int = 4) -> torch.Tensor:
    """Capacities (E,) that put every token on `expert` (0 = smallest): a MatViT sub-model, e_c = d_expert / D."""
    if not 0 <= expert < num_experts:
        raise ValueError(f"expert must be in [0, {num_experts}), got {expert}")
    capacities = torch.zeros(num_experts, dtype=torch.float64)
    capacities[expert] = 1.0
    return capacities


def min_effective_capacity(num_experts: int = 4) -> float:
    """Smallest feasible budget: every token on the smallest expert, 1 / 2^(E-1)."""
    return width_fractions(num_experts)[0]


def validate_effective_capacity(effective_capacity: float, num_experts: int = 4) -> float:
    """The budget as a float, or a ValueError that names the feasible range [1/2^(E-1), 1]."""
    try:
        if isinstance(effective_capacity, bool):                     # float(True) == 1.0 would pass silently
            raise TypeError
        e_c = float(effective_capacity)
    except (TypeError, ValueError):
        raise ValueError(f"effective_capacity must be a number, got {effective_capacity!r}") from None
    low = min_effective_capacity(num_experts)
    if not math.isfinite(e_c):
        raise ValueError(f"effective_capacity must be finite, got {e_c}")
    if not low - 1e-9 <= e_c <= 1 + 1e-9:
        raise ValueError(
            f"effective_capacity={e_c} is outside the feasible range [{low:g}, 1] for {num_experts} nested experts "
            f"(1/2^(E-1) puts every token on the smallest expert, 1 on the largest)")
    return min(max(e_c, low), 1.0)


def capacity_distribution(effective_capacity: float, num_experts: int = 4) -> torch.Tensor:
    """Share of tokens per expert (E,), float64, smallest expert first, summing to 1, with sum_j c_j d_j/D = e_c.

    The maximum-entropy split of Eq. 3 (see the module docstring).
    """
    e_c = validate_effective_capacity(effective_capacity, num_experts)
    return torch.tensor(_max_entropy_split(e_c, num_experts), dtype=torch.float64)


@functools.lru_cache(maxsize=1024)
def _max_entropy_split(e_c: float, num_experts: int) -> tuple[float, ...]:
    """c_j ∝ exp(lam · d_j/D) with lam bisected to meet e_c; cached: a forward pass asks for it every time."""
    r = width_fractions(num_experts)
    if num_experts == 1 or e_c >= 1.0 - 1e-12:        # all tokens on the full expert (lam -> +inf)
        return (0.0,) * (num_experts - 1) + (1.0,)
    if e_c <= r[0] + 1e-12:                            # all tokens on the smallest expert (lam -> -inf)
        return (1.0,) + (0.0,) * (num_experts - 1)

    def split(lam: float) -> list[float]:
        logits = [lam * x for x in r]
        m = max(logits)
        w = [math.exp(v - m) for v in logits]
        s = sum(w)
        return [v / s for v in w]

    def budget(lam: float) -> float:
        return sum(c * x for c, x in zip(split(lam), r))

    lo, hi = -1.0, 1.0
    while budget(lo) > e_c:
        lo *= 2
    while budget(hi) < e_c:
        hi *= 2
    for _ in range(200):                               # float64 bisection: converges to machine precision
        mid = 0.5 * (lo + hi)
        if budget(mid) < e_c:
            lo = mid
        else:
            hi = mid
    return tuple(split(0.5 * (lo + hi)))


def tokens_per_expert(capacities: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Integer tokens per expert (E,), int64: k_j = floor(c_j N) for the larger experts, leftovers to the smallest.

    Algorithm 1 takes floor(c_j N) tokens for every expert; the tokens left over by the floors stay on the smallest
    expert, so the achieved budget never exceeds the requested one.
    """
    c = torch.as_tensor(capacities, dtype=torch.float64)
    if c.ndim != 1 or (c < -1e-9).any() or abs(float(c.sum()) - 1.0) > 1e-6:
        raise ValueError(f"capacities must be a 1-D non-negative vector summing to 1, got {c.tolist()}")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Integral) or num_tokens < 1:
        raise ValueError(f"num_tokens must be an integer >= 1, got {num_tokens!r}")
    # The small epsilon keeps floor(0.5 * 64) from becoming 31 through float round-off.
    k = torch.floor(c.clamp_min(0) * num_tokens + 1e-9).to(torch.int64)
    k[0] += num_tokens - int(k.sum())
    return k


def achieved_capacity(tokens_per_expert: torch.Tensor, num_tokens: int | None = None) -> float:
    """The budget that an integer split really spends: sum_j k_j d_j/D / N."""
    k = torch.as_tensor(tokens_per_expert, dtype=torch.float64)
    n = float(k.sum()) if num_tokens is None else float(num_tokens)
    r = torch.tensor(width_fractions(k.numel()), dtype=torch.float64)
    return float((k * r).sum() / n)
