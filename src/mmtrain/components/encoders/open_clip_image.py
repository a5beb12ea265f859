"""An open_clip image tower (e.g. the emotion system's ConvNeXt CLIP) as an mmtrain image encoder.

Needs ``pip install 'mmtrain[open-clip]'``: ``open-clip-torch`` imports ``torchvision``, which must be built
for the installed torch (on a CUDA machine, the matching pair from the PyTorch index). With the CPU torch
wheel of this project's CI, PyPI's torchvision does not load its operators, so the tower itself is not
exercised there; what does not need the import is: resolving ``pretrained_path`` (a folder with
``open_clip_config.json`` + weights, or a Hub id such as ``laion/CLIP-convnext_base_w-laion2B-s13B-b82K``
through the ``huggingface_hub`` cache) and the image preprocessing it declares (``preprocess_cfg``:
size, mean, std), which :mod:`mmtrain.engine.checkpoint_settings` hands to ``data.processor``.

Use it as ``model/encoders/image=open_clip`` (or as a video ``frame_encoder``). Only the image tower is
kept (the text tower and logit scale are dropped). Tokens: the pooled image embedding as one token
(``tokens: pooled``) or the last feature map's cells ``[B, H*W, C]`` (``tokens: grid``, projected to the
embedding width when it differs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput, full_mask
from mmtrain.components.paths import resolve_pretrained_path

CONFIG_FILE = "open_clip_config.json"
TOKEN_MODES = ("pooled", "grid")


def open_clip_folder(pretrained_path: str, *, what: str = "model.encoders.image.pretrained_path") -> Path:
    """The local folder of an open_clip checkpoint (a folder, or a Hub id ``org/name`` as open_clip's
    ``hf-hub:org/name`` names it)."""
    text = str(pretrained_path)
    if text.startswith("hf-hub:"):
        raise ValueError(f"{what} {text!r}: write the Hub id without open_clip's prefix ({text[7:]!r}).")
    folder = resolve_pretrained_path(text, what=what)
    if folder is None or not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{what} {text!r}: {folder} has no {CONFIG_FILE}; an open_clip checkpoint folder (or "
                                "Hub repository) holds it beside open_clip_model.safetensors / open_clip_pytorch_model.bin.")
    return folder


def open_clip_preprocess(folder: Path) -> dict[str, Any]:
    """``image_size`` / ``image_mean`` / ``image_std`` of an open_clip folder's ``preprocess_cfg`` (or ``model_cfg``)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    pre = config.get("preprocess_cfg") or {}
    size = pre.get("size") or (config.get("model_cfg") or {}).get("vision_cfg", {}).get("image_size")
    out: dict[str, Any] = {}
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, int):
        out["image_size"] = size
    for key, name in (("mean", "image_mean"), ("std", "image_std")):
        if isinstance(pre.get(key), list) and len(pre[key]) == 3:
            out[name] = [float(v) for v in pre[key]]
    return out


def import_open_clip() -> Any:
    """``open_clip``, or an ImportError that says what to install and why it may fail."""
    try:
        import open_clip
    except Exception as err:  # ImportError, or torchvision's RuntimeError when its operators do not load
        raise ImportError(
            f"the open_clip image tower needs open-clip-torch and a torchvision built for torch {torch.__version__} "
            f"({type(err).__name__}: {err}). Install them with pip install 'mmtrain[open-clip]' (on a CUDA machine, "
            "torch and torchvision from the same PyTorch index), or use model/encoders/image=clip (transformers' CLIP)."
        ) from err
    return open_clip


class OpenClipImageEncoder(nn.Module):
    """An open_clip model's image tower: ``pixel_values`` ``[B, 3, S, S]`` -> :class:`EncoderOutput`.

    Args:
        pretrained_path: an open_clip checkpoint folder or Hub id (``org/name``); or
            ``None`` with ``model_name``.
        model_name: an open_clip architecture (``convnext_base_w``...) built at random, or with ``pretrained``
            (open_clip's tag or a weights file); ignored with ``pretrained_path``.
        pretrained: see ``model_name``.
        tokens: ``pooled`` (one token, the image embedding) or ``grid`` (the last feature map's cells).
        output_dim: project the outputs to this width (``None``: the tower's own).
    """

    input_names = ("pixel_values",)

    def __init__(self, *, pretrained_path: str | None = None, model_name: str | None = None,
                 pretrained: str | None = None, tokens: str = "pooled", output_dim: int | None = None) -> None:
        super().__init__()
        if tokens not in TOKEN_MODES:
            raise ValueError(f"open_clip encoder: tokens must be one of {TOKEN_MODES}, got {tokens!r}")
        if not pretrained_path and not model_name:
            raise ValueError("open_clip encoder: give pretrained_path (a checkpoint folder or Hub id) or model_name.")
        open_clip = import_open_clip()
        if pretrained_path:
            name, weights = f"local-dir:{open_clip_folder(pretrained_path)}", None
        else:
            name, weights = str(model_name), pretrained
        model = open_clip.create_model(name, pretrained=weights)
        self.visual = model.visual
        self.tokens = tokens
        width = int(self.visual.output_dim)
        self.grid_proj: nn.Module = nn.Identity()
        if tokens == "grid":
            size = self.visual.image_size if isinstance(self.visual.image_size, int) else self.visual.image_size[0]
            with torch.no_grad():
                grid = self.visual.forward_intermediates(torch.zeros(1, 3, size, size), indices=1,
                                                         intermediates_only=True, output_fmt="NCHW")
            channels = int(grid["image_intermediates"][-1].shape[1])
            self.grid_proj = nn.Identity() if channels == width else nn.Linear(channels, width)
        self.out_proj: nn.Module = nn.Identity() if output_dim in (None, width) else nn.Linear(width, int(output_dim))
        self.output_dim = width if output_dim is None else int(output_dim)

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:
        if self.tokens == "pooled":
            pooled = self.out_proj(self.visual(pixel_values))  # [B, D]
            tokens = pooled[:, None]
        else:
            out = self.visual.forward_intermediates(pixel_values, indices=1, output_fmt="NCHW")
            grid = out["image_intermediates"][-1].flatten(2).transpose(1, 2)  # [B, H*W, C]
            tokens = self.out_proj(self.grid_proj(grid))
            pooled = self.out_proj(out["image_features"])
        return EncoderOutput(tokens, full_mask(tokens), pooled)
