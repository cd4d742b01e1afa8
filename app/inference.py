"""What the MoNE Explorer computes, as plain functions the UI, the API and the tests all call.

    analyze_image(image, model, allocator, budget, opacity, view) -> ImageResult
    patch_info(image, model, allocator, budget, x, y)             -> (router probabilities, text)
    compare_allocators(image, model, budget, opacity)             -> [(png path, caption)]
    analyze_video(video, model, allocator, budget, opacity, max_frames) -> VideoResult

Inputs arrive raw (the UI events run with preprocess=False), so every argument is validated here and every problem
becomes a `gr.Error` with a message for the user; the app keeps serving.

Speed: a slider move must only *render*. Per upload (and model) the patch tokens and router probabilities are computed
once (`mone.inference.encode`); per upload, model and allocator the whole budget grid 0.15..1.00 (step 0.05) runs in
one batched nested forward (`mone.inference.forward_assignments`). A move then looks the budget up, draws the overlay
(OpenCV, cached display-size image) and writes a fast PNG. Off-grid budgets (API) are computed once and cached too.
"""
from __future__ import annotations

import atexit
import functools
import inspect
import json
import math
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import gradio as gr
import numpy as np
import torch
from gradio.components.plot import PlotData

import mone
from mone import vis
from mone.inference import (BUDGET_GRID, ImageReadError, assignments_for, encode, forward_assignments, read_image,
                            to_model_input)
from mone.video import MAX_FRAMES, VideoReadError, encode_h264, sample_frames

REPO = Path(__file__).resolve().parent.parent
BUDGET_MIN, BUDGET_MAX, BUDGET_STEP = 0.15, 1.0, 0.05
VIEW_EXPERTS, VIEW_IMPORTANCE = "expert assignment", "router importance"
VIEWS = (VIEW_EXPERTS, VIEW_IMPORTANCE)
DISPLAY_SIDE = 640           # long side of the overlay image (the original is mapped onto it, aspect kept)
DISPLAY_MIN_SIDE = 96        # short side at least: >= 4 px per cell of a 20x20 grid, so every patch row can be seen
WORKING_SIDE = 512           # long side kept per upload for the model input (models see <= 224 px)
VIDEO_SIDE = 640             # long side of the output video frames (the legend fits on one row)
MAX_VIDEO_FRAMES = 96        # hard ceiling for the frame cap an API caller may ask for
VIDEO_CHUNK = 16             # frames per batched forward (progress and cancellation between chunks)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OUT_DIR = Path(tempfile.gettempdir()) / "mone_explorer"
# One intra-op thread on CPU: on a shared 2-vCPU box, two OpenMP threads fighting other work made a batch-1 forward
# 15x slower here (340 ms vs 22 ms), and the second core stays free for the web server and PNG encoding.
if DEVICE.type == "cpu":
    torch.set_num_threads(max(1, int(os.environ.get("MONE_TORCH_THREADS", "1"))))

try:                                     # Hugging Face ZeroGPU: a real decorator there, a no-op everywhere else
    import spaces                        # type: ignore

    gpu = spaces.GPU
except ImportError:                      # pragma: no cover - depends on the environment
    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)


# --------------------------------------------------------------------------------------------------------- models
def assets_dir() -> Path:
    return Path(os.environ.get("MONE_ASSETS") or REPO / "assets")


@dataclass(frozen=True)
class ModelEntry:
    name: str               # the card's file stem, e.g. "mone_scenes"
    card_path: Path
    card: dict = field(hash=False, compare=False)

    @property
    def curve_path(self) -> Path:
        return self.card_path.parent / "curves" / f"{self.name}.json"

    @property
    def classes(self) -> list[str]:
        return list(self.card["preprocess"].get("classes") or [])


_lock = threading.RLock()
_registry: dict[str, ModelEntry] | None = None
_models: dict[str, torch.nn.Module] = {}


def discover_models(directory: str | Path | None = None) -> dict[str, ModelEntry]:
    """Every MoNE card (`assets/*.json` naming a `mone_*` model) by name. Files that are not cards are skipped, and so
    are MatViT baselines (`--nested-widths`: no trained router to show); a card whose weights are missing or corrupt
    is listed (loading it gives a clear error)."""
    directory = Path(directory) if directory else assets_dir()
    found = {}
    for path in sorted(directory.glob("*.json")):
        try:
            card = mone.read_card(path)
        except (ValueError, OSError):
            continue
        if str(card.get("model", "")).startswith("mone_") and not mone.is_matvit(card):
            found[path.stem] = ModelEntry(path.stem, path, card)
    return found


def registry(reload: bool = False) -> dict[str, ModelEntry]:
    global _registry
    with _lock:
        if _registry is None or reload:
            _registry = discover_models()
            _models.clear()
            _cache.clear()
            latency.clear()
        return _registry


def model_names() -> list[str]:
    return list(registry())


# The shipped model the page opens with: the isoFLOPs-trained Scenes MoNE, the one that matches its dense baseline.
DEFAULT_MODEL = "mone_vit_scenes_isoflops"


