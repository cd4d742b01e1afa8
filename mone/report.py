"""Markdown result tables, generated from the files the evaluation and benchmark commands wrote.

    python -m mone.report            # print the tables
    python -m mone.report --write    # replace the generated block of README.md

The README's tables are this module's output verbatim (a test checks it), so no number there is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from safetensors import safe_open

from mone.evaluate import read_outcomes
from mone.models import ALPHA_MIN

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
FMNIST_DENSE_TARGET = 92.0                          # % top-1, the training issue's Fashion-MNIST dense target
BEGIN, END = "<!-- results:begin (python -m mone.report --write) -->", "<!-- results:end -->"

# (MoNE curve, what it is, dataset) in the order the README shows them; a missing file is skipped.
CURVES = [("mone_vit_fmnist", "Fashion-MNIST, equal epochs", "fashion_mnist"),
          ("mone_vit_fmnist_cpu_isoflops", "Fashion-MNIST, isoFLOPs, trained on this CPU", "fashion_mnist"),
          ("mone_vit_fmnist_convstem_isoflops", "Fashion-MNIST, conv stem, isoFLOPs", "fashion_mnist"),
          ("mone_vit_fmnist_convstem_cpu_isoflops", "Fashion-MNIST, conv stem, isoFLOPs, trained on this CPU",
           "fashion_mnist"),
          ("mone_vit_scenes", "Scenes, equal epochs", "scenes"),
          ("mone_vit_scenes_isoflops", "Scenes, isoFLOPs (MoNE gets dense's training MACs)", "scenes"),
          ("mone_vit_scenes_cpu_isoflops", "Scenes, isoFLOPs, trained on this CPU", "scenes"),
          ("mone_vit_scenes_convstem_cpu_isoflops", "Scenes, conv stem, isoFLOPs, trained on this CPU", "scenes"),
          ("mone_vit_scenes_v2_convstem_cpu_isoflops",
           "Scenes data v2 (no test background overlaps training), conv stem, isoFLOPs, trained on this CPU", "scenes"),
          ("mone_vit_scenes_160", "Scenes 160 px, equal epochs", "scenes")]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def curves() -> list[tuple[str, str, str]]:
    """CURVES, each label saying so when the MoNE run stopped before its planned steps (a time limit): such a pair
    is not the equal-epochs or isoFLOPs comparison its name says, and the table must not hide it."""
    out = []
    for name, what, dataset in CURVES:
        steps = (_load(ASSETS / f"{name}.json") or {}).get("steps", {})
        if steps.get("done", 0) < steps.get("planned", 0):
            what += f" (MoNE stopped at step {steps['done']} of {steps['planned']})"
        out.append((name, what, dataset))
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _point(points: list[dict], method: str, e_c: float) -> dict | None:
    return next((p for p in points if p["method"] == method and abs(p["effective_capacity"] - e_c) < 1e-9), None)


def _best_nested(points: list[dict], cost: dict | None, method: str = "matvit") -> dict | None:
    """The best `method` point (a nested width: `matvit`, or `matvit_baseline` for the MatViT trained as a baseline)
    that costs at least what `cost` costs: MoNE at `cost` should beat every such point."""
    pool = [p for p in points if p["method"] == method and cost and p["macs"] >= cost["macs"]]
    return max(pool, key=lambda p: p["top1"]) if pool else None


def accuracy_table() -> list[str]:
    rows = ["| model (test split) | test images | dense | MoNE e_c=0.3 | MoNE 0.5 | MoNE 1.0 | random router 0.2 / MoNE 0.2 | "
            "best MatViT with ≥ the MACs of MoNE 0.3 | MoNE 0.5 MACs / dense |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, what, _ in curves():
        curve = _split(name)
        if not curve:
            continue
        pts = curve["points"]
        dense = next((p for p in pts if p["method"] == "dense"), None)
        m3, m5, m10 = (_point(pts, "mone", e) for e in (0.3, 0.5, 1.0))
        r2, m2 = _point(pts, "random_router", 0.2), _point(pts, "mone", 0.2)
        best_matvit = _best_nested(pts, m3)
        ratio = f"{m5['macs'] / dense['macs']:.2f}" if m5 and dense else "–"
        rows.append(f"| {what} | {curve['images']} | {_pct(dense and dense['top1'])} | {_pct(m3 and m3['top1'])} | "
                    f"{_pct(m5 and m5['top1'])} | {_pct(m10 and m10['top1'])} | "
                    f"{_pct(r2 and r2['top1'])} / {_pct(m2 and m2['top1'])} | "
                    f"{_pct(best_matvit and best_matvit['top1'])} (e_c {best_matvit['effective_capacity'] if best_matvit else '–'}) | "
                    f"{ratio} |")
    return rows


def _split_of(curve: dict, split: str) -> dict:
    """One split's result of a loaded curve file ({"images", "points", …}; {} if missing)."""
    return curve if curve.get("split") == split else curve.get("splits", {}).get(split, {})


def _split(name: str, split: str = "test") -> dict:
    """One split's result of the shipped curve file `name`."""
    return _split_of(_load(ASSETS / "curves" / f"{name}.json") or {}, split)


def _curve_points(name: str, split: str = "test") -> list[dict]:
    return _split(name, split).get("points", [])


def _top1(points: list[dict], method: str, e_c: float = 1.0) -> float | None:
    p = next((p for p in points if p["method"] == "dense"), None) if method == "dense" else _point(points, method, e_c)
    return p and p["top1"]


def _object_precision_of(curve: dict, e_c: float) -> dict | None:
    return next((o for o in curve.get("object_precision", []) if abs(o["effective_capacity"] - e_c) < 1e-9), None)


def _object_precision(name: str, e_c: float) -> dict | None:
    return _object_precision_of(_load(ASSETS / "curves" / f"{name}.json") or {}, e_c)


