"""The README's result tables are the report generated from the committed result files, verbatim."""
import json
from pathlib import Path

from mone import report


def test_readme_tables_are_generated_from_result_files():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme[readme.index(report.BEGIN) + len(report.BEGIN):readme.index(report.END)]
    assert block.strip() == report.report().strip(), "run `python -m mone.report --write`"


def test_report_reads_every_shipped_curve():
    text = report.report()
    for name, what, _ in report.CURVES:
        if (report.ASSETS / "curves" / f"{name}.json").is_file():
            assert what in text


def test_router_health_flags_a_router_no_gradient_reaches(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    router = torch.zeros(4, 64)
    router[:, 0] = 0.5                                                   # row norm 0.5; at init 0.02·sqrt(64) = 0.16
    for name, alphas in (("mone_a", [-0.2, -0.1]), ("mone_b", [-0.2, 0.3])):
        save_file({"blocks.0.alpha": torch.tensor(alphas[0]), "blocks.1.alpha": torch.tensor(alphas[1]),
                   "router.weight": router}, tmp_path / f"{name}.safetensors")
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(weights=f"{name}.safetensors")))
    rows = report.router_health_table()
    assert rows[2] == "| mone_a.json | -0.20, -0.10 | 0 of 2 | 0.50 (0.16) | **frozen**: no gradient reaches it |"
    assert rows[3] == "| mone_b.json | -0.20, 0.30 | 1 of 2 | 0.50 (0.16) | learning |"


def test_standard_error_of_an_accuracy_and_of_a_difference():
    import pytest
    assert report.standard_error_pt([0.9], 10_000) == pytest.approx(0.3)          # sqrt(0.9·0.1 / 1e4) = 0.003
    assert report.standard_error_pt([0.9, 0.8], 10_000) == pytest.approx(0.5)     # sqrt((0.09 + 0.16) / 1e4)
    assert report.standard_error_pt([0.5], 100) == pytest.approx(5.0)


def test_a_run_stopped_before_its_planned_steps_is_labelled(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "CURVES", [("a", "A, equal epochs", "scenes"), ("b", "B", "scenes")])
    (tmp_path / "a.json").write_text(json.dumps(dict(steps=dict(done=1453, planned=1500))))
    (tmp_path / "b.json").write_text(json.dumps(dict(steps=dict(done=10, planned=10))))
    assert [what for _, what, _ in report.curves()] == ["A, equal epochs (MoNE stopped at step 1453 of 1500)", "B"]


def test_targets_table_gives_each_gap_its_standard_error(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "CURVES", [("m", "FM", "fashion_mnist")])
    points = [dict(method="dense", effective_capacity=1.0, macs=100, top1=0.9),
              dict(method="mone", effective_capacity=0.5, macs=50, top1=0.896),
              dict(method="mone", effective_capacity=0.3, macs=30, top1=0.8),
              dict(method="matvit", effective_capacity=0.5, macs=50, top1=0.9)]
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "m.json").write_text(json.dumps(dict(split="test", images=10_000, points=points)))
    assert report.targets_table()[2:] == [
        "| FM: dense ≥ 92.0 % | 90.0 | 0.3 | no |",
        "| FM: MoNE e_c=0.5 ≥ dense − 0.5 pt (pt vs dense) | -0.4 | ≤ 0.4 | yes |",   # no outcomes: unpaired
        "| FM: MoNE e_c=0.3 ≥ dense − 1.5 pt (pt vs dense) | -10.0 | ≤ 0.5 | no |",
        "| FM: MoNE e_c=0.3 above every MatViT point of ≥ its MACs (pt over the best) | -10.0 | ≤ 0.5 | no |"]


