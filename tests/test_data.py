"""Tests for mone.data: Fashion-MNIST IDX reader, Scenes generator, ImageFolder loader."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mone.data import fashion_mnist as fm
from mone.data import get_dataset, load_fashion_mnist, load_imagefolder, patch_object_fraction
from mone.data import scenes

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------ Fashion-MNIST


def _write_idx(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, img_magic=0x803, lbl_magic=0x801):
    n, h, w = images.shape
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", img_magic, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", lbl_magic, n) + labels.astype(np.uint8).tobytes())


def test_fashion_mnist_fixture(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 3, 9, 1, 2])
    _write_idx(tmp_path, "train", imgs, labels)
    _write_idx(tmp_path, "t10k", imgs[:2], labels[:2])
    ds = load_fashion_mnist("train", root=tmp_path)
    assert len(ds) == 5 and len(load_fashion_mnist("test", root=tmp_path)) == 2
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8 and y == 9
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
    assert ds.targets.dtype == torch.int64
    assert len(ds.classes) == 10
    assert get_dataset("fashion_mnist", "train", root=tmp_path)[0][1] == 0


def test_fashion_mnist_bad_files(tmp_path):
    imgs = np.zeros((2, 28, 28), np.uint8)
    _write_idx(tmp_path, "train", imgs, np.zeros(2), img_magic=0x1234)
    with pytest.raises(ValueError, match="magic"):
        load_fashion_mnist("train", root=tmp_path)
    _write_idx(tmp_path, "train", imgs, np.zeros(2), lbl_magic=0x803)
    with pytest.raises(ValueError, match="magic"):
        load_fashion_mnist("train", root=tmp_path)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:  # truncated payload
        f.write(struct.pack(">IIII", 0x803, 3, 28, 28) + bytes(28 * 28))
    with pytest.raises(ValueError):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError):
        load_fashion_mnist("validation", root=tmp_path)


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        load_fashion_mnist("train", root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        load_fashion_mnist("test", root=tmp_path)  # folder exists, files don't


@pytest.mark.skipif(not (REAL_FMNIST / "train-labels-idx1-ubyte.gz").exists(),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_real():
    tr, te = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert len(tr) == 60000 and len(te) == 10000
    assert tr.images.shape == (60000, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert int(tr.targets.min()) == 0 and int(tr.targets.max()) == 9
    assert torch.equal(tr.targets.bincount(), torch.full((10,), 6000))
    x = tr.images[:5000].float() / 255
    assert abs(x.mean().item() - fm.MEAN[0]) < 0.01 and abs(x.std().item() - fm.STD[0]) < 0.01


# ------------------------------------------------------------------------------------------------ Scenes


@pytest.fixture(scope="module")
def pack_path(tmp_path_factory):
    """The cached source pack if present (built on first use otherwise); skip without the Debian packages."""
    path = scenes.default_pack_path()
    if not path.is_file():
        if not scenes.STAMP_ROOT.is_dir() or not scenes.OPENCV_DATA.is_dir():
            pytest.skip("apt-get install tuxpaint-stamps-default opencv-doc")
        path = scenes.build_source_pack(path)
    return path


@pytest.fixture(scope="module")
def pack(pack_path):
    return scenes.load_source_pack(pack_path)


def test_scenes_missing_packages(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        scenes.list_stamps(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="scenes pack"):
        scenes.load_source_pack(tmp_path / "nope.npz")


def test_scenes_items_and_determinism(pack_path):
    ds = scenes.ScenesDataset("train", 100, image_size=96, seed=0, pack_path=pack_path)
    x, y, m = ds[7]
    assert x.shape == (3, 96, 96) and x.dtype == torch.uint8
    assert m.shape == (96, 96) and m.dtype == torch.bool
    assert isinstance(y, int) and 0 <= y < 8 and len(ds.classes) == 8
    a, b = ds[3], scenes.ScenesDataset("train", 100, seed=0, pack_path=pack_path)[3]
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    assert torch.equal(ds[3][0], ds[3][0])  # same index twice: identical bytes
    other = scenes.ScenesDataset("train", 100, seed=1, pack_path=pack_path)
    assert not torch.equal(ds[3][0], other[3][0])
    assert not torch.equal(ds[3][0], ds[4][0])
    test = scenes.ScenesDataset("test", 100, seed=0, pack_path=pack_path)
    assert not torch.equal(ds[3][0], test[3][0])
    # labels are balanced per block of 8
    labels = [ds.label_of(i) for i in range(64)]
    assert np.bincount(labels, minlength=8).tolist() == [8] * 8


def test_scenes_mask_matches_object(pack_path):
    S = 96
    black = scenes.ScenesDataset("test", 40, image_size=S, pack_path=pack_path, background_color=(0, 0, 0))
    white = scenes.ScenesDataset("test", 40, image_size=S, pack_path=pack_path, background_color=(255, 255, 255))
    photo = scenes.ScenesDataset("test", 40, image_size=S, pack_path=pack_path)
    for i in range(0, 40, 3):
        xb, yb, mb, ib = black.generate(i)
        xw, yw, mw, iw = white.generate(i)
        _, yp, mp, ip = photo.generate(i)
        assert yb == yw == yp and ib["instance"] == ip["instance"] and ib["box"] == ip["box"]
        assert np.array_equal(mb, mw) and np.array_equal(mb, mp)
        # (white - black) / 255 = 1 - alpha at every pixel
        one_minus_alpha = (xw.astype(np.int32) - xb.astype(np.int32)).min(axis=2) / 255
        alpha = 1 - one_minus_alpha
        assert mb.sum() > 0.05 * S * S
        assert (alpha[mb] > 0.45).all(), "mask pixels must be (mostly) opaque object pixels"
        assert (alpha[~mb] < 0.55).all(), "pixels outside the mask must be (mostly) background"
        assert (alpha[mb] > 0.9).mean() > 0.6  # a few stamps have translucent parts (insect wings)
        xa, ya, xb_, yb_ = ib["box"]
        outside = np.ones((S, S), bool)
        outside[ya:yb_, xa:xb_] = False
        assert not mb[outside].any() and (alpha[outside] < 1e-6).all()


def test_scenes_splits_disjoint(pack):
    train_src = {s for s in range(len(pack.source_names)) if pack.source_split[s] == 0}
    test_src = {s for s in range(len(pack.source_names)) if pack.source_split[s] == 1}
    assert train_src and test_src and not (train_src & test_src)
    assert len(test_src) >= 8
    # backgrounds are per-source; no image content shared between the splits
    tr_bg = {pack.backgrounds[k].tobytes() for k in np.nonzero(np.isin(pack.bg_source, list(train_src)))[0]}
    te_bg = {pack.backgrounds[k].tobytes() for k in np.nonzero(np.isin(pack.bg_source, list(test_src)))[0]}
    assert not (tr_bg & te_bg)
    for c in range(8):
        idx = pack.stamp_class == c
        n, held = int(idx.sum()), int((idx & pack.stamp_heldout).sum())
        assert n >= 11, scenes.CLASSES[c]
        assert held >= 2 and held <= 0.3 * n
    assert len(set(pack.stamp_names)) == len(pack.stamp_names)
    assert not any("_mirror" in n or "_flip" in n for n in pack.stamp_names)


def test_scenes_samples_use_their_split(pack_path, pack):
    seen = {}
    for split in ("train", "test", "test_instances"):
        ds = scenes.ScenesDataset(split, 200, image_size=32, pack_path=pack_path)
        info = [ds.generate(i)[3] for i in range(120)]
        seen[split] = ({d["instance"] for d in info}, {d["source"] for d in info})
    held = set(np.nonzero(pack.stamp_heldout)[0].tolist())
    test_src = set(np.nonzero(pack.source_split == 1)[0].tolist())
    assert not (seen["train"][0] & held) and not (seen["test"][0] & held)
    assert seen["test_instances"][0] <= held
    assert not (seen["train"][1] & test_src)
    assert seen["test"][1] <= test_src and seen["test_instances"][1] <= test_src


def test_scenes_source_of_without_rendering(pack_path, pack):
    """`source_of` reads the same draw as `generate`; the listed overlaps are real test sources of the pack."""
    for split in ("train", "test", "test_instances"):
        ds = scenes.ScenesDataset(split, 60, image_size=32, pack_path=pack_path)
        assert [ds.source_of(i) for i in range(60)] == [ds.generate(i)[3]["source_name"] for i in range(60)]
    test_names = {n for n, s in zip(pack.source_names, pack.source_split) if s == 1}
    assert set(scenes.TEST_BACKGROUND_OVERLAPS) <= test_names


def test_scenes_data_versions(pack_path, pack):
    """Version 1 is the pack's split column; version 2 moves box_in_scene to test with the box and drops home."""
    assert pack.source_splits(1) == pack.source_split.tolist()
    v2 = dict(zip(pack.source_names, pack.source_splits(2)))
    assert v2["opencv:box_in_scene"] == v2["opencv:box"] == scenes.SPLITS["test"] and v2["opencv:home"] is None
    changed = {n for n, a, b in zip(pack.source_names, pack.source_splits(1), pack.source_splits(2)) if a != b}
    assert changed == {"opencv:box_in_scene", "opencv:home"}
    assert list(v2.values()).count(0) == 22 and list(v2.values()).count(1) == 11
    with pytest.raises(ValueError, match="unknown Scenes data version 3"):
        scenes.ScenesDataset("train", 10, pack_path=pack_path, version=3)
    for split in ("train", "test", "test_instances"):
        names = {scenes.ScenesDataset(split, 400, image_size=32, pack_path=pack_path, version=2).source_of(i)
                 for i in range(400)}
        assert "opencv:home" not in names
        assert ("opencv:box_in_scene" in names) == (split != "train")
        assert all(v2[n] == (0 if split == "train" else 1) for n in names)
    # version 1 still draws home and box_in_scene where it always did (the shipped cards' data is unchanged)
    v1_test = {scenes.ScenesDataset("test", 400, pack_path=pack_path).source_of(i) for i in range(400)}
    assert "opencv:home" in v1_test and "opencv:box_in_scene" not in v1_test