def default_model() -> str | None:
    """$MONE_DEFAULT_MODEL, else DEFAULT_MODEL, else a card marked `"app_default": true`, else the first RGB card."""
    entries = registry()
    if not entries:
        return None
    for wanted in (os.environ.get("MONE_DEFAULT_MODEL"), DEFAULT_MODEL):
        if wanted in entries:
            return wanted
    for e in entries.values():
        if e.card.get("app_default"):
            return e.name
    rgb = [e.name for e in entries.values() if int(e.card["preprocess"].get("in_chans", 3)) == 3]
    return (rgb or list(entries))[0]


def get_entry(name: Any) -> ModelEntry:
    entries = registry()
    if not entries:
        raise gr.Error(f"No model checkpoints found in {assets_dir()}. Train one with `python -m mone.train ...` "
                       "(it writes assets/<name>.json + .safetensors).")
    if not isinstance(name, str) or name not in entries:
        raise gr.Error(f"Unknown model {name!r}. Available: {', '.join(entries)}.")
    return entries[name]


def get_model(entry: ModelEntry) -> torch.nn.Module:
    """The card's model (safetensors only, via mone.load_model), loaded once per process."""
    with _lock:
        model = _models.get(entry.name)
        if model is None:
            try:
                model = mone.load_model(entry.card_path, DEVICE)
            except Exception as err:  # noqa: BLE001  (missing file, corrupt safetensors, wrong shapes ...)
                text = " ".join(str(err).split())
                text = text if len(text) <= 400 else text[:400] + " …"
                raise gr.Error(f"Model '{entry.name}' cannot be loaded: {text}") from None
            if not hasattr(model, "forward_routing"):
                raise gr.Error(f"Model '{entry.name}' ({entry.card['model']}) is not a MoNE model.")
            size, chans = int(model.preprocess["image_size"]), int(model.preprocess.get("in_chans", 3))
            with torch.inference_mode():                                  # first-call allocations, off the clock
                model.forward_routing(torch.zeros(1, chans, size, size, device=DEVICE), 0.5)
            _models[entry.name] = model
        return model


# ------------------------------------------------------------------------------------------------ input checking
def parse_budget(value: Any) -> float:
    try:
        if isinstance(value, bool):                          # float(True) == 1.0 would pass silently
            raise TypeError
        e_c = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"Budget must be a number between {BUDGET_MIN} and {BUDGET_MAX}, got {value!r}.") from None
    if not math.isfinite(e_c) or not BUDGET_MIN - 1e-9 <= e_c <= BUDGET_MAX + 1e-9:
        raise gr.Error(f"Budget {value!r} is out of range: choose e_c between {BUDGET_MIN} and {BUDGET_MAX}.")
    return round(min(max(e_c, BUDGET_MIN), BUDGET_MAX), 6)


def parse_opacity(value: Any) -> float:
    try:
        a = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"Opacity must be a number between 0 and 1, got {value!r}.") from None
    if not math.isfinite(a) or not 0.0 <= a <= 1.0:
        raise gr.Error(f"Opacity {value!r} is out of range: choose a value between 0 and 1.")
    return a


def parse_allocator(value: Any) -> str:
    if not isinstance(value, str) or value not in mone.ALLOCATORS:
        raise gr.Error(f"Unknown router {value!r}. Choose one of: {', '.join(mone.ALLOCATORS)}.")
    return value


def parse_view(value: Any) -> str:
    if value not in VIEWS:
        raise gr.Error(f"Unknown view {value!r}. Choose one of: {', '.join(VIEWS)}.")
    return value


