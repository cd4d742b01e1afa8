"""Datasets for MoNE Explorer. All datasets return uint8 images ``(C,H,W)``; normalisation and augmentation are
left to the training script, which can use the per-dataset ``MEAN`` / ``STD`` below (on pixel values in [0, 1]).

>>> from mone.data import get_dataset
>>> ds = get_dataset("scenes", "train", image_size=96, length=50_000)   # items: (image, label, mask)
>>> ds = get_dataset("fashion_mnist", "test")                           # items: (image, label)
>>> ds = get_dataset("imagefolder:/path/to/root", "train", image_size=64)
"""

from __future__ import annotations

import importlib

from . import fashion_mnist as _fm
from .fashion_mnist import FashionMNIST, load_fashion_mnist
from .imagefolder import IMAGENET_MEAN, IMAGENET_STD, load_imagefolder

# ``scenes`` (OpenCV) is imported lazily, on first use of one of these names, so that
# ``python -m mone.data.scenes`` does not import it twice.
_SCENES_NAMES = ("OBJECT_PATCH", "ScenesDataset", "build_source_pack", "default_pack_path", "load_scenes",
                 "load_source_pack", "patch_object_fraction", "write_examples")


def __getattr__(name):
    if name in _SCENES_NAMES:
        return getattr(importlib.import_module(".scenes", __name__), name)
    if name in ("MEAN", "STD", "CLASSES"):
        sc = importlib.import_module(".scenes", __name__)
        return {
            # Per-dataset channel statistics of the train split (pixel values in [0, 1]); see each module.
            "MEAN": {"fashion_mnist": _fm.MEAN, "scenes": sc.MEAN, "imagefolder": IMAGENET_MEAN},
            "STD": {"fashion_mnist": _fm.STD, "scenes": sc.STD, "imagefolder": IMAGENET_STD},
            "CLASSES": {"fashion_mnist": list(_fm.CLASSES), "scenes": list(sc.CLASSES)},
        }[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


NATIVE_SIZE = {"fashion_mnist": 28, "scenes": 96}
DATASETS = ("fashion_mnist", "scenes", "imagefolder:<root>")


def get_dataset(name: str, split: str = "train", image_size: int | None = None, **kw):
    """Return a dataset of uint8 images.

    ``fashion_mnist``: splits ``train``/``test``, (1,28,28) images; ``image_size`` must be None or 28; ``root=``.
    ``scenes``: splits ``train``/``test``/``test_instances``; items ``(image, label, mask)``; ``image_size`` defaults
    to 96; keyword arguments ``length``, ``seed``, ``pack_path``.
    ``imagefolder:<root>``: ``<root>/<split>/<class>/*`` if that folder exists, else ``<root>/<class>/*``;
    ``image_size`` defaults to 224.
    """
    if name == "fashion_mnist":
        if image_size not in (None, 28):
            raise ValueError("fashion_mnist images are 28x28; resize in the training pipeline instead")
        return load_fashion_mnist(split, **kw)
    if name == "scenes":
        from .scenes import ScenesDataset

        return ScenesDataset(split, kw.pop("length", None), image_size=image_size or 96, **kw)
    if name.startswith("imagefolder:"):
        return load_imagefolder(name.split(":", 1)[1], image_size or 224, split=split, **kw)
    raise ValueError(f"unknown dataset {name!r}; use one of {DATASETS}")


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(MEAN, STD) for a dataset name (``imagefolder:<root>`` uses the ImageNet statistics)."""
    key = "imagefolder" if name.startswith("imagefolder:") else name
    return __getattr__("MEAN")[key], __getattr__("STD")[key]


__all__ = [
    "get_dataset", "dataset_stats", "MEAN", "STD", "CLASSES", "NATIVE_SIZE", "DATASETS",
    "FashionMNIST", "load_fashion_mnist", "ScenesDataset", "load_scenes", "build_source_pack", "load_source_pack",
    "default_pack_path", "OBJECT_PATCH", "patch_object_fraction", "write_examples", "load_imagefolder",
]