def test_a_matvit_trained_as_a_baseline_gets_its_target_row_and_table(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "CURVES", [("m", "FM", "fashion_mnist")])
    widths = [(0.125, 10, 0.5, 0.6), (0.25, 20, 0.7, 0.75), (0.5, 40, 0.84, 0.82), (1.0, 80, 0.85, 0.9)]
    points = [dict(method="dense", effective_capacity=1.0, macs=100, top1=0.9),
              dict(method="mone", effective_capacity=0.5, macs=50, top1=0.896),
              dict(method="mone", effective_capacity=0.3, macs=30, top1=0.85)]
    for e_c, macs, own, trained in widths:
        points += [dict(method="matvit", effective_capacity=e_c, macs=macs, top1=own),
                   dict(method="matvit_baseline", effective_capacity=e_c, macs=macs, top1=trained)]
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "m.json").write_text(json.dumps(dict(split="test", images=10_000, points=points)))
    rows = report.targets_table()
    # the own widths at >= 30 MACs are 84 and 85 %; the trained MatViT's 82 and 90 %: the best of each counts
    assert rows[-2] == "| FM: MoNE e_c=0.3 above every MatViT point of ≥ its MACs (pt over the best) | +0.0 | ≤ 0.5 | no |"
    assert rows[-1].startswith("| FM: MoNE e_c=0.3 above every point of ≥ its MACs of the MatViT trained as a "
                               "baseline (pt over the best) | -5.0 | ")
    assert report.matvit_table()[2:] == ["| FM | 10000 | 60.0 / 75.0 / 82.0 / 90.0 | 50.0 / 70.0 / 84.0 / 85.0 | "
                                         "85.0 (0.30) | 90.0 |"]
    (tmp_path / "curves" / "m.json").write_text(json.dumps(dict(
        split="test", images=10_000, points=[p for p in points if p["method"] != "matvit_baseline"])))
    assert report.matvit_table() == [] and "trained as a baseline" not in report.targets_table()[-1]


def test_paired_standard_error_of_a_difference_on_the_same_images():
    import numpy as np
    import pytest
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    # a − b = 0, 1, −1, 0: mean 0, sample variance 2/3, s.e. sqrt(2/3 / 4) = 0.408
    assert report.paired_standard_error_pt(a, b) == pytest.approx(40.82, abs=0.01)
    assert report.paired_standard_error_pt(a, a) == 0.0                     # the same outcomes: no noise in the gap


def test_targets_table_uses_the_paired_standard_error_where_outcomes_are_stored(tmp_path, monkeypatch):
    import numpy as np
    from mone.evaluate import outcome_key, write_outcomes
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "CURVES", [("m", "S", "scenes")])
    n = 1000
    dense = np.arange(n) < 800                                       # right on the first 800 images
    mone3 = dense.copy()
    mone3[790:810] = ~mone3[790:810]                                 # 10 lost, 10 gained: top-1 0.8 as well
    mone2, random2 = np.arange(n) < 700, np.arange(n) < 600
    hits = dict(dense=(1.0, dense), mone=(0.3, mone3))
    points = [dict(method=m, effective_capacity=c, macs=10, top1=float(h.mean()))
              for m, (c, h) in hits.items()]
    points += [dict(method="mone", effective_capacity=0.2, macs=5, top1=0.7),
               dict(method="random_router", effective_capacity=0.2, macs=5, top1=0.6)]
    (tmp_path / "curves").mkdir()
    write_outcomes(tmp_path / "curves" / "m.outcomes.safetensors",
                   {outcome_key("test", p): h for p, h in zip(points, (dense, mone3, mone2, random2))})
    (tmp_path / "curves" / "m.json").write_text(json.dumps(dict(split="test", images=n, points=points,
                                                                outcomes="m.outcomes.safetensors")))
    rows = report.targets_table()
    # 20 of 1000 images differ by ±1, mean 0: s.e. = 100·sqrt(20/999)/sqrt(1000) = 0.45 pt (unpaired: 1.8)
    assert rows[3] == "| S: MoNE e_c=0.3 within 1 pt of dense (pt vs dense) | +0.0 | 0.4 | yes |"
    # 100 images where only mone 0.2 is right: d = 1 on 10 %, s.e. = 100·sqrt(0.09·1000/999)/sqrt(1000) = 0.95 pt
    assert rows[4] == "| S: learned router ≥ 3 pt above random at e_c=0.2 (pt) | +10.0 | 0.9 | yes |"