def path_of(value: Any) -> Path | None:
    """A file path from whatever the UI or API sent: a path, a FileData dict, or a Video payload dict."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        if "video" in value and isinstance(value["video"], (dict, str)):
            return path_of(value["video"])
        value = value.get("path")
        if value is None:
            return None
    elif hasattr(value, "path"):
        value = value.path
    if not isinstance(value, (str, os.PathLike)):
        raise gr.Error(f"Expected a file, got {type(value).__name__}.")
    return Path(value)


def _file_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        raise gr.Error(f"File not found: {path.name}") from None
    return str(path.resolve()), st.st_size, st.st_mtime_ns


# ------------------------------------------------------------------------------------------------ per-upload cache
@dataclass
class Grid:
    """One image, model and allocator at many budgets (rows)."""
    budgets: list[float]
    assignment: np.ndarray      # (B, N) int
    tokens: np.ndarray          # (B, E) int
    achieved: list[float]
    probs: np.ndarray           # (B, C)

    def row(self, e_c: float) -> int | None:
        for i, b in enumerate(self.budgets):
            if abs(b - e_c) < 1e-6:
                return i
        return None


@dataclass
class ModelView:
    """One image under one model: its input, encoding and the grids per allocator."""
    x: torch.Tensor
    tokens: torch.Tensor
    router_probs: torch.Tensor      # (1, N, E)
    importance: np.ndarray          # (gh, gw) expected width fraction
    grids: dict[str, Grid] = field(default_factory=dict)


@dataclass
class ImageRecord:
    display: np.ndarray             # (h, w, 3) uint8, long side DISPLAY_SIDE, original aspect
    original_size: tuple[int, int]
    notes: list[str]
    working: np.ndarray                 # the model's source: decoded RGB, long side <= WORKING_SIDE
    views: dict[str, ModelView] = field(default_factory=dict)
    canvases: dict = field(default_factory=dict)    # patch grid -> vis.PatchCanvas of `display`

    def canvas(self, grid: tuple[int, int]) -> vis.PatchCanvas:
        c = self.canvases.get(grid)
        if c is None:
            c = self.canvases[grid] = vis.PatchCanvas(self.display, grid)
        return c


_cache: "OrderedDict[tuple, ImageRecord]" = OrderedDict()
CACHE_SIZE = 24


def load_image_record(path: Path) -> ImageRecord:
    key = _file_key(path)
    with _lock:
        record = _cache.get(key)
        if record is not None:
            _cache.move_to_end(key)
            return record
    try:
        loaded = read_image(path)
    except ImageReadError as err:
        raise gr.Error(str(err)) from None
    display = vis.fit_long_side(loaded.rgb, DISPLAY_SIDE, min_side=DISPLAY_MIN_SIDE)
    h, w = loaded.rgb.shape[:2]
    if min(h, w) * DISPLAY_SIDE < DISPLAY_MIN_SIDE * max(h, w):
        loaded.notes.append(f"very elongated image ({loaded.original_size[0]}x{loaded.original_size[1]}): the overlay "
                            f"is stretched to {DISPLAY_MIN_SIDE} px on its short side so every patch row is visible")
    working = loaded.rgb if max(loaded.rgb.shape[:2]) <= WORKING_SIDE else \
        vis.fit_long_side(loaded.rgb, WORKING_SIDE, min_side=8)
    record = ImageRecord(display, loaded.original_size, loaded.notes, working=working)
    with _lock:
        _cache[key] = record
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return record


def grid_shape(model) -> tuple[int, int]:
    gh, gw = model.patch_embed.grid_size
    return int(gh), int(gw)


def model_view(record: ImageRecord, entry: ModelEntry, model) -> ModelView:
    view = record.views.get(entry.name)
    if view is None:
        x = to_model_input(record.working, model.preprocess).to(DEVICE)
        enc = encode(model, x)
        probs = enc.router_probs[0].float().cpu().numpy()
        view = ModelView(x, enc.tokens, enc.router_probs, vis.expected_width(probs).reshape(grid_shape(model)))
        record.views[entry.name] = view
    return view


def compute_grid(model, view: ModelView, allocator: str, budgets) -> Grid:
    assignment, tokens, achieved = assignments_for(view.router_probs, list(budgets), allocator)
    logits = forward_assignments(model, view.tokens, view.router_probs, assignment.to(view.tokens.device))
    return Grid(list(budgets), assignment.cpu().numpy(), tokens.cpu().numpy(), achieved,
                logits.float().softmax(-1).cpu().numpy())


def budget_row(model, view: ModelView, allocator: str, e_c: float, precompute: bool = True) -> tuple[Grid, int]:
    """The row of budget e_c in the image's budget grid for `allocator`.

    precompute=True (an upload in the UI, before the slider moves): the whole grid 0.15..1.00 in one batched pass.
    precompute=False (an API call): the grid if it already exists, else just this budget (one forward).
    Off-grid budgets get a one-row grid of their own; everything is cached per upload."""
    grid = view.grids.get(allocator)
    if grid is None and precompute:
        grid = view.grids[allocator] = compute_grid(model, view, allocator, BUDGET_GRID)
    row = grid.row(e_c) if grid is not None else None
    if row is not None:
        return grid, row
    key = f"{allocator}@{e_c:.6f}"
    extra = view.grids.get(key)
    if extra is None:
        extra = view.grids[key] = compute_grid(model, view, allocator, [e_c])
    return extra, 0


# -------------------------------------------------------------------------------------------------- measurements
def _time_forward(model, x, e_c: float, allocator: str, repeats: int = 2) -> float:
    """Best of `repeats` timed batch-1 forwards (ms): the least disturbed by other work on a shared machine."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            gen = torch.Generator().manual_seed(0)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model.forward_routing(x, e_c, allocator=allocator, generator=gen)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return min(times) * 1e3


