"""Accuracy against compute for a trained MoNE card: the curve the app shows, and the numbers in the card.

    python -m mone.evaluate --card assets/mone_fm.json --dense-card assets/dense_fm.json [--split test] [--limit N]

Methods, each scored on the same images in one pass over the data per budget (batched, inference mode, fp32):
    mone            the model with Expert Preferred Routing at e_c = 0.15, 0.20, …, 1.00
    random_router   the same model and capacities, tokens placed on experts at random (fixed generator seed)
    matvit          the nested sub-models: every token on expert j (capacities one-hot at j), e_c = d_j / D
    matvit_baseline the same for the MatViT of --matvit-card, trained as a baseline (`mone.train --nested-widths`)
    dense           the dense baseline of --dense-card (one point at its MACs)
A MatViT card evaluated on its own (--card) has only its `matvit` points: it has no routing to score.
MACs are analytic multiply-adds per image (`mone.count_macs`). On data with object masks (Scenes, synthetic) the
router's object precision is measured at every budget: the share of object patches (>= 50 % object pixels) among the
tokens given to the largest expert, against the object-area share (the fraction of object patches overall) and the
random allocator's precision. Scenes are scored on `test` and, separately, on `test_instances` (unseen objects).

Writes <out-dir>/<card name>.json, {"model", "card", "split", "points": [{"method", "effective_capacity", "macs",
"top1", …}], "object_precision": […], "splits": {other split: {…}}, "outcomes": file}, <out-dir>/<card name>.png,
and <out-dir>/<card name>.outcomes.safetensors: every point's per-image right/wrong (`read_outcomes`), from which a
gap between two points on the same images gets its paired standard error. Puts the headline numbers into the card's
`evaluation` field.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

import mone
from mone.capacity import width_fractions
from mone.data import OBJECT_PATCH, patch_object_fraction
from mone.models import MoNEVisionTransformer
from mone.train import card_batches, dataset_info, default_size, gather, git_commit, now, standardize, to_unit

GRID = tuple(round(0.15 + 0.05 * i, 2) for i in range(18))   # 0.15, 0.20, …, 1.00
RANDOM_SEED = 0                                               # the random allocator's generator, per budget
HEADLINE_CAPACITIES = (0.25, 0.5, 0.75, 1.0)


def nested_runs(net: MoNEVisionTransformer, method: str) -> list[dict]:
    """Every token on expert j, for each j: the nested sub-models of `net`, at e_c = d_j / D."""
    runs = []
    for j, fraction in enumerate(width_fractions(net.num_experts)):
        capacities = mone.single_expert_capacities(j, net.num_experts)
        runs.append(dict(method=method, effective_capacity=fraction, allocator="epr", capacities=capacities,
                         expert=j, net=net, macs=mone.count_macs(net, capacities=capacities)))
    return runs


def runs_for(model: torch.nn.Module, dense: torch.nn.Module | None,
             matvit: MoNEVisionTransformer | None = None) -> list[dict]:
    """Every (method, budget) to score: its name, nominal e_c, the network and its forward arguments, MACs per
    image."""
    runs = []
    if isinstance(model, MoNEVisionTransformer):
        if not mone.is_matvit(model.card):
            for method, allocator in (("mone", "epr"), ("random_router", "random")):
                runs += [dict(method=method, effective_capacity=c, allocator=allocator, net=model,
                              macs=mone.count_macs(model, c)) for c in GRID]
        runs += nested_runs(model, "matvit")
    if matvit is not None:
        runs += nested_runs(matvit, "matvit_baseline")
    for baseline in (model, dense):
        if baseline is not None and not isinstance(baseline, MoNEVisionTransformer):
            runs.append(dict(method="dense", effective_capacity=1.0, macs=mone.count_macs(baseline), dense=baseline))
    return runs


@torch.inference_mode()
def score_split(model: torch.nn.Module, dense: torch.nn.Module | None, matvit: MoNEVisionTransformer | None,
                card: dict, split: str, limit: int | None, batch_size: int, device: torch.device, workers: int,
                pack: str | None) -> dict:
    """Points (and object precision where the data has masks) of every run on one split."""
    data, pre = card["data"], card["preprocess"]
    n = min(limit or default_size(data["dataset"], split), default_size(data["dataset"], split))
    images, labels, masks = gather(card_batches(card, split, n, workers, pack))
    mean, std = torch.tensor(pre["mean"], device=device), torch.tensor(pre["std"], device=device)
    runs = runs_for(model, dense, matvit)
    # per-image outcomes and counts stay on the device until the end: no host sync per batch
    hits = torch.zeros(len(runs), n, dtype=torch.bool, device=device)                    # (runs, images)
    on_largest, object_on_largest = (torch.zeros(len(runs), dtype=torch.int64, device=device) for _ in range(2))
    object_patches = torch.zeros((), dtype=torch.int64, device=device)
    achieved = [None] * len(runs)
    routed = isinstance(model, MoNEVisionTransformer) and not mone.is_matvit(card) and masks is not None
    generators = [torch.Generator().manual_seed(RANDOM_SEED) for _ in runs]    # CPU: what the allocator draws on
    for start in range(0, n, batch_size):
        x = standardize(to_unit(images[start:start + batch_size].to(device), pre["image_size"]), mean, std)
        y = labels[start:start + batch_size].to(device)
        if routed:
            patch = model.patch_embed.patch_size[0]
            is_object = patch_object_fraction(masks[start:start + batch_size], patch) >= OBJECT_PATCH
            is_object = is_object.flatten(1).to(device)                                   # (B, N) row-major patches
            object_patches += is_object.sum()
        for r, run in enumerate(runs):
            if run["method"] == "dense":
                logits = run["dense"](x)
            else:
                out = run["net"].forward_routing(x, run["effective_capacity"], allocator=run["allocator"],
                                                 capacities=run.get("capacities"), generator=generators[r])
                logits, achieved[r] = out.logits, out.effective_capacity
                if routed:
                    largest = out.assignment == model.num_experts - 1                     # (B, N)
                    on_largest[r] += largest.sum()
                    object_on_largest[r] += (largest & is_object).sum()
            hits[r, start:start + len(y)] = logits.argmax(-1) == y
    hits, correct = hits.cpu(), hits.sum(1).cpu()
    points = []
    for r, run in enumerate(runs):
        point = dict(method=run["method"], effective_capacity=run["effective_capacity"], macs=run["macs"],
                     top1=round(correct[r].item() / n, 5))
        if achieved[r] is not None:
            point["achieved_capacity"] = round(achieved[r], 5)
        if "expert" in run:
            point["expert"] = run["expert"]
        points.append(point)
    result = dict(split=split, images=n, points=points, router_gap=router_gap(points),
                  outcomes={outcome_key(split, p): hits[r].numpy() for r, p in enumerate(points)})
    if routed:
        result["object_precision"] = object_precision(runs, on_largest.cpu(), object_on_largest.cpu(),
                                                      object_patches.item(), n * model.patch_embed.num_patches, n)
    return result


def outcome_key(split: str, point: dict) -> str:
    """The name of one point's per-image outcomes in the outcomes file: split/method/e_c."""
    return f"{split}/{point['method']}/{point['effective_capacity']:g}"


