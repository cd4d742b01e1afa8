"""The six routers of Liu et al., "Routers in Vision Mixture of Experts" (TMLR 2024), on router logits.

Axes: G groups (images; routing never mixes them), S tokens per group, E experts, C buffer slots per expert,
K experts per token (token choice), P slots per expert (Soft MoE), D channels.

A sparse router maps logits (G, S, E) to a `Routing`: a one-hot `dispatch` (G, S, E, C) and `combine` = dispatch times
a combine score. A MoE layer computes expert inputs X~[g,e,c] = sum_s dispatch[g,s,e,c] x[g,s] and outputs
y[g,s] = sum_{e,c} combine[g,s,e,c] Expert_e(X~)[g,e,c]; a token no expert takes gets y = 0 and so passes through the
residual unchanged. Selection is not differentiable: the router learns through the combine weights and aux losses.

Capacity: one rule for every router (`compute_capacity`), C = ceil(S K cf / E), with K = 1 for expert choice, so two
routers given the same capacity factor spend the same expert compute. The rounded capacity is reported as the achieved
capacity factor E C / (S K).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Routing", "compute_capacity", "sinkhorn_plan", "sparse_ot_plan", "ranking_scores",
    "softmax_token_choice", "sinkhorn_token_choice", "softmax_expert_choice", "sinkhorn_expert_choice",
    "sparse_expert_choice", "SoftMoERouter", "ROUTERS", "TOKEN_CHOICE_ROUTERS",
]


class Routing(NamedTuple):
    """What a router decided for one batch of groups."""
    dispatch: Tensor          # (G, S, E, C) weight of token s in slot c of expert e (one-hot for sparse routers)
    combine: Tensor           # (G, S, E, C) weight of that slot's output in token s's output
    metrics: dict[str, Tensor]


def compute_capacity(num_tokens: int, num_experts: int, capacity_factor: float, k: int = 1) -> int:
    """Buffer slots per expert, ceil(S K cf / E), capped at S; expert choice and Soft MoE use k = 1.

    The cap only removes slots that could never be filled: a token enters an expert's buffer at most once.
    """
    if num_tokens < 1 or num_experts < 1:
        raise ValueError(f"need num_tokens >= 1 and num_experts >= 1, got {num_tokens} and {num_experts}")
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in [1, num_experts={num_experts}], got {k}")
    if not (math.isfinite(capacity_factor) and capacity_factor > 0):
        raise ValueError(f"capacity_factor must be a finite number > 0, got {capacity_factor}")
    # The epsilon keeps float round-off (e.g. 0.1 * 30 / 3 = 1.0000000000000002) from adding a slot.
    capacity = math.ceil(num_tokens * k * capacity_factor / num_experts - 1e-9)
    return max(1, min(capacity, num_tokens))


def _add_noise(logits: Tensor, noise: bool, generator: torch.Generator | None) -> Tensor:
    """Training noise N(0, (1/E)^2) on the logits (V-MoE); drawn as randn(logits.shape, generator) / E."""
    if not noise:
        return logits
    # drawn on the generator's device (a CPU generator cannot fill a CUDA tensor), then moved to the logits
    device = generator.device if generator is not None else logits.device
    eps = torch.randn(logits.shape, generator=generator, device=device, dtype=logits.dtype).to(logits.device)
    return logits + eps / logits.shape[-1]


def _cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation over the last axis, population variance, averaged over the others."""
    return (x.var(-1, unbiased=False) / x.mean(-1) ** 2).mean()


def _load_loss(logits: Tensor, noisy_logits: Tensor, k: int) -> Tensor:
    """V-MoE load loss: CV^2 over experts of P(expert in a token's top-K if the noise were drawn again)."""
    noise_std = 1.0 / logits.shape[-1]
    threshold = noisy_logits.topk(k, dim=-1).values[..., -1:]                    # (G, S, 1) K-th best noisy logit
    p_selected = 1.0 - torch.special.ndtr((threshold - logits) / noise_std)      # (G, S, E)
    return _cv_squared(p_selected.mean(1))                                       # (G, E) -> scalar