def _over_representation(op: dict | None) -> str:
    """Object share among the largest expert's tokens / object-area share, as the tables print it."""
    return f"{op['mone'] / op['object_area_share']:.2f}×" if op and op["mone"] is not None else "–"


def standard_error_pt(accuracies: list[float], images: int) -> float:
    """One standard error, in points, of one accuracy or of a difference of accuracies measured on `images` images.

    Binomial: sqrt(sum p(1-p)/n). For a difference of two models on the *same* images this is the unpaired value, an
    upper bound of the paired one (`paired_standard_error_pt`), for curves written without per-image outcomes.
    """
    return 100 * sum(p * (1 - p) for p in accuracies) ** 0.5 / images ** 0.5


def paired_standard_error_pt(a: np.ndarray, b: np.ndarray) -> float:
    """One standard error, in points, of the difference of two accuracies on the same images, from the per-image
    outcomes (bool): sample s.d. of a_i - b_i over sqrt(n). Images both get right or both get wrong add no noise."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return 100 * float(d.std(ddof=1)) / len(d) ** 0.5


def gap_standard_error(curve_path: Path, split: str, a: dict, b: dict, images: int,
                       b_curve_path: Path | None = None) -> str:
    """One standard error of top1(a) - top1(b) as the tables print it: paired where the curve file has per-image
    outcomes, else the unpaired upper bound, printed as "≤ x". `b_curve_path`: b's curve file when it is another
    one, scored on the same images."""
    hits = [read_outcomes(path, split, point) for path, point in ((curve_path, a), (b_curve_path or curve_path, b))]
    if any(h is None for h in hits):
        return f"≤ {standard_error_pt([a['top1'], b['top1']], images):.1f}"
    return f"{paired_standard_error_pt(*hits):.1f}"


def targets_table() -> list[str]:
    """The issue's targets, each with the measured value, its standard error, and whether it holds."""
    rows = ["| target | measured | ± 1 s.e. | holds |", "|---|---|---|---|"]

    def add(target: str, measured: float, ok, fmt: str = "{:.1f}", se: str = "–") -> None:
        rows.append(f"| {target} | {fmt.format(measured)} | {se} | {'yes' if ok(measured) else 'no'} |")

    for name, what, dataset in curves():
        split = _split(name)
        pts, n = split.get("points", []), split.get("images")
        if not pts:
            continue
        dense = _point(pts, "dense", 1.0)
        m3 = _point(pts, "mone", 0.3)

        def gap(target: str, a: dict, b: dict, ok) -> None:
            """A target on top1(a) - top1(b), in points, with the gap's standard error."""
            add(target, 100 * (a["top1"] - b["top1"]), ok, "{:+.1f}",
                gap_standard_error(ASSETS / "curves" / f"{name}.json", "test", a, b, n))

        dense_se = f"{standard_error_pt([dense['top1']], n):.1f}"
        if dataset == "fashion_mnist":
            add(f"{what}: dense ≥ {FMNIST_DENSE_TARGET:.1f} %", 100 * dense["top1"],
                lambda v: v >= FMNIST_DENSE_TARGET, se=dense_se)
            gap(f"{what}: MoNE e_c=0.5 ≥ dense − 0.5 pt (pt vs dense)", _point(pts, "mone", 0.5), dense,
                lambda v: v >= -0.5)
            gap(f"{what}: MoNE e_c=0.3 ≥ dense − 1.5 pt (pt vs dense)", m3, dense, lambda v: v >= -1.5)
            gap(f"{what}: MoNE e_c=0.3 above every MatViT point of ≥ its MACs (pt over the best)", m3,
                _best_nested(pts, m3), lambda v: v > 0)
            trained = _best_nested(pts, m3, "matvit_baseline")
            if trained:
                gap(f"{what}: MoNE e_c=0.3 above every point of ≥ its MACs of the MatViT trained as a baseline "
                    "(pt over the best)", m3, trained, lambda v: v > 0)
            continue
        add(f"{what}: dense ≥ 85 % on unseen backgrounds", 100 * dense["top1"], lambda v: v >= 85.0, se=dense_se)
        gap(f"{what}: MoNE e_c=0.3 within 1 pt of dense (pt vs dense)", m3, dense, lambda v: v >= -1.0)
        op = _object_precision(name, 0.3)
        if op and op["mone"] is not None:
            add(f"{what}: object patches ≥ 3× over-represented in the largest expert at e_c=0.3",
                op["mone"] / op["object_area_share"], lambda v: v >= 3.0, "{:.2f}×")
        gap(f"{what}: learned router ≥ 3 pt above random at e_c=0.2 (pt)", _point(pts, "mone", 0.2),
            _point(pts, "random_router", 0.2), lambda v: v >= 3.0)
    return rows


def matvit_table() -> list[str]:
    """The MatViT trained as a baseline (`--nested-widths`, same recipe and training MACs) next to the MoNE model's
    own nested widths, on the same images."""
    rows = ["| pair | test images | MatViT trained as a baseline: D/8 / D/4 / D/2 / D | the MoNE model at one width: "
            "D/8 / D/4 / D/2 / D | MoNE e_c=0.3 (MACs / dense) | dense |", "|---|---|---|---|---|---|"]
    for name, what, _ in curves():
        split = _split(name)
        pts = split.get("points", [])
        if not any(p["method"] == "matvit_baseline" for p in pts):
            continue
        widths = {method: " / ".join(_pct(p["top1"]) for p in sorted((p for p in pts if p["method"] == method),
                                                                      key=lambda p: p["macs"]))
                  for method in ("matvit_baseline", "matvit")}
        m3, dense = _point(pts, "mone", 0.3), _point(pts, "dense", 1.0)
        rows.append(f"| {what} | {split['images']} | {widths['matvit_baseline']} | {widths['matvit']} | "
                    f"{_pct(m3['top1'])} ({m3['macs'] / dense['macs']:.2f}) | {_pct(dense['top1'])} |")
    return rows if len(rows) > 2 else []


