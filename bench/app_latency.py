"""Slider latency of the MoNE Explorer: what one budget move costs on the server.

    python bench/app_latency.py [--card assets/<name>.json] [--image PATH] [--moves 72] [--allocator epr] [--json PATH]

Measures, on one machine, in one run:
  upload      the first analysis of an image (decode, encode once, the batched 18-budget grid, latency timings)
  move (fn)   a slider move through the event function (`analyze_image(..., measure=False)`): render only
  move (srv)  the same move through Gradio's server-side processing (`Blocks.process_api`: the event function +
              postprocessing, i.e. copying the PNG into Gradio's cache and serialising every output)
  api call    a full /analyze_image round trip through gradio_client against the launched app (includes uploading
              the image every call, the queue and the HTTP/SSE transport)
Budget moves sweep 0.15 -> 1.00 -> 0.15 in 0.05 steps, as a mouse drag or arrow keys would.

Without a trained card in assets/ it times a randomly initialised mone_vit_mini_patch8_96 (the Scenes
configuration, 12x12 patches): the cost of a move does not depend on the weights.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CLASSES = ["mammals", "birds", "fruit", "vehicles", "houses", "flowers", "insects", "fish"]


def random_card(directory: Path, model: str = "mone_vit_mini_patch8_96", size: int = 96) -> Path:
    """A randomly initialised MoNE card (weights do not change timings); returns the card path."""
    import timm
    import torch

    import mone

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m = timm.create_model(model, num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        m.router.weight.normal_(0, 0.5)
    mone.save_weights(m, directory / "bench_random.safetensors")
    card = dict(model=model, model_kwargs=dict(num_classes=len(CLASSES)), weights="bench_random.safetensors",
                preprocess=dict(image_size=size, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3, classes=CLASSES))
    path = directory / "bench_random.json"
    path.write_text(json.dumps(card))
    return path


def resolve_card(card: str | None) -> tuple[Path, str]:
    """(card path, how it was chosen): --card, else the app's default card in assets/, else a random one."""
    if card:
        return Path(card).resolve(), "--card"
    from app import inference as inf
    name = inf.default_model()
    if name:
        return inf.registry()[name].card_path, f"default card of {inf.assets_dir()}"
    path = random_card(Path(tempfile.mkdtemp(prefix="mone_bench_")))
    return path, ("no card in assets/: a randomly initialised mone_vit_mini_patch8_96 "
                  "(timing does not depend on weights)")


def use_card(card_path: Path, how: str):
    """Point the app at the card's folder, load its model, say which card; return (inference module, name, model)."""
    os.environ["MONE_ASSETS"] = str(card_path.parent)
    from app import inference as inf
    inf.registry(reload=True)
    model = inf.get_model(inf.get_entry(card_path.stem))
    print(f"card   {card_path} ({how})")
    return inf, card_path.stem, model


def default_image() -> Path:
    for name in ("chelsea.jpg", "coffee.jpg", "astronaut.jpg"):
        p = REPO / "assets" / "examples" / name
        if p.is_file():
            return p
    import numpy as np
    from PIL import Image
    path = Path(tempfile.mkdtemp()) / "synthetic.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
    return path


def sweep(moves: int) -> list[float]:
    grid = [round(0.15 + 0.05 * i, 2) for i in range(18)]
    cycle = grid + grid[-2:0:-1]
    return [cycle[i % len(cycle)] for i in range(1, moves + 1)]


def measured_on() -> dict:
    """Where and under what load a benchmark ran; the 1-minute load average before it says whether it was quiet."""
    import torch
    return dict(date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=platform.machine(),
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                load_average_1min=round(os.getloadavg()[0], 2))