class LatencyMeter:
    """Measured batch-1 forward latency per (model, allocator, budget); cost does not depend on image content.

    `get(..., wait=True)` measures what is missing right away (uploads, API calls). `wait=False` (slider moves, which
    must only render) returns what is known and queues the rest for a background thread that runs only once no
    request that runs a model is in progress (`busy`, see `uses_model`) and the app has been idle for `idle_s`, so
    measuring never competes with a move, a video job or a comparison (a timing taken under load is kept for good).
    """

    def __init__(self, idle_s: float = 0.4) -> None:
        self.table: dict[tuple[str, str, float], float] = {}
        self.idle_s = idle_s
        self.last_activity = time.monotonic()
        self._busy = 0                                  # requests running a model right now
        self._pending: "OrderedDict[tuple, tuple]" = OrderedDict()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        atexit.register(self.stop)

    def stop(self) -> None:
        """Let the background thread finish its forward before the interpreter exits (a daemon thread killed inside
        a torch op aborts the process)."""
        self._stopping = True
        with self._cv:
            self._pending.clear()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @contextmanager
    def busy(self):
        """Marks a request that runs a model: no background timing starts until it (and `idle_s` after it) is over."""
        with self._cv:
            self._busy += 1
        self.touch()
        try:
            yield
        finally:
            with self._cv:
                self._busy -= 1
            self.touch()

    def idle(self) -> bool:
        return self._busy == 0 and time.monotonic() - self.last_activity >= self.idle_s

    def _measure(self, key, model, x) -> float:
        name, allocator, e_c = key
        ms = _time_forward(model, x, e_c, allocator)
        self.table[key] = ms
        return ms

    def get(self, entry: ModelEntry, model, x, allocator: str, e_c: float,
            wait: bool = True) -> tuple[float | None, float | None]:
        keys = [(entry.name, allocator, round(e_c, 6)), (entry.name, allocator, 1.0)]
        out = []
        for key in keys:
            ms = self.table.get(key)
            if ms is None and wait:
                ms = self._measure(key, model, x)
            elif ms is None:
                with self._cv:
                    self._pending[key] = (model, x)
                    self._cv.notify()
                self._start()
            out.append(ms)
        return out[0], out[1]

    def prefetch(self, entry: ModelEntry, model, x, allocator: str, budgets=BUDGET_GRID) -> None:
        """Queue every missing budget for the idle-time thread (after an upload, before the slider moves)."""
        with self._cv:
            for b in budgets:
                key = (entry.name, allocator, round(float(b), 6))
                if key not in self.table:
                    self._pending[key] = (model, x)
            self._cv.notify()
        self._start()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="mone-latency", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
            while not self.idle() and not self._stopping:
                time.sleep(0.05)
            with self._cv:
                if not self._pending or self._stopping:
                    continue
                key, (model, x) = self._pending.popitem(last=False)
            if key not in self.table:
                try:
                    self._measure(key, model, x)
                except Exception:  # noqa: BLE001  (a model dropped by a reload, ...): measured again on demand
                    pass

    def clear(self) -> None:
        self.table.clear()
        with self._cv:
            self._pending.clear()


latency = LatencyMeter()


def uses_model(fn):
    """Run `fn` (a function or a generator function) inside `latency.busy()`."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            with latency.busy():
                yield from fn(*args, **kwargs)
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        with latency.busy():
            return fn(*args, **kwargs)
    return function


@lru_cache(maxsize=4096)
def _macs(model_key: tuple, e_c: float) -> tuple[int, int]:
    model = _models_by_key[model_key]
    return mone.count_macs(model, e_c), mone.dense_macs(model)


_models_by_key: dict[tuple, torch.nn.Module] = {}


def macs(entry: ModelEntry, model, e_c: float) -> tuple[int, int]:
    """(MACs at e_c, dense MACs) per image, analytic (content-independent), cached."""
    key = (entry.name, str(entry.card_path), id(model))
    _models_by_key[key] = model
    return _macs(key, round(float(e_c), 6))


def fmt_macs(macs: float) -> str:
    return f"{macs / 1e9:.3f} GMACs" if macs >= 1e8 else f"{macs / 1e9:.4f} GMACs ({macs / 1e6:.2f} MMACs)"


# ------------------------------------------------------------------------------------------------ rendering
_writes = 0


def write_png(rgb: np.ndarray, stem: str = "overlay") -> str:
    """Lossless PNG, fast settings (the grid must stay crisp; WebP/JPEG would blur it). Returns the path."""
    global _writes
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{stem}-{uuid.uuid4().hex[:12]}.png"
    # zlib level 1 with libpng's fast filters: ~3x faster than the defaults at about the same size (measured)
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FAST_FILTERS]
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise gr.Error("Could not write the overlay image.")
    _writes += 1
    if _writes % 100 == 0:                 # Gradio copies outputs into its own cache; ours are short-lived
        _prune(OUT_DIR, max_age_s=900)
    return str(path)


def _prune(directory: Path, max_age_s: float) -> None:
    now = time.time()
    for f in directory.glob("*"):
        try:
            if now - f.stat().st_mtime > max_age_s:
                f.unlink()
        except OSError:
            pass


def render(record: ImageRecord, view_name: str, model, view: ModelView, grid: Grid, row: int,
           opacity: float) -> np.ndarray:
    canvas = record.canvas(grid_shape(model))
    if view_name == VIEW_IMPORTANCE:
        return vis.render_importance(record.display, view.importance, opacity,
                                     "router importance: expected width  sum_j p_j d_j / D", canvas=canvas)
    assignment = grid.assignment[row].reshape(grid_shape(model))
    return vis.render_experts(record.display, assignment, model.num_experts, opacity, model.embed_dim,
                              grid.tokens[row].tolist(), canvas=canvas)


def top5(entry: ModelEntry, probs: np.ndarray) -> dict[str, float]:
    names = entry.classes or [f"class {i}" for i in range(len(probs))]
    order = np.argsort(-probs)[:5]
    return {names[i] if i < len(names) else f"class {i}": float(probs[i]) for i in order}


# ------------------------------------------------------------------------------------------------- curve plot
def load_curve(entry: ModelEntry) -> dict | None:
    """The model's accuracy-vs-MACs curve file, or None if it is missing or unusable."""
    path = entry.curve_path
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        points = [p for p in data["points"] if {"method", "macs", "top1"} <= set(p)]
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return {**data, "points": points} if points else None