def write_outcomes(path: Path, outcomes: dict[str, np.ndarray]) -> None:
    """Per-image right/wrong of every point, one bit per image (np.packbits), with the image count per key."""
    save_file({key: np.packbits(hit) for key, hit in outcomes.items()}, path,
              metadata={key: str(len(hit)) for key, hit in outcomes.items()})


def read_outcomes(curve_path: str | Path, split: str, point: dict) -> np.ndarray | None:
    """One point's per-image outcomes (bool, in image order) as written beside the curve file; None where the curve
    was written before outcomes were stored."""
    curve_path = Path(curve_path)
    curve = json.loads(curve_path.read_text())
    if "outcomes" not in curve:
        return None
    key = outcome_key(split, point)
    with safe_open(curve_path.parent / curve["outcomes"], framework="np") as f:
        return np.unpackbits(f.get_tensor(key), count=int(f.metadata()[key])).astype(bool)


def router_gap(points: list[dict]) -> list[dict]:
    """Learned minus random router top-1 at every budget."""
    rand = {p["effective_capacity"]: p["top1"] for p in points if p["method"] == "random_router"}
    return [dict(effective_capacity=p["effective_capacity"],
                 top1_gap=round(p["top1"] - rand[p["effective_capacity"]], 5))
            for p in points if p["method"] == "mone"]


def object_precision(runs: list[dict], on_largest: torch.Tensor, object_on_largest: torch.Tensor,
                     object_patches: int, all_patches: int, images: int) -> list[dict]:
    """Per budget: object share among the largest expert's tokens (EPR and random), the object-area share, recall."""
    share = object_patches / all_patches

    def precision(r: int) -> float | None:
        return round(object_on_largest[r].item() / on_largest[r].item(), 5) if on_largest[r] else None

    rows = []
    random_index = {run["effective_capacity"]: r for r, run in enumerate(runs) if run["method"] == "random_router"}
    for r, run in enumerate(runs):
        if run["method"] != "mone":
            continue
        mine, rand = precision(r), precision(random_index[run["effective_capacity"]])
        rows.append(dict(effective_capacity=run["effective_capacity"],
                         largest_expert_tokens_per_image=round(on_largest[r].item() / images, 2),
                         mone=mine, random_router=rand, object_area_share=round(share, 5),
                         gap=None if mine is None else round(mine - rand, 5),
                         object_recall=round(object_on_largest[r].item() / object_patches, 5)
                         if object_patches else None))
    return rows


