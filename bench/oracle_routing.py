"""Does sending the objects to the largest expert pay? A trained MoNE model scored with routing that knows the masks.

    python bench/oracle_routing.py --card assets/mone_vit_scenes_v2_convstem_cpu_isoflops.json \
        --json assets/bench/oracle_routing_v2.json

The issue's object target (object patches >= 3x over-represented among the largest expert's tokens at e_c = 0.3)
presumes that the largest expert is best spent on the object. This benchmark puts that to a trained model: the same
EPR allocation under the same per-expert capacities, ranking the tokens by different scores, on the same test images:

    router       the model's own router probabilities: what `mone.evaluate` scores as "mone"
    oracle       the mask's object fraction of each patch, for every expert alike: the largest expert takes the most
                 object-covered patches, the next expert the next ones, …; ties (all-object or all-background
                 patches) are broken by the router's own scores
    background   the oracle's mirror: the least object-covered patches first
    random       uniform random scores (seeded), the evaluation's random router

For each: top-1 and the object over-representation among the largest expert's tokens (object share there / object
share of all patches, pooled over images; a patch is an object patch at >= 50 % object pixels, as in the
evaluation), and each score's gap to the router with a paired standard error (per-image outcomes, the same images).
The model trained with its own router's assignments, so the oracle's and the background's are off its training
distribution: a model trained with such a router could do better than the oracle row shows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout without installing
import mone  # noqa: E402
from mone.checkpoint import read_card  # noqa: E402
from mone.data import OBJECT_PATCH, patch_object_fraction  # noqa: E402
from mone.inference import encode  # noqa: E402
from mone.report import paired_standard_error_pt  # noqa: E402
from mone.train import card_batches, gather, standardize, to_unit  # noqa: E402

CAPACITIES = (0.2, 0.25, 0.3, 0.4, 0.5)
TIE_BREAK = 1e-3          # router probabilities scaled below the smallest step of a patch's object fraction (1/64)


def oracle_scores(fraction: torch.Tensor, router_probs: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """fraction (B, N) object share per patch, router_probs (B, N, E) -> EPR scores (B, N, E): every expert ranks
    by the object fraction (`reverse`: by the background fraction), ties broken by the router's probabilities."""
    key = 1 - fraction if reverse else fraction
    return key.unsqueeze(-1) + TIE_BREAK * router_probs                                  # (B, N, E)


@torch.inference_mode()
def score(model, x: torch.Tensor, y: torch.Tensor, fraction: torch.Tensor, router_probs: torch.Tensor, e_c: float,
          kind: str, batch_size: int, seed: int) -> tuple[np.ndarray, float]:
    """Per-image hits (B,) and the object over-representation among the largest expert's tokens."""
    gen = torch.Generator().manual_seed(seed)
    hits, on_largest, object_on_largest = [], 0, 0
    is_object = fraction >= OBJECT_PATCH                                                  # (B, N)
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        scores = None
        if kind in ("oracle", "background"):
            scores = oracle_scores(fraction[rows], router_probs[rows], reverse=kind == "background")
        out = model.forward_routing(x[rows], e_c, allocator="random" if kind == "random" else "epr", generator=gen,
                                    scores=scores)
        hits.append((out.logits.argmax(-1) == y[rows]).numpy())
        largest = out.assignment == model.num_experts - 1                                 # (b, N)
        on_largest += int(largest.sum())
        object_on_largest += int((largest & is_object[rows]).sum())
    share = is_object.float().mean().item()
    return np.concatenate(hits), (object_on_largest / on_largest / share) if on_largest else float("nan")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", default="assets/mone_vit_scenes_v2_convstem_cpu_isoflops.json")
    ap.add_argument("--split", default="test", help="test (unseen backgrounds) or test_instances (unseen objects)")
    ap.add_argument("--images", type=int, default=2000, help="the first N images of the split (the curves' 2000)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--pack", default=None, help="Scenes source pack (default: $MONE_SCENES_PACK or the cache)")
    ap.add_argument("--seed", type=int, default=0, help="the random scores' generator, per budget")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    card = read_card(args.card)
    model = mone.load_model(args.card).eval()
    if not isinstance(model, mone.MoNEVisionTransformer) or mone.is_matvit(card):
        raise SystemExit(f"{args.card} has no router to compare: this benchmark needs a MoNE card")
    start = time.perf_counter()
    images, labels, masks = gather(card_batches(card, args.split, args.images, args.workers, args.pack))
    if masks is None:
        raise SystemExit(f"{card['data']['dataset']} has no object masks: this benchmark needs Scenes")
    pre = card["preprocess"]
    x = standardize(to_unit(images, pre["image_size"]), torch.tensor(pre["mean"]), torch.tensor(pre["std"]))
    fraction = patch_object_fraction(masks, model.patch_embed.patch_size[0]).flatten(1)   # (B, N)
    # the router's probabilities do not depend on the budget: once per image, for the oracle's tie-break
    router_probs = torch.cat([encode(model, x[i:i + args.batch_size]).router_probs
                              for i in range(0, len(x), args.batch_size)])                 # (B, N, E)

    rows = []
    for e_c in CAPACITIES:
        row, outcomes = dict(effective_capacity=e_c, macs=mone.count_macs(model, e_c)), {}
        for kind in ("router", "oracle", "background", "random"):
            outcomes[kind], over = score(model, x, labels, fraction, router_probs, e_c, kind,
                                            args.batch_size, args.seed)
            row[kind] = dict(top1=round(float(outcomes[kind].mean()), 5), over_representation=round(over, 3))
            if kind != "router":
                row[kind]["gap_to_router_pt"] = round(100 * float(outcomes[kind].mean() - outcomes["router"].mean()),
                                                      2)
                row[kind]["gap_se_pt"] = round(paired_standard_error_pt(outcomes[kind], outcomes["router"]), 2)
        rows.append(row)
        print(f"e_c {e_c:.2f}: " + "  ".join(f"{k} {100 * row[k]['top1']:.1f} % ({row[k]['over_representation']:.2f}x)"
                                            for k in ("router", "oracle", "background", "random")), flush=True)
    result = dict(card=args.card, model=card["model"], split=args.split, images=len(labels),
                  object_area_share=round((fraction >= OBJECT_PATCH).float().mean().item(), 4),
                  object_patch_threshold=OBJECT_PATCH, seed=args.seed, torch_threads=torch.get_num_threads(),
                  seconds=round(time.perf_counter() - start, 1), rows=rows,
                  command="python bench/oracle_routing.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