METHOD_STYLE = {   # method -> (legend name, colour, dash, marker)
    "mone": ("MoNE (EPR)", "#D55E00", "solid", "circle"),
    "random_router": ("MoNE, random router", "#999999", "dot", "x"),
    "matvit": ("MatViT (one nested width)", "#0072B2", "dash", "square"),
    "matvit_baseline": ("MatViT trained as a baseline", "#009E73", "dashdot", "diamond"),
    "dense": ("dense ViT", "#000000", None, "star"),
}


@lru_cache(maxsize=32)
def _curve_base(card_path: str, mtime: float, name: str) -> str | None:
    entry = registry().get(name)
    curve = load_curve(entry) if entry else None
    if curve is None:
        return None
    import plotly.graph_objects as go

    pts = curve["points"]
    scale = 1e9 if max(p["macs"] for p in pts) >= 1e8 else 1e6
    unit = "GMACs" if scale == 1e9 else "MMACs"
    pct = 100.0 if max(float(p["top1"]) for p in pts) <= 1.0 else 1.0
    fig = go.Figure()
    for method, (label, colour, dash, marker) in METHOD_STYLE.items():
        mp = sorted((p for p in pts if p["method"] == method), key=lambda p: p["macs"])
        if not mp:
            continue
        fig.add_trace(go.Scatter(
            x=[p["macs"] / scale for p in mp], y=[float(p["top1"]) * pct for p in mp], name=label,
            mode="markers" if dash is None else "lines+markers",
            line=dict(color=colour, dash=dash or "solid"), marker=dict(symbol=marker, size=12 if dash is None else 6),
            customdata=[p.get("effective_capacity") for p in mp],
            hovertemplate="%{x:.4g} " + unit + "<br>top-1 %{y:.1f} %<br>e_c %{customdata}<extra>" + label + "</extra>"))
    split = curve.get("split")
    fig.update_layout(
        title=dict(text=f"Accuracy vs compute: {name}" + (f" ({split} split)" if split else ""), font=dict(size=14)),
        xaxis_title=f"{unit} per image (multiply-adds)", yaxis_title="top-1 accuracy (%)",
        template="plotly_white", height=360, margin=dict(l=50, r=10, t=40, b=45),
        legend=dict(orientation="h", y=-0.25, x=0), hovermode="closest")
    base = json.loads(fig.to_json())
    mone_pts = sorted((p for p in pts if p["method"] == "mone"), key=lambda p: p["effective_capacity"])
    base["_mone"] = dict(ec=[p["effective_capacity"] for p in mone_pts],
                         top1=[float(p["top1"]) * pct for p in mone_pts])
    base["_scale"], base["_unit"] = scale, unit
    return json.dumps(base)


def empty_plot(message: str) -> PlotData:
    fig = dict(data=[], layout=dict(
        template=None, height=220, xaxis=dict(visible=False), yaxis=dict(visible=False),
        annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                          font=dict(size=14))], margin=dict(l=10, r=10, t=10, b=10)))
    return PlotData(type="plotly", plot=json.dumps(fig))


def curve_plot(entry: ModelEntry, e_c: float, macs: int) -> tuple[PlotData, float | None]:
    """The model's curve with the current budget as a point on the MoNE line (interpolated in e_c between the
    evaluated budgets). Returns the plot and the point's accuracy (None if there is no curve)."""
    try:
        mtime = entry.curve_path.stat().st_mtime
    except OSError:
        mtime = -1.0
    base = _curve_base(str(entry.card_path), mtime, entry.name) if mtime >= 0 else None
    if base is None:
        return empty_plot(f"No accuracy-vs-MACs curve for '{entry.name}' yet: {entry.curve_path.name} is missing "
                          "in assets/curves/ (python -m mone.evaluate --card ... writes it)."), None
    fig = json.loads(base)
    mone_line, scale, unit = fig.pop("_mone"), fig.pop("_scale"), fig.pop("_unit")
    x = macs / scale
    y = float(np.interp(e_c, mone_line["ec"], mone_line["top1"])) if mone_line["ec"] else None
    fig["data"].append(dict(type="scatter", x=[x], y=[y if y is not None else 0], mode="markers+text",
                            name=f"current budget e_c={e_c:.2f}", text=[f"e_c={e_c:.2f}"], textposition="top left",
                            marker=dict(size=16, color="rgba(213,94,0,0.25)", line=dict(color="#D55E00", width=3)),
                            hovertemplate=f"current budget e_c={e_c:.2f}<br>%{{x:.4g}} {unit}<br>"
                                          "top-1 %{y:.1f} % (interpolated)<extra></extra>"))
    fig["layout"]["shapes"] = [dict(type="line", x0=x, x1=x, xref="x", y0=0, y1=1, yref="paper",
                                    line=dict(color="#D55E00", width=1, dash="dot"))]
    return PlotData(type="plotly", plot=json.dumps(fig)), y


