"""The explorer app: event functions called directly, the wiring, and the launched app through gradio_client.

Everything runs on a tiny random MoNE (mone_vit_tiny_patch4_32) saved as a card in a temporary assets folder, with a
fake but schema-correct curve file that exists only there ($MONE_ASSETS points the app at it).
"""
import contextlib
import json
import os
import re
import resource
import socket
import struct
import time
import zlib
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import mone
from mone.inference import (BUDGET_GRID, assignments_for, encode, forward_assignments, read_image,
                            to_model_input)

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["mammals", "birds", "fruit", "vehicles", "houses", "flowers", "insects", "fish"]


# ------------------------------------------------------------------------------------------------ fixtures
def write_card(directory, name="tiny", model="mone_vit_tiny_patch4_32", in_chans=3, size=32, curve=True, seed=0):
    """A random MoNE card (+ a fake, schema-correct curve file) in `directory`; returns the model."""
    directory = Path(directory)
    (directory / "curves").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    m = timm.create_model(model, num_classes=len(CLASSES), in_chans=in_chans).eval()
    with torch.no_grad():
        m.router.weight.normal_(0, 0.5)                            # a router with opinions
        for blk in m.blocks:
            blk.alpha.fill_(0.2)
    mone.save_weights(m, directory / f"{name}.safetensors")
    card = dict(model=model, model_kwargs=dict(num_classes=len(CLASSES), in_chans=in_chans),
                weights=f"{name}.safetensors",
                preprocess=dict(image_size=size, in_chans=in_chans, mean=[0.5] * in_chans, std=[0.25] * in_chans,
                                classes=CLASSES))
    (directory / f"{name}.json").write_text(json.dumps(card))
    if curve:
        pts = []
        for b in BUDGET_GRID:
            pts.append(dict(method="mone", effective_capacity=b, macs=mone.count_macs(m, b), top1=0.5 + 0.4 * b))
            pts.append(dict(method="random_router", effective_capacity=b, macs=mone.count_macs(m, b),
                            top1=0.45 + 0.4 * b))
        for j, f in enumerate([0.125, 0.25, 0.5, 1.0]):
            caps = mone.single_expert_capacities(j)
            for method, top1 in (("matvit", 0.4 + 0.45 * f), ("matvit_baseline", 0.42 + 0.45 * f)):
                pts.append(dict(method=method, effective_capacity=f, macs=mone.count_macs(m, f, capacities=caps),
                                top1=top1, expert=j))
        pts.append(dict(method="dense", effective_capacity=1.0, macs=mone.dense_macs(m), top1=0.9))
        (directory / "curves" / f"{name}.json").write_text(json.dumps(dict(model=name, split="test", points=pts)))
    return m


def make_assets(directory):
    """tiny (RGB, with curve), tiny_grey (1 channel, no curve), broken (corrupt weights), missing (no weights),
    a_matvit (a MatViT baseline: not an app model)."""
    directory = Path(directory)
    write_card(directory, "tiny")
    write_card(directory, "a_matvit", curve=False)
    card = json.loads((directory / "a_matvit.json").read_text())
    (directory / "a_matvit.json").write_text(json.dumps({**card, "config": {"nested_widths": True}}))
    write_card(directory, "tiny_grey", in_chans=1, curve=False, seed=1)
    write_card(directory, "broken", curve=False)
    (directory / "broken.safetensors").write_bytes(b"\x00" * 100)
    write_card(directory, "missing", curve=False)
    (directory / "missing.safetensors").unlink()
    (directory / "not_a_card.json").write_text(json.dumps({"hello": "world"}))
    return directory