def headline(curves: dict) -> dict:
    """The numbers for the card: top-1 and GMACs at a few budgets, the baselines, and the budget that matches dense."""
    def pick(result: dict, method: str) -> dict:
        return {f"e_c={p['effective_capacity']:g}": p["top1"] for p in result["points"] if p["method"] == method
                and (method.startswith("matvit") or p["effective_capacity"] in HEADLINE_CAPACITIES)}

    points = curves["points"]
    out = dict(split=curves["split"], images=curves["images"], curves=curves["file"])
    if any(p["method"] == "mone" for p in points):       # a dense card alone has only its one point
        out.update(top1=pick(curves, "mone"), random_router_top1=pick(curves, "random_router"),
                   gmacs={f"e_c={p['effective_capacity']:g}": round(p["macs"] / 1e9, 5) for p in points
                          if p["method"] == "mone" and p["effective_capacity"] in HEADLINE_CAPACITIES})
    for method in ("matvit", "matvit_baseline"):
        if any(p["method"] == method for p in points):
            out[f"{method}_top1"] = pick(curves, method)
    dense = [p for p in points if p["method"] == "dense"]
    if dense:
        out.update(dense_top1=dense[0]["top1"], dense_gmacs=round(dense[0]["macs"] / 1e9, 5))
        match = [p for p in points if p["method"] == "mone" and p["top1"] >= dense[0]["top1"]]
        if match:
            best = min(match, key=lambda p: p["macs"])
            out.update(smallest_e_c_matching_dense=best["effective_capacity"],
                       compute_saving_at_dense_accuracy=round(dense[0]["macs"] / best["macs"], 3))
    precision = {row["effective_capacity"]: row for row in curves.get("object_precision", [])}
    if precision:
        out["object_precision"] = {f"e_c={c:g}": {k: precision[c][k] for k in ("mone", "random_router",
                                                                                 "object_area_share")}
                                   for c in HEADLINE_CAPACITIES if c in precision}
    for split, result in curves["splits"].items():
        out[split] = dict(images=result["images"])
        if "top1" in out:
            out[split].update(top1=pick(result, "mone"), random_router_top1=pick(result, "random_router"))
        out[split].update({"dense_top1": p["top1"] for p in result["points"] if p["method"] == "dense"})
    return out


def plot(curves: dict, path: Path) -> None:
    """Accuracy vs GMACs, one panel per split (one line per method, dense as a star), plus object precision."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [curves] + list(curves["splits"].values())
    panels = len(results) + ("object_precision" in curves)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    style = {"mone": dict(marker="o", ms=3), "random_router": dict(marker="x", ms=4, ls="--"),
             "matvit": dict(marker="s", ms=5, ls=":"), "matvit_baseline": dict(marker="D", ms=4, ls="-.")}
    for ax, result in zip(axes[0], results):
        for method, kw in style.items():
            pts = sorted((p for p in result["points"] if p["method"] == method), key=lambda p: p["macs"])
            if pts:
                ax.plot([p["macs"] / 1e9 for p in pts], [100 * p["top1"] for p in pts], label=method, **kw)
        for p in (p for p in result["points"] if p["method"] == "dense"):
            ax.plot(p["macs"] / 1e9, 100 * p["top1"], marker="*", ms=16, ls="none", color="k", label="dense")
        ax.margins(0.08)                                              # room for the dense star at the edges
        ax.set(xlabel="GMACs (multiply-adds) per image", ylabel="top-1 accuracy (%)",
               title=f"{result['split']} ({result['images']} images)")
        ax.grid(alpha=0.3)
        ax.legend()
    if "object_precision" in curves:
        ax, rows = axes[0][-1], curves["object_precision"]
        for key, kw in (("mone", style["mone"]), ("random_router", style["random_router"])):
            kept = [r for r in rows if r[key] is not None]
            ax.plot([r["effective_capacity"] for r in kept], [100 * r[key] for r in kept], label=key, **kw)
        ax.axhline(100 * rows[0]["object_area_share"], color="gray", ls="-.", label="object-area share")
        ax.set(xlabel="effective capacity e_c", ylabel="object patches among largest-expert tokens (%)",
               title=f"router object precision — {curves['split']}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(curves["model"])                                     # long names would overflow a panel title
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_same_data(card_path: Path, card: dict, other_path: str | Path, other: dict) -> None:
    """A baseline must see the same images, prepared the same way, as the card's model."""
    for section, key in (("data", "dataset"), ("data", "seed"), ("preprocess", "image_size"),
                         ("preprocess", "in_chans"), ("preprocess", "mean"), ("preprocess", "std")):
        ours, theirs = card[section].get(key), other[section].get(key)
        if ours != theirs:
            raise ValueError(f"{other_path} does not match {card_path}: {section}.{key} is {theirs!r} there, "
                             f"{ours!r} here")
    if card["data"]["dataset"] == "scenes" and mone.scenes_version(card) != mone.scenes_version(other):
        raise ValueError(f"{other_path} does not match {card_path}: Scenes data version "
                         f"{mone.scenes_version(other)} there, {mone.scenes_version(card)} here")