def _metrics(dispatch: Tensor, capacity: int, k: int, auxiliary_loss: Tensor | None = None,
             **extra: Tensor) -> dict[str, Tensor]:
    """Metrics shared by the sparse routers; dropped_tokens counts tokens that no expert processes."""
    _, s, e, _ = dispatch.shape
    taken = dispatch.detach().sum(-1)                                            # (G, S, E) 0/1
    metrics = {
        "tokens_per_expert": taken.sum(1).float().mean(0),                       # (E,) mean over groups
        "dropped_tokens": (taken.sum(-1) == 0).float().mean(),
        "capacity_factor": torch.tensor(e * capacity / (s * k)),
        "auxiliary_loss": dispatch.new_zeros(()) if auxiliary_loss is None else auxiliary_loss,
    }
    metrics.update(extra)
    return metrics


def _top_k_indices(scores: Tensor, k: int, dim: int) -> Tensor:
    """Indices of the k largest entries along dim; ties go to the lower index (torch.topk gives no such promise)."""
    return torch.sort(scores, dim=dim, descending=True, stable=True).indices.narrow(dim, 0, k)


def ranking_scores(primary: Tensor, secondary: Tensor) -> Tensor:
    """Scores over tokens (dim 1) whose descending order is by `primary`, ties broken by `secondary`, then index.

    Sparse OT plans hold many exact zeros; ranking them by the softmax gate, not by token index, keeps the choice
    among them meaningful and deterministic. Two stable sorts give the lexicographic order.
    """
    order = torch.sort(secondary, dim=1, descending=True, stable=True).indices              # (G, S, E)
    order = order.gather(1, torch.sort(primary.gather(1, order), dim=1, descending=True, stable=True).indices)
    rank = torch.arange(primary.shape[1], 0, -1, device=primary.device, dtype=torch.float32)  # best gets S
    return torch.empty(primary.shape, device=primary.device).scatter_(1, order, rank.view(1, -1, 1).expand_as(order))


