"""MoNE ViT vs the dense timm ViT of the same size: wall-clock time beside the MACs ratio, measured side by side.

    python bench/speed.py [--model s_patch16_224] [--batch-sizes 1 64] [--repeats 7] [--threads 2]

For each budget e_c it prints the median forward time of MoNE over the median of the dense ViT (same weights, same
process, runs in alternation), the analytic MACs ratio, their quotient (target <= 1.15 at e_c = 0.5, batch 64), and the
share of the forward spent on routing (router + capacity split + EPR + token sort), timed on its own.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout without installing
import mone  # noqa: E402
from mone.capacity import capacity_distribution, tokens_per_expert  # noqa: E402


def paired_median_times(fns, repeats: int, min_seconds: float = 3.0) -> list[float]:
    """Median time of each function, run in alternation (a, b, c, a, b, c, ...) so that slow drifts of the machine
    (frequency, other load) hit all of them alike: at least `repeats` rounds, and enough to span `min_seconds`."""
    start = time.perf_counter()
    for fn in fns:                                         # warm-up (allocator, oneDNN primitive caches)
        fn()
    rounds = max(repeats, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-6)))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, bucket in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(bucket) for bucket in times]


def routing_only(model, tokens: torch.Tensor, effective_capacity: float) -> None:
    """Router + capacity split + EPR + the token sort of `forward_routing`, given the patch tokens (B, N, D)."""
    probs = model.router(tokens).softmax(dim=-1)
    k = tokens_per_expert(capacity_distribution(effective_capacity, model.num_experts), tokens.shape[1])
    assignment = mone.epr_allocate(probs, k)
    torch.sort(assignment, dim=1, stable=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="s_patch16_224", help="config name: mone_vit_<name> vs dense_vit_<name>")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--capacities", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = timm.create_model(f"dense_vit_{args.model}").eval().to(args.device)
    model = timm.create_model(f"mone_vit_{args.model}").eval().to(args.device)
    model.load_vit_state_dict(dense.state_dict())
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    print(f"# {args.model} on {args.device} ({platform.processor() or platform.machine()}, {args.threads} threads), "
          f"torch {torch.__version__}, medians of >= {args.repeats} alternating rounds spanning >= 3 s")
    print(f"{'batch':>5} {'e_c':>5} {'dense ms':>9} {'MoNE ms':>9} {'time ratio':>10} {'MACs ratio':>10} "
          f"{'time/MACs':>9} {'routing %':>9}")
    rows = []
    with torch.inference_mode():
        for batch in args.batch_sizes:
            x = torch.randn(batch, model.patch_embed.proj.in_channels, *model.patch_embed.img_size,
                            device=args.device)
            tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))                   # (B, N, D)
            for e_c in args.capacities:
                dense_t, mone_t, route_t = paired_median_times(
                    [lambda: (dense(x), sync()), lambda: (model(x, e_c), sync()),
                     lambda: (routing_only(model, tokens, e_c), sync())], args.repeats)
                macs_ratio = mone.count_macs(model, e_c) / mone.dense_macs(model)
                row = dict(batch=batch, effective_capacity=e_c, dense_ms=1e3 * dense_t, mone_ms=1e3 * mone_t,
                           time_ratio=mone_t / dense_t, macs_ratio=macs_ratio,
                           time_over_macs=(mone_t / dense_t) / macs_ratio, routing_share=route_t / mone_t)
                rows.append(row)
                print(f"{batch:>5} {e_c:>5.2f} {row['dense_ms']:>9.1f} {row['mone_ms']:>9.1f} {row['time_ratio']:>10.3f} "
                      f"{macs_ratio:>10.3f} {row['time_over_macs']:>9.3f} {100 * row['routing_share']:>8.2f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=args.model, device=args.device, machine=platform.processor() or platform.machine(),
                           threads=args.threads, torch=torch.__version__,
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