def test_oracle_routing_table_gives_gaps_and_checks_the_router_against_the_curve(tmp_path, monkeypatch):
    import numpy as np
    from mone.evaluate import outcome_key, write_outcomes
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    (tmp_path / "curves").mkdir()
    (tmp_path / "bench").mkdir()
    point = dict(method="mone", effective_capacity=0.3, macs=30, top1=0.7)
    dense = dict(method="dense", effective_capacity=1.0, macs=100, top1=0.8)
    write_outcomes(tmp_path / "curves" / "m.outcomes.safetensors",
                   {outcome_key("test", point): np.arange(20) % 2 == 0,     # 50 % on the first 10, 5 right
                    outcome_key("test", dense): np.arange(20) < 8})         # 80 % on the first 10
    (tmp_path / "curves" / "m.json").write_text(json.dumps(dict(split="test", images=20, points=[point, dense],
                                                                outcomes="m.outcomes.safetensors")))

    def kind(top1, over, gap=None):
        return dict(top1=top1, over_representation=over, **({} if gap is None else
                                                             dict(gap_to_router_pt=gap, gap_se_pt=1.23)))
    rows = [dict(effective_capacity=0.3, router=kind(0.5, 1.5), oracle=kind(0.6, 4.4, 10.0),
                 background=kind(0.2, 0.0, -30.0), random=kind(0.4, 1.0, -10.0)),
            dict(effective_capacity=0.2, router=kind(0.4, float("nan")), oracle=kind(0.6, float("nan"), 20.0),
                 background=kind(0.2, float("nan"), -20.0), random=kind(0.3, float("nan"), -10.0))]
    (tmp_path / "bench" / "oracle_routing_m.json").write_text(json.dumps(dict(
        card="assets/m.json", split="test", images=10, object_area_share=0.25, command="python bench/x", seconds=9,
        rows=rows)))
    table = report.oracle_routing_table()
    # oracle − dense: 60 − 80 on 10 images, unpaired bound 100·sqrt(.24 + .16)/sqrt(10) = 20.0
    assert table[-2] == ("| 0.3 | 50.0 (1.50×) | 60.0 (4.40×) | +10.0 ± 1.2 | -20.0 ± ≤ 20.0 | 20.0 (0.00×) | "
                         "-30.0 ± 1.2 | 40.0 (1.00×) | -10.0 ± 1.2 | identical |")
    assert table[-1] == ("| 0.2 | 40.0 (–) | 60.0 (–) | +20.0 ± 1.2 | -20.0 ± ≤ 20.0 | 20.0 (–) | -20.0 ± 1.2 | "
                         "30.0 (–) | -10.0 ± 1.2 | – |")           # no curve point at 0.2; no largest-expert token


def _write_routing_curve(path: Path, hits, over: float, dense_hits=None, unseen_top1: float | None = None) -> None:
    """A Scenes curve file with fixed MoNE points except e_c 0.3, whose per-image outcomes are `hits` (stored, so
    gaps get paired standard errors), object over-representation `over` / 0.2 at e_c 0.3, random router 60 % at 0.2,
    optionally a dense point with its outcomes and an unseen-instance split."""
    from mone.evaluate import outcome_key, write_outcomes
    path.parent.mkdir(parents=True, exist_ok=True)
    points = [dict(method="mone", effective_capacity=c, macs=10, top1=t) for c, t in ((0.15, 0.65), (0.2, 0.7),
                                                                                       (0.5, 0.8), (1.0, 0.75))]
    points += [dict(method="mone", effective_capacity=0.3, macs=10, top1=float(hits.mean())),
               dict(method="random_router", effective_capacity=0.2, macs=5, top1=0.6)]
    outcomes = {outcome_key("test", points[4]): hits}
    if dense_hits is not None:
        points.append(dict(method="dense", effective_capacity=1.0, macs=30, top1=float(dense_hits.mean())))
        outcomes[outcome_key("test", points[-1])] = dense_hits
    write_outcomes(path.with_suffix(".outcomes.safetensors"), outcomes)
    unseen = [dict(method="mone", effective_capacity=0.3, macs=10, top1=unseen_top1)]
    path.write_text(json.dumps(dict(split="test", images=len(hits), points=points,
                                    splits={} if unseen_top1 is None else
                                    dict(test_instances=dict(images=len(hits), points=unseen)),
                                    outcomes=path.stem + ".outcomes.safetensors",
                                    object_precision=[dict(effective_capacity=0.3, mone=over,
                                                           object_area_share=0.2)])))


