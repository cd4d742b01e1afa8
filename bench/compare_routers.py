"""The six routers of Liu et al. at equal compute on Fashion-MNIST, and the allocators and splits on a MoNE model.

    python bench/compare_routers.py --device cuda --epochs 10                       # V-MoE part, all six routers
    python bench/compare_routers.py --device cuda --skip-vmoe --mone-card CARD.json  # MoNE part only
    python bench/compare_routers.py --epochs 1 --limit 512                           # smoke run on CPU

Runs split over several commands with --routers merge into one JSON when config and device match.

V-MoE part: one `vmoe_vit_*` model per router, the same experts, capacity factor, epochs, batch order and seed; test
accuracy, train and eval throughput (img/s) and the dropped-token rate (train: last epoch; eval: test set), written
to <out>/vmoe_fmnist.json. MoNE part (--mone-card): test accuracy and achieved budget of a trained MoNE model at each
e_c under every allocator of `mone.allocators.ALLOCATORS` and every capacity split of `capacity_split`, written to
<out>/mone_allocators_<card name>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout without installing
import mone  # noqa: E402
import mone.vmoe  # noqa: E402,F401  (registers vmoe_vit_* with timm)
from mone.allocators import ALLOCATORS, SPLIT_METHODS, capacity_split  # noqa: E402
from mone.data import dataset_stats, get_dataset  # noqa: E402
from mone.routers import ROUTERS  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_split(name: str, split: str, limit: int | None, image_size: int | None = None) -> tuple[torch.Tensor, ...]:
    """All images (N, C, H, W) uint8 and labels (N,) of a split, optionally the first `limit`."""
    ds = get_dataset(name, split) if image_size is None else get_dataset(name, split, image_size=image_size)
    if hasattr(ds, "images"):                                   # in-memory datasets (Fashion-MNIST)
        images, labels = ds.images, ds.targets
    else:
        items = [ds[i] for i in range(len(ds) if limit is None else min(limit, len(ds)))]
        images = torch.stack([torch.as_tensor(item[0]) for item in items])
        labels = torch.tensor([int(item[1]) for item in items])
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


class Preprocess:
    """uint8 (B, C, H, W) -> normalised float at the model's size and channel count, on the device."""

    def __init__(self, mean, std, image_size: int, in_chans: int, device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.image_size, self.in_chans = image_size, in_chans

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255 - self.mean) / self.std
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return x.expand(-1, self.in_chans, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def evaluate(model, images, labels, prep: Preprocess, batch_size: int, device: torch.device, **forward) -> dict:
    """Accuracy, img/s (after one warm-up batch) and, for V-MoE, the mean dropped-token rate over the test set."""
    model.eval()
    model(prep(images[:batch_size].to(device)), **forward)     # warm-up (kernels, allocator caches)
    correct, dropped, seconds = 0, [], 0.0
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size].to(device), labels[start:start + batch_size].to(device)
        sync(device)
        t0 = time.perf_counter()
        logits = model(prep(x), **forward)
        sync(device)
        seconds += time.perf_counter() - t0
        correct += int((logits.argmax(-1) == y).sum())
        if hasattr(model, "routing_metrics"):
            dropped.append(model.routing_metrics()["dropped_tokens"])
    result = {"accuracy": correct / len(images), "eval_img_per_s": len(images) / seconds}
    if dropped:
        result["eval_dropped_tokens"] = sum(dropped) / len(dropped)
    return result


def train_vmoe(router: str, args, data, device: torch.device) -> dict:
    (train_x, train_y), (test_x, test_y) = data
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, num_classes=10, router=router, num_experts=args.num_experts,
                              capacity_factor=args.capacity_factor).to(device)
    cfg = mone.vmoe.CONFIGS[args.model.removeprefix("vmoe_vit_")]
    prep = Preprocess(*dataset_stats("fashion_mnist"), cfg["img_size"], cfg["in_chans"], device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(train_x) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.1)
    order_gen = torch.Generator().manual_seed(args.seed)      # the same batches, in the same order, for every router
    seconds, seen = 0.0, 0
    for epoch in range(args.epochs):
        model.train()
        dropped = []
        for idx in torch.randperm(len(train_x), generator=order_gen).to(device).split(args.batch_size):
            x, y = train_x[idx], train_y[idx]
            sync(device)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(prep(x)), y) + model.aux_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sync(device)
            if epoch > 0 or args.epochs == 1:                  # epoch 0 warms up kernels and caches
                seconds += time.perf_counter() - t0
                seen += len(idx)
            dropped.append(model.routing_metrics()["dropped_tokens"])
        print(f"  {router} epoch {epoch + 1}/{args.epochs}: loss {float(loss):.3f}", flush=True)
    result = evaluate(model, test_x, test_y, prep, args.eval_batch_size, device)
    result.update(train_img_per_s=seen / seconds, train_dropped_tokens=sum(dropped) / len(dropped),
                  capacity_factor=model.routing_metrics()["capacity_factor"],
                  parameters=sum(p.numel() for p in model.parameters()))
    return result