# -------------------------------------------------------------------------------------------------- image API
@dataclass
class ImageResult:
    overlay: str | None                 # PNG path
    top5: dict[str, float] | None
    readout: str                        # Markdown
    curve: PlotData | None
    budget_macs: str                    # Markdown shown beside the slider
    details: dict

    def outputs(self) -> tuple:
        return self.overlay, self.top5, self.readout, self.curve, self.budget_macs, self.details


def empty_image_result(message: str = "Upload an image or pick an example.") -> ImageResult:
    return ImageResult(None, None, message, None, "", {})


def _prepare(image, model_name, allocator):
    entry = get_entry(model_name)
    allocator = parse_allocator(allocator)
    path = path_of(image)
    if path is None:
        return entry, allocator, None, None, None
    record = load_image_record(path)
    model = get_model(entry)
    view = model_view(record, entry, model)
    return entry, allocator, record, model, view


@gpu
@uses_model
def analyze_image(image: Any, model_name: Any, allocator: Any = "epr", budget: Any = 0.5, opacity: Any = 0.5,
                  view: Any = VIEW_EXPERTS, measure: bool = True, precompute: bool = False) -> ImageResult:
    """Route one image at budget e_c: overlay PNG, top-5, readouts, curve point.

    precompute=True (the UI's upload/allocator events) runs the whole budget grid in one batched pass so that slider
    moves only render; the default (API) computes just the requested budget unless the grid exists.
    measure=False (slider moves) never runs a timing forward inside the request."""
    t0 = time.perf_counter()
    e_c, opacity, view_name = parse_budget(budget), parse_opacity(opacity), parse_view(view)
    entry, allocator, record, model, mview = _prepare(image, model_name, allocator)
    if record is None:
        return empty_image_result()
    grid, row = budget_row(model, mview, allocator, e_c, precompute)
    ms, full_ms = latency.get(entry, model, mview.x, allocator, e_c, wait=measure)
    if precompute:
        latency.prefetch(entry, model, mview.x, allocator)          # the rest of the grid, while the app is idle
    n_macs, dense = macs(entry, model, e_c)
    overlay = write_png(render(record, view_name, model, mview, grid, row, opacity))
    probs = grid.probs[row]
    tokens = [int(t) for t in grid.tokens[row]]
    curve, curve_top1 = curve_plot(entry, e_c, n_macs)
    labels = vis.expert_labels(model.num_experts, model.embed_dim)
    gh, gw = grid_shape(model)
    server_ms = (time.perf_counter() - t0) * 1e3
    notes = list(record.notes)
    pre = model.preprocess
    if int(pre.get("in_chans", 3)) == 1:
        notes.append(f"this model sees the image in grey at {pre['image_size']}×{pre['image_size']} px")
    details = dict(model=entry.name, allocator=allocator, budget=e_c, achieved_budget=round(grid.achieved[row], 4),
                   macs=n_macs, dense_macs=dense, macs_ratio=round(n_macs / dense, 4),
                   tokens_per_expert={labels[j]: tokens[j] for j in range(len(tokens))}, grid=[gh, gw],
                   latency_ms=None if ms is None else round(ms, 3),
                   full_width_latency_ms=None if full_ms is None else round(full_ms, 3),
                   server_ms=round(server_ms, 2), top5=top5(entry, probs),
                   curve_top1=None if curve_top1 is None else round(curve_top1, 3),
                   original_size=list(record.original_size), notes=notes)
    token_line = " · ".join(f"**{labels[j]}** {tokens[j]}" for j in reversed(range(len(tokens))))
    if ms is None or full_ms is None:
        timing = "measuring (shown once the slider rests)"
    else:
        timing = (f"**{ms:.1f} ms** at this budget vs {full_ms:.1f} ms with every token at full width (e_c = 1): "
                  f"speed-up ×{full_ms / ms:.2f}"
                  # a small model's one-image forward is per-operation overhead, which the four expert widths add to
                  + (" (below 1: for one small image the time is per-operation overhead, not MACs; the README's "
                     "speed table shows where the MACs saving becomes time)" if ms > full_ms else ""))
    readout = "\n".join([
        f"- **Compute:** {fmt_macs(n_macs)} = **{100 * n_macs / dense:.1f} %** of the dense ViT "
        f"({fmt_macs(dense)}); achieved e_c = {grid.achieved[row]:.3f}",
        f"- **Tokens per expert** ({gh}×{gw} = {gh * gw} patches): {token_line}",
        f"- **Measured latency** (one image, {DEVICE.type}, best of 2): {timing}",
        f"- **This update:** {server_ms:.0f} ms on the server",
    ] + ([f"- **Note:** {'; '.join(notes)}"] if notes else []))
    budget_md = f"**{fmt_macs(n_macs)}**  \n{100 * n_macs / dense:.0f} % of dense"
    return ImageResult(overlay, top5(entry, probs), readout, curve, budget_md, details)


