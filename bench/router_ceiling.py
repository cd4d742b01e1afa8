"""How far can a router at block 0 single out object patches? The shipped router against mask-supervised probes.

    python bench/router_ceiling.py --card assets/mone_vit_scenes_isoflops.json --json assets/bench/router_ceiling.json

MoNE's router is one linear layer + softmax on the block-0 input (patch embedding + position, §4.1), so its scores
are a linear function of a patch's pixels and position. The issue's target (object patches >= 3x over-represented
among the largest expert's tokens at e_c = 0.3) asks that function to find objects. This script measures what the
function class can do at best: probes trained *with the object masks as labels* (binary cross-entropy on patches with
>= 50 % object pixels, the evaluation's definition) on `train` images, then used as the score for the largest
expert's top-k_E per image on `test` images:

    router          the shipped model's own router (trained by the task loss only), EPR assignment
    linear          logistic regression on the router's input: the router's function class, given the answer
    linear_ln       the same after a LayerNorm without affine (contrast normalisation per token)
    mlp             a 2-layer MLP (256 hidden, GELU) on the router's input: a non-linear router at block 0
    oracle          the masks' object fraction itself: the most any score can reach

Over-representation = object share among the largest expert's tokens / object share among all patches (pooled over
the images, as in `mone.evaluate`). Everything runs in one process on the same images; seeds fixed.

The >= 50 % rule counts a patch on the object's outline (a few object pixels) as background. To see whether a router
sends outlines rather than interiors to the largest expert, the shipped router is also scored under other readings of
"object patch", each as (share among the largest expert's tokens) / (share among all patches):

    touching        patches with any object pixel
    pixels          object pixels themselves (each token weighted by its object fraction)
    outline         patches that are partly object (0 < fraction < 1): the object's edge
    border          patches on the image's outer ring (not an object reading: a position bias shows here)

and the rate at which each column of the patch grid goes to the largest expert (a padding artefact shows there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout without installing
import mone  # noqa: E402
from mone.capacity import capacity_distribution, tokens_per_expert  # noqa: E402
from mone.checkpoint import read_card  # noqa: E402
from mone.data import OBJECT_PATCH, patch_object_fraction  # noqa: E402
from mone.inference import encode  # noqa: E402
from mone.train import card_batches, gather, standardize, to_unit  # noqa: E402

CAPACITIES = (0.25, 0.3, 0.4, 0.5)                # at e_c <= 0.2 the largest expert gets no token (N = 144)


def load_split(card: dict, split: str, n: int, workers: int, pack: str | None):
    data, pre = card["data"], card["preprocess"]
    images, _, masks = gather(card_batches(card, split, n, workers, pack))
    if masks is None:
        raise SystemExit(f"{data['dataset']} has no object masks: this benchmark needs Scenes")
    mean, std = torch.tensor(pre["mean"]), torch.tensor(pre["std"])
    return standardize(to_unit(images, pre["image_size"]), mean, std), masks


@torch.inference_mode()
def router_input(model, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The block-0 tokens the router sees (B, N, D)."""
    return torch.cat([encode(model, x[i:i + batch_size]).tokens for i in range(0, len(x), batch_size)])


