"""The feature cache's on-disk entries and how a batch is put together from them.

One entry is one sample's output of one frozen encoder slot (see :mod:`mmtrain.hf.feature_cache`
for where entries live and when they are used): a ``safetensors`` file holding ``tokens`` [n, D]
and ``mask`` [n] (the encoder's output up to its last real token) and ``pooled`` [D], in the
encoder's output dtype, with metadata ``id`` (checked on read), ``length`` (the token count the
encoder produced for the whole batch), ``input_length`` (the padded input length it was given) and
``checksum`` (blake2b of the tensor bytes, checked on read: a damaged entry is recomputed).

* :func:`read_entry` / :func:`write_entry`: one file; reads parse the safetensors header and tensors
  from the bytes (no pickle, nothing executed); writes are atomic (temporary file + ``os.replace``).
* :func:`split_rows`: an encoder's batch output -> one entry per sample.
* :func:`pack` / :func:`unpack` / :func:`finish`: entries -> one padded block per slot (what a collate
  ships from a DataLoader worker: a handful of tensors instead of three per sample) -> the
  :class:`EncoderOutput` the encoder would have given for the batch. :func:`assemble` is
  ``finish(pack(entries))``, so features assembled from read, fresh or shipped entries are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from mmtrain.encoders.base import EncoderOutput
from mmtrain.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

#: Tensors of an entry.
TENSORS = ("tokens", "mask", "pooled")

Entry = dict[str, Any]  # tokens, mask, pooled (tensors), length, input_length (int | None)


def entry_name(sample_id: str) -> str:
    """File name of a sample's entry: blake2b of its id (ids may hold ``/`` and other characters)."""
    return hashlib.blake2b(sample_id.encode(), digest_size=16).hexdigest() + ".safetensors"


def read_entry(path: Path, sample_id: str) -> Entry | None:
    """The entry at ``path`` if it is a whole entry of ``sample_id``; ``None`` when missing, torn or
    foreign (the caller recomputes it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("feature cache: unreadable entry %s (%s); recomputing", path, err)
        return None
    try:
        size = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        if meta.get("id") != sample_id:
            return None
        tensors = load(data)
        entry: Entry = {name: tensors[name] for name in TENSORS}
        if meta.get("checksum") != _checksum(entry):  # a flipped bit in the tensors: recompute, never use
            raise ValueError("checksum mismatch")
        entry["length"] = int(meta["length"])
        entry["input_length"] = int(meta["input_length"]) if meta.get("input_length") else None
    except Exception as err:  # noqa: BLE001 - any damage means: not an entry, recompute it
        log.warning("feature cache: damaged entry %s (%s); recomputing", path, err)
        return None
    return entry


def write_entry(path: Path, sample_id: str, slot: str, key: str, version: int, entry: Mapping[str, Any]) -> None:
    """Atomic: a temporary file in the same folder, then ``os.replace``."""
    tensors = {k: entry[k].contiguous() for k in TENSORS}
    meta = {"id": sample_id, "slot": slot, "key": key, "version": str(version),
            "length": str(entry["length"]), "input_length": str(entry["input_length"] or ""),
            "checksum": _checksum(tensors)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _checksum(tensors: Mapping[str, Any]) -> str:
    """blake2b over the raw bytes of an entry's tensors (in :data:`TENSORS` order)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in TENSORS:
        digest.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def split_rows(output: EncoderOutput, input_length: int | None) -> list[Entry]:
    """Per-sample unpadded entries: tokens/mask up to the last real token, pooled."""
    tokens = output.tokens.detach().to("cpu")
    mask = output.mask.detach().to("cpu").bool()
    pooled = output.pooled.detach().to("cpu")
    length = int(tokens.shape[1])
    rows = []
    for b in range(tokens.shape[0]):
        real = mask[b].nonzero()
        n = int(real[-1]) + 1 if real.numel() else 0
        rows.append({"tokens": tokens[b, :n].clone(), "mask": mask[b, :n].clone(), "pooled": pooled[b].clone(),
                     "length": length, "input_length": input_length})
    return rows


def pack(entries: Sequence[Entry | None]) -> dict[str, Any] | None:
    """Entries of a batch's rows (``None`` where a row has none) as one zero-padded block:
    ``tokens`` [B, n, D], ``mask`` [B, n], ``pooled`` [B, D], and per row ``has``, ``count`` (real
    length), ``length`` and ``input_length``. ``None`` when no row has an entry."""
    given = [e for e in entries if e is not None]
    if not given:
        return None
    first = given[0]
    longest = max(int(e["tokens"].shape[0]) for e in given)
    dim = int(first["tokens"].shape[-1])
    tokens = torch.zeros(len(entries), longest, dim, dtype=first["tokens"].dtype)
    mask = torch.zeros(len(entries), longest, dtype=torch.bool)
    pooled = torch.zeros(len(entries), int(first["pooled"].shape[-1]), dtype=first["pooled"].dtype)
    counts = []
    for b, e in enumerate(entries):
        n = int(e["tokens"].shape[0]) if e is not None else 0
        if e is not None:
            tokens[b, :n] = e["tokens"]
            mask[b, :n] = e["mask"]
            pooled[b] = e["pooled"]
        counts.append(n)
    return {"tokens": tokens, "mask": mask, "pooled": pooled, "has": [e is not None for e in entries],
            "count": counts, "length": [e["length"] if e is not None else None for e in entries],
            "input_length": [e["input_length"] if e is not None else None for e in entries]}


def unpack(packed: Mapping[str, Any]) -> list[Entry | None]:
    """Inverse of :func:`pack` (views into the block)."""
    return [{"tokens": packed["tokens"][b, :n], "mask": packed["mask"][b, :n], "pooled": packed["pooled"][b],
             "length": packed["length"][b], "input_length": packed["input_length"][b]} if has else None
            for b, (has, n) in enumerate(zip(packed["has"], packed["count"]))]


def finish(packed: Mapping[str, Any], input_length: int | None, device: torch.device) -> EncoderOutput:
    """The batch's output from a block whose every row has an entry.

    Length: as the encoder would produce it for this batch. An encoder whose token count follows the
    padded input (text: one token per input id) gets the current input's length (or, when the batch
    holds no input for it because its media was served from the cache, the stored input length the
    rows agree on: fixed-size media); a fixed-length one (frames, audio windows) its stored length;
    anything else the longest stored entry.
    """
    lengths, inputs = packed["length"], packed["input_length"]
    follows_input = all(i is not None and n == i for n, i in zip(lengths, inputs))
    fixed = set(lengths)
    longest = int(packed["tokens"].shape[1])
    if follows_input and input_length is None and len(set(inputs)) == 1:
        input_length = inputs[0]
    if follows_input and input_length is not None:
        length = input_length
    elif len(fixed) == 1 and not follows_input:
        length = fixed.pop()
    else:
        length = longest
    extra = max(length, longest) - longest
    tokens, mask = packed["tokens"], packed["mask"]
    if extra:
        tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], extra, tokens.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
    return EncoderOutput(tokens=tokens.to(device), mask=mask.to(device), pooled=packed["pooled"].to(device))


def assemble(entries: Sequence[Entry], input_length: int | None, device: torch.device) -> EncoderOutput:
    """A padded batch from per-sample entries (every row has one); see :func:`finish`."""
    packed = pack(entries)
    assert packed is not None and all(packed["has"]), "assemble needs an entry for every row"
    return finish(packed, input_length, device)