def write_result(path: str | None, result: dict, script: str, argv: list[str] | None) -> None:
    """Save a benchmark's numbers as JSON with its exact command: the README's app tables are generated from it."""
    if not path:
        return
    command = " ".join(["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(dict(result, command=command), indent=1) + "\n")
    print(f"wrote {path}")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def report(name: str, seconds: list[float]) -> dict:
    ms = [s * 1e3 for s in seconds]
    row = dict(n=len(ms), median=statistics.median(ms), p95=pct(ms, 95), max=max(ms))
    print(f"  {name:<12} n={row['n']:<4} median {row['median']:7.1f} ms   p95 {row['p95']:7.1f} ms   "
          f"max {row['max']:7.1f} ms")
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", default=None)
    ap.add_argument("--image", default=None)
    ap.add_argument("--allocator", default="epr")
    ap.add_argument("--moves", type=int, default=72)
    ap.add_argument("--api-calls", type=int, default=20, help="gradio_client round trips (0: skip)")
    ap.add_argument("--json", help="also write the numbers here (e.g. assets/bench/app_latency_cpu.json)")
    args = ap.parse_args(argv)

    inf, name, model = use_card(*resolve_card(args.card))
    measured = measured_on()                        # after the app module has set its torch threads
    image = Path(args.image) if args.image else default_image()
    import torch
    print(f"model  {model.card['model']}: {tuple(model.patch_embed.grid_size)} patches, {inf.DEVICE}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    print(f"image  {image}  allocator {args.allocator}  moves {args.moves}")
    results = dict(card=name, model=model.card["model"], image=image.name, allocator=args.allocator,
                   moves=args.moves, **measured)

    t = time.perf_counter()
    first = inf.analyze_image(str(image), name, args.allocator, 0.5, 0.5, inf.VIEW_EXPERTS, precompute=True)
    results["upload_ms"] = (time.perf_counter() - t) * 1e3
    print(f"  upload       {results['upload_ms']:7.1f} ms (decode + encode once + batched 18-budget grid + timings)")

    budgets = sweep(args.moves)
    times = []
    for b in budgets:
        t = time.perf_counter()
        inf.analyze_image(str(image), name, args.allocator, b, 0.5, inf.VIEW_EXPERTS, measure=False, precompute=True)
        times.append(time.perf_counter() - t)
    results["move_fn"] = report("move (fn)", times)

    # the same moves through Gradio's server-side processing of the slider event
    from gradio.state_holder import SessionState
    from app import app as app_module
    demo = app_module.build_demo()
    fn_id = next(d["id"] for d in demo.get_config_file()["dependencies"] if d["api_name"] == "on_slide")
    cache = Path(demo.GRADIO_CACHE) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    cached = cache / image.name
    shutil.copy(image, cached)
    payload = {"path": str(cached), "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}
    state = SessionState(demo)

    async def run_moves():
        out = []
        for b in budgets:
            t = time.perf_counter()
            await demo.process_api(fn_id, [payload, name, args.allocator, b, 0.5, inf.VIEW_EXPERTS], state=state)
            out.append(time.perf_counter() - t)
        return out

    asyncio.run(run_moves())                          # warm the Gradio path once (first postprocess imports)
    results["move_server"] = report("move (srv)", asyncio.run(run_moves()))

    if args.api_calls:
        from gradio_client import Client, handle_file
        _, url, _ = app_module.launch(demo, server_port=free_port(), prevent_thread_lock=True, quiet=True)
        client = Client(url, verbose=False)
        client.predict(handle_file(str(image)), name, args.allocator, 0.5, 0.5, inf.VIEW_EXPERTS,
                       api_name="/analyze_image")
        times = []
        for b in budgets[:args.api_calls]:
            t = time.perf_counter()
            client.predict(handle_file(str(image)), name, args.allocator, b, 0.5, inf.VIEW_EXPERTS,
                           api_name="/analyze_image")
            times.append(time.perf_counter() - t)
        results["api_call"] = report("api call", times)
        demo.close()
    verdict = "OK" if results["move_server"]["median"] <= 50 else "OVER"
    print(f"slider move, server side: median {results['move_server']['median']:.1f} ms "
          f"(target <= 50 ms: {verdict}); first analysis of the upload {results['upload_ms']:.0f} ms")
    print(f"readout of the upload: {first.details['tokens_per_expert']} at e_c 0.5, "
          f"{first.details['macs'] / 1e9:.3f} GMACs ({100 * first.details['macs_ratio']:.0f} % of dense)")
    write_result(args.json, results, "app_latency.py", argv)
    return results


if __name__ == "__main__":
    main()
