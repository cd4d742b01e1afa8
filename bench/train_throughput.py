"""CPU training throughput of each shipped model, and what its recipe would cost on this machine.

    python bench/train_throughput.py [--steps 12] [--batch-size 128] [--threads 2] [--json assets/bench/train_cpu.json]
    python bench/train_throughput.py --cards dense_vit_fmnist_cpu.json   # re-measure these, keep the other rows

For every card in assets/: the model's training step (forward, cross-entropy, backward, AdamW; MoNE draws its budget
per step as in training) timed on random images, in images per second, and the hours that the card's
`images_seen` would take at that rate (the issue's target: at most 3 hours on this 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                                   # run from a checkout without installing
import mone  # noqa: E402,F401  (registers the models)


def images_per_second(card: dict, steps: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model(card["model"], **card.get("model_kwargs", {})).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pre = card["preprocess"]
    x = torch.randn(batch_size, pre["in_chans"], pre["image_size"], pre["image_size"])
    y = torch.randint(0, len(pre["classes"]), (batch_size,))
    times = []
    for i in range(steps + 1):                                   # the first step warms up and is not counted
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=str(ROOT / "assets" / "bench" / "train_cpu.json"))
    parser.add_argument("--cards", nargs="+", help="card file names to measure; the other rows of --json are kept "
                        "(they must have been measured with the same --threads and --batch-size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if args.cards:
        old = json.loads(Path(args.json).read_text())
        if (old["threads"], old["batch_size"]) != (args.threads, args.batch_size):
            sys.exit(f"{args.json} was measured with {old['threads']} threads, batch {old['batch_size']}: "
                     "re-measure every card instead of mixing settings")
        rows = [row for row in old["rows"] if row["card"] not in args.cards]
    for card_path in sorted((ROOT / "assets").glob("*.json")):
        card = json.loads(card_path.read_text())
        if "model" not in card or "preprocess" not in card or (args.cards and card_path.name not in args.cards):
            continue
        rate = images_per_second(card, args.steps, args.batch_size)
        seen = card["data"]["sizes"]["images_seen"]
        rows.append(dict(card=card_path.name, model=card["model"], images_per_second=rate, images_seen=seen,
                         estimated_hours=seen / rate / 3600, trained_on=card["hardware"].get("gpu") or "cpu",
                         train_seconds=card["train_seconds"]))
        print(f"{card_path.name:32s} {rate:8.1f} img/s  {seen:>9d} images -> {seen / rate / 3600:5.2f} h on this CPU"
              f" (trained in {card['train_seconds']:.0f} s on {rows[-1]['trained_on']})")
    rows.sort(key=lambda row: row["card"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(dict(machine=platform.processor() or platform.machine(),
                                               threads=args.threads, batch_size=args.batch_size, steps=args.steps,
                                               torch=torch.__version__, rows=rows), indent=1))


if __name__ == "__main__":
    main()