def test_card_batches_generate_the_cards_data_version(pack_path):
    from mone.train import card_batches, gather

    card = {"data": {"dataset": "scenes", "seed": 0, "generator": {"version": 2}}, "preprocess": {"image_size": 32}}
    images, labels, masks = gather(card_batches(card, "test", 6, pack=str(pack_path)))
    ds = scenes.ScenesDataset("test", 6, image_size=32, pack_path=pack_path, version=2)
    assert all(torch.equal(images[i], ds[i][0]) and labels[i] == ds[i][1] for i in range(6))
    v1 = scenes.ScenesDataset("test", 6, image_size=32, pack_path=pack_path)
    assert not all(torch.equal(images[i], v1[i][0]) for i in range(6))


def test_scenes_object_area(pack_path):
    ds = scenes.ScenesDataset("train", 300, image_size=96, pack_path=pack_path)
    areas = np.array([ds.generate(i)[2].mean() for i in range(300)])
    assert 0.18 <= areas.mean() <= 0.30
    assert np.median(areas) >= 0.15
    assert (areas > 0.03).all()


def test_scenes_sizes_and_get_dataset(pack_path):
    ds = get_dataset("scenes", "test_instances", image_size=64, length=10, pack_path=pack_path)
    x, y, m = ds[9]
    assert x.shape == (3, 64, 64) and m.shape == (64, 64)
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(ValueError):
        scenes.ScenesDataset("val", 10, pack_path=pack_path)