@uses_model
def patch_info(image: Any, model_name: Any, allocator: Any, budget: Any, x: Any, y: Any,
               display_size: tuple[int, int] | None = None) -> tuple[dict[str, float] | None, str]:
    """Router probabilities over the experts of the patch under pixel (x, y) of the overlay image."""
    e_c = parse_budget(budget)
    entry, allocator, record, model, view = _prepare(image, model_name, allocator)
    if record is None:
        return None, "Upload an image first."
    h, w = record.display.shape[:2] if display_size is None else display_size
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        raise gr.Error(f"Click coordinates must be numbers, got {x!r}, {y!r}.") from None
    cell = vis.patch_at(fx, fy, w, h, grid_shape(model))
    if cell is None:
        return None, "Click on the image (not on the legend) to see a patch's router probabilities."
    r, c = cell
    gh, gw = grid_shape(model)
    idx = r * gw + c
    grid, row = budget_row(model, view, allocator, e_c)
    probs = view.router_probs[0, idx].float().cpu().numpy()
    labels = vis.expert_labels(model.num_experts, model.embed_dim)
    assigned = int(grid.assignment[row, idx])
    text = (f"Patch row {r + 1}, column {c + 1} (of {gh}×{gw}): at e_c = {e_c:.2f} **{allocator}** puts it on "
            f"**{labels[assigned]}**; router importance (expected width) {view.importance[r, c]:.3f}.")
    return {labels[j]: float(probs[j]) for j in range(len(labels))}, text


@gpu
@uses_model
def compare_allocators(image: Any, model_name: Any, budget: Any = 0.5, opacity: Any = 0.5) -> list[tuple[str, str]]:
    """The same image at the same budget under every registered allocator (one batched forward)."""
    e_c, opacity = parse_budget(budget), parse_opacity(opacity)
    entry, _, record, model, view = _prepare(image, model_name, "epr")
    if record is None:
        raise gr.Error("Upload an image or pick an example first.")
    names = list(mone.ALLOCATORS)
    rows, ks = [], []
    for name in names:
        a, k, _ = assignments_for(view.router_probs, [e_c], name)
        rows.append(a[0])
        ks.append(k[0])
    assignment = torch.stack(rows)
    logits = forward_assignments(model, view.tokens, view.router_probs, assignment.to(view.tokens.device))
    probs = logits.float().softmax(-1).cpu().numpy()
    items, first_of = [], {}
    for i, name in enumerate(names):
        fn = mone.ALLOCATORS[name]
        same = first_of.setdefault(fn, name)
        grid = Grid([e_c], assignment[i:i + 1].cpu().numpy(), ks[i][None].numpy(), [0.0], probs[i:i + 1])
        png = write_png(render(record, VIEW_EXPERTS, model, view, grid, 0, opacity), stem=f"compare-{name}")
        best = top5(entry, probs[i])
        cls, p = next(iter(best.items()))
        caption = f"{name}: {cls} {100 * p:.0f} %" + (f" (same function as {same})" if same != name else "")
        items.append((png, caption))
    return items


# -------------------------------------------------------------------------------------------------- video API
@dataclass
class VideoResult:
    video: str
    plot: PlotData
    note: str
    details: dict

    def outputs(self) -> tuple:
        return self.video, self.plot, self.note, self.details


def parse_max_frames(value: Any) -> int:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"Frame cap must be a whole number between 1 and {MAX_VIDEO_FRAMES}, got {value!r}.") from None
    if not math.isfinite(n) or not 1 <= n <= MAX_VIDEO_FRAMES:
        raise gr.Error(f"Frame cap {value!r} is out of range: choose 1 to {MAX_VIDEO_FRAMES}.")
    return int(n)


