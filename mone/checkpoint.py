"""Checkpoints: safetensors weights beside a JSON card that says how to rebuild the model.

A card holds at least `model` (a registered timm name), `model_kwargs`, `weights` (file name, relative to the card),
and `preprocess` (image_size, in_chans, mean, std, class names). Weights never go through pickle.
"""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

__all__ = ["load_model", "save_weights", "read_card"]


def read_card(card_path: str | Path) -> dict:
    """The parsed card, with a clear error for a missing or malformed file."""
    path = Path(card_path)
    if not path.is_file():
        raise FileNotFoundError(f"model card not found: {path}")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"model card {path} is not valid JSON: {err}") from None
    missing = [key for key in ("model", "weights", "preprocess") if key not in card]
    if missing:
        raise ValueError(f"model card {path} lacks {missing}")
    return card


def scenes_version(card: dict) -> int:
    """The Scenes data version a card's model was trained on (`mone.data.scenes.DATA_VERSIONS`; cards from before
    versions existed: 1)."""
    return card["data"].get("generator", {}).get("version", 1)


def is_matvit(card: dict) -> bool:
    """A card of a MatViT baseline (`mone.train --nested-widths`): a MoNE model whose router was never trained."""
    return bool(card.get("config", {}).get("nested_widths"))


def save_weights(model: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
    """State dict to safetensors (contiguous copies, optionally cast, e.g. to fp16 to stay under 25 MB)."""
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(path))


def load_model(card_path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a shipped card in eval mode, fp32, with `model.card` and `model.preprocess` attached."""
    card = read_card(card_path)
    import mone.models  # noqa: F401  (registers the model names with timm)
    weights = Path(card_path).parent / card["weights"]
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights} (named by card {card_path})")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"checkpoint {weights} is not a readable safetensors file: {err}") from None
    model = timm.create_model(card["model"], **card.get("model_kwargs", {}))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.card, model.preprocess = card, card["preprocess"]
    return model.to(device).eval()