def test_mask_supervised_table_pairs_the_two_models_on_the_same_images(tmp_path, monkeypatch):
    import numpy as np
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "MASK_SUPERVISED", [("sup/curves/m.json", "curves/m.json", 0, "cascade")])
    n = 1000
    plain = np.arange(n) < 700
    supervised = plain.copy()
    supervised[700:720] = True                                    # 20 more images right, none lost: +2.0 pt
    _write_routing_curve(tmp_path / "curves" / "m.json", plain, 0.3)
    _write_routing_curve(tmp_path / "sup" / "curves" / "m.json", supervised, 0.6, dense_hits=np.arange(n) < 730,
                         unseen_top1=0.5)
    # the supervised − plain gap: d = 1 on 2 % of images, s.e. 100·sqrt(.0196·1000/999)/sqrt(1000) = 0.44 pt
    assert report.mask_supervised_table()[-1] == (
        "| cascade | 0 | 1000 | 73.0 | 65.0 / 70.0 / 72.0 / 80.0 / 75.0 | 65.0 / 70.0 / 70.0 / 80.0 / 75.0 | +2.0 ± 0.4 | "
        "-1.0 ± 0.3 | 3.00× / 1.50× | +10.0 / +10.0 | 50.0 / – |")


def test_alpha_floor_table_reads_each_floor_from_its_card_and_compares_with_the_default(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from safetensors.torch import save_file
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "ALPHA_FLOORS", [(0, "m.json", "curves/m.json"), (0, "af/m.json", "af/curves/m.json"),
                                                 (0, "af/not_run.json", "af/curves/not_run.json"),
                                                 (1, "m1.json", "curves/m1.json")])
    n = 1000
    base, floored = np.arange(n) < 700, np.arange(n) < 680                      # 20 fewer images right: −2.0 pt
    _write_routing_curve(tmp_path / "curves" / "m.json", base, 0.3, dense_hits=np.arange(n) < 730)
    _write_routing_curve(tmp_path / "af" / "curves" / "m.json", floored, 0.6, dense_hits=np.arange(n) < 730,
                         unseen_top1=0.5)
    router = torch.zeros(4, 64)
    router[:, 0] = 0.5                                                          # RMS row norm 0.5
    for card, config, alphas in (("m", {}, (0.01, 0.02)), ("af/m", dict(alpha_floor=0.3), (0.3, 0.45))):
        save_file({"blocks.0.alpha": torch.tensor(alphas[0]), "blocks.1.alpha": torch.tensor(alphas[1]),
                   "router.weight": router}, tmp_path / f"{card}.safetensors")
        (tmp_path / f"{card}.json").write_text(json.dumps(dict(weights="m.safetensors", config=config)))
    table = report.alpha_floor_table()
    assert len(table) == 4                                                      # the runs not made have no row
    # a card from before --alpha-floor ran at the default floor, ALPHA_MIN
    assert table[2] == ("| 0 | 0.01 | 0.01, 0.02 | 0.50 | 1000 | 65.0 / 70.0 / 70.0 / 80.0 / 75.0 | – | -3.0 ± 0.5 | "
                        "1.50× | +10.0 | – |")
    # floored − base: d = −1 on 2 % of images, s.e. 0.44 pt; floored − dense: d = −1 on 5 %, s.e. 0.69 pt
    assert table[3] == ("| 0 | 0.3 | 0.30, 0.45 | 0.50 | 1000 | 65.0 / 70.0 / 68.0 / 80.0 / 75.0 | -2.0 ± 0.4 | "
                        "-5.0 ± 0.7 | 3.00× | +10.0 | 50.0 |")
    monkeypatch.setattr(report, "ALPHA_FLOORS", report.ALPHA_FLOORS[:1])
    assert report.alpha_floor_table() == []                                     # the default alone compares nothing