def test_patch_object_fraction():
    m = np.zeros((8, 12), bool)
    m[:4, :4] = True
    m[4, 4] = True
    f = patch_object_fraction(m, 4)
    assert f.shape == (2, 3)
    assert f[0, 0] == 1 and f[1, 1] == 1 / 16 and f.sum() == 1 + 1 / 16
    t = patch_object_fraction(torch.from_numpy(np.stack([m, ~m])), 4)
    assert t.shape == (2, 2, 3) and torch.allclose(t[0] + t[1], torch.ones(2, 3))
    with pytest.raises(ValueError):
        patch_object_fraction(m, 5)


# ------------------------------------------------------------------------------------------------ ImageFolder


def test_imagefolder(tmp_path):
    import cv2

    root = tmp_path / "imgs"
    for c, colour in (("cats", (0, 0, 255)), ("dogs", (0, 255, 0))):
        (root / c).mkdir(parents=True)
        for k in range(2):
            img = np.zeros((40 + 10 * k, 60, 3), np.uint8)
            img[:] = colour
            cv2.imwrite(str(root / c / f"{k}.png"), img)
    ds = load_imagefolder(root, 32)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 4
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and y == 1
    assert x[1].min() == 255 and x[0].max() == 0  # green (RGB order)
    assert len(get_dataset(f"imagefolder:{root}", "train", image_size=16)) == 4

    with pytest.raises(FileNotFoundError):
        load_imagefolder(tmp_path / "missing", 32)
    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="class"):
        load_imagefolder(tmp_path / "flat", 32)