def _token_choice(select: Tensor, gates: Tensor, capacity: int, k: int,
                  batch_priority: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Top-K experts per token by `select`, buffers filled K-major; returns dispatch, combine, dropped assignments.

    K-major: every token's first choice is served before any second choice. With batch priority the tokens are
    served in order of their best `select` score instead of by position. Choices past capacity are dropped.
    """
    g, s, e = select.shape
    experts = _top_k_indices(select, k, dim=-1)                                  # (G, S, K)
    if batch_priority:
        best = select.gather(-1, experts[..., :1]).squeeze(-1)                   # (G, S)
        order = _top_k_indices(best, s, dim=1)                                   # (G, S) most confident first
    else:
        order = torch.arange(s, device=select.device).expand(g, s)
    experts = experts.gather(1, order[..., None].expand(-1, -1, k))              # (G, S, K) in service order
    one_hot = F.one_hot(experts.transpose(1, 2).reshape(g, k * s), e)            # (G, K*S, E) K-major
    position = one_hot.cumsum(1) * one_hot - 1                                   # (G, K*S, E) slot, -1 = not chosen
    position = position.view(g, k, s, e).amax(1)                                 # (G, S, E) an expert is picked once
    position = torch.empty_like(position).scatter_(1, order[..., None].expand(-1, -1, e), position)  # token order
    kept = (position >= 0) & (position < capacity)                               # (G, S, E)
    dispatch = F.one_hot(position.clamp(0, capacity - 1), capacity) * kept[..., None]  # (G, S, E, C)
    dispatch = dispatch.to(gates.dtype)
    dropped = 1.0 - kept.sum() / (g * s * k)
    return dispatch, gates[..., None] * dispatch, dropped


def _expert_choice(select: Tensor, gates: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Each expert takes its top-C tokens by `select` (slot c = its c-th best); returns dispatch, combine."""
    chosen = _top_k_indices(select.transpose(1, 2), capacity, dim=-1)           # (G, E, C)
    dispatch = F.one_hot(chosen, select.shape[1]).permute(0, 3, 1, 2).to(gates.dtype)  # (G, S, E, C)
    return dispatch, gates[..., None] * dispatch


def _column_marginals(column_marginals: Tensor | float, g: int, e: int, device: torch.device) -> Tensor:
    """Column marginals as (G, 1, E) fp32: a scalar, one vector for all groups (E,), or one per group (G, E)."""
    return torch.as_tensor(column_marginals, dtype=torch.float32, device=device).expand(g, e).reshape(g, 1, e)


def sinkhorn_plan(logits: Tensor, column_marginals: Tensor | float, num_iters: int = 20) -> Tensor:
    """Entropic OT plan (G, S, E): argmax <P, logits> + H(P), rows summing to 1, columns to `column_marginals`.

    epsilon = 1 and exactly `num_iters` column-then-row scalings, in log space and fp32 so logits of any magnitude
    stay finite: P = exp(logits + f + g), so each row is softmax(logits + g) for per-expert biases g that even the
    load. Rows are exact after the last (row) step; columns converge with the iterations. A zero column marginal gives
    a zero column. Not differentiable (it only selects tokens).
    """
    x = logits.detach().float()                                                  # (G, S, E)
    g_, s, e = x.shape
    log_b = _column_marginals(column_marginals, g_, e, x.device).log()           # (G, 1, E), -inf where 0
    f = x.new_zeros(g_, s, 1)                                                    # (G, S, 1) token potentials
    g = x.new_zeros(g_, 1, e)                                                    # (G, 1, E) expert potentials
    for _ in range(num_iters):
        g = log_b - torch.logsumexp(x + f, dim=1, keepdim=True)                  # columns sum to b
        f = -torch.logsumexp(x + g, dim=2, keepdim=True)                         # rows sum to 1
    return (x + f + g).exp()


def _sparse_simplex_projection(v: Tensor, k: Tensor) -> Tensor:
    """Project each column v[g, :, e] onto {p >= 0, sum p = 1, at most k[e] non-zeros}.

    Kyrillidis et al. (ICML 2013): keep the k largest entries, project them onto the simplex. k is (E,) int64.
    """
    s = v.shape[1]
    sorted_v, order = torch.sort(v, dim=1, descending=True, stable=True)         # (G, S, E)
    rank = torch.arange(1, s + 1, device=v.device).view(1, s, 1)                 # (1, S, 1)
    csum = sorted_v.cumsum(1)                                                    # (G, S, E)
    # Simplex support: a prefix of the sorted column where 1 + r v_r > sum_{i<=r} v_i, cut at the k-th entry.
    support = (1 + rank * sorted_v > csum) & (rank <= k.view(1, 1, -1))           # (G, S, E)
    rho = support.sum(1, keepdim=True).clamp_min(1)                               # (G, 1, E)
    tau = (csum.gather(1, rho - 1) - 1) / rho                                     # (G, 1, E) threshold
    projected = (sorted_v - tau).clamp_min(0) * (rank <= rho) * (k > 0)           # (G, S, E) exact zeros off support
    return torch.zeros_like(v).scatter_(1, order, projected)


def sparse_ot_plan(scores: Tensor, column_marginals: Tensor | float, max_nonzeros: Tensor | int,
                   num_steps: int = 20, lr: float = 1e-2) -> Tensor:
    """Sparsity-constrained OT plan (G, S, E) (Liu, Puigcerver & Blondel, ICLR 2023), column-sparse version.

    Solves min <P, -scores> + 1/2 ||P||^2 with rows summing to 1, column e summing to b_e, and at most
    max_nonzeros[e] non-zeros in column e, through the semi-dual: a potential alpha (G, S) per token, and each column
    P[:, e] = b_e * sparse_simplex_projection((scores[:, e] + alpha) / b_e). The gradient of the semi-dual in alpha is
    (row sums of P) - 1; as in the reference code we take `num_steps` Adam steps (lr 1e-2, betas 0.9/0.999) from 0.
    Column sums and sparsity hold exactly by construction; row sums only approximately (20 steps is not converged).
    """
    x = scores.detach().float()                                                  # (G, S, E)
    g_, s, e = x.shape
    b = _column_marginals(column_marginals, g_, e, x.device)                      # (G, 1, E)
    k = torch.as_tensor(max_nonzeros, dtype=torch.int64, device=x.device).expand(e)  # (E,)
    scale = torch.where(b > 0, b, torch.ones_like(b))                            # an empty column stays finite

    def plan(alpha: Tensor) -> Tensor:
        return b * _sparse_simplex_projection((x + alpha) / scale, k)            # (G, S, E)

    alpha = x.new_zeros(g_, s, 1)                                                # (G, S, 1)
    m, v = torch.zeros_like(alpha), torch.zeros_like(alpha)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, num_steps + 1):
        grad = plan(alpha).sum(-1, keepdim=True) - 1.0                           # (G, S, 1)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad ** 2
        alpha = alpha - lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
    return plan(alpha)


