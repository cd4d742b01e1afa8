"""A folder of images, one sub-folder per class (torchvision ``ImageFolder``), returned as uint8 tensors."""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

# Unknown data: use the ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _ToUint8:
    def __call__(self, img):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(img.convert("RGB"))  # (3,H,W) uint8

    def __repr__(self) -> str:
        return "ToUint8()"


def load_imagefolder(root: str | os.PathLike, image_size: int = 224, split: str | None = None) -> Dataset:
    """``torchvision.datasets.ImageFolder`` with resize (short side) + centre crop to ``image_size``.

    Items are ``(image uint8 (3,image_size,image_size), label int)``; ``classes`` lists the class folder names.
    If ``split`` is given and ``root/split`` is a folder, that folder is used (``root/train``, ``root/test``...).
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if split and (root / split).is_dir():
        root = root / split
    if not any(p.is_dir() for p in root.iterdir()):
        raise FileNotFoundError(f"{root} has no class sub-folders; expected {root}/<class>/<image files>")
    tf = transforms.Compose([
        transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(image_size),
        _ToUint8(),
    ])
    try:
        ds = datasets.ImageFolder(str(root), transform=tf)
    except FileNotFoundError as e:  # class folders without any image file
        raise FileNotFoundError(f"{root}: {e}") from None
    ds.mean, ds.std = IMAGENET_MEAN, IMAGENET_STD
    return ds
