"""Video throughput of the MoNE Explorer: frames per second processed by /analyze_video's function.

    python bench/video_fps.py [--card assets/<name>.json] [--video assets/examples/bikes.mp4] [--frames 48]
                              [--json PATH]

For each budget it reports the frames per second through the model alone (batched forward, chunks of 16) and end to
end (decode + sample + model + overlays + H.264 encode). Without a trained card in assets/ it times a randomly
initialised mone_vit_mini_patch8_96 (weights do not change the cost).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_latency import REPO, measured_on, resolve_card, use_card, write_result  # noqa: E402


def default_video() -> Path:
    bikes = REPO / "assets" / "examples" / "bikes.mp4"
    if bikes.is_file():
        return bikes
    import numpy as np

    from mone.video import encode_h264
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (272, 640, 3), dtype=np.uint8) for _ in range(100)]
    return encode_h264(frames, Path(tempfile.mkdtemp()) / "synthetic.mp4", 25)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", default=None)
    ap.add_argument("--video", default=None)
    ap.add_argument("--frames", type=int, default=48, help="frame cap (sampled evenly)")
    ap.add_argument("--allocator", default="epr")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per budget; the median is kept (one ~1 s run "
                                                           "is at the mercy of whatever else wakes up)")
    ap.add_argument("--json", help="also write the numbers here (e.g. assets/bench/video_fps_cpu.json)")
    args = ap.parse_args(argv)
    inf, name, model = use_card(*resolve_card(args.card))
    measured = measured_on()                        # after the app module has set its torch threads
    video = Path(args.video) if args.video else default_video()
    print(f"model  {model.card['model']}, {inf.DEVICE}; video {video.name}; cap {args.frames} frames")
    inf.analyze_video(str(video), name, args.allocator, 0.5, 0.5, 8)          # warm-up
    rows = []
    for b in args.budgets:
        walls, model_fps = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            d = inf.analyze_video(str(video), name, args.allocator, b, 0.5, args.frames).details
            walls.append(time.perf_counter() - t)
            model_fps.append(d["model_fps"])
        wall = statistics.median(walls)
        rows.append(dict(effective_capacity=b, frames=d["frames"], model_fps=statistics.median(model_fps),
                         total_fps=d["frames"] / wall, wall_s=wall, repeats=args.repeats))
        print(f"  e_c {b:4.2f}: {d['frames']} frames in {wall:5.2f} s (median of {args.repeats}) -> "
              f"{d['frames'] / wall:6.1f} frames/s end to end, {rows[-1]['model_fps']:7.1f} frames/s through the model "
              f"({d['macs_per_frame'] / 1e9:.3f} GMACs/frame)")
    out = dict(card=name, model=model.card["model"], video=video.name, frame_cap=args.frames,
               allocator=args.allocator, rows=rows, **measured)
    write_result(args.json, out, "video_fps.py", argv)
    return out


if __name__ == "__main__":
    main()
