"""Do the test backgrounds that are not wholly unseen inflate the Scenes test numbers? Accuracy per background.

    python bench/background_split.py --card assets/mone_vit_scenes_isoflops.json \
        --dense-card assets/dense_vit_scenes.json --json assets/bench/background_split/mone_vit_scenes_isoflops.json

The `test` split is meant to hold backgrounds never seen in training, but in data version 1 two of its eleven
sources overlap training (`mone.data.scenes.TEST_BACKGROUND_OVERLAPS`): `opencv:box` is the object inside the training
photo `opencv:box_in_scene`, and `opencv:home` has birds, a class, in its sky. Data version 2 (`--scenes-version 2`)
is the real fix, for models trained on it; for version-1 models this measures how much they move the numbers the
targets use, on the same test images as the curve file (the first `images` of the split): every image's background
source is read from the generator's draws, and the MoNE model (learned router at e_c 0.2 / 0.3 / 0.5, random router
at 0.2) and the dense baseline are scored per source, then on all images, on the clean sources only and on the
overlapping ones only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout without installing
import mone  # noqa: E402
from mone.checkpoint import read_card  # noqa: E402
from mone.data import ScenesDataset  # noqa: E402
from mone.data.scenes import TEST_BACKGROUND_OVERLAPS  # noqa: E402
from mone.evaluate import RANDOM_SEED  # noqa: E402
from mone.train import card_batches, gather, standardize, to_unit  # noqa: E402

LEARNED_CAPACITIES = (0.2, 0.3, 0.5)     # the budgets the targets read
RANDOM_CAPACITY = 0.2                   # "learned router >= 3 pt above random at e_c 0.2"


@torch.inference_mode()
def predictions(model, dense, x: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """method -> predicted class of every image (n,)."""
    generator = torch.Generator().manual_seed(RANDOM_SEED)
    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        logits = {"dense": dense(xb)}
        for c in LEARNED_CAPACITIES:
            logits[f"mone@{c:g}"] = model.forward_routing(xb, c).logits
        logits[f"random@{RANDOM_CAPACITY:g}"] = model.forward_routing(xb, RANDOM_CAPACITY, allocator="random",
                                                                       generator=generator).logits
        for method, scores in logits.items():
            out.setdefault(method, []).append(scores.argmax(-1))
    return {method: torch.cat(parts) for method, parts in out.items()}


def summarise(predicted: dict[str, torch.Tensor], labels: torch.Tensor, keep: torch.Tensor) -> dict:
    """Images and top-1 of every method on the images where `keep` is true, and the dense model's most frequent
    wrong answer there (a background that looks like a class shows up as one)."""
    n = int(keep.sum())
    top1 = {m: round((p[keep] == labels[keep]).float().mean().item(), 5) if n else None for m, p in predicted.items()}
    wrong = predicted["dense"][keep & (predicted["dense"] != labels)]
    common = Counter(wrong.tolist()).most_common(1)
    dense_wrong = dict(as_class=ScenesDataset.classes[common[0][0]], share_of_images=round(common[0][1] / n, 5)) \
        if common else None
    return dict(images=n, top1=top1, dense_most_frequent_wrong=dense_wrong)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--card", required=True, help="MoNE card (Scenes)")
    ap.add_argument("--dense-card", required=True, help="its dense baseline")
    ap.add_argument("--curve", help="curve file whose image count to use (default assets/curves/<card name>.json)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pack", help="Scenes source pack (default: the cache)")
    ap.add_argument("--json", required=True, help="where to write the result")
    args = ap.parse_args(argv)
    t0 = time.time()
    card = read_card(args.card)
    if card["data"]["dataset"] != "scenes":
        raise SystemExit(f"{args.card} is not a Scenes model: backgrounds exist only there")
    if mone.scenes_version(card) != 1:
        raise SystemExit(f"{args.card} was trained on Scenes data version {mone.scenes_version(card)}, whose test "
                         f"backgrounds do not overlap training: there is nothing to split")
    curve_path = Path(args.curve or Path(args.card).parent / "curves" / Path(args.card).name)
    curve = json.loads(curve_path.read_text())
    n = curve["images"] if curve["split"] == args.split else curve["splits"][args.split]["images"]
    model, dense = mone.load_model(args.card), mone.load_model(args.dense_card)
    data, pre = card["data"], card["preprocess"]
    images, labels, _ = gather(card_batches(card, args.split, n, args.workers, args.pack))
    x = standardize(to_unit(images, pre["image_size"]), torch.tensor(pre["mean"]), torch.tensor(pre["std"]))
    predicted = predictions(model, dense, x, args.batch_size)

    ds = ScenesDataset(args.split, n, image_size=pre["image_size"], seed=data.get("seed", 0), pack_path=args.pack)
    sources = [ds.source_of(i) for i in range(n)]
    overlapping = torch.tensor([s in TEST_BACKGROUND_OVERLAPS for s in sources])
    per_source = {name: summarise(predicted, labels, torch.tensor([s == name for s in sources]))
                  for name in sorted(Counter(sources))}
    # the same images as the curve file: its learned-router points come out identical when it was scored on this
    # device; from a GPU-scored curve a few close calls flip (report.background_table shows by how many images)
    curve_points = curve["points"] if curve["split"] == args.split else curve["splits"][args.split]["points"]
    curve_mone = {p["effective_capacity"]: p["top1"] for p in curve_points if p["method"] == "mone"}
    all_images = summarise(predicted, labels, torch.ones(n, dtype=torch.bool))
    matches_curve = all(abs(all_images["top1"][f"mone@{c:g}"] - curve_mone[c]) < 0.5 / n for c in LEARNED_CAPACITIES)
    result = dict(card=args.card, dense_card=args.dense_card, split=args.split, images=n,
                  overlapping_sources=TEST_BACKGROUND_OVERLAPS, matches_curve_file=matches_curve,
                  all=all_images, clean=summarise(predicted, labels, ~overlapping),
                  overlapping=summarise(predicted, labels, overlapping), per_source=per_source,
                  command="python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
                  seconds=round(time.time() - t0, 1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("all", "clean", "overlapping"):
        print(f"{name:12s} {result[name]['images']:6d} " +
              " ".join(f"{m}={v:.4f}" for m, v in result[name]["top1"].items()))
    print(f"learned-router points match {curve_path}: {matches_curve}; {result['seconds']} s -> {args.json}")


if __name__ == "__main__":
    main()