def softmax_token_choice(logits: Tensor, capacity_factor: float, k: int = 1, batch_priority: bool = False,
                         noise: bool = False, generator: torch.Generator | None = None,
                         importance_weight: float = 0.005, load_weight: float = 0.005) -> Routing:
    """V-MoE: each token takes its top-K experts by softmax gate; combine = gate (not renormalised over the K).

    Auxiliary loss = importance_weight * CV^2(summed clean gates) + load_weight * load loss (the load loss needs
    the noise, so it exists only with noise=True; the 0.005 weights are V-MoE's).
    """
    _, s, e = logits.shape
    capacity = compute_capacity(s, e, capacity_factor, k)
    noisy = _add_noise(logits, noise, generator)
    gates = noisy.softmax(-1)                                                    # (G, S, E)
    dispatch, combine, dropped = _token_choice(gates.detach(), gates, capacity, k, batch_priority)
    losses = {"importance_loss": _cv_squared(logits.softmax(-1).sum(1))}         # per group, mean over groups
    aux = importance_weight * losses["importance_loss"]
    if noise:
        losses["load_loss"] = _load_loss(logits, noisy, k)
        aux = aux + load_weight * losses["load_loss"]
    return Routing(dispatch, combine, _metrics(dispatch, capacity, k, aux, dropped_assignments=dropped, **losses))


def sinkhorn_token_choice(logits: Tensor, capacity_factor: float, k: int = 1, batch_priority: bool = False,
                          noise: bool = False, generator: torch.Generator | None = None,
                          num_iters: int = 20) -> Routing:
    """Token choice selecting by the Sinkhorn plan (column marginals S/E) instead of the gates; combine = softmax.

    The plan already balances the load, so there is no auxiliary loss. Batch priority orders by the plan's best entry.
    """
    _, s, e = logits.shape
    capacity = compute_capacity(s, e, capacity_factor, k)
    noisy = _add_noise(logits, noise, generator)
    plan = sinkhorn_plan(noisy, s / e, num_iters)                                # (G, S, E)
    dispatch, combine, dropped = _token_choice(plan, noisy.softmax(-1), capacity, k, batch_priority)
    return Routing(dispatch, combine, _metrics(dispatch, capacity, k, dropped_assignments=dropped))


def softmax_expert_choice(logits: Tensor, capacity_factor: float, noise: bool = False,
                          generator: torch.Generator | None = None) -> Routing:
    """Expert choice (Zhou et al. 2022): each expert takes its top-C tokens by gate; a token gets 0..E experts."""
    _, s, e = logits.shape
    capacity = compute_capacity(s, e, capacity_factor)
    gates = _add_noise(logits, noise, generator).softmax(-1)                     # (G, S, E)
    dispatch, combine = _expert_choice(gates.detach(), gates, capacity)
    return Routing(dispatch, combine, _metrics(dispatch, capacity, 1))