@uses_model
def iter_analyze_video(video: Any, model_name: Any, allocator: Any = "epr", budget: Any = 0.5, opacity: Any = 0.5,
                       max_frames: Any = MAX_FRAMES) -> Iterator[tuple[str, Any]]:
    """Yields ("progress", (done, total, text)) between batches and finally ("result", VideoResult), so that a
    caller can report progress and stop early (a cancelled generator simply stops)."""
    e_c, opacity, cap = parse_budget(budget), parse_opacity(opacity), parse_max_frames(max_frames)
    entry = get_entry(model_name)
    allocator = parse_allocator(allocator)
    path = path_of(video)
    if path is None:
        raise gr.Error("Upload a video or pick the example first.")
    _file_key(path)
    yield "progress", (0, 1, "decoding")
    t0 = time.perf_counter()
    try:
        sampled = sample_frames(path, cap, max_side=VIDEO_SIDE)
    except VideoReadError as err:
        raise gr.Error(str(err)) from None
    model = get_model(entry)
    n = len(sampled.frames)
    t_decode = time.perf_counter() - t0
    assignments, probs = [], []
    t1 = time.perf_counter()
    for start in range(0, n, VIDEO_CHUNK):
        x = to_model_input(sampled.frames[start:start + VIDEO_CHUNK], model.preprocess).to(DEVICE)
        with torch.inference_mode():
            out = model.forward_routing(x, e_c, allocator=allocator, generator=torch.Generator().manual_seed(0))
        assignments.append(out.assignment.cpu().numpy())
        probs.append(out.logits.float().softmax(-1).cpu().numpy())
        tokens = [int(t) for t in out.tokens_per_expert]
        yield "progress", (min(start + VIDEO_CHUNK, n), n, "frames through MoNE")
    t_model = time.perf_counter() - t1
    assignment, prob = np.concatenate(assignments), np.concatenate(probs)
    gh, gw = grid_shape(model)
    frames_out = []
    titles = [f"t={t:.1f}s" for t in sampled.times]
    title_width = max(vis.text_width(t) for t in titles)        # one legend layout (and height) for every frame
    for i, frame in enumerate(sampled.frames):
        small = vis.fit_long_side(frame, VIDEO_SIDE, even=True)
        frames_out.append(vis.render_experts(small, assignment[i].reshape(gh, gw), model.num_experts, opacity,
                                             model.embed_dim, tokens, title=titles[i], title_width=title_width))
    fps = float(np.clip(n / max(sampled.info.duration, 1e-3), 1.0, 30.0))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    try:
        out_path = encode_h264(frames_out, OUT_DIR / f"video-{uuid.uuid4().hex[:12]}.mp4", fps)
    except ValueError as err:                 # frames of different sizes, nothing to encode: say so, keep serving
        raise gr.Error(f"Could not encode the overlay video: {err}") from None
    total_s = time.perf_counter() - t0
    classes = entry.classes or [f"class {i}" for i in range(prob.shape[1])]
    top = prob.argmax(1)
    labels = vis.expert_labels(model.num_experts, model.embed_dim)
    frame_rows = [dict(time=round(sampled.times[i], 3), frame=sampled.indices[i], top1=classes[top[i]],
                       prob=round(float(prob[i, top[i]]), 4)) for i in range(n)]
    n_macs, dense = macs(entry, model, e_c)
    details = dict(model=entry.name, allocator=allocator, budget=e_c, frames=n, video_frames=sampled.info.frames,
                   duration_s=round(sampled.info.duration, 3), output_fps=round(fps, 3),
                   tokens_per_expert={labels[j]: tokens[j] for j in range(len(tokens))}, macs_per_frame=n_macs,
                   dense_macs_per_frame=dense, model_fps=round(n / max(t_model, 1e-9), 2),
                   total_fps=round(n / max(total_s, 1e-9), 2), decode_s=round(t_decode, 3),
                   notes=sampled.notes, per_frame=frame_rows)
    counts = np.bincount(top, minlength=len(classes))
    majority = classes[int(counts.argmax())]
    note = "\n".join([
        f"**{n} frames** through MoNE at e_c = {e_c:.2f} ({allocator}): {fmt_macs(n_macs)} per frame "
        f"({100 * n_macs / dense:.0f} % of dense). Most frequent top-1: **{majority}** ({counts.max()}/{n} frames).",
        f"Speed: {details['model_fps']:.1f} frames/s through the model, {details['total_fps']:.1f} frames/s end to "
        f"end (decode + model + overlay + H.264), output at {fps:.1f} fps.",
    ] + [f"**Note:** {s}" for s in sampled.notes])
    plot = video_plot(sampled.times, prob, classes, [tokens] * n, labels)
    yield "result", VideoResult(str(out_path), plot, note, details)


def analyze_video(video: Any, model_name: Any, allocator: Any = "epr", budget: Any = 0.5, opacity: Any = 0.5,
                  max_frames: Any = MAX_FRAMES, progress: Callable[[int, int, str], None] | None = None) -> VideoResult:
    result = None
    for kind, value in iter_analyze_video(video, model_name, allocator, budget, opacity, max_frames):
        if kind == "progress" and progress is not None:
            progress(*value)
        elif kind == "result":
            result = value
    return result


def video_plot(times, prob: np.ndarray, classes: list[str], tokens: list[list[int]], labels: list[str]) -> PlotData:
    """Top class probability per frame (coloured by class) over time, and tokens per expert per frame."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    top = prob.argmax(1)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.08,
                        subplot_titles=("top-1 class probability per frame", "tokens per expert per frame"))
    palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
    fig.add_trace(go.Scatter(x=list(times), y=prob.max(1), mode="lines", line=dict(color="#bbbbbb"),
                             showlegend=False, hoverinfo="skip"), row=1, col=1)
    for c in np.unique(top):
        sel = np.flatnonzero(top == c)
        fig.add_trace(go.Scatter(x=[times[i] for i in sel], y=prob[sel, c], mode="markers", name=classes[c],
                                 marker=dict(color=palette[int(c) % len(palette)], size=8),
                                 hovertemplate="t=%{x:.2f}s<br>" + classes[c] + " %{y:.2f}<extra></extra>"),
                      row=1, col=1)
    colours = vis.expert_colors(len(labels))
    tok = np.asarray(tokens)
    for j in reversed(range(len(labels))):
        fig.add_trace(go.Bar(x=list(times), y=tok[:, j], name=labels[j], marker_color="rgb({},{},{})".format(
            *colours[j]), legendgroup="experts"), row=2, col=1)
    fig.update_layout(barmode="stack", template="plotly_white", height=460, margin=dict(l=50, r=10, t=40, b=40),
                      legend=dict(orientation="h", y=-0.12))
    fig.update_yaxes(range=[0, 1.02], title_text="probability", row=1, col=1)
    fig.update_yaxes(title_text="tokens", row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    return PlotData(type="plotly", plot=fig.to_json())
