"""`python -m mone.evaluate`: the curve file's schema, the plot, and the headline numbers written into the card."""
import json

import pytest

from mone.evaluate import GRID, evaluate, main, read_outcomes
from mone.train import parse_args, train


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """A tiny MoNE, dense model and MatViT, trained for a few steps on the synthetic set (it has object masks)."""
    root = tmp_path_factory.mktemp("eval")
    paths = {}
    for kind in ("mone", "dense", "matvit"):
        extra = ["--nested-widths"] if kind == "matvit" else []
        model = "dense" if kind == "dense" else "mone"
        train(parse_args(["--dataset", "synthetic", "--model", f"{model}_vit_tiny_patch4_32", "--device", "cpu",
                          "--batch-size", "32", "--train-size", "64", "--eval-size", "16", "--epochs", "1",
                          "--workers", "0", "--out-dir", str(root / f"run_{kind}"), *extra,
                          "--export", str(root / "assets" / f"{kind}_tiny")]))
        paths[kind] = root / "assets" / f"{kind}_tiny.json"
    return paths


def test_curves_schema_plot_and_card(cards):
    out_dir = cards["mone"].parent / "curves"
    curves = evaluate(cards["mone"], cards["dense"], limit=16, batch_size=16, device="cpu", out_dir=out_dir)
    saved = json.loads((out_dir / "mone_tiny.json").read_text())
    assert saved == json.loads(json.dumps(curves))
    assert saved["model"] == "mone_tiny" and saved["split"] == "test" and saved["images"] == 16
    points = saved["points"]
    assert {p["method"] for p in points} == {"mone", "random_router", "matvit", "dense"}
    for p in points:
        assert {"method", "effective_capacity", "macs", "top1"} <= p.keys() and 0.0 <= p["top1"] <= 1.0
    for method in ("mone", "random_router"):
        line = [p for p in points if p["method"] == method]
        assert [p["effective_capacity"] for p in line] == list(GRID)
        assert all(a["macs"] < b["macs"] for a, b in zip(line, line[1:]))
    assert [p["effective_capacity"] for p in points if p["method"] == "matvit"] == [0.125, 0.25, 0.5, 1.0]
    mone_full = next(p for p in points if p["method"] == "mone" and p["effective_capacity"] == 1.0)
    dense = next(p for p in points if p["method"] == "dense")
    assert dense["macs"] < mone_full["macs"]      # same shape; MoNE at e_c = 1 only adds the router
    rows = saved["object_precision"]
    assert [r["effective_capacity"] for r in rows] == list(GRID)
    for r in rows:
        assert 0 < r["object_area_share"] < 1
        assert r["mone"] is None or 0 <= r["mone"] <= 1
    assert rows[-1]["mone"] == rows[-1]["random_router"] == pytest.approx(rows[-1]["object_area_share"], abs=1e-4)
    assert len(saved["router_gap"]) == len(GRID)
    png = out_dir / "mone_tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = json.loads(cards["mone"].read_text())
    evaluation = card["evaluation"]
    assert evaluation["curves"] == "curves/mone_tiny.json" and evaluation["images"] == 16
    assert set(evaluation["top1"]) == {"e_c=0.25", "e_c=0.5", "e_c=0.75", "e_c=1"}
    assert 0 <= evaluation["dense_top1"] <= 1


def test_outcomes_file_holds_each_points_per_image_results(cards, tmp_path):
    curves = evaluate(cards["mone"], cards["dense"], limit=13, batch_size=5, device="cpu", out_dir=tmp_path / "a")
    path = tmp_path / "a" / "mone_tiny.json"
    assert curves["outcomes"] == "mone_tiny.outcomes.safetensors" and (tmp_path / "a" / curves["outcomes"]).is_file()
    for split, result in [("test", curves), *curves["splits"].items()]:
        for point in result["points"]:
            hits = read_outcomes(path, split, point)
            assert hits.dtype == bool and hits.shape == (13,)               # 13 images: packbits pads to 16 bits
            assert hits.mean() == pytest.approx(point["top1"], abs=1e-5)
    # batches of 5 or 13 images: the same images in the same order (the learned router and dense are per image)
    again = evaluate(cards["mone"], cards["dense"], limit=13, batch_size=13, device="cpu", out_dir=tmp_path / "b")
    for point in (p for p in again["points"] if p["method"] in ("mone", "dense")):
        assert (read_outcomes(path, "test", point) ==
                read_outcomes(tmp_path / "b" / "mone_tiny.json", "test", point)).all()


