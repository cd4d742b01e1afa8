"""Nested projections: full width equals nn.Linear; a slice ignores the weights outside it; grouped tokens."""
import torch
from torch import nn

from mone.nested import add_nested_linear_out, nested_linear_in, token_groups


def _linear(d_in, d_out):
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out)


def test_token_groups_rows_token_major():
    # 3 images, tokens per expert (2, 0, 1, 1), widths 4, 8, 16, 32: rows are tokens x images
    assert token_groups([2, 0, 1, 1], [4, 8, 16, 32], 3) == [(0, 6, 4), (6, 9, 16), (9, 12, 32)]


def test_full_width_equals_linear():
    lin = _linear(32, 48)
    x = torch.randn(10, 32)
    groups = token_groups([10], [32], 1)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert torch.allclose(nested_linear_in(x, lin.weight, lin.bias, groups), lin(x), atol=1e-6)
    out = add_nested_linear_out(torch.zeros(10, 48), lambda g: x[g.start:g.end], lin, token_groups([10], [48], 1),
                                nn.Identity())
    assert torch.allclose(out, lin(x), atol=1e-6)


def test_input_slice_ignores_weights_outside_it():
    lin = _linear(32, 24)
    x = torch.randn(6, 32)
    groups = token_groups([2, 4], [8, 32], 1)          # rows 0-1 use 8 channels, rows 2-5 all 32
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            before = nested_linear_in(x, lin.weight, lin.bias, groups)
            w = lin.weight.detach().clone()
            w[:, 8:] += 100.0                               # outside the small expert's slice
            x2 = x.clone()
            x2[:2, 8:] = 1e3                                # the small expert's tokens' other channels
            after = nested_linear_in(x2, w, lin.bias, groups)
            assert torch.allclose(before[:2], after[:2])
            assert not torch.allclose(before[2:], after[2:])
            # and the slice itself is exactly the sliced nn.Linear
            expected = x[:2, :8] @ lin.weight[:, :8].T + lin.bias
            assert torch.allclose(before[:2], expected, atol=1e-6)


def test_output_slice_computes_only_first_channels():
    lin = _linear(16, 32)
    h = torch.randn(5, 16)
    groups = token_groups([3, 2], [8, 32], 1)
    residual = torch.zeros(5, 32)
    out = add_nested_linear_out(residual.clone(), lambda g: h[g.start:g.end], lin, groups, nn.Identity())
    full = lin(h)
    assert torch.allclose(out[:3, :8], full[:3, :8], atol=1e-6)
    assert (out[:3, 8:] == 0).all()                         # zero-padded: the residual keeps its other channels
    assert torch.allclose(out[3:], full[3:], atol=1e-6)
    # weights outside the first 8 output rows do not touch the small group
    lin.weight.data[8:] += 100.0
    out2 = add_nested_linear_out(residual.clone(), lambda g: h[g.start:g.end], lin, groups, nn.Identity())
    assert torch.allclose(out2[:3], out[:3])


def test_nested_cost_is_really_sliced():
    """The small group's matmul runs at its width: FlopCounterMode sees k·d·H, not k·D·H."""
    from torch.utils.flop_counter import FlopCounterMode
    lin = _linear(64, 128)
    x = torch.randn(20, 64)
    groups = token_groups([10, 10], [8, 64], 1)
    with FlopCounterMode(display=False) as counter:
        nested_linear_in(x, lin.weight, lin.bias, groups)
    assert counter.get_total_flops() == 2 * 128 * (10 * 8 + 10 * 64)