def _write_seed_curve(path, dense_top1: float) -> None:
    """A seed repeat's curve file: only dense differs between seeds."""
    points = [dict(method="dense", effective_capacity=1.0, macs=100, top1=dense_top1),
              dict(method="mone", effective_capacity=0.5, macs=50, top1=0.89),
              dict(method="mone", effective_capacity=0.3, macs=30, top1=0.87),
              dict(method="mone", effective_capacity=0.2, macs=20, top1=0.85),
              dict(method="random_router", effective_capacity=0.2, macs=20, top1=0.80),
              dict(method="matvit", effective_capacity=0.5, macs=50, top1=0.86)]
    path.write_text(json.dumps(dict(images=10_000, points=points)))


def test_seed_table_shows_each_seed_and_the_gaps(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "SEED_REPEATS", [("a.json", "b.json", "P")])
    for name, dense in (("a.json", 0.9), ("b.json", 0.88)):
        _write_seed_curve(tmp_path / name, dense)
    rows = report.seed_table()
    assert rows[2] == "| P | 0 | 90.0 | 89.0 | 87.0 | +5.0 | -1.0 | -3.0 | +1.0 | ≤ 0.5 |"
    assert rows[3] == "| P | 1 | 88.0 | 89.0 | 87.0 | +5.0 | +1.0 | -1.0 | +1.0 | ≤ 0.5 |"


def test_seed_table_adds_mean_and_sample_sd_from_three_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "SEED_REPEATS", [("a.json", "b.json", "c.json", "P")])
    for name, dense in (("a.json", 0.90), ("b.json", 0.88), ("c.json", 0.86)):
        _write_seed_curve(tmp_path / name, dense)
    # dense 90, 88, 86: mean 88, sample s.d. 2; MoNE 0.5 − dense -1, +1, +3: mean +1, s.d. 2
    assert report.seed_table()[-1] == ("| P | mean ± s.d. of 3 | 88.0 ± 2.0 | 89.0 ± 0.0 | 87.0 ± 0.0 | "
                                       "+5.0 ± 0.0 | +1.0 ± 2.0 | -1.0 ± 2.0 | +1.0 ± 0.0 | – |")


def test_background_table_compares_all_with_and_without_the_overlaps(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "CURVES", [("m", "Scenes X", "scenes")])
    (tmp_path / "bench" / "background_split").mkdir(parents=True)

    def part(images, dense, m3, m2, r2):
        return dict(images=images, top1={"dense": dense, "mone@0.2": m2, "mone@0.3": m3, "mone@0.5": m3,
                                         "random@0.2": r2})
    per = {"bx": dict(part(10, 0.9, 0.9, 0.9, 0.9), dense_most_frequent_wrong=dict(as_class="houses",
                                                                                   share_of_images=0.1)),
           "hm": dict(part(10, 0.3, 0.2, 0.2, 0.3), dense_most_frequent_wrong=dict(as_class="fish",
                                                                                   share_of_images=0.4))}
    data = dict(overlapping_sources={"bx": "a box", "hm": "birds"}, all=part(100, 0.7, 0.71, 0.66, 0.58),
                clean=part(80, 0.72, 0.75, 0.69, 0.60), overlapping=part(20, 0.6, 0.55, 0.55, 0.6), per_source=per)
    (tmp_path / "bench" / "background_split" / "m.json").write_text(json.dumps(data))
    assert report.background_table()[-1] == ("| Scenes X | 100 (80) | 70.0 / 72.0 / 60.0 | 71.0 / 75.0 / 55.0 | "
                                              "+1.0 / +3.0 | +8.0 / +9.0 | 90.0 / 30.0 | "
                                              "houses (10.0 %), fish (40.0 %) | – |")