def sinkhorn_expert_choice(logits: Tensor, capacity_factor: float, noise: bool = False,
                           generator: torch.Generator | None = None, num_iters: int = 20) -> Routing:
    """Each expert takes its top-C tokens by the Sinkhorn plan (column marginals S/E); combine = softmax."""
    _, s, e = logits.shape
    capacity = compute_capacity(s, e, capacity_factor)
    noisy = _add_noise(logits, noise, generator)
    dispatch, combine = _expert_choice(sinkhorn_plan(noisy, s / e, num_iters), noisy.softmax(-1), capacity)
    return Routing(dispatch, combine, _metrics(dispatch, capacity, 1))


def sparse_expert_choice(logits: Tensor, capacity_factor: float, noise: bool = False,
                         generator: torch.Generator | None = None, num_steps: int = 20, lr: float = 1e-2) -> Routing:
    """Each expert takes its top-C tokens by a C-sparse OT plan of the softmax gates; combine = softmax.

    A column has at most C non-zeros; if it has fewer, the expert fills its spare slots by gate (`ranking_scores`).
    The reference code adds no noise here; `noise` is offered so every sparse router can be trained alike.
    """
    _, s, e = logits.shape
    capacity = compute_capacity(s, e, capacity_factor)
    gates = _add_noise(logits, noise, generator).softmax(-1)                     # (G, S, E)
    plan = sparse_ot_plan(gates, s / e, capacity, num_steps, lr)                 # (G, S, E)
    dispatch, combine = _expert_choice(ranking_scores(plan, gates.detach()), gates, capacity)
    return Routing(dispatch, combine, _metrics(dispatch, capacity, 1))


class SoftMoERouter(nn.Module):
    """Soft MoE (Puigcerver et al. 2024): every slot is a softmax-weighted average of all tokens of its group.

    Logits are cosine similarities of tokens and learned slots times a learned scale; dispatch = softmax over tokens
    (columns), combine = softmax over all E*P slots (rows). The MoE layer dispatches the un-normalised tokens. No
    token is dropped and there is no auxiliary loss.
    """

    def __init__(self, dim: int, num_experts: int, slots_per_expert: int) -> None:
        super().__init__()
        if min(dim, num_experts, slots_per_expert) < 1:
            raise ValueError(f"dim, num_experts and slots_per_expert must be >= 1, got "
                             f"{dim}, {num_experts}, {slots_per_expert}")
        self.num_experts, self.slots_per_expert = num_experts, slots_per_expert
        self.slots = nn.Parameter(torch.randn(dim, num_experts, slots_per_expert) * dim ** -0.5)  # (D, E, P)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Routing:
        """x (G, S, D) -> Routing with dispatch and combine (G, S, E, P)."""
        s = x.shape[1]
        logits = torch.einsum("gsd,dep->gsep", F.normalize(x, dim=-1),
                              F.normalize(self.slots, dim=0)) * self.scale       # (G, S, E, P)
        dispatch = logits.softmax(1)                                             # each slot: weights over tokens
        combine = logits.flatten(2).softmax(-1).view_as(logits)                  # each token: weights over slots
        e, p = self.num_experts, self.slots_per_expert
        metrics = {
            "tokens_per_expert": torch.full((e,), float(p)),                     # slots, each a mix of all tokens
            "dropped_tokens": torch.tensor(0.0),
            "capacity_factor": torch.tensor(e * p / s),
            "auxiliary_loss": logits.new_zeros(()),
        }
        return Routing(dispatch, combine, metrics)


ROUTERS = {
    "softmax_token_choice": softmax_token_choice,
    "sinkhorn_token_choice": sinkhorn_token_choice,
    "softmax_expert_choice": softmax_expert_choice,
    "sinkhorn_expert_choice": sinkhorn_expert_choice,
    "sparse_expert_choice": sparse_expert_choice,
    "soft_moe": SoftMoERouter,
}
TOKEN_CHOICE_ROUTERS = frozenset({"softmax_token_choice", "sinkhorn_token_choice"})  # the ones that take k