def fit_probe(probe: nn.Module, features: torch.Tensor, is_object: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """Binary cross-entropy on patches; features (P, D), is_object (P,)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        rows = torch.randint(len(features), (4096,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(probe(features[rows]).squeeze(-1), is_object[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    return probe.eval()


def over_representation(score: torch.Tensor, is_object: torch.Tensor, k: int) -> float:
    """score, is_object (B, N): object share among each image's top-k tokens / object share overall."""
    top = score.topk(k, dim=1).indices                                                    # (B, k)
    return (is_object.gather(1, top).float().mean() / is_object.float().mean()).item()


def readings(fraction: torch.Tensor) -> dict[str, torch.Tensor]:
    """fraction (B, N) object fraction per patch -> per-patch weights (B, N) of each reading in the docstring."""
    side = int(fraction.shape[1] ** 0.5)
    ring = torch.ones(side, side, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    return {"touching": (fraction > 0).float(), "pixels": fraction,
            "outline": ((fraction > 0) & (fraction < 1)).float(),
            "border": ring.flatten().expand_as(fraction).float()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", default="assets/mone_vit_scenes_isoflops.json")
    ap.add_argument("--train-images", type=int, default=6000, help="train images for the probes")
    ap.add_argument("--test-images", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=3000, help="AdamW steps per probe (4096 patches each)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pack", default=None, help="Scenes source pack (default: $MONE_SCENES_PACK or the cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    card = read_card(args.card)
    model = mone.load_model(args.card).eval()
    patch = model.patch_embed.patch_size[0]
    start = time.perf_counter()
    split = {}
    for name, n in (("train", args.train_images), ("test", args.test_images)):
        x, masks = load_split(card, name, n, args.workers, args.pack)
        fraction = patch_object_fraction(masks, patch).flatten(1)                          # (B, N)
        split[name] = dict(x=x, tokens=router_input(model, x), fraction=fraction, is_object=fraction >= OBJECT_PATCH)

    def ln(t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:])

    d = model.embed_dim
    probes = {"linear": (nn.Linear(d, 1), lambda t: t),
              "linear_ln": (nn.Linear(d, 1), ln),
              "mlp": (nn.Sequential(nn.Linear(d, 256), nn.GELU(), nn.Linear(256, 1)), lambda t: t)}
    train, test = split["train"], split["test"]
    scores = {}
    for name, (probe, transform) in probes.items():
        fit_probe(probe, transform(train["tokens"]).flatten(0, 1), train["is_object"].flatten().float(),
                  args.steps, args.seed)
        with torch.inference_mode():
            scores[name] = probe(transform(test["tokens"])).squeeze(-1)                    # (B, N)
    scores["oracle"] = test["fraction"]

    rows = []
    largest = model.num_experts - 1
    by_reading = readings(test["fraction"])                                                 # name -> (B, N)
    for c in CAPACITIES:
        k = int(tokens_per_expert(capacity_distribution(c, model.num_experts), test["is_object"].shape[1])[largest])
        with torch.inference_mode():
            assignment = torch.cat([model.forward_routing(test["x"][i:i + 500], c).assignment
                                    for i in range(0, len(test["x"]), 500)])               # (B, N)
        on_largest = assignment == largest
        row = dict(effective_capacity=c, largest_expert_tokens_per_image=k,
                   router=round((test["is_object"] & on_largest).sum().item() / on_largest.sum().item()
                                / test["is_object"].float().mean().item(), 3))
        row.update({name: round(over_representation(s, test["is_object"], k), 3) for name, s in scores.items()})
        row["router_by_reading"] = {name: round((value[on_largest].mean() / value.mean()).item(), 3)
                                    for name, value in by_reading.items()}
        side = int(on_largest.shape[1] ** 0.5)
        row["largest_expert_rate_by_column"] = [round(v, 3) for v in
                                                on_largest.view(-1, side, side).float().mean((0, 1)).tolist()]
        rows.append(row)

    # the alphas say whether the router could learn at all (`mone.report.router_state` reads them)
    alpha = [round(block.alpha.item(), 4) for block in model.blocks]
    result = dict(card=args.card, model=card["model"], alpha=alpha, object_patch_threshold=OBJECT_PATCH,
                  object_area_share=round(test["is_object"].float().mean().item(), 4),
                  share_by_reading={name: round(value.mean().item(), 4) for name, value in by_reading.items()},
                  train_images=args.train_images, test_images=args.test_images, probe_steps=args.steps,
                  seed=args.seed, seconds=round(time.perf_counter() - start, 1), rows=rows,
                  command="python bench/router_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    cols = ["router", "linear", "linear_ln", "mlp", "oracle"]
    print(f"object over-representation among the largest expert's tokens ({result['card']}, "
          f"{args.test_images} test images, object share {result['object_area_share']:.3f})")
    print(f"{'e_c':>5} {'k_E':>4} " + " ".join(f"{c:>9}" for c in cols))
    for row in rows:
        print(f"{row['effective_capacity']:>5} {row['largest_expert_tokens_per_image']:>4} "
              + " ".join(f"{row[c]:>9.2f}" for c in cols)
              + "   router by reading: " + ", ".join(f"{k} {v:.2f}" for k, v in row["router_by_reading"].items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