def test_app_speed_table_reads_the_bench_files(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    assert report.app_speed_table() == []
    (tmp_path / "bench").mkdir()
    env = dict(date="2026-11-27T00:00:00Z", machine="x86_64", cpus=2, torch_threads=1, load_average_1min=0.1)
    stats = dict(n=3, median=33.84, p95=37.0, max=40.0)
    (tmp_path / "bench" / "app_latency_cpu.json").write_text(json.dumps(dict(
        env, card="m", model="mone_x", image="a.jpg", allocator="epr", moves=3, move_fn=stats, move_server=stats,
        upload_ms=804.4, command="python bench/app_latency.py --json x")))
    (tmp_path / "bench" / "video_fps_cpu.json").write_text(json.dumps(dict(
        env, video="b.mp4", command="python bench/video_fps.py", rows=[
            dict(effective_capacity=0.25, frames=48, model_fps=107.2, total_fps=27.84, repeats=5),
            dict(effective_capacity=1.0, frames=48, model_fps=79.0, total_fps=30.5, repeats=5)])))
    rows = report.app_speed_table()
    assert "| slider move, server side incl. Gradio postprocessing (`Blocks.process_api`) | **33.8 ms** | 37.0 ms |" \
        in rows
    assert "| first analysis of an upload (encode + batched 18-budget grid + timings) | 804 ms | |" in rows
    assert not any("gradio_client" in row for row in rows)       # API call and load test not measured: no row
    assert "b.mp4, 48 frames, median of 5 runs, load average 0.1 before" in rows[-1]
    assert rows[-1].endswith("27.8 / 30.5 frames/s end to end (decode + model + overlays + H.264) at e_c 0.25 / 1; "
                             "107 / 79 frames/s through the model alone.")


def test_allocators_table_gives_each_card_its_own_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    (tmp_path / "routers").mkdir()
    for name, epr in (("a", 0.9), ("b", 0.8)):
        results = [dict(split="mone", allocator="epr", effective_capacity=0.3, accuracy=epr),
                   dict(split="mone", allocator="random", effective_capacity=0.3, accuracy=0.5),
                   dict(split="uniform", allocator="epr", effective_capacity=0.3, accuracy=0.7)]
        (tmp_path / "routers" / f"mone_allocators_{name}.json").write_text(
            json.dumps(dict(card=f"assets/{name}.json", results=results)))
    rows = report.allocators_table()
    assert rows[:6] == ["`a.json`, capacity split of the paper, test top-1 (%):", "",
                        "| allocator | e_c=0.3 |", "|---|---|", "| epr | 90.0 |", "| random | 50.0 |"]
    second = rows.index("`b.json`, capacity split of the paper, test top-1 (%):")
    assert rows[second - 1] == ""                                   # a blank line between the two cards' tables
    assert rows[-2:] == ["| mone | 80.0 |", "| uniform | 70.0 |"]


def test_dense_schedule_table_reads_each_card_and_its_curve(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "DENSE_SCHEDULES", ["d.json", "ab/d.json", "ab/not_run.json"])
    for card_file, gpu, top1 in (("d.json", "H100", 0.915), ("ab/d.json", None, 0.9)):
        folder = (tmp_path / card_file).parent
        (folder / "curves").mkdir(parents=True)
        (folder / "curves" / "d.json").write_text(json.dumps(dict(
            images=10_000, points=[dict(method="dense", effective_capacity=1.0, macs=100, top1=top1)])))
        (tmp_path / card_file).write_text(json.dumps(dict(
            config=dict(epochs=32, batch_size=512, lr=1.5e-3), data=dict(sizes=dict(images_seen=1_916_928)),
            hardware=dict(gpu=gpu, cpu="AMD EPYC", cpu_cores=2, threads=2), train_seconds=5400,
            evaluation=dict(curves="curves/d.json"))))
    table = report.dense_schedule_table()
    assert len(table) == 4                                                      # the run not made has no row
    # s.e. of 91.5 % on 10 000 images: sqrt(.915 * .085 / 1e4) = 0.28 pt
    assert table[2] == "| d.json | H100 | 32 × 512, 0.0015 | 1916928 | 1.50 | 10000 | 91.5 ± 0.3 | -0.5 |"
    assert table[3] == ("| ab/d.json | AMD EPYC, 2 cores, 2 torch thread(s) | 32 × 512, 0.0015 | 1916928 | 1.50 | "
                        "10000 | 90.0 ± 0.3 | -2.0 |")