def scenes_table() -> list[str]:
    rows = ["| Scenes model | unseen-instance images | unseen instances: dense | MoNE 0.3 | MoNE 0.5 | object share among "
            "largest-expert tokens at e_c 0.3 on `test` (MoNE / random / object area) | over-representation on `test` |",
            "|---|---|---|---|---|---|---|"]
    for name, what, dataset in curves():
        split = _split(name, "test_instances")
        inst = split.get("points", [])
        if dataset != "scenes" or not inst:
            continue
        dense = next((p for p in inst if p["method"] == "dense"), None)
        op = _object_precision(name, 0.3)
        share = (f"{_pct(op['mone'])} / {_pct(op['random_router'])} / {_pct(op['object_area_share'])}"
                 if op and op["mone"] is not None else "–")
        m3, m5 = (_point(inst, "mone", e) for e in (0.3, 0.5))
        rows.append(f"| {what} | {split['images']} | {_pct(dense and dense['top1'])} | {_pct(m3 and m3['top1'])} | "
                    f"{_pct(m5 and m5['top1'])} | {share} | {_over_representation(op)} |")
    return rows


def router_state(alphas: list[float]) -> str:
    """The router's only gradient is alpha·dL/dr (Eq. 1, alpha clamped to [0, 1)): with alpha <= 0 in every block it
    gets none."""
    return "learning" if any(a > 0 for a in alphas) else "**frozen**: no gradient reaches it"


def router_ceiling_table() -> list[str]:
    rows = []
    for path in sorted((ASSETS / "bench").glob("router_ceiling*.json")):
        data = _load(path)
        share, readings = data["share_by_reading"], ("touching", "pixels", "outline", "border")
        alphas = data["alpha"]
        alive = f"{router_state(alphas)} (alpha > 0 in {sum(a > 0 for a in alphas)} of {len(alphas)} blocks)"
        at_03 = next((r for r in data["rows"] if r["effective_capacity"] == 0.3), None)
        rows += [f"`{data['card']}` on {data['test_images']} `test` images (object share {_pct(data['object_area_share'])} % "
                 f"of patches); probes trained with the object masks as labels on {data['train_images']} `train` "
                 f"images (`{data['command']}`). Block alphas {', '.join(f'{a:.2f}' for a in alphas)}: "
                 f"router {alive}. Object over-representation among the largest expert's tokens, and the model's "
                 "router's over-representation of other kinds of patch (share of all patches in brackets):", "",
                 "| e_c | tokens on the largest expert | the model's router (task loss only) | linear probe on the "
                 "router's input | same after LayerNorm | 2-layer MLP probe | oracle (the mask) | "
                 + " / ".join(f"{k} ({_pct(share[k])} %)" for k in readings) + " |",
                 "|---|---|---|---|---|---|---|---|"]
        rows += [f"| {r['effective_capacity']:g} | {r['largest_expert_tokens_per_image']} | {r['router']:.2f}× | "
                 f"{r['linear']:.2f}× | {r['linear_ln']:.2f}× | {r['mlp']:.2f}× | {r['oracle']:.2f}× | "
                 + " / ".join(f"{r['router_by_reading'][k]:.2f}×" for k in readings) + " |"
                 for r in data["rows"]]
        if at_03:
            rows += ["", "Share of each patch-grid column (left to right) that goes to the largest expert at e_c = 0.3: "
                     + ", ".join(f"{100 * v:.0f} %" for v in at_03["largest_expert_rate_by_column"]) + "."]
        rows.append("")
    return rows[:-1]


