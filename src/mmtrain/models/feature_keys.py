"""What a feature-cache key hashes (see :mod:`mmtrain.models.feature_cache`): weights, tokenizer, preprocessing.

* :func:`weights_hash`: blake2b over every tensor of a module's ``state_dict`` (name, dtype, shape,
  bytes); :func:`tensor_versions` is the cheap per-batch check of whether it must be recomputed.
* :func:`tokenizer_hash`: the tokenizer's full serialised state (memoised per tokenizer object).
* :func:`preprocessing_settings`: the processor settings that shape a modality's encoder input.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def digest(*parts: Any) -> str:
    """Stable hex digest of JSON-able parts (non-JSON values by ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """blake2b over every tensor of ``module.state_dict()`` (name, dtype, shape, raw bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tensor_versions(modules: list[torch.nn.Module]) -> list[Any]:
    """Cheap signature of the tensors of ``modules`` (a module and all its submodules): any in-place
    change (``copy_``, ``load_state_dict``) bumps ``_version``; any reassignment changes ``data_ptr``;
    a replaced submodule changes its parent's children."""
    signature: list[Any] = []
    for module in modules:
        signature.append(tuple(map(id, module._modules.values())))
        for tensors in (module._parameters, module._buffers):
            signature.extend((t.data_ptr(), t._version) for t in tensors.values() if t is not None)
    return signature


#: id(tokenizer) -> (tokenizer, signature, hash): serialising a tokenizer takes ~10 ms, a key is
#: needed every batch. Recomputed when the signature (size, padding side, max length) changes.
_TOKENIZER_HASHES: dict[int, tuple[Any, tuple[Any, ...], str]] = {}


def tokenizer_hash(tokenizer: Any) -> str:
    """Everything a tokenizer does to text: its full serialised state when fast, else its vocab."""
    signature = (len(tokenizer), getattr(tokenizer, "padding_side", None), getattr(tokenizer, "model_max_length", None),
                 getattr(tokenizer, "truncation_side", None))
    known = _TOKENIZER_HASHES.get(id(tokenizer))
    if known is not None and known[0] is tokenizer and known[1] == signature:
        return known[2]
    value = _serialised_tokenizer_hash(tokenizer)
    _TOKENIZER_HASHES[id(tokenizer)] = (tokenizer, signature, value)
    return value


def _serialised_tokenizer_hash(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without the backend's truncation and padding: the wrapper sets them from each call's arguments
        # (the processor's max_text_length, hashed beside this), so they tell which call came last.
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        body = json.dumps(state, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    return digest(type(tokenizer).__name__, hashlib.blake2b(body.encode(), digest_size=16).hexdigest(),
                  getattr(tokenizer, "padding_side", None), getattr(tokenizer, "model_max_length", None))


def preprocessing_settings(processor: Any, modality: str) -> dict[str, Any]:
    """The processor settings that shape ``modality``'s encoder input (deterministic part only)."""
    if modality == "image":
        return {"image_size": processor.image_size, "mean": processor.image_mean, "std": processor.image_std}
    if modality == "video":
        return {"image_size": processor.image_size, "num_frames": processor.num_frames,
                "mean": processor.image_mean, "std": processor.image_std}
    if modality == "audio":
        extractor = processor.feature_extractor
        facts = {k: v for k, v in extractor.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))}
        return {"audio_format": processor.audio_format, "extractor": facts}
    if modality == "text":
        return {"max_text_length": processor.max_text_length, "tokenizer": tokenizer_hash(processor.tokenizer),
                "prompt": getattr(processor, "prompt", None)}
    raise ValueError(f"unknown modality '{modality}'")
