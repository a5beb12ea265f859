"""An encoder's batch output as the feature cache's per-sample entries, and back.

* :func:`split_rows`: an encoder's batch output -> one entry per sample.
* :func:`finish`: a packed block (:func:`mmtrain.data.feature_entries.pack`) -> the
  :class:`EncoderOutput` the encoder would have given for the batch. :func:`assemble` is
  ``finish(pack(entries))``, so features assembled from read, fresh or shipped entries are bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.data.feature_entries import Entry, pack


def row_ids(inputs: Mapping[str, Any], ids: Sequence[str]) -> tuple[list[str] | None, int | None]:
    """``(the entry id of each row of an encoder's inputs, the padded input length)``.

    A row is a sample (its id), or with items flattened into rows (pairs: ``B*K`` rows) item ``j`` of
    sample ``b`` at row ``b*K + j`` (id ``"<id>#<j>"``). The ids are ``None`` when the rows do not fit
    the samples; the length ``None`` for inputs without a sequence axis.
    """
    first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
    length = int(first.shape[1]) if first is not None and first.dim() > 1 else None
    rows = int(first.shape[0]) if first is not None else len(ids)
    if rows == len(ids):
        return [str(i) for i in ids], length
    if not ids or rows % len(ids):
        return None, length
    k = rows // len(ids)
    return [f"{i}#{j}" for i in ids for j in range(k)], length


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