@contextlib.contextmanager
def use_assets(directory):
    """Point the app at `directory` ($MONE_ASSETS) for the duration, then restore the previous folder."""
    from app import inference as inf
    old = os.environ.get("MONE_ASSETS")
    os.environ["MONE_ASSETS"] = str(directory)
    inf.registry(reload=True)
    try:
        yield directory
    finally:
        if old is None:
            os.environ.pop("MONE_ASSETS", None)
        else:
            os.environ["MONE_ASSETS"] = old
        inf.registry(reload=True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    with use_assets(make_assets(tmp_path_factory.mktemp("assets"))) as directory:
        yield directory


@pytest.fixture(scope="module")
def inf(assets):
    from app import inference
    return inference


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A non-square photo-like test image (300 x 120): a bright disc on a gradient."""
    h, w = 120, 300
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 200, w, dtype=np.uint8)[None]
    img[..., 1] = np.linspace(30, 90, h, dtype=np.uint8)[:, None]
    cv2.circle(img, (200, 60), 35, (255, 255, 255), -1)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(img).save(path)
    return path


def example_image():
    files = sorted((REPO / "assets" / "examples").glob("*.jpg")) + sorted((REPO / "assets" / "examples").glob("*.png"))
    return files[0] if files else None


def png_size(path):
    with Image.open(path) as im:
        return im.size, im.format


# ------------------------------------------------------------------------------------- model-side helpers
def test_batched_budget_forward_matches_forward_routing():
    torch.manual_seed(0)
    m = timm.create_model("mone_vit_tiny_patch4_32", num_classes=5).eval()
    with torch.no_grad():
        m.router.weight.normal_(0, 0.5)
        for blk in m.blocks:
            blk.alpha.fill_(0.3)
    x = torch.randn(1, 3, 32, 32)
    enc = encode(m, x)
    budgets = [0.15, 0.3, 0.45, 0.6, 0.85, 1.0]                    # rows with different tokens per expert
    for allocator in mone.ALLOCATORS:                              # whatever the registry holds at run time
        assignment, tokens, achieved = assignments_for(enc.router_probs, budgets, allocator)
        logits = forward_assignments(m, enc.tokens, enc.router_probs, assignment)
        assert logits.shape == (len(budgets), 5)
        with torch.inference_mode():
            for i in range(len(budgets)):
                out = m.forward_routing(x, budgets[i], allocator=allocator,
                                        generator=torch.Generator().manual_seed(0))
                assert torch.equal(out.assignment[0], assignment[i]), allocator
                assert torch.allclose(out.logits[0], logits[i], atol=1e-5), allocator
                assert achieved[i] == pytest.approx(out.effective_capacity)
        assert (tokens.sum(1) == 64).all()


def test_to_model_input_squashes_whole_image_and_handles_grey():
    img = np.zeros((50, 200, 3), np.uint8)
    img[:, 100:] = 255                                             # right half white
    x = to_model_input(img, dict(image_size=32, in_chans=3, mean=[0, 0, 0], std=[1, 1, 1]))
    assert x.shape == (1, 3, 32, 32)
    assert x[0, :, :, :15].max() < 0.05 and x[0, :, :, 17:].min() > 0.95   # no crop: the split stays centred
    g = to_model_input(img, dict(image_size=28, in_chans=1, mean=[0.5], std=[0.5]))
    assert g.shape == (1, 1, 28, 28) and g.max() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ discovery
def test_discovers_cards_and_default(inf, assets):
    names = inf.model_names()
    assert set(names) == {"tiny", "tiny_grey", "broken", "missing"}    # not_a_card.json and the MatViT are skipped
    assert inf.default_model() in ("broken", "missing", "tiny")              # first RGB card by name
    os.environ["MONE_DEFAULT_MODEL"] = "tiny"
    try:
        assert inf.default_model() == "tiny"
    finally:
        del os.environ["MONE_DEFAULT_MODEL"]


def test_no_checkpoints_gives_a_clear_message(inf, tmp_path, photo):
    old = os.environ["MONE_ASSETS"]
    os.environ["MONE_ASSETS"] = str(tmp_path)
    try:
        inf.registry(reload=True)
        assert inf.model_names() == [] and inf.default_model() is None
        with pytest.raises(gr.Error, match="No model checkpoints found"):
            inf.analyze_image(str(photo), "tiny", "epr", 0.5)
        from app import app as app_module
        app_module.build_demo()                                              # the page still builds
    finally:
        os.environ["MONE_ASSETS"] = old
        inf.registry(reload=True)


# ------------------------------------------------------------------------------------------ image analysis
def test_analyze_image_outputs(inf, photo):
    r = inf.analyze_image(str(photo), "tiny", "epr", 0.5, 0.5, inf.VIEW_EXPERTS)
    (w, h), fmt = png_size(r.overlay)
    assert fmt == "PNG" and w == 640 and 256 < h < 256 + 80         # original 300x120 aspect + legend below
    assert len(r.top5) == 5 and sum(r.top5.values()) <= 1.0 + 1e-6 and set(r.top5) <= set(CLASSES)
    d = r.details
    assert sum(d["tokens_per_expert"].values()) == 64 and d["grid"] == [8, 8]
    assert d["macs"] == mone.count_macs(inf.get_model(inf.get_entry("tiny")), 0.5)
    assert 0.4 < d["macs_ratio"] < 0.7 and d["latency_ms"] > 0 and d["full_width_latency_ms"] > 0
    assert "Tokens per expert" in r.readout and "Measured latency" in r.readout and "% of dense" in r.budget_macs
    fig = json.loads(r.curve.plot)
    names = [t.get("name", "") for t in fig["data"]]
    assert {"MoNE (EPR)", "MoNE, random router", "MatViT (one nested width)", "MatViT trained as a baseline",
            "dense ViT"} <= set(names)
    point = next(t for t in fig["data"] if t["name"].startswith("current budget"))
    assert point["x"][0] == pytest.approx(d["macs"] / 1e6)         # tiny model: MMACs axis
    assert point["y"][0] == pytest.approx((0.5 + 0.4 * 0.5) * 100)


def test_overlay_grid_is_aligned_to_the_original_image(inf, photo):
    """The expert colour of every cell of the PNG equals the assignment of that patch (8 x 8 over 640 x 256)."""
    r = inf.analyze_image(str(photo), "tiny", "epr", 0.35, 1.0, inf.VIEW_EXPERTS)
    entry = inf.get_entry("tiny")
    model = inf.get_model(entry)
    img = np.asarray(Image.open(photo).convert("RGB"))
    with torch.inference_mode():
        out = model.forward_routing(to_model_input(img, model.preprocess), 0.35)
    assignment = out.assignment[0].reshape(8, 8).numpy()
    png = np.asarray(Image.open(r.overlay).convert("RGB"))
    colours = mone.vis.expert_colors(4)
    for row, y in enumerate(np.arange(8) * 32 + 16):
        for col, x in enumerate(np.arange(8) * 80 + 40):
            assert tuple(png[y, x]) == tuple(colours[assignment[row, col]]), (row, col)


def test_slider_moves_change_overlay_prediction_and_point_fast(inf, photo):
    inf.analyze_image(str(photo), "tiny", "epr", 0.5, precompute=True)        # the UI upload: grid + timings
    assert len(inf.load_image_record(Path(photo)).views["tiny"].grids["epr"].budgets) == 18
    seen_png, seen_x, times = set(), set(), []
    for e_c in (0.15, 0.3, 0.5, 0.8, 1.0):
        t = time.perf_counter()
        r = inf.analyze_image(str(photo), "tiny", "epr", e_c, 0.5, inf.VIEW_EXPERTS, measure=False, precompute=True)
        times.append(time.perf_counter() - t)
        seen_png.add(Path(r.overlay).read_bytes())
        seen_x.add(next(t["x"][0] for t in json.loads(r.curve.plot)["data"] if t["name"].startswith("current")))
        assert r.details["budget"] == e_c
    assert len(seen_png) == 5 and len(seen_x) == 5
    assert np.median(times) < 0.25                                   # render-only (generous: shared CI cores)


def test_readout_explains_a_budget_measured_slower_than_full_width(inf, photo, monkeypatch):
    monkeypatch.setattr(inf.latency, "table", {})
    for ms_budget, ms_full, explained in ((9.9, 8.0, True), (5.0, 8.0, False)):
        inf.latency.table.update({("tiny", "epr", 0.5): ms_budget, ("tiny", "epr", 1.0): ms_full})
        r = inf.analyze_image(str(photo), "tiny", "epr", 0.5, measure=False)
        assert f"speed-up ×{ms_full / ms_budget:.2f}" in r.readout
        assert ("per-operation overhead, not MACs" in r.readout) == explained


def test_latency_is_measured_in_the_background_after_an_upload(inf, photo):
    allocator = "softmax_token_choice"
    first = inf.analyze_image(str(photo), "tiny", allocator, 0.5, precompute=True)
    assert first.details["latency_ms"] > 0                           # the upload measures its own budget
    keys = [("tiny", allocator, b) for b in BUDGET_GRID]
    deadline = time.time() + 30
    while time.time() < deadline and not all(k in inf.latency.table for k in keys):
        time.sleep(0.2)                                               # the idle-time thread fills the rest
    r = inf.analyze_image(str(photo), "tiny", allocator, 0.85, measure=False, precompute=True)
    assert r.details["latency_ms"] > 0 and "measuring" not in r.readout


def test_very_elongated_image_keeps_every_patch_row_visible(inf, tmp_path):
    path = _save(Image.fromarray(np.full((20, 2000, 3), 120, np.uint8)), tmp_path / "wide.png")
    r = inf.analyze_image(str(path), "tiny", "epr", 0.5)
    record = inf.load_image_record(path)
    assert record.display.shape[:2] == (inf.DISPLAY_MIN_SIDE, inf.DISPLAY_SIDE)       # 96 rows, not 6
    assert any("elongated" in n for n in r.details["notes"])
    assert Image.open(r.overlay).size[1] > inf.DISPLAY_MIN_SIDE                     # overlay + legend below it


def test_no_background_timing_while_a_model_request_runs(inf, photo):
    allocator = "sinkhorn_expert_choice"
    r = inf.analyze_image(str(photo), "tiny", allocator, 0.5, measure=False)   # routes, measures nothing
    model = inf.get_model(inf.get_entry("tiny"))
    x = inf.load_image_record(Path(photo)).views["tiny"].x
    keys = [("tiny", allocator, b) for b in BUDGET_GRID]
    with inf.latency.busy():                                          # e.g. a video job in progress
        inf.latency.prefetch(inf.get_entry("tiny"), model, x, allocator)
        time.sleep(3 * inf.latency.idle_s)
        assert not any(k in inf.latency.table for k in keys)
    deadline = time.time() + 30
    while time.time() < deadline and not all(k in inf.latency.table for k in keys):
        time.sleep(0.2)
    assert all(k in inf.latency.table for k in keys) and r.details["latency_ms"] is None


def test_every_allocator_and_off_grid_budget(inf, photo):
    for name in mone.ALLOCATORS:
        r = inf.analyze_image(str(photo), "tiny", name, 0.4, 0.5)
        assert r.details["allocator"] == name
    r = inf.analyze_image(str(photo), "tiny", "epr", 0.33, 0.5)       # not on the 0.05 grid: computed exactly
    assert r.details["budget"] == 0.33 and r.details["achieved_budget"] <= 0.33 + 1e-9


def test_importance_view_and_grey_model_without_curve(inf, photo):
    r = inf.analyze_image(str(photo), "tiny", "epr", 0.5, 0.6, inf.VIEW_IMPORTANCE)
    assert png_size(r.overlay)[0][0] == 640
    g = inf.analyze_image(str(photo), "tiny_grey", "epr", 0.5)
    fig = json.loads(g.curve.plot)
    assert fig["data"] == [] and "No accuracy-vs-MACs curve" in fig["layout"]["annotations"][0]["text"]


def test_patch_click_and_compare(inf, photo):
    probs, text = inf.patch_info(str(photo), "tiny", "epr", 0.5, 630, 250)   # bottom-right patch
    assert set(probs) == {"D/8 (8 ch)", "D/4 (16 ch)", "D/2 (32 ch)", "D (64 ch)"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5) and "row 8, column 8" in text
    none, text = inf.patch_info(str(photo), "tiny", "epr", 0.5, 10, 300)      # on the legend
    assert none is None and "Click on the image" in text
    items = inf.compare_allocators(str(photo), "tiny", 0.4, 0.5)
    assert [c.split(":")[0] for _, c in items] == list(mone.ALLOCATORS)
    assert all(png_size(p)[1] == "PNG" for p, _ in items)


def test_example_images_if_present(inf):
    ex = example_image()
    if ex is None:
        pytest.skip("no example images shipped yet")
    r = inf.analyze_image(str(ex), "tiny", "epr", 0.5)
    assert png_size(r.overlay)[1] == "PNG" and r.top5


def test_no_image_returns_a_prompt(inf):
    r = inf.analyze_image(None, "tiny", "epr", 0.5)
    assert r.overlay is None and "Upload an image" in r.readout


# ------------------------------------------------------------------------------------------ bad images
def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(path, w=20000, h=20000):
    """A valid PNG header of w x h grey pixels with a tiny (truncated) data stream: decoding it would need
    400 MB; opening it must only read the header."""
    raw = zlib.compress(b"\x00" * (w + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    photo = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (d / "notes.txt").write_text("hello, not an image\n")
    (d / "empty.png").write_bytes(b"")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    huge_png(d / "huge.png")
    return d


BAD_IMAGE_MESSAGES = {
    "notes.txt": "is not an image",
    "truncated.jpg": "truncated or corrupt",
    "empty.png": "is empty (0 bytes)",
    "corrupt.png": "not",
    "huge.png": "is too large",
}


@pytest.mark.parametrize("name", list(BAD_IMAGE_MESSAGES))
def test_bad_images_give_clear_errors(inf, bad_images, name):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(gr.Error, match=re.escape(BAD_IMAGE_MESSAGES[name])):
        inf.analyze_image(str(bad_images / name), "tiny", "epr", 0.5)
    assert time.perf_counter() - t < 5
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"{name}: peak memory grew by {grown_mb:.0f} MB"


def test_huge_image_is_refused_from_the_header(bad_images, tmp_path):
    with pytest.raises(ValueError, match="too large: more than 128 megapixels"):
        read_image(bad_images / "huge.png")                                    # Pillow's bomb check (2 x limit)
    with pytest.raises(ValueError, match=re.escape("3000x3000 = 9 megapixels; the limit is 1 megapixels")):
        read_image(huge_png(tmp_path / "h.png", 3000, 3000), max_pixels=1_000_000)   # our check, same idea


def test_large_jpeg_is_decoded_reduced(tmp_path):
    big = np.zeros((2400, 4400, 3), np.uint8)
    big[..., 1] = np.linspace(0, 255, 4400, dtype=np.uint8)[None]
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), big)
    loaded = read_image(path)
    assert loaded.original_size == (4400, 2400) and max(loaded.rgb.shape) <= 2048
    assert any("downscaled" in n for n in loaded.notes)


def test_large_transparent_and_16_bit_images_are_shrunk_before_float_conversion(tmp_path):
    # Columns alternate transparent black and opaque red: over white, the average of the composites is
    # (255, 127.5, 127.5). Averaging unpremultiplied colours first would give (191, 128, 128).
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, ::2] = (255, 0, 0, 255)
    loaded = read_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "stripes.png"), max_side=16)
    assert loaded.rgb.shape == (16, 16, 3) and np.abs(loaded.rgb.astype(int) - (255, 128, 128)).max() <= 1
    g16 = np.zeros((64, 64), np.uint16)
    g16[:, ::2] = 65535
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    loaded = read_image(tmp_path / "g16.png", max_side=16)
    assert loaded.rgb.shape == (16, 16, 3) and np.abs(loaded.rgb.astype(int) - 128).max() <= 1
    assert any("16-bit" in n for n in loaded.notes)
    # memory (numpy allocations): a 16 MP RGBA file was turned into float32 whole, then shrunk; now the reverse
    import tracemalloc
    big = _save(Image.new("RGBA", (4000, 4000), (10, 200, 10, 100)), tmp_path / "big.png")
    tracemalloc.start()
    loaded = read_image(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert max(loaded.rgb.shape) <= 2048 and peak < 60e6, peak                 # 28 MB measured; was 768 MB


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_image_modes_are_converted(inf, tmp_path):
    # grey
    grey = _save(Image.fromarray(np.full((40, 60), 77, np.uint8), "L"), tmp_path / "grey.png")
    assert np.all(read_image(grey).rgb == 77)
    # RGBA: transparent red over white, opaque blue stays blue
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 30:] = (0, 0, 255, 255)
    loaded = read_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    assert tuple(loaded.rgb[0, 0]) == (255, 255, 255) and tuple(loaded.rgb[0, 40]) == (0, 0, 255)
    assert any("transparent" in n for n in loaded.notes)
    # 16-bit grey: scaled, not clipped (32768 -> 128, 65535 -> 255)
    g16 = np.zeros((40, 60), np.uint16)
    g16[:, :30], g16[:, 30:] = 32768, 65535
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    loaded = read_image(tmp_path / "g16.png")
    assert loaded.mode.startswith("I") and loaded.rgb[0, 0, 0] == 128 and loaded.rgb[0, 59, 0] == 255
    assert any("16-bit" in n for n in loaded.notes)
    # 16-bit RGB
    c16 = np.zeros((40, 60, 3), np.uint16)
    c16[..., 2] = 65535                                                       # red in OpenCV's BGR
    cv2.imwrite(str(tmp_path / "c16.png"), c16)
    assert tuple(read_image(tmp_path / "c16.png").rgb[5, 5]) == (255, 0, 0)
    # CMYK JPEG of pure red
    cmyk = _save(Image.new("CMYK", (60, 40), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    px = read_image(cmyk).rgb[20, 30].astype(int)
    assert px[0] > 200 and px[1] < 60 and px[2] < 60
    # palette with transparency
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    assert tuple(read_image(_save(pal, tmp_path / "pal.png", transparency=0)).rgb[0, 0]) == (255, 255, 255)
    # every one of them runs through the app
    for name in ("grey.png", "rgba.png", "g16.png", "c16.png", "cmyk.jpg", "pal.png"):
        r = inf.analyze_image(str(tmp_path / name), "tiny", "epr", 0.5)
        assert png_size(r.overlay)[1] == "PNG"


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (200, 30, 30))
    exif = img.getexif()
    exif[274] = 6                                                             # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    loaded = read_image(tmp_path / "rot.jpg")
    assert loaded.rgb.shape[:2] == (60, 20)                                   # shown upright: 20 wide, 60 tall


def test_animated_gif_uses_the_first_frame_and_says_so(inf, tmp_path):
    frames = [Image.new("RGB", (48, 32), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    loaded = read_image(path)
    assert loaded.rgb[10, 10, 0] > 200 and loaded.rgb[10, 10, 1] < 50          # the red first frame
    r = inf.analyze_image(str(path), "tiny", "epr", 0.5)
    assert "animated GIF with 3 frames: the first frame is shown" in r.readout


# ------------------------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize("budget,message", [
    (1.7, "out of range"), (0.05, "out of range"), (-1, "out of range"), ("abc", "must be a number"),
    (None, "must be a number"), (float("nan"), "out of range"), ([0.5], "must be a number"),
    (True, "must be a number")])
def test_bad_budgets(inf, photo, budget, message):
    with pytest.raises(gr.Error, match=message):
        inf.analyze_image(str(photo), "tiny", "epr", budget)


def test_bad_router_model_view_opacity(inf, photo):
    with pytest.raises(gr.Error, match="Unknown router 'nope'. Choose one of: epr, random"):
        inf.analyze_image(str(photo), "tiny", "nope", 0.5)
    with pytest.raises(gr.Error, match="Unknown router 3"):
        inf.analyze_image(str(photo), "tiny", 3, 0.5)
    with pytest.raises(gr.Error, match="Unknown model 'gpt'"):
        inf.analyze_image(str(photo), "gpt", "epr", 0.5)
    with pytest.raises(gr.Error, match="Unknown view"):
        inf.analyze_image(str(photo), "tiny", "epr", 0.5, 0.5, "x-ray")
    with pytest.raises(gr.Error, match="Opacity"):
        inf.analyze_image(str(photo), "tiny", "epr", 0.5, 2)


def test_missing_and_corrupt_checkpoints(inf, photo):
    with pytest.raises(gr.Error, match="Model 'missing' cannot be loaded: checkpoint weights not found"):
        inf.analyze_image(str(photo), "missing", "epr", 0.5)
    with pytest.raises(gr.Error, match="Model 'broken' cannot be loaded: .*not a readable safetensors"):
        inf.analyze_image(str(photo), "broken", "epr", 0.5)
    assert inf.analyze_image(str(photo), "tiny", "epr", 0.5).overlay                  # still serving


# ------------------------------------------------------------------------------------------------ video
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from test_video import make_clip
    path, _ = make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=60, width=96, height=64, fps=20)
    return path


def test_analyze_video(inf, clip):
    steps = []
    r = inf.analyze_video(str(clip), "tiny", "epr", 0.4, 0.5, 24, progress=lambda *a: steps.append(a))
    from mone.video import probe
    info = probe(r.video)
    assert info.codec == "h264" and info.frames == 24 and info.width % 2 == 0 and info.height % 2 == 0
    assert info.duration == pytest.approx(3.0, abs=0.3)               # played over the clip's own duration
    assert steps[-1][0] == steps[-1][1] == 24
    d = r.details
    assert d["frames"] == 24 and d["video_frames"] == 60 and len(d["per_frame"]) == 24 and d["total_fps"] > 0
    assert "60 frames" in r.note and "24 were sampled" in r.note
    fig = json.loads(r.plot.plot)
    assert any(t["type"] == "bar" for t in fig["data"]) and any(t["type"] == "scatter" for t in fig["data"])


def test_video_whose_times_pass_ten_seconds(inf, tmp_path):
    # "t=9.5s" is narrower than "t=10.0s": at some frame widths only the second wraps the legend onto another row.
    # Every frame must still get one legend height (H.264 needs one size). Portrait clip: the output is 640 px high
    # and as wide as the clip's aspect gives, chosen at that wrap boundary.
    from mone import capacity, vis
    from test_video import make_clip
    entries = vis.expert_legend_entries(4, 64, capacity.tokens_per_expert(capacity.capacity_distribution(0.5), 64))
    width = next(w for w in range(120, 640, 2)
                 if vis.legend_strip(w, entries, "t=9.5s").shape != vis.legend_strip(w, entries, "t=10.0s").shape)
    path, _ = make_clip(tmp_path / "long.mp4", frames=24, width=width, height=640, fps=2)        # 12 s
    r = inf.analyze_video(str(path), "tiny", "epr", 0.5, 0.5, 24)
    assert r.details["per_frame"][-1]["time"] >= 10 and r.details["frames"] == 24


def test_legend_title_slot_keeps_one_layout():
    from mone import vis
    entries = vis.expert_legend_entries(4, 128, [41, 36, 33, 34])
    titles = ["t=9.9s", "t=10.0s", "t=100.0s"]
    slot = max(vis.text_width(t) for t in titles)
    heights = {vis.legend_strip(300, entries, t, title_width=slot).shape for t in titles}
    assert len(heights) == 1


def test_bad_videos_in_the_app(inf, tmp_path):
    from test_video import bad_videos
    for name, (path, message) in bad_videos(tmp_path).items():
        with pytest.raises(gr.Error, match=re.escape(message)):
            inf.analyze_video(str(path), "tiny", "epr", 0.5)
    with pytest.raises(gr.Error, match="Frame cap"):
        inf.analyze_video(str(path), "tiny", "epr", 0.5, 0.5, 1000)


# -------------------------------------------------------------------------------------------- the wiring
@pytest.fixture(scope="module")
def app_module(inf):
    from app import app as module
    return module


def test_wiring(app_module):
    demo = app_module.build_demo()
    cfg = demo.get_config_file()
    deps = {d["id"]: d for d in cfg["dependencies"]}
    by_api = {d["api_name"]: d for d in deps.values()}
    image, upload, slide, video = (by_api["analyze_image"], by_api["on_upload"], by_api["on_slide"],
                                   by_api["analyze_video"])
    assert image["api_visibility"] == video["api_visibility"] == "public"
    assert {e for _, e in upload["targets"]} == {"change"}           # image, model, allocator, view
    events = {e for _, e in slide["targets"]}
    assert {"release", "input"} <= events and slide["trigger_mode"] == "always_last"
    assert slide["show_progress"] == "hidden"
    for d in (image, upload, slide, video):
        fn = demo.fns[d["id"]]
        assert fn.concurrency_id == "model" and fn.concurrency_limit == 1 and fn.preprocess is False
    cancellers = [d for d in deps.values() if video["id"] in d["cancels"]]
    assert {e for d in cancellers for _, e in d["targets"]} >= {"upload", "clear"}
    overlay = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "overlay")
    assert overlay.format == "png"


def test_launch_bounds_uploads(app_module, monkeypatch):
    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    app_module.launch()
    assert seen["max_file_size"] == app_module.MAX_FILE_SIZE and seen["server_port"] == 7860
    assert seen["server_name"] == "127.0.0.1"


# ---------------------------------------------------------------------------------- the launched app
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(app_module):
    from gradio_client import Client
    demo = app_module.build_demo()
    _, url, _ = app_module.launch(demo, server_port=free_port(), prevent_thread_lock=True, quiet=True,
                                  max_file_size="1mb")
    yield Client(url, verbose=False)
    demo.close()


def test_api_analyze_image(client, photo):
    from gradio_client import handle_file
    out = client.predict(handle_file(str(photo)), "tiny", "epr", 0.5, 0.5, "expert assignment",
                         api_name="/analyze_image")
    overlay, label, readout, plot, budget_md, details = out
    assert png_size(overlay)[1] == "PNG" and png_size(overlay)[0][0] == 640
    assert label["label"] in CLASSES and len(label["confidences"]) == 5
    assert "Measured latency" in readout and details["budget"] == 0.5
    assert sum(details["tokens_per_expert"].values()) == 64


def test_api_errors_are_clear_and_the_app_keeps_serving(client, photo, bad_images, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    cases = [((handle_file(str(photo)), "tiny", "epr", "abc", 0.5, "expert assignment"), "must be a number"),
             ((handle_file(str(photo)), "tiny", "epr", 5, 0.5, "expert assignment"), "out of range"),
             ((handle_file(str(photo)), "tiny", "nope", 0.5, 0.5, "expert assignment"), "Unknown router 'nope'"),
             ((handle_file(str(photo)), "missing", "epr", 0.5, 0.5, "expert assignment"), "cannot be loaded"),
             ((handle_file(str(bad_images / "notes.txt")), "tiny", "epr", 0.5, 0.5, "expert assignment"),
              "is not an image"),
             ((handle_file(str(bad_images / "huge.png")), "tiny", "epr", 0.5, 0.5, "expert assignment"),
              "too large")]
    for args, message in cases:
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(*args, api_name="/analyze_image")
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(1_200_000))                                    # over this server's 1 MB limit
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), "tiny", "epr", 0.5, 0.5, "expert assignment",
                       api_name="/analyze_image")
    out = client.predict(handle_file(str(photo)), "tiny", "epr", 0.3, 0.5, "router importance",
                         api_name="/analyze_image")
    assert out[5]["budget"] == 0.3


def test_api_analyze_video(client, clip, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    video, plot, note, details = client.predict(handle_file(str(clip)), "tiny", "epr", 0.5, 0.5, 16,
                                                api_name="/analyze_video")
    path = video["video"] if isinstance(video, dict) else video
    from mone.video import probe
    assert probe(path).codec == "h264" and details["frames"] == 16
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(AppError, match=re.escape("empty (0 bytes)")):
        client.predict(handle_file(str(empty)), "tiny", "epr", 0.5, 0.5, 16, api_name="/analyze_video")


def test_model_info_names_the_scenes_data_version(app_module, inf, tmp_path):
    write_card(tmp_path, "tiny_v1")
    card = json.loads((tmp_path / "tiny_v1.json").read_text())
    card["data"] = {"dataset": "scenes"}                                # a card from before data versions: 1
    (tmp_path / "tiny_v1.json").write_text(json.dumps(card))
    card["data"] = {"dataset": "scenes", "generator": {"version": 2}}
    (tmp_path / "tiny_v2.json").write_text(json.dumps(card))
    with use_assets(tmp_path):
        assert "trained on **scenes** (data version 1) · classes" in app_module.on_model_info("tiny_v1")
        assert "trained on **scenes** (data version 2) · classes" in app_module.on_model_info("tiny_v2")