def evaluate(card_path: str | Path, dense_card: str | Path | None = None, splits: Sequence[str] | None = None,
             limit: int | None = None, batch_size: int = 512, device: str = "auto", workers: int = 4,
             out_dir: str | Path = "assets/curves", scenes_pack: str | None = None, command: str = "",
             matvit_card: str | Path | None = None) -> dict:
    """Score the card's model (and the dense and MatViT baselines), write the curve JSON and PNG, fill the card's
    `evaluation`."""
    t0 = time.time()
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    card_path = Path(card_path)
    model = mone.load_model(card_path, device)
    card = model.card
    dense = mone.load_model(dense_card, device) if dense_card else None
    matvit = mone.load_model(matvit_card, device) if matvit_card else None
    if matvit is not None and not mone.is_matvit(matvit.card):
        raise ValueError(f"{matvit_card} is not a MatViT: train it with `python -m mone.train --nested-widths`")
    for path, baseline in ((dense_card, dense), (matvit_card, matvit)):
        if baseline is not None:
            check_same_data(card_path, card, path, baseline.card)
    splits = list(splits or dataset_info(card["data"]["dataset"])["eval_splits"])
    results = [score_split(model, dense, matvit, card, s, limit, batch_size, device, workers, scenes_pack)
               for s in splits]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = card_path.stem
    write_outcomes(out_dir / f"{name}.outcomes.safetensors",
                   {key: hit for r in results for key, hit in r.pop("outcomes").items()})
    curves = dict(model=name, card=str(card_path), architecture=card["model"],
                  dense_card=str(dense_card) if dense_card else None,
                  matvit_card=str(matvit_card) if matvit_card else None, unit="MACs per image (multiply-adds)",
                  grid=list(GRID), random_seed=RANDOM_SEED, object_patch_threshold=OBJECT_PATCH, **results[0],
                  splits={r["split"]: r for r in results[1:]},
                  file=os.path.relpath(out_dir / f"{name}.json", card_path.parent),   # as the card refers to it
                  outcomes=f"{name}.outcomes.safetensors",                           # beside the curve file
                  evaluated=now(), seconds=round(time.time() - t0, 1), device=str(device), command=command,
                  commit=git_commit())
    (out_dir / f"{name}.json").write_text(json.dumps(curves, indent=1) + "\n")
    plot(curves, out_dir / f"{name}.png")
    card["evaluation"] = dict(headline(curves), evaluated=curves["evaluated"], command=command,
                              limit=limit, dense_card=curves["dense_card"], matvit_card=curves["matvit_card"])
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {out_dir / name}.json, {out_dir / name}.png and the evaluation of {card_path} "
          f"({curves['seconds']} s)", file=sys.stderr)
    return curves


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mone.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--card", required=True, help="the model card (MoNE or dense) to evaluate")
    parser.add_argument("--dense-card", default=None, help="the dense baseline's card (adds the 'dense' point)")
    parser.add_argument("--matvit-card", default=None,
                        help="a MatViT trained with --nested-widths (adds its widths as 'matvit_baseline' points)")
    parser.add_argument("--split", nargs="+", default=None, help="default: test (+ test_instances on Scenes)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of each split")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, default=4, help="Scenes generator processes")
    parser.add_argument("--out-dir", default="assets/curves")
    parser.add_argument("--scenes-pack", default=None, help="Scenes source pack (default: $MONE_SCENES_PACK/cache)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    evaluate(args.card, args.dense_card, args.split, args.limit, args.batch_size, args.device, args.workers,
             args.out_dir, args.scenes_pack, "python -m mone.evaluate " + " ".join(shlex.quote(a) for a in argv),
             args.matvit_card)
    print(json.dumps(json.loads(Path(args.card).read_text())["evaluation"], indent=1))


if __name__ == "__main__":
    main()
