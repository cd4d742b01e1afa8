"""Nested experts: sliced projections run on tokens grouped per expert (MoNE §3.1).

Axes: N tokens, B images, R = N·B token rows, D model width, d_g width of group g's expert, H a hidden width
(3·D for qkv, 4·D for the MLP).

The token stream is kept token-major, (N, B, D) flattened to rows (R, D), with the tokens sorted by expert once per
forward (batch-major when all tokens share one expert, see `nested_attention`) (the assignment is shared by every block). Every image has the same number of tokens on each expert, so an
expert's tokens of the whole batch are one contiguous block of rows, and its slice of channels is a plain strided
matrix view: each expert costs one matmul at its own width, with no gather and no masking.
    into a layer:   F.linear(x[rows, :d_g], W[:, :d_g], b)          full-width output (Q, K, V, MLP hidden)
    out of a layer: x[rows, :d_g] += F.linear(h[rows], W[:d_g], b[:d_g])   the other D - d_g channels are untouched
Attention itself (QK^T, AV) runs at full width over all tokens, so tokens of different experts still interact.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from torch import nn

__all__ = ["TokenGroup", "RowLayout", "TOKEN_MAJOR", "BATCH_MAJOR", "token_groups", "nested_linear_in", "add_nested_linear_out", "nested_attention",
           "nested_mlp"]


class TokenGroup(NamedTuple):
    """One expert's contiguous block of token rows and the channels it uses."""
    start: int
    end: int
    width: int


class RowLayout(NamedTuple):
    """How the R = N·B token rows map to (image, token), which attention needs.

    token_major: row = t·B + b (the usual layout: every image has the same tokens per expert); otherwise batch-major,
    row = b·N + t. `to_batch_major` / `from_batch_major` (index tensors (R,)) describe any other row order, e.g. rows
    of images with different tokens per expert sorted by expert over the whole batch (`mone.inference`).
    """
    token_major: bool
    to_batch_major: torch.Tensor | None = None
    from_batch_major: torch.Tensor | None = None


TOKEN_MAJOR, BATCH_MAJOR = RowLayout(True), RowLayout(False)


def token_groups(tokens_per_expert: Sequence[int], expert_dims: Sequence[int], batch_size: int) -> list[TokenGroup]:
    """Row blocks of the expert-sorted, token-major stream, smallest expert first; empty experts are skipped."""
    groups, start = [], 0
    for k, d in zip(tokens_per_expert, expert_dims):
        rows = int(k) * batch_size
        if rows:
            groups.append(TokenGroup(start, start + rows, int(d)))
        start += rows
    return groups


def nested_linear_in(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     groups: Sequence[TokenGroup]) -> torch.Tensor:
    """Input projection: group g reads only its first d_g channels. x (R, D) -> (R, H)."""
    if len(groups) == 1 and groups[0].width == x.shape[-1]:
        return F.linear(x, weight, bias)                                           # every token at full width
    if torch.is_grad_enabled():
        return torch.cat([F.linear(x[g.start:g.end, :g.width], weight[:, :g.width], bias) for g in groups])
    out = x.new_empty(x.shape[0], weight.shape[0])                                  # (R, H)
    for g in groups:    # inference: write each block in place (out= is not differentiable, cat costs a full copy)
        if bias is None:
            torch.mm(x[g.start:g.end, :g.width], weight[:, :g.width].t(), out=out[g.start:g.end])
        else:
            torch.addmm(bias, x[g.start:g.end, :g.width], weight[:, :g.width].t(), out=out[g.start:g.end])
    return out


def add_nested_linear_out(residual: torch.Tensor, h_rows, linear: nn.Linear, groups: Sequence[TokenGroup],
                          dropout: nn.Module, row_scale: torch.Tensor | None = None,
                          layer_scale: nn.Module | None = None) -> torch.Tensor:
    """residual[rows_g, :d_g] += row_scale · gamma · dropout(h_g W[:d_g]^T + b[:d_g]), for every group g.

    h_rows(g) returns group g's hidden rows (R_g, H). Only d_g output channels are computed (the rest would be
    zero-padding). `residual` (R, D) is updated in place: under autograd the caller passes a fresh copy.
    """
    weight, bias = linear.weight, linear.bias
    for g in groups:
        y = dropout(F.linear(h_rows(g), weight[:g.width], None if bias is None else bias[:g.width]))  # (R_g, d_g)
        if isinstance(layer_scale, LayerScale):
            y = y * layer_scale.gamma[:g.width]
        rows = residual[g.start:g.end, :g.width]                                              # (R_g, d_g) view
        if row_scale is None:
            rows.add_(y)
        else:
            rows.addcmul_(y, row_scale[g.start:g.end])                     # one fused pass: y · (R_g, 1) scale
    return residual


def nested_attention(attn: nn.Module, residual: torch.Tensor, x: torch.Tensor, groups: Sequence[TokenGroup],
                     batch_size: int, row_scale: torch.Tensor | None = None, layer_scale: nn.Module | None = None,
                     layout: RowLayout = TOKEN_MAJOR) -> torch.Tensor:
    """residual + nested timm `Attention` of x; x (R, D) is layer-normed at full width, R = N·B rows in `layout`.

    Rows are token-major when experts are mixed. With a single group (every token on one expert, e.g. e_c = 1) no
    sorting is needed and rows stay batch-major, which keeps attention's memory access identical to the dense ViT's:
    token-major K/V rows are B·3·D floats apart, measured ~15 % slower in SDPA at B = 64.
    """
    r, _ = x.shape
    b = batch_size
    n = r // b
    h, hd = attn.num_heads, attn.head_dim
    qkv = nested_linear_in(x, attn.qkv.weight, attn.qkv.bias, groups)                         # (R, 3·D)
    if layout.to_batch_major is not None:
        qkv = qkv[layout.to_batch_major]                                                       # batch-major rows
    if layout.token_major:
        q, k, v = qkv.view(n, b, 3, h, hd).permute(2, 1, 3, 0, 4).unbind(0)                    # (B, h, N, hd)
    else:
        q, k, v = qkv.view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)                    # (B, h, N, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    o = o.permute(2, 0, 1, 3) if layout.token_major else o.transpose(1, 2)                      # rows' order
    o = attn.norm(o.reshape(r, attn.attn_dim))                                                 # (R, D)
    if layout.from_batch_major is not None:
        o = o[layout.from_batch_major]
    return add_nested_linear_out(residual, lambda g: o[g.start:g.end], attn.proj, groups, attn.proj_drop,
                                 row_scale, layer_scale)


def nested_mlp(mlp: nn.Module, residual: torch.Tensor, x: torch.Tensor, groups: Sequence[TokenGroup],
               row_scale: torch.Tensor | None = None, layer_scale: nn.Module | None = None) -> torch.Tensor:
    """residual + nested timm `Mlp` of x (R, D). The MLP is per token, so each group runs fc1 -> act -> fc2 on its
    own rows and the 4·D hidden layer (full width for every expert) is never gathered."""
    def hidden(g: TokenGroup) -> torch.Tensor:                                                  # (R_g, 4·D)
        h = F.linear(x[g.start:g.end, :g.width], mlp.fc1.weight[:, :g.width], mlp.fc1.bias)
        return mlp.norm(mlp.drop1(mlp.act(h)))
    return add_nested_linear_out(residual, hidden, mlp.fc2, groups, mlp.drop2, row_scale, layer_scale)
