"""``mmtrain predict``: one sample through an exported model of any kind.

A classifier returns its label and class probabilities; a pairwise comparator takes two items of
a modality (``--image a.png --image b.png``) and returns First / Second / Similar with
probabilities; a contrastive model returns each given modality's embedding and the cosine
similarity of every pair of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmtrain.data.media import read_audio, read_image, read_video
from mmtrain.hf.processing import model_inputs
from mmtrain.training.export import find_export

Inputs = Sequence[str] | str | None


def _many(values: Inputs) -> list[str]:
    if values is None:
        return []
    return [values] if isinstance(values, str) else list(values)


def _sample(processor: Any, video: Inputs, audio: Inputs, image: Inputs, text: Inputs) -> dict[str, Any]:
    """Raw sample from files and text; a modality given twice becomes a list (an item pair)."""
    readers = {
        "video": lambda path: read_video(path, num_frames=processor.num_frames),
        "audio": read_audio,
        "image": read_image,
        "text": str,
    }
    sample: dict[str, Any] = {"id": "input"}
    for modality, given in (("video", video), ("audio", audio), ("image", image), ("text", text)):
        values = [readers[modality](v) for v in _many(given)]
        if values:
            sample[modality] = values[0] if len(values) == 1 else values
    return sample


def _labels(probs: torch.Tensor, id2label: dict[int, str]) -> dict[str, Any]:
    best = int(probs.argmax())
    return {"label": id2label[best], "probabilities": {id2label[i]: round(float(p), 6) for i, p in enumerate(probs)}}


def predict(
    export_dir: str | Path,
    *,
    video: Inputs = None,
    audio: Inputs = None,
    image: Inputs = None,
    text: Inputs = None,
) -> dict[str, Any]:
    """Run one sample through the export in ``export_dir``; modalities not given are marked absent."""
    from transformers import AutoModel, AutoProcessor

    import mmtrain  # noqa: F401  (registers the Auto classes)
    from mmtrain.hf.contrastive import ContrastiveModel
    from mmtrain.hf.pairwise import PairwiseModel

    folder = find_export(export_dir)
    model = AutoModel.from_pretrained(str(folder)).eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    sample = _sample(processor, video, audio, image, text)
    given = [m for m in processor.modalities if sample.get(m) is not None]
    if not given:
        raise ValueError(f"give at least one of --{' / --'.join(processor.modalities)} (the model's modalities).")
    pairs = [m for m in given if isinstance(sample[m], list)]
    if isinstance(model, PairwiseModel):
        if sorted(pairs) != sorted(given) or any(len(sample[m]) != 2 for m in given):
            raise ValueError(f"a pairwise model compares two items: give each modality twice, e.g. "
                             f"--{given[0]} first --{given[0]} second (got {given}).")
    elif pairs:
        raise ValueError(f"--{pairs[0]} was given more than once; only pairwise models take two items.")
    batch = model_inputs(processor([sample]))
    with torch.no_grad():
        output = model(**batch)
    result: dict[str, Any] = {"modalities_used": given}
    if isinstance(model, ContrastiveModel):
        embeddings = {m: output.embeddings[m][0] for m in given if m in output.embeddings}
        result["embeddings"] = {m: [round(float(x), 6) for x in e] for m, e in embeddings.items()}
        names = list(embeddings)
        result["cosine_similarity"] = {
            f"{a}_{b}": round(float(torch.nn.functional.cosine_similarity(embeddings[a], embeddings[b], dim=0)), 6)
            for i, a in enumerate(names) for b in names[i + 1:]
        }
        return result
    return {**_labels(output.logits.softmax(-1)[0], model.config.id2label), **result}