def test_a_curve_without_outcomes_reads_none(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(dict(points=[])))
    assert read_outcomes(tmp_path / "c.json", "test", dict(method="dense", effective_capacity=1.0)) is None


def test_random_router_is_reproducible_and_dense_cards_evaluate_alone(cards, tmp_path):
    a = evaluate(cards["mone"], limit=8, device="cpu", out_dir=tmp_path / "a")
    b = evaluate(cards["mone"], limit=8, device="cpu", out_dir=tmp_path / "b")
    assert a["points"] == b["points"] and a["object_precision"] == b["object_precision"]
    main(["--card", str(cards["dense"]), "--limit", "8", "--device", "cpu", "--out-dir", str(tmp_path / "d")])
    dense = json.loads((tmp_path / "d" / "dense_tiny.json").read_text())
    assert [p["method"] for p in dense["points"]] == ["dense"] and "object_precision" not in dense
    evaluation = json.loads(cards["dense"].read_text())["evaluation"]
    assert evaluation["dense_top1"] == dense["points"][0]["top1"]
    assert "top1" not in evaluation and "matvit_top1" not in evaluation     # no empty MoNE fields on a dense card


def test_a_matvit_baseline_adds_its_widths_and_alone_has_no_routing_to_score(cards, tmp_path):
    both = evaluate(cards["mone"], cards["dense"], limit=16, device="cpu", out_dir=tmp_path / "a",
                    matvit_card=cards["matvit"])
    baseline = [p for p in both["points"] if p["method"] == "matvit_baseline"]
    own = [p for p in both["points"] if p["method"] == "matvit"]
    assert [p["effective_capacity"] for p in baseline] == [0.125, 0.25, 0.5, 1.0]
    assert [p["macs"] for p in baseline] == [p["macs"] for p in own]          # same shape, same widths
    assert both["matvit_card"] == str(cards["matvit"])
    evaluation = json.loads(cards["mone"].read_text())["evaluation"]
    assert set(evaluation["matvit_baseline_top1"]) == {"e_c=0.125", "e_c=0.25", "e_c=0.5", "e_c=1"}
    # alone, the MatViT card has only its widths (its router was never trained) and the same per-image results
    alone = evaluate(cards["matvit"], limit=16, device="cpu", out_dir=tmp_path / "b")
    assert {p["method"] for p in alone["points"]} == {"matvit"} and "object_precision" not in alone
    for mine, theirs in zip(alone["points"], baseline):
        assert (read_outcomes(tmp_path / "b" / "matvit_tiny.json", "test", mine) ==
                read_outcomes(tmp_path / "a" / "mone_tiny.json", "test", theirs)).all()
    evaluation = json.loads(cards["matvit"].read_text())["evaluation"]
    assert "top1" not in evaluation and set(evaluation["matvit_top1"]) == {"e_c=0.125", "e_c=0.25", "e_c=0.5", "e_c=1"}
    with pytest.raises(ValueError, match="is not a MatViT"):
        evaluate(cards["mone"], matvit_card=cards["mone"], limit=4, device="cpu", out_dir=tmp_path / "c")


def test_a_dense_card_prepared_differently_is_refused(cards):
    card = json.loads(cards["dense"].read_text())
    card["preprocess"]["mean"] = [0.0] * len(card["preprocess"]["mean"])
    other = cards["dense"].with_name("dense_other_mean.json")
    other.write_text(json.dumps(card))
    with pytest.raises(ValueError, match="preprocess.mean"):
        evaluate(cards["mone"], other, limit=4, batch_size=4, device="cpu", out_dir=cards["mone"].parent / "x")


def test_a_dense_card_on_another_scenes_data_version_is_refused(cards):
    def as_scenes(path, version):
        card = json.loads(path.read_text())
        card["data"]["dataset"] = "scenes"
        card["data"]["generator"] = {"version": version} if version else {}     # no field: a version-1 card
        out = path.with_name(f"{path.stem}_scenes_v{version}.json")
        out.write_text(json.dumps(card))
        return out

    with pytest.raises(ValueError, match="Scenes data version 1 there, 2 here"):
        evaluate(as_scenes(cards["mone"], 2), as_scenes(cards["dense"], None), limit=4, batch_size=4, device="cpu",
                 out_dir=cards["mone"].parent / "x")