def compare_vmoe(args, device: torch.device) -> dict:
    # Whole splits live on the device (47 MB of uint8), so the timings measure the model, not host-to-device copies.
    data = tuple(tuple(t.to(device) for t in load_split("fashion_mnist", split, args.limit))
                 for split in ("train", "test"))
    results = {}
    for router in args.routers:
        results[router] = train_vmoe(router, args, data, device)
        print(f"{router:24s} " + "  ".join(f"{k} {v:.4g}" for k, v in results[router].items()), flush=True)
    return {"config": {k: vars(args)[k] for k in ("model", "num_experts", "capacity_factor", "epochs", "batch_size",
                                                  "lr", "seed", "limit")} | {"k": 1, "batch_priority": True},
            "results": results}


def compare_allocators(args, device: torch.device) -> dict:
    model = mone.load_model(args.mone_card, device=device)
    pre = model.preprocess
    size, chans = int(pre.get("image_size", 28)), int(pre.get("in_chans", 1))
    mean, std = pre.get("mean"), pre.get("std")
    if mean is None or std is None:
        mean, std = dataset_stats(args.mone_dataset)
    native = args.mone_dataset == "fashion_mnist"
    images, labels = load_split(args.mone_dataset, "test", args.limit, None if native else size)
    prep = Preprocess(mean, std, size, chans, device)
    results = []
    for method in SPLIT_METHODS:
        for e_c in args.capacities:
            capacities = capacity_split(e_c, model.num_experts, method)
            for name in ALLOCATORS:
                gen = torch.Generator().manual_seed(args.seed)    # CPU: the random allocator draws on the CPU
                row = evaluate(model, images, labels, prep, args.eval_batch_size, device,
                               capacities=capacities, allocator=name, generator=gen)
                k = mone.tokens_per_expert(capacities, model.patch_embed.num_patches)
                row.update(split=method, effective_capacity=e_c, allocator=name,
                           achieved_capacity=mone.achieved_capacity(k), capacities=capacities.tolist())
                results.append(row)
                print(f"{method:13s} e_c={e_c:.2f} {name:24s} acc {row['accuracy']:.4f} "
                      f"({row['eval_img_per_s']:.0f} img/s)", flush=True)
    return {"card": str(args.mone_card), "dataset": args.mone_dataset, "limit": args.limit, "results": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="vmoe_vit_tiny_patch4_28", help="a registered vmoe_vit_* model (28 px, 1 ch)")
    p.add_argument("--routers", default=",".join(ROUTERS), help="comma-separated subset of mone.routers.ROUTERS")
    p.add_argument("--num-experts", type=int, default=4)
    p.add_argument("--capacity-factor", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N train and test images (smoke runs)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--skip-vmoe", action="store_true", help="only run the MoNE allocator comparison")
    p.add_argument("--mone-card", type=Path, default=None, help="card of a trained MoNE model (mone.load_model)")
    p.add_argument("--mone-dataset", default="fashion_mnist", help="test set for the MoNE card (mone.data name)")
    p.add_argument("--capacities", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets" / "routers")
    args = p.parse_args()
    args.routers = args.routers.split(",")
    unknown = set(args.routers) - set(ROUTERS)
    if unknown:
        p.error(f"unknown routers {sorted(unknown)}; choose from {list(ROUTERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    env = {"device": name, "torch": torch.__version__, "timm": timm.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_vmoe:
        path = args.out / "vmoe_fmnist.json"
        report = {"env": env, **compare_vmoe(args, device)}
        old = json.loads(path.read_text()) if path.is_file() else {}
        if old.get("config") == report["config"] and old.get("env") == env:   # a run split by --routers: merge
            report["results"] = {**old["results"], **report["results"]}
        path.write_text(json.dumps(report, indent=1))
        print(f"wrote {path}")
    if args.mone_card is not None:
        report = {"env": env, **compare_allocators(args, device)}
        path = args.out / f"mone_allocators_{args.mone_card.stem}.json"
        path.write_text(json.dumps(report, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