def oracle_routing_table() -> list[str]:
    """A trained model's accuracy when EPR ranks tokens by the object masks (`bench/oracle_routing.py`)."""
    rows = []
    for path in sorted((ASSETS / "bench").glob("oracle_routing*.json")):
        data = _load(path)
        card = ASSETS / Path(data["card"]).relative_to("assets")         # the curve lies beside its card
        curve_path = card.parent / "curves" / f"{card.stem}.json"
        split = _split_of(_load(curve_path) or {}, data["split"])
        rows += [f"`{data['card']}` on the first {data['images']} `{data['split']}` images (object patches "
                 f"{_pct(data['object_area_share'])} % of all; `{data['command']}`, {data['seconds']:.0f} s). Top-1 "
                 "(%), with the object over-representation among the largest expert's tokens in brackets, and each "
                 "score's gap to the model's router (pt ± paired s.e.); dense is its twin on the same images, read "
                 "from the curve file's per-image outcomes (– where the curve has none), its gap's s.e. the unpaired "
                 "bound:", "",
                 "| e_c | router | oracle: objects first | oracle − router | oracle − dense | background first | "
                 "background − router | random | random − router | router vs the curve file, same images |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        points = split.get("points", [])

        def first_images(point: dict | None) -> np.ndarray | None:
            """The curve's per-image outcomes of `point` on the bench's images (None: not stored)."""
            hits = read_outcomes(curve_path, data["split"], point) if point else None
            return None if hits is None or len(hits) < data["images"] else hits[:data["images"]]
        dense_hits = first_images(_point(points, "dense", 1.0))
        dense = None if dense_hits is None else float(dense_hits.mean())
        for r in data["rows"]:
            def cell(kind: str) -> str:
                over = r[kind]["over_representation"]
                return f"{_pct(r[kind]['top1'])} ({'–' if over != over else f'{over:.2f}×'})"   # NaN: no token

            def gap(kind: str) -> str:
                return f"{r[kind]['gap_to_router_pt']:+.1f} ± {r[kind]['gap_se_pt']:.1f}"
            oracle = r["oracle"]["top1"]
            vs_dense = "–" if dense is None else (f"{100 * (oracle - dense):+.1f} ± "
                                                  f"≤ {standard_error_pt([oracle, dense], data['images']):.1f}")
            hits = first_images(_point(points, "mone", r["effective_capacity"]))
            if hits is None:
                agreement = "–"
            else:
                apart = abs(round(hits.sum()) - round(r["router"]["top1"] * data["images"]))
                agreement = "identical" if apart == 0 else f"{apart} images apart"
            rows.append(f"| {r['effective_capacity']:g} | {cell('router')} | {cell('oracle')} | {gap('oracle')} | "
                        f"{vs_dense} | {cell('background')} | {gap('background')} | {cell('random')} | {gap('random')} | "
                        f"{agreement} |")
        rows.append("")
    return rows[:-1]


def background_table() -> list[str]:
    """Scenes numbers with and without the test backgrounds that overlap training (`bench/background_split.py`)."""
    files = sorted((ASSETS / "bench" / "background_split").glob("*.json"))
    if not files:
        return []
    what = {name: label for name, label, _ in curves()}
    first = _load(files[0])
    overlaps = "; ".join(f"`{k}`: {v}" for k, v in first["overlapping_sources"].items())
    rows = [f"Two of the eleven `test` backgrounds are not wholly unseen ({overlaps}). Each pair scored again on the "
            "curve file's images, split by background (top-1 %, all / without the two / the two only):", "",
            "| pair | images (without the two) | dense | MoNE e_c=0.3 | MoNE 0.3 − dense (all / without) | "
            "MoNE 0.2 − random 0.2 (all / without) | dense on " + " / ".join(f"`{k}`" for k in first[
                "overlapping_sources"]) + " | dense's most frequent wrong answer there | all-image top-1 vs the "
            "curve file |",
            "|---|---|---|---|---|---|---|---|---|"]
    for path in files:
        data = _load(path)
        parts = [data[k]["top1"] for k in ("all", "clean", "overlapping")]
        three = lambda m: " / ".join(_pct(p[m]) for p in parts)                                 # noqa: E731
        gap = lambda p, a, b: f"{100 * (p[a] - p[b]):+.1f}"                                      # noqa: E731
        per = [data["per_source"][k] for k in data["overlapping_sources"]]
        wrong = ", ".join(f"{p['dense_most_frequent_wrong']['as_class']} "
                          f"({_pct(p['dense_most_frequent_wrong']['share_of_images'])} %)" for p in per)
        rows.append(f"| {what.get(path.stem, path.stem)} | {data['all']['images']} ({data['clean']['images']}) | "
                    f"{three('dense')} | {three('mone@0.3')} | "
                    f"{gap(parts[0], 'mone@0.3', 'dense')} / {gap(parts[1], 'mone@0.3', 'dense')} | "
                    f"{gap(parts[0], 'mone@0.2', 'random@0.2')} / {gap(parts[1], 'mone@0.2', 'random@0.2')} | "
                    + " / ".join(_pct(p["top1"]["dense"]) for p in per) + f" | {wrong} | "
                    f"{_curve_agreement(path.stem, data)} |")
    return rows


def _curve_agreement(name: str, split_result: dict) -> str:
    """How many images the per-background scoring (CPU) and the curve file (maybe another device) disagree on, at
    most, over dense and MoNE 0.2 / 0.3 / 0.5: float differences between devices flip a few close calls."""
    curve = _load(ASSETS / "curves" / f"{name}.json")
    if curve is None:
        return "–"
    pts, n = curve["points"], split_result["all"]["images"]
    pairs = [(_top1(pts, "dense"), split_result["all"]["top1"]["dense"])]
    pairs += [(_top1(pts, "mone", c), split_result["all"]["top1"][f"mone@{c:g}"]) for c in (0.2, 0.3, 0.5)]
    worst = max(round(abs(a - b) * n) for a, b in pairs)
    return "identical" if worst == 0 else f"≤ {worst} images apart (curve on {curve.get('device', '?')})"


def routers_table() -> list[str]:
    data = _load(ASSETS / "routers" / "vmoe_fmnist.json")
    if data is None:
        return []
    cfg = data["config"]
    rows = [f"V-MoE `{cfg['model']}`, E={cfg['num_experts']}, capacity factor {cfg['capacity_factor']}, "
            f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, seed {cfg['seed']} (one seed: differences below "
            "about 1 pt are within noise).", "",
            "| router | test top-1 | train img/s | eval img/s | dropped tokens (eval) |", "|---|---|---|---|---|"]
    for router, r in data["results"].items():
        rows.append(f"| {router} | {_pct(r['accuracy'])} | {r['train_img_per_s']:.0f} | {r['eval_img_per_s']:.0f} | "
                    f"{_pct(r['eval_dropped_tokens'])} % |")
    return rows


def allocators_table() -> list[str]:
    files = sorted((ASSETS / "routers").glob("mone_allocators_*.json"))
    rows = []
    for path in files:
        data = _load(path)
        results = [r for r in data["results"] if r["split"] == "mone"]
        budgets = sorted({r["effective_capacity"] for r in results})
        rows += [""] if rows else []                # one card's tables after another's
        rows += [f"`{Path(data['card']).name}`, capacity split of the paper, test top-1 (%):", "",
                 "| allocator | " + " | ".join(f"e_c={b:g}" for b in budgets) + " |",
                 "|---|" + "---|" * len(budgets)]
        for alloc in dict.fromkeys(r["allocator"] for r in results):
            acc = {r["effective_capacity"]: r["accuracy"] for r in results if r["allocator"] == alloc}
            rows.append(f"| {alloc} | " + " | ".join(_pct(acc.get(b)) for b in budgets) + " |")
        splits = [r for r in data["results"] if r["allocator"] == "epr"]
        by_split = {}
        for r in splits:
            by_split.setdefault(r["split"], {})[r["effective_capacity"]] = r["accuracy"]
        rows += ["", "EPR under the capacity splits that the paper compares (test top-1, %):", "",
                 "| split | " + " | ".join(f"e_c={b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        rows += [f"| {s} | " + " | ".join(_pct(acc.get(b)) for b in budgets) + " |" for s, acc in by_split.items()]
    return rows


def _cpu_description(hw: dict) -> str:
    """A card's CPU as the tables print it: model, cores and, where the card recorded them, torch threads."""
    threads = f", {hw['threads']} torch thread(s)" if "threads" in hw else ""
    return f"{hw['cpu']}, {hw['cpu_cores']} cores{threads}"


def trained_here_table() -> list[str]:
    """Cards whose training ran on a CPU: the hours it took, measured by the training command itself."""
    rows = ["| card | command | hardware | train hours | images seen |", "|---|---|---|---|---|"]
    for path in sorted(ASSETS.glob("*.json")):
        card = _load(path)
        if "hardware" not in card or card["hardware"].get("gpu"):
            continue
        rows.append(f"| {path.name} | `{card['command']}` | {_cpu_description(card['hardware'])} | "
                    f"{card['train_seconds'] / 3600:.2f} | "
                    f"{card['data']['sizes']['images_seen']} |")
    return rows if len(rows) > 2 else []


def _router_weights(card_path: Path) -> tuple[list[float], float, float]:
    """A MoNE checkpoint's alphas (first block to last), its router's RMS row norm, and that norm at initialisation
    (rows drawn with std 0.02: about 0.02·sqrt(D))."""
    with safe_open(card_path.parent / _load(card_path)["weights"], framework="np") as f:
        keys = sorted((k for k in f.keys() if k.endswith(".alpha")), key=lambda k: int(k.split(".")[1]))
        alphas = [float(f.get_tensor(k)) for k in keys]
        router = f.get_tensor("router.weight")                                                  # (E, D)
    return alphas, float((router ** 2).sum(1).mean() ** 0.5), 0.02 * router.shape[1] ** 0.5


def router_health_table() -> list[str]:
    """Each shipped MoNE checkpoint's alphas and router weights (`router_state`): a frozen router's weights stay near
    their initial scale (rows drawn with std 0.02: norm about 0.02·sqrt(D))."""
    rows = ["| card | alpha per block (first to last) | blocks with alpha > 0 | router row norm (at init) | router |",
            "|---|---|---|---|---|"]
    for path in sorted(ASSETS.glob("mone_*.json")):
        alphas, norm, at_init = _router_weights(path)
        rows.append(f"| {path.name} | {', '.join(f'{a:.2f}' for a in alphas)} | {sum(a > 0 for a in alphas)} of "
                    f"{len(alphas)} | {norm:.2f} ({at_init:.2f}) | {router_state(alphas)} |")
    return rows if len(rows) > 2 else []


def speed_table() -> list[str]:
    rows = []
    for path in sorted((ASSETS / "bench").glob("speed_*.json")):
        data = _load(path)
        rows += [f"`{path.name}`: {data['model']} on {data['device']}, {data.get('machine', '')} "
                 f"{data['threads']} threads, torch {data['torch']}", "",
                 "| batch | e_c | dense ms | MoNE ms | time ratio | MACs ratio | time / MACs | routing share |",
                 "|---|---|---|---|---|---|---|---|"]
        rows += [f"| {r['batch']} | {r['effective_capacity']:g} | {r['dense_ms']:.1f} | {r['mone_ms']:.1f} | "
                 f"{r['time_ratio']:.3f} | {r['macs_ratio']:.3f} | {r['time_over_macs']:.3f} | "
                 f"{100 * r['routing_share']:.2f} % |" for r in data["rows"]]
        rows.append("")
    return rows


def app_speed_table() -> list[str]:
    """The app's latency, load test and video throughput as measured by `bench/app_latency.py`, `load_test.py` and
    `video_fps.py` with `--json` (their exact commands and the machine's load before each run are in the files)."""
    bench = ASSETS / "bench"
    latency, load, video = (_load(bench / f"{name}_cpu.json") for name in ("app_latency", "load_test", "video_fps"))
    rows = []
    if latency:
        where = (f"{latency['date'][:10]}, {latency['machine']}, {latency['cpus']} CPUs, torch threads: "
                 f"{latency['torch_threads']}, load average {latency['load_average_1min']} before the run")
        rows += [f"Model `{latency['card']}` ({latency['model']}), `{latency['image']}`, {latency['allocator']}, "
                 f"{latency['moves']} moves sweeping 0.15 → 1.00 → 0.15 (`{latency['command']}`; {where}):", "",
                 "| | median | p95 |", "|---|---|---|",
                 f"| slider move, event function | {latency['move_fn']['median']:.1f} ms | "
                 f"{latency['move_fn']['p95']:.1f} ms |",
                 f"| slider move, server side incl. Gradio postprocessing (`Blocks.process_api`) | "
                 f"**{latency['move_server']['median']:.1f} ms** | {latency['move_server']['p95']:.1f} ms |",
                 f"| first analysis of an upload (encode + batched 18-budget grid + timings) | "
                 f"{latency['upload_ms']:.0f} ms | |"]
        if "api_call" in latency:
            rows.append(f"| `/analyze_image` round trip through gradio_client (uploads the image every call) | "
                        f"{latency['api_call']['median']:.0f} ms | {latency['api_call']['p95']:.0f} ms |")
    if latency and load and "image" in load:
        rows.append(f"| load test, {load['clients']} concurrent gradio_client clients × {load['wall_s']:.0f} s "
                    f"(`{load['command']}`; load average {load['load_average_1min']} before): {load['requests']} "
                    f"requests, {load['failed']} failed; `/analyze_image` | {load['image']['p50_ms']:.0f} ms | "
                    f"{load['image']['p95_ms']:.0f} ms |")
        if "inside_analyze_image" in load:
            rows += ["", f"In the load test the time inside `analyze_image` was "
                     f"{load['inside_analyze_image']['p50_ms']:.0f} ms p50 (every call is a new upload); the rest is "
                     "queueing behind the single model slot, uploads, Gradio and the clients themselves, all on the "
                     "same machine."]
    if video:
        budgets = " / ".join(f"{r['effective_capacity']:g}" for r in video["rows"])
        rows += ["" if rows else None,
                 f"Video (`{video['command']}`; {video['video']}, {video['rows'][0]['frames']} frames, median of "
                 f"{video['rows'][0]['repeats']} runs, load average {video['load_average_1min']} before): "
                 + " / ".join(f"{r['total_fps']:.1f}" for r in video["rows"])
                 + f" frames/s end to end (decode + model + overlays + H.264) at e_c {budgets}; "
                 + " / ".join(f"{r['model_fps']:.0f}" for r in video["rows"]) + " frames/s through the model alone."]
    return [row for row in rows if row is not None]


# (curve of the shipped pair (seed 0), the same pair retrained with --seed 1, 2, …, what it is); see `seed_table`
SEED_REPEATS = [("curves/mone_vit_fmnist_convstem_cpu_isoflops.json",
                 "seeds/curves/mone_vit_fmnist_convstem_cpu_isoflops_seed1.json",
                 "seeds/curves/mone_vit_fmnist_convstem_cpu_isoflops_seed2.json",
                 "Fashion-MNIST, conv stem, isoFLOPs, trained on this CPU"),
                ("curves/mone_vit_scenes_v2_convstem_cpu_isoflops.json",
                 "seeds/curves/mone_vit_scenes_v2_convstem_cpu_isoflops_seed1.json",
                 "seeds/curves/mone_vit_scenes_v2_convstem_cpu_isoflops_seed2.json",
                 "Scenes data v2, conv stem, isoFLOPs, trained on this CPU")]


# (curve of the model trained with --router-mask-loss, curve of the same command without it, seed, its
# --router-mask-target)
_V2_MONE = "mone_vit_scenes_v2_convstem_cpu_isoflops"


def _seed_suffix(seed: int) -> str:
    """How a seed repeat's file name ends (seed 0, the shipped run, has no suffix)."""
    return f"_seed{seed}" if seed else ""


def _v2_task_loss_run(seed: int) -> tuple[str, str]:
    """(card, curve) of the Scenes v2 conv-stem CPU MoNE trained with the paper's loss and the default alpha floor:
    the shipped model for seed 0, its seed repeat otherwise."""
    folder = "seeds/" if seed else ""
    return f"{folder}{_V2_MONE}{_seed_suffix(seed)}.json", f"{folder}curves/{_V2_MONE}{_seed_suffix(seed)}.json"


MASK_SUPERVISED = [(f"ablations/{folder}/curves/{_V2_MONE}{_seed_suffix(seed)}.json", _v2_task_loss_run(seed)[1],
                    seed, target)
                   for folder, target in (("router_mask_loss", "largest"), ("router_mask_cascade", "cascade"))
                   for seed in (0, 1, 2)]                                              # a seed not run: no row


def _router_lead(curve: dict) -> str:
    """Learned minus random router top-1 at e_c 0.2, in points."""
    return f"{100 * (_top1(curve['points'], 'mone', 0.2) - _top1(curve['points'], 'random_router', 0.2)):+.1f}"


def _unseen_instances_top1(curve: dict) -> str:
    """MoNE's top-1 at e_c 0.3 on the split with unseen object instances (– where the curve has none)."""
    return _pct(_top1(_split_of(curve, "test_instances").get("points", []), "mone", 0.3))


def _gap(path_a: Path, a: dict, path_b: Path, b: dict, images: int) -> str:
    """top1(a) − top1(b) in points ± one standard error (`gap_standard_error`), a and b from curve files scored on
    the same images."""
    return f"{100 * (a['top1'] - b['top1']):+.1f} ± {gap_standard_error(path_a, 'test', a, b, images, path_b)}"


def mask_supervised_table() -> list[str]:
    """The Scenes v2 conv-stem MoNE trained with the mask-supervised router loss (`--router-mask-loss`, a
    diagnostic; each `--router-mask-target`) against the same command without it, seed by seed, on the same test
    images."""
    budgets = (0.15, 0.2, 0.3, 0.5, 1.0)
    rows = ["| target | seed | test images | dense | MoNE e_c 0.15 / 0.2 / 0.3 / 0.5 / 1.0: router supervised with the "
            "masks | the same, task loss only | supervised − task loss only at e_c 0.3 | supervised 0.3 − dense | "
            "object over-representation at e_c 0.3: supervised / task loss only | learned − random router at e_c "
            "0.2: supervised / task loss only | unseen instances at e_c 0.3: supervised / task loss only |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for supervised_file, plain_file, seed, target in MASK_SUPERVISED:
        curves_ = [_load(ASSETS / f) for f in (supervised_file, plain_file)]
        if None in curves_:
            continue
        (sup, plain), n = curves_, curves_[0]["images"]
        m = [{c: _point(curve["points"], "mone", c) for c in budgets} for curve in curves_]
        dense = _point(sup["points"], "dense", 1.0)
        rows.append(f"| {target} | {seed} | {n} | {_pct(dense['top1'])} | "
                    + " / ".join(_pct(m[0][c]["top1"]) for c in budgets) + " | "
                    + " / ".join(_pct(m[1][c]["top1"]) for c in budgets) + " | "
                    f"{_gap(ASSETS / supervised_file, m[0][0.3], ASSETS / plain_file, m[1][0.3], n)} | "
                    f"{_gap(ASSETS / supervised_file, m[0][0.3], ASSETS / supervised_file, dense, n)} | "
                    f"{_over_representation(_object_precision_of(sup, 0.3))} / "
                    f"{_over_representation(_object_precision_of(plain, 0.3))} | {_router_lead(sup)} / "
                    f"{_router_lead(plain)} | {_unseen_instances_top1(sup)} / {_unseen_instances_top1(plain)} |")
    return rows if len(rows) > 2 else []


# (seed, card, its curve) of the Scenes v2 conv-stem MoNE trained with each --alpha-floor: per seed first the model
# at the default floor (ALPHA_MIN: the shipped one, or its seed repeat), then the same command with a higher floor;
# a run not made: no row
ALPHA_FLOORS = [run for seed in (0, 1) for run in [(seed, *_v2_task_loss_run(seed))] + [
    (seed, f"ablations/alpha_floor/{_V2_MONE}_alpha{tag}{_seed_suffix(seed)}.json",
     f"ablations/alpha_floor/curves/{_V2_MONE}_alpha{tag}{_seed_suffix(seed)}.json") for tag in ("03", "09")]]


def alpha_floor_table() -> list[str]:
    """The Scenes v2 conv-stem MoNE trained with a higher alpha floor (`--alpha-floor`): the router learns only through
    alpha·dL/dr (Eq. 1) and alpha in Eq. 1 sets how much the routing probability scales each FFN output. Same
    command, draws and test images otherwise; gaps against the same seed at the default floor and against dense."""
    budgets = (0.15, 0.2, 0.3, 0.5, 1.0)
    rows = ["| seed | alpha floor | alphas at the end (first to last block) | router row norm | test images | MoNE e_c "
            "0.15 / 0.2 / 0.3 / 0.5 / 1.0 | 0.3 − the same seed at floor 0.01 | 0.3 − dense | object "
            "over-representation at e_c 0.3 | learned − random router at e_c 0.2 | unseen instances at e_c 0.3 |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    base_of = {}                                     # seed -> (curve path, curve) of its default-floor model
    for seed, card_file, curve_file in ALPHA_FLOORS:
        card, curve = _load(ASSETS / card_file), _load(ASSETS / curve_file)
        if None in (card, curve):
            continue
        base_file, base = base_of.setdefault(seed, (curve_file, curve))
        pts, n = curve["points"], curve["images"]
        m3, dense = _point(pts, "mone", 0.3), _point(pts, "dense", 1.0)
        alphas, norm, _ = _router_weights(ASSETS / card_file)
        floor = card["config"].get("alpha_floor", ALPHA_MIN)             # cards from before the flag: the default
        rows.append(f"| {seed} | {floor:g} | {', '.join(f'{a:.2f}' for a in alphas)} | {norm:.2f} | {n} | "
                    + " / ".join(_pct(_top1(pts, "mone", c)) for c in budgets) + " | "
                    + ("–" if base is curve else
                       _gap(ASSETS / curve_file, m3, ASSETS / base_file, _point(base["points"], "mone", 0.3), n))
                    + f" | {_gap(ASSETS / curve_file, m3, ASSETS / curve_file, dense, n)} | "
                    f"{_over_representation(_object_precision_of(curve, 0.3))} | "
                    f"{_router_lead(curve)} | {_unseen_instances_top1(curve)} |")
    return rows if len(rows) > 2 + len(base_of) else []     # the default-floor models alone compare nothing


# The Fashion-MNIST conv-stem dense baseline under each training schedule it was given; a missing card is skipped.
DENSE_SCHEDULES = ["dense_vit_fmnist_convstem.json", "dense_vit_fmnist_convstem_cpu.json",
                   "ablations/dense_schedule/dense_vit_fmnist_convstem_cpu_18ep.json"]


def dense_schedule_table() -> list[str]:
    """The Fashion-MNIST dense target (≥ 92 %) against the schedule each dense card was trained with: epochs, batch,
    peak learning rate, images seen and hours (and, for a GPU card, the hours `bench/train_throughput.py` estimates
    for it on this CPU), beside its test top-1 read from the card's curve file."""
    estimated_hours = {r["card"]: r["estimated_hours"] for r in (_load(ASSETS / "bench" / "train_cpu.json") or
                                                                  {"rows": []})["rows"]}
    rows = ["| card | trained on | epochs × batch, peak lr | images seen | train hours (est. on this CPU) | test images "
            f"| dense top-1 ± 1 s.e. | − {FMNIST_DENSE_TARGET:g} % target |", "|---|---|---|---|---|---|---|---|"]
    for card_file in DENSE_SCHEDULES:
        card = _load(ASSETS / card_file)
        curve = card and _load((ASSETS / card_file).parent / card["evaluation"]["curves"])
        if curve is None:
            continue
        cfg, hw, n = card["config"], card["hardware"], curve["images"]
        top1 = _top1(curve["points"], "dense")
        trained_on = hw.get("gpu") or _cpu_description(hw)
        hours = f"{card['train_seconds'] / 3600:.2f}"
        if hw.get("gpu") and Path(card_file).name in estimated_hours:
            hours += f" ({estimated_hours[Path(card_file).name]:.2f})"
        rows.append(f"| {card_file} | {trained_on} | {cfg['epochs']} × {cfg['batch_size']}, {cfg['lr']:g} | "
                    f"{card['data']['sizes']['images_seen']} | {hours} | {n} | {_pct(top1)} ± "
                    f"{standard_error_pt([top1], n):.1f} | {100 * top1 - FMNIST_DENSE_TARGET:+.1f} |")
    return rows if len(rows) > 2 else []


def seed_table() -> list[str]:
    """The same commands with another `--seed` (initialisation, data order, e_c draws, drop-path): how far the numbers
    and the targets' gaps move with training noise, next to one standard error of test-set noise; with three seeds or
    more, their mean ± sample standard deviation."""
    rows = ["| pair | seed | dense | MoNE 0.5 | MoNE 0.3 | MoNE 0.2 − random 0.2 | MoNE 0.5 − dense | "
            "MoNE 0.3 − dense | MoNE 0.3 − best MatViT of ≥ its MACs | ± 1 s.e. of a gap |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for paths in SEED_REPEATS:
        *files, what = paths
        loaded = [_load(ASSETS / file) for file in files]
        if None in loaded:                                        # a repeat not run (yet): no half a comparison
            continue
        columns = []                                              # per seed, in points (%) as the table shows them
        for seed, (file, curve) in enumerate(zip(files, loaded)):
            pts, n = curve["points"], curve["images"]
            dense_point, m3_point = _point(pts, "dense", 1.0), _point(pts, "mone", 0.3)
            dense, m3 = dense_point["top1"], m3_point["top1"]
            m5, m2 = _top1(pts, "mone", 0.5), _top1(pts, "mone", 0.2)
            best = _best_nested(pts, m3_point)["top1"]
            values = [100 * v for v in (dense, m5, m3, m2 - _top1(pts, "random_router", 0.2), m5 - dense,
                                        m3 - dense, m3 - best)]
            columns.append(values)
            se = gap_standard_error(ASSETS / file, "test", m3_point, dense_point, n)        # of MoNE 0.3 − dense
            rows.append(f"| {what} | {seed} | " + " | ".join(f"{v:.1f}" for v in values[:3]) + " | "
                        + " | ".join(f"{v:+.1f}" for v in values[3:]) + f" | {se} |")
        if len(columns) >= 3:
            stats = [(statistics.mean(c), statistics.stdev(c)) for c in zip(*columns)]
            rows.append(f"| {what} | mean ± s.d. of {len(columns)} | "
                        + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd in stats[:3]) + " | "
                        + " | ".join(f"{m:+.1f} ± {sd:.1f}" for m, sd in stats[3:]) + " | – |")
    return rows if len(rows) > 2 else []


def train_cost_table() -> list[str]:
    data = _load(ASSETS / "bench" / "train_cpu.json")
    if data is None:
        return []
    rows = [f"Training steps timed on this machine ({data['machine']}, {data['threads']} threads, batch "
            f"{data['batch_size']}, `python bench/train_throughput.py`), against the 3-hour target:", "",
            "| card | trained on | train time there | CPU img/s here | images seen | est. hours here | ≤ 3 h |",
            "|---|---|---|---|---|---|---|"]
    rows += [f"| {r['card']} | {r['trained_on']} | {r['train_seconds']:.0f} s | {r['images_per_second']:.0f} | "
             f"{r['images_seen']} | {r['estimated_hours']:.2f} | {'yes' if r['estimated_hours'] <= 3 else 'no'} |"
             for r in data["rows"]]
    return rows


def report() -> str:
    parts = [("### Targets of the training issue, checked against the curve files", targets_table()),
             ("### Accuracy against compute (from `assets/curves/*.json`)", accuracy_table()),
             ("### MatViT trained as a baseline (from `assets/curves/*.json`)", matvit_table()),
             ("### Scenes: unseen object instances and where the router sends the big expert", scenes_table()),
             ("### Did each shipped router learn? (alphas read from the checkpoints)", router_health_table()),
             ("### Can a router at block 0 find the objects? (from `assets/bench/router_ceiling*.json`)",
              router_ceiling_table()),
             ("### Does sending the objects to the largest expert pay? (from `assets/bench/oracle_routing*.json`)",
              oracle_routing_table()),
             ("### A router supervised with the object masks, Scenes v2 (from "
              "`assets/ablations/router_mask_*/curves/`)", mask_supervised_table()),
             ("### A higher alpha floor: the router's probability scales the FFN more, Scenes v2 (from "
              "`assets/ablations/alpha_floor/curves/`)", alpha_floor_table()),
             ("### Scenes test backgrounds that overlap training (from `assets/bench/background_split/`)",
              background_table()),
             ("### Six routers in a V-MoE layer, Fashion-MNIST (from `assets/routers/vmoe_fmnist.json`)",
              routers_table()),
             ("### Allocators on the trained MoNE model (from `assets/routers/mone_allocators_*.json`)",
              allocators_table()),
             ("### Training noise: the same pair with another seed (from `assets/seeds/curves/`)", seed_table()),
             (f"### Fashion-MNIST dense: the training schedule against the {FMNIST_DENSE_TARGET:g} % target (from "
              "the cards' curve files)",
              dense_schedule_table()),
             ("### Training cost on this machine (from `assets/bench/train_cpu.json`)", train_cost_table()),
             ("### Trained on this machine (from the cards)", trained_here_table()),
             ("### Speed (from `assets/bench/speed_*.json`)", speed_table()),
             ("### The app on this machine (from `assets/bench/{app_latency,load_test,video_fps}_cpu.json`)",
              app_speed_table())]
    return "\n".join(f"{title}\n\n" + "\n".join(rows) + "\n" for title, rows in parts if rows).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the generated block of README.md")
    args = parser.parse_args()
    text = report()
    if not args.write:
        print(text)
        return
    readme = ROOT / "README.md"
    content = readme.read_text()
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    readme.write_text(content[:start] + "\n" + text + content[end:])


if __name__ == "__main__":
    main()
