"""Load test: concurrent gradio_client API clients against the launched MoNE Explorer on 127.0.0.1.

    python bench/load_test.py [--clients 8] [--seconds 60] [--url http://127.0.0.1:7860] [--card ...] [--json PATH]

Without --url it launches `python app/app.py` itself (on a free port, with $MONE_ASSETS pointing at the card's
folder) and stops it afterwards. Each client loops over /analyze_image with a random example image, allocator and
budget (the image is uploaded on every call, as a real API client does); every 10th call of client 0 is an
/analyze_video call on a short clip. Reports failures, p50/p95/max latency and throughput. Exit status 1 if any
request failed.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_latency import REPO, default_image, free_port, measured_on, pct, resolve_card, write_result  # noqa: E402


def wait_up(url: str, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            urllib.request.urlopen(url, timeout=2).read(100)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def short_clip() -> Path:
    import numpy as np

    from mone.video import encode_h264
    frames = [np.full((64, 96, 3), 10 * i, np.uint8) for i in range(20)]
    return encode_h264(frames, Path(tempfile.mkdtemp()) / "load_clip.mp4", 10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="an already running app (default: launch one)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--card", default=None)
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--json", help="also write the numbers here (e.g. assets/bench/load_test_cpu.json)")
    args = ap.parse_args(argv)
    measured = measured_on()
    # the app runs in its own process with its own threads: record those, not this client process's
    measured["torch_threads"] = None if args.url else int(os.environ.get("MONE_TORCH_THREADS", "1"))

    from gradio_client import Client, handle_file

    import mone
    server, url = None, args.url
    card_path, how = resolve_card(args.card)
    model = card_path.stem
    if url is None:
        port = free_port()
        env = dict(os.environ, MONE_ASSETS=str(card_path.parent), MONE_DEFAULT_MODEL=model,
                   GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        log = open(Path(tempfile.gettempdir()) / "mone_load_test_server.log", "w")
        server = subprocess.Popen([sys.executable, str(REPO / "app" / "app.py")], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        wait_up(url)
    print(f"app {url}  model {model} ({how})  {args.clients} clients x {args.seconds:.0f} s")
    images = [p for p in sorted((REPO / "assets" / "examples").glob("*")) if p.suffix in (".jpg", ".png")]
    images = images or [default_image()]
    clip = None if args.no_video else short_clip()
    allocators = list(mone.ALLOCATORS)
    results: list[tuple[str, float, str | None]] = []
    server_ms: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds

    def worker(k: int) -> None:
        rng = random.Random(k)
        client = Client(url, verbose=False, download_files=False)
        n = 0
        while time.monotonic() < stop:
            n += 1
            if clip is not None and k == 0 and n % 10 == 0:
                kind = "video"
                call = lambda: client.predict(handle_file(str(clip)), model, "epr", 0.5, 0.5, 8,  # noqa: E731
                                              api_name="/analyze_video")
            else:
                kind = "image"
                img = rng.choice(images)
                budget = round(rng.choice([0.15 + 0.05 * i for i in range(18)]), 2)
                alloc = rng.choice(allocators)
                call = lambda: client.predict(handle_file(str(img)), model, alloc, budget, 0.5,  # noqa: E731
                                              "expert assignment", api_name="/analyze_image")
            t = time.perf_counter()
            error = None
            try:
                out = call()
                if kind == "image":
                    with lock:
                        server_ms.append(out[5]["server_ms"])
            except Exception as err:  # noqa: BLE001  (any failure counts)
                error = f"{type(err).__name__}: {str(err)[:200]}"
            with lock:
                results.append((kind, time.perf_counter() - t, error))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    if server is not None:
        server.terminate()
        server.wait(timeout=30)

    failures = [r for r in results if r[2]]
    summary = dict(card=model, clients=args.clients, seconds=args.seconds, wall_s=round(wall, 1),
                   requests=len(results), failed=len(failures), **measured)
    print(f"requests {len(results)} in {wall:.1f} s ({len(results) / wall:.1f}/s), failed {len(failures)}")
    for kind in ("image", "video"):
        ms = [r[1] * 1e3 for r in results if r[0] == kind and not r[2]]
        if ms:
            summary[kind] = dict(n=len(ms), p50_ms=statistics.median(ms), p95_ms=pct(ms, 95), max_ms=max(ms))
            print(f"  {kind:<6} n={len(ms):<5} p50 {statistics.median(ms):7.0f} ms   p95 {pct(ms, 95):7.0f} ms   "
                  f"max {max(ms):7.0f} ms")
    if server_ms:
        summary["inside_analyze_image"] = dict(p50_ms=statistics.median(server_ms), p95_ms=pct(server_ms, 95))
        print(f"  inside analyze_image (details.server_ms): p50 {statistics.median(server_ms):.0f} ms, "
              f"p95 {pct(server_ms, 95):.0f} ms; the rest is queueing behind the one model slot, uploads, "
              "Gradio's processing and the clients themselves (same 2 cores)")
    for _, _, err in failures[:5]:
        print("  failure:", err)
    write_result(args.json, summary, "load_test.py", argv)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
